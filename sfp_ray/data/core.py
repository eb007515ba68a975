"""The in-memory dataset container and the array transforms shared by every loader.

:class:`ArrayDataset` holds a whole split as two plain tensors (no ``torch.utils.data``
machinery), so it is cheap to slice and to ship to Ray actors.

Conventions every loader follows: images are ``float32`` with shape ``(N, C, H, W)``,
normalised by :func:`normalise` as ``(x / 255 - 0.5) / 0.5`` so raw pixel values
``0..255`` land in ``[-1, 1]``; labels are ``int64`` with values ``0..num_classes-1``.

The transforms below are applied by :func:`sfp_ray.data.load_dataset` after a raw loader,
in this order: :func:`select_classes`, :func:`stratified_sample`, :func:`resize`,
:func:`convert_channels`.

Example:
    >>> import torch
    >>> ds = ArrayDataset(torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), 2, "toy")
    >>> ds.subset([3, 0]).labels.tolist()
    [1, 0]
    >>> resize(ds.images, 5).shape
    torch.Size([4, 1, 5, 5])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sfp_ray.errors import ConfigError, DataError

__all__ = [
    "ArrayDataset",
    "NORM_MEAN",
    "NORM_STD",
    "convert_channels",
    "normalise",
    "resize",
    "select_classes",
    "stratified_sample",
]

NORM_MEAN: float = 0.5
"""Mean subtracted after scaling pixels to ``[0, 1]``."""

NORM_STD: float = 0.5
"""Standard deviation divided by after subtracting :data:`NORM_MEAN`."""

_RESIZE_CHUNK = 4096
"""Images interpolated per call in :func:`resize`, to bound peak memory."""


@dataclass
class ArrayDataset:
    """An in-memory image classification dataset.

    Attributes:
        images: ``float32`` tensor of shape ``(N, C, H, W)``, normalised as
            ``(x / 255 - 0.5) / 0.5`` so that raw pixel values ``0..255`` lie in ``[-1, 1]``.
        labels: ``int64`` tensor of shape ``(N,)`` with values ``0..num_classes-1``.
        num_classes: Number of classes (after any class selection/remapping).
        name: Dataset name, e.g. ``"fashion-mnist"``.
        class_names: Human-readable class names indexed by label, if known; empty otherwise.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.images.shape[0] != self.labels.shape[0]:
            raise DataError(
                f"dataset {self.name!r}: {self.images.shape[0]} images but "
                f"{self.labels.shape[0]} labels"
            )

    def __len__(self) -> int:
        """Returns the number of samples."""
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> ArrayDataset:
        """The same samples on ``device`` (this dataset itself when they are there already)."""
        if self.images.device == torch.device(device):
            return self
        return ArrayDataset(images=self.images.to(device), labels=self.labels.to(device), num_classes=self.num_classes,
                            name=self.name, class_names=self.class_names)

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ArrayDataset:
        """Returns a new dataset holding only the samples at ``indices``.

        Args:
            indices: Integer sample indices (a sequence, numpy array or tensor), in the
                order wanted. A boolean mask of length ``N`` is also accepted.

        Returns:
            A dataset with the same ``num_classes``, ``name`` and ``class_names``.
        """
        idx = _as_index_tensor(indices)
        return ArrayDataset(
            images=self.images[idx],
            labels=self.labels[idx],
            num_classes=self.num_classes,
            name=self.name,
            class_names=self.class_names,
        )


def _as_index_tensor(indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Converts index-like input to a 1-D ``int64`` tensor."""
    if isinstance(indices, torch.Tensor):
        t = indices.reshape(-1)
        if t.dtype == torch.bool:
            return torch.nonzero(t, as_tuple=False).reshape(-1)
        return t.to(torch.long)
    arr = np.asarray(indices).reshape(-1)
    if arr.dtype == np.bool_:
        arr = np.flatnonzero(arr)
    return torch.from_numpy(arr.astype(np.int64, copy=True))


def normalise(pixels: np.ndarray) -> torch.Tensor:
    """Maps raw pixel values ``0..255`` to a normalised ``float32`` tensor in ``[-1, 1]``.

    Args:
        pixels: Array of any shape and numeric dtype (read-only arrays are copied).

    Returns:
        ``(pixels / 255 - NORM_MEAN) / NORM_STD`` as a new ``float32`` tensor.

    Example:
        >>> normalise(np.array([0, 255], dtype=np.uint8)).tolist()
        [-1.0, 1.0]
    """
    arr = np.ascontiguousarray(pixels, dtype=np.float32)
    if not arr.flags.writeable:
        arr = arr.copy()
    t = torch.from_numpy(arr)
    return (t / 255.0 - NORM_MEAN) / NORM_STD


def select_classes(ds: ArrayDataset, classes: Sequence[int]) -> ArrayDataset:
    """Keeps only ``classes`` and remaps them to ``0..k-1`` in the given order.

    Args:
        ds: The dataset to filter.
        classes: Original class ids, distinct, each present in ``ds``.

    Returns:
        A new dataset whose label ``i`` is the original class ``classes[i]``; class names
        follow the same order when ``ds`` has one name per class.

    Raises:
        ConfigError: ``classes`` is empty, repeats an id, or names an id that is out of
            range or has no samples (key ``data.classes``).
    """
    wanted = [int(c) for c in classes]
    if not wanted:
        raise ConfigError("data.classes: must list at least one class id, got an empty list")
    if len(set(wanted)) != len(wanted):
        raise ConfigError(f"data.classes: class ids must be distinct, got {list(classes)}")
    labels = ds.labels.numpy()
    present = set(np.unique(labels).tolist())
    missing = [c for c in wanted if c < 0 or c >= ds.num_classes or c not in present]
    if missing:
        raise ConfigError(
            f"data.classes: class id(s) {missing} not present in dataset {ds.name!r} "
            f"(valid ids: 0..{ds.num_classes - 1})"
        )
    lookup = np.full(ds.num_classes, -1, dtype=np.int64)
    lookup[wanted] = np.arange(len(wanted), dtype=np.int64)
    keep = np.flatnonzero(lookup[labels] >= 0)
    new_labels = torch.from_numpy(lookup[labels[keep]])
    names = tuple(ds.class_names[c] for c in wanted) if len(ds.class_names) == ds.num_classes else ()
    return ArrayDataset(
        images=ds.images[torch.from_numpy(keep)],
        labels=new_labels,
        num_classes=len(wanted),
        name=ds.name,
        class_names=names,
    )


def stratified_sample(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Picks ``k`` indices at random, keeping class proportions close to the full set.

    Each class's samples, in a seeded random order, get keys ``(j + 0.5) / n_c``; taking
    the ``k`` smallest keys interleaves classes in proportion to their sizes.

    Args:
        labels: Label of every sample, shape ``(N,)``.
        k: Number of indices wanted (all ``N`` if ``k >= N``).
        seed: Seed of the random order.

    Returns:
        The chosen indices, sorted ascending.

    Example:
        >>> labels = np.array([0] * 6 + [1] * 3)
        >>> np.bincount(labels[stratified_sample(labels, 3, seed=0)]).tolist()
        [2, 1]
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(labels.shape[0])
    perm_labels = labels[perm]
    keys = np.empty(perm.shape[0], dtype=np.float64)
    for c in np.unique(perm_labels):
        pos = np.flatnonzero(perm_labels == c)
        keys[pos] = (np.arange(pos.shape[0]) + 0.5) / pos.shape[0]
    chosen = perm[np.argsort(keys, kind="stable")[:k]]
    return np.sort(chosen)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resizes ``(N, C, H, W)`` images to ``size x size`` (bilinear, no antialiasing).

    Images already at the target size are returned unchanged (same tensor).
    """
    if images.shape[-2:] == (size, size):
        return images
    if images.shape[0] == 0:
        return images.new_zeros((0, images.shape[1], size, size))
    chunks = [
        F.interpolate(images[i : i + _RESIZE_CHUNK], size=(size, size), mode="bilinear",
                      align_corners=False, antialias=False)
        for i in range(0, images.shape[0], _RESIZE_CHUNK)
    ]
    return torch.cat(chunks, dim=0).contiguous()


def convert_channels(images: torch.Tensor, chans: int, name: str) -> torch.Tensor:
    """Converts 1 -> 3 channels by repetition or 3 -> 1 by averaging.

    Args:
        images: ``(N, C, H, W)`` tensor.
        chans: Channel count wanted.
        name: Dataset name, for the error message.

    Returns:
        The images with ``chans`` channels (the same tensor if they already have them).

    Raises:
        ConfigError: No rule converts ``C`` to ``chans`` channels (key ``model.in_chans``).
    """
    have = images.shape[1]
    if have == chans:
        return images
    if have == 1 and chans == 3:
        return images.repeat(1, 3, 1, 1)
    if have == 3 and chans == 1:
        return images.mean(dim=1, keepdim=True)
    raise ConfigError(
        f"model.in_chans: cannot convert dataset {name!r} from {have} to {chans} channels"
    )
