"""Datasets and client partitions for the split-federated-learning simulator.

This module loads image classification datasets into memory as :class:`ArrayDataset`
objects (plain tensors, no ``torch.utils.data`` machinery, so they are cheap to slice and
to ship to Ray actors) and splits sample indices among federated clients.

Every image tensor produced here is ``float32`` with shape ``(N, C, H, W)`` and is
normalised as ``(x / 255 - 0.5) / 0.5``, i.e. raw pixel values ``0..255`` are mapped to
``[-1, 1]`` (see :data:`NORM_MEAN` and :data:`NORM_STD`). Labels are ``int64`` with
values ``0..num_classes-1``.

Datasets are looked up by name in a small registry (:func:`register_dataset`,
:func:`list_datasets`). Built-in entries:

* ``fashion-mnist``: read from the original idx files (own parser, no download).
* ``digits``: scikit-learn's bundled 8x8 digits, with a fixed 80/20 split.
* ``synthetic``: generated, learnable 28x28 data for tests; deterministic from ``seed``.
* ``cifar10``, ``cifar100``, ``svhn``: read from a local torchvision root
  (``download=False``; nothing is ever downloaded at run time).

:func:`load_dataset` applies class selection, sub-sampling, resizing and channel
conversion on top of a raw loader. :func:`partition` splits indices among clients with
an ``iid``, ``dirichlet`` or ``shards`` scheme.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from sfp_ray.errors import ConfigError, DataError

__all__ = [
    "ArrayDataset",
    "DEFAULT_SEARCH_DIRS",
    "DEFAULT_TORCHVISION_ROOT",
    "ENV_DATA_ROOT",
    "FASHION_MNIST_CLASSES",
    "NORM_MEAN",
    "NORM_STD",
    "PARTITION_SCHEMES",
    "dataset_search_path",
    "label_skew",
    "list_datasets",
    "load_dataset",
    "partition",
    "register_dataset",
]

NORM_MEAN: float = 0.5
"""Mean subtracted after scaling pixels to ``[0, 1]``."""

NORM_STD: float = 0.5
"""Standard deviation divided by after subtracting :data:`NORM_MEAN`."""

ENV_DATA_ROOT: str = "SFP_DATA_ROOT"
"""Environment variable naming a data root directory."""

DEFAULT_SEARCH_DIRS: tuple[Path, ...] = (
    Path("data") / "fashion-mnist",
    Path("/usr/share/datasets/fashion-mnist"),
)
"""Fixed directories searched for Fashion-MNIST after ``root`` and ``$SFP_DATA_ROOT``.

The first entry is relative to the current working directory.
"""

DEFAULT_TORCHVISION_ROOT: Path = Path("data")
"""torchvision root used for CIFAR/SVHN when neither ``root`` nor ``$SFP_DATA_ROOT`` is set."""

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

PARTITION_SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "shards")

_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801

_FMNIST_FILES: dict[bool, tuple[str, str]] = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_FMNIST_INSTALL_HINT = (
    "To get the files: on Debian/Ubuntu run `apt-get install dataset-fashion-mnist` "
    "(installs them to /usr/share/datasets/fashion-mnist); or, with internet access, run "
    "`python -c \"import torchvision; torchvision.datasets.FashionMNIST('data', download=True)\"` "
    "once and then set data.root=data."
)

_TORCHVISION_DATASETS = ("cifar10", "cifar100", "svhn")

_RESIZE_CHUNK = 4096


# --------------------------------------------------------------------------------------
# Dataset container
# --------------------------------------------------------------------------------------


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


def _normalise(pixels: np.ndarray) -> torch.Tensor:
    """Maps raw pixel values ``0..255`` to a normalised ``float32`` tensor in ``[-1, 1]``."""
    arr = np.ascontiguousarray(pixels, dtype=np.float32)
    if not arr.flags.writeable:
        arr = arr.copy()
    t = torch.from_numpy(arr)
    return (t / 255.0 - NORM_MEAN) / NORM_STD


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

Loader = Callable[[str | None, bool, int], ArrayDataset]
"""A raw loader: ``fn(root, train, seed) -> ArrayDataset`` (native size/channels, all classes)."""

_REGISTRY: dict[str, Loader] = {}


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Registers a raw dataset loader under ``name``.

    Use as a decorator. The loader is called as ``fn(root, train, seed)`` and must return
    an :class:`ArrayDataset` at its native size and channel count, with all classes.
    Names are case-insensitive and ``_`` is treated as ``-``; registering a name again
    replaces the earlier loader.

    Args:
        name: Dataset name, e.g. ``"fashion-mnist"``.

    Returns:
        A decorator that registers the function and returns it unchanged.
    """
    key = _canonical(name)
    if not key:
        raise ConfigError("data.name: a dataset name must not be empty")

    def decorator(fn: Loader) -> Loader:
        _REGISTRY[key] = fn
        return fn

    return decorator


def list_datasets() -> list[str]:
    """Returns the registered dataset names, sorted."""
    return sorted(_REGISTRY)


# --------------------------------------------------------------------------------------
# Public loading entry point
# --------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    *,
    train: bool = True,
    root: str | None = None,
    classes: Sequence[int] | None = None,
    img_size: int | None = None,
    in_chans: int | None = None,
    seed: int = 0,
    max_samples: int | None = None,
) -> ArrayDataset:
    """Loads a registered dataset and adapts it to the model's input.

    Steps, in order: the raw loader; class selection (``classes``); sub-sampling
    (``max_samples``); resizing (``img_size``); channel conversion (``in_chans``).

    Args:
        name: Registered dataset name (see :func:`list_datasets`).
        train: Load the training split if true, else the test split.
        root: Data directory; each loader documents how it is searched.
        classes: Original class ids to keep. Labels are remapped to ``0..k-1`` in the
            order given (``classes=[5, 7]`` makes class 5 label 0 and class 7 label 1).
        img_size: Target height and width; images are resized with bilinear
            interpolation (no antialiasing) when it differs from the native size.
        in_chans: Target channel count, 1 or 3. Grey images are repeated to 3 channels;
            colour images are averaged to 1 channel.
        seed: Seed for generated data (``synthetic``) and for sub-sampling.
        max_samples: If set, keep a seeded, class-stratified random subset of at most this
            many samples (all samples if the split is smaller).

    Returns:
        The dataset, images normalised to ``[-1, 1]`` as described in the module docstring.

    Raises:
        ConfigError: Unknown ``name`` (``data.name``), bad ``classes`` (``data.classes``),
            bad ``img_size`` (``model.img_size``), bad ``in_chans`` (``model.in_chans``) or
            bad ``max_samples`` (``data.max_samples``).
        DataError: The dataset's files cannot be found or read.
    """
    key = _canonical(str(name))
    if key not in _REGISTRY:
        raise ConfigError(
            f"data.name: unknown dataset {name!r}; registered datasets: "
            f"{', '.join(list_datasets())}"
        )
    if in_chans is not None and in_chans not in (1, 3):
        raise ConfigError(f"model.in_chans: must be 1 or 3, got {in_chans!r}")
    if img_size is not None and (isinstance(img_size, bool) or int(img_size) != img_size or img_size < 1):
        raise ConfigError(f"model.img_size: must be a positive integer, got {img_size!r}")
    bad_max = max_samples is not None and (
        isinstance(max_samples, bool) or int(max_samples) != max_samples or max_samples < 1
    )
    if bad_max:
        raise ConfigError(f"data.max_samples: must be a positive integer, got {max_samples!r}")

    ds = _REGISTRY[key](root, bool(train), int(seed))

    if classes is not None:
        ds = _select_classes(ds, classes)
    if max_samples is not None and int(max_samples) < len(ds):
        ds = ds.subset(_stratified_sample(ds.labels.numpy(), int(max_samples), int(seed)))
    if img_size is not None:
        ds.images = _resize(ds.images, int(img_size))
    if in_chans is not None:
        ds.images = _convert_channels(ds.images, int(in_chans), ds.name)
    return ds


def _select_classes(ds: ArrayDataset, classes: Sequence[int]) -> ArrayDataset:
    """Keeps only ``classes`` and remaps them to ``0..k-1`` in the given order."""
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


def _stratified_sample(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Picks ``k`` indices at random, keeping class proportions close to the full set.

    Each class's samples, in a seeded random order, get keys ``(j + 0.5) / n_c``; taking
    the ``k`` smallest keys interleaves classes in proportion to their sizes.
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


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resizes ``(N, C, H, W)`` images to ``size x size`` (bilinear, no antialiasing)."""
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


def _convert_channels(images: torch.Tensor, chans: int, name: str) -> torch.Tensor:
    """Converts 1 -> 3 channels by repetition or 3 -> 1 by averaging."""
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


# --------------------------------------------------------------------------------------
# Search paths
# --------------------------------------------------------------------------------------


def _env_root() -> str | None:
    value = os.environ.get(ENV_DATA_ROOT, "").strip()
    return value or None


def _dedupe(paths: list[Path]) -> list[Path]:
    seen: set[str] = set()
    out: list[Path] = []
    for p in paths:
        k = str(p)
        if k not in seen:
            seen.add(k)
            out.append(p)
    return out


def _torchvision_root(root: str | None) -> Path:
    """Resolves the torchvision root: ``root``, else ``$SFP_DATA_ROOT``, else ``./data``."""
    chosen = root if root else _env_root()
    return Path(chosen).expanduser() if chosen else DEFAULT_TORCHVISION_ROOT


def dataset_search_path(name: str, root: str | None) -> list[Path]:
    """Returns the ordered directories searched for a dataset's files.

    For ``fashion-mnist``: ``root``, ``root/fashion-mnist`` and ``root/FashionMNIST/raw``
    (torchvision's layout) if ``root`` is given; the same three under
    ``$SFP_DATA_ROOT`` if set; then :data:`DEFAULT_SEARCH_DIRS`
    (``./data/fashion-mnist``, ``/usr/share/datasets/fashion-mnist``).

    For ``cifar10``, ``cifar100`` and ``svhn``: the single torchvision root (``root``,
    else ``$SFP_DATA_ROOT``, else ``./data``). Datasets that need no files (``digits``,
    ``synthetic``) and other registered datasets give an empty list.

    Args:
        name: Dataset name.
        root: The ``data.root`` setting, or ``None``.

    Returns:
        Directories in search order, duplicates removed.

    Raises:
        ConfigError: ``name`` is not a registered dataset.
    """
    key = _canonical(str(name))
    if key not in _REGISTRY:
        raise ConfigError(
            f"data.name: unknown dataset {name!r}; registered datasets: "
            f"{', '.join(list_datasets())}"
        )
    if key in _TORCHVISION_DATASETS:
        return [_torchvision_root(root)]
    if key != "fashion-mnist":
        return []
    paths: list[Path] = []
    for base in (root, _env_root()):
        if base:
            b = Path(base).expanduser()
            paths += [b, b / "fashion-mnist", b / "FashionMNIST" / "raw"]
    paths += [Path(p) for p in DEFAULT_SEARCH_DIRS]
    return _dedupe(paths)


# --------------------------------------------------------------------------------------
# idx format (MNIST family)
# --------------------------------------------------------------------------------------


def _find_file(directory: Path, stem: str) -> Path | None:
    """Returns ``directory/stem.gz`` or ``directory/stem``, whichever exists first."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Reads an idx file (optionally gzip-compressed) of unsigned bytes.

    Args:
        path: File to read; a ``.gz`` suffix means gzip.
        expected_magic: ``0x00000803`` for images, ``0x00000801`` for labels.

    Returns:
        A ``uint8`` array with the dimensions given in the header.

    Raises:
        DataError: The file cannot be read, is not valid gzip, has the wrong magic number,
            or is truncated/has trailing bytes.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read idx file {path}: {exc}") from exc
    if len(raw) < 4:
        raise DataError(f"idx file {path} is truncated: {len(raw)} bytes, no header")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        raise DataError(
            f"idx file {path} has bad magic number 0x{magic:08x} "
            f"(expected 0x{expected_magic:08x}); the file is corrupt or not an idx file"
        )
    ndim = expected_magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"idx file {path} is truncated: header needs {header} bytes, got {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) < expected:
        raise DataError(
            f"idx file {path} is truncated: dims {tuple(dims)} need {expected} bytes, got {len(raw)}"
        )
    if len(raw) > expected:
        raise DataError(
            f"idx file {path} has {len(raw) - expected} unexpected trailing bytes "
            f"after dims {tuple(dims)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@register_dataset("fashion-mnist")
def _load_fashion_mnist(root: str | None, train: bool, seed: int) -> ArrayDataset:
    """Loads Fashion-MNIST from idx files found on :func:`dataset_search_path`.

    Args:
        root: The ``data.root`` setting, or ``None``.
        train: Load ``train-*`` files if true, else ``t10k-*``.
        seed: Unused.

    Returns:
        ``1x28x28`` images with 10 classes.

    Raises:
        DataError: No searched directory holds both files of the split, or a file is bad.
    """
    del seed
    img_stem, lbl_stem = _FMNIST_FILES[train]
    searched = dataset_search_path("fashion-mnist", root)
    for directory in searched:
        img_path = _find_file(directory, img_stem)
        lbl_path = _find_file(directory, lbl_stem)
        if img_path is None or lbl_path is None:
            continue
        images = _read_idx(img_path, _IDX_IMAGES_MAGIC)
        labels = _read_idx(lbl_path, _IDX_LABELS_MAGIC)
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"Fashion-MNIST files disagree: {img_path} has {images.shape[0]} images but "
                f"{lbl_path} has {labels.shape[0]} labels"
            )
        if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise DataError(
                f"Fashion-MNIST labels in {lbl_path} go up to {int(labels.max())}; expected 0..9"
            )
        return ArrayDataset(
            images=_normalise(images[:, None, :, :]),
            labels=torch.from_numpy(labels.astype(np.int64)),
            num_classes=len(FASHION_MNIST_CLASSES),
            name="fashion-mnist",
            class_names=FASHION_MNIST_CLASSES,
        )
    split = "train" if train else "test"
    places = "; ".join(os.path.abspath(p) for p in searched)
    raise DataError(
        f"Fashion-MNIST {split} files ({img_stem}[.gz], {lbl_stem}[.gz]) not found. "
        f"Looked in: {places}. {_FMNIST_INSTALL_HINT}"
    )


# --------------------------------------------------------------------------------------
# Bundled / generated datasets
# --------------------------------------------------------------------------------------

_DIGITS_TEST_FRACTION = 0.2


@register_dataset("digits")
def _load_digits(root: str | None, train: bool, seed: int) -> ArrayDataset:
    """Loads scikit-learn's 8x8 digits with a fixed, seed-independent 80/20 split.

    Pixel values ``0..16`` are scaled to ``0..255`` before normalisation. The split uses a
    permutation from ``numpy.random.RandomState(0)``; the first 20% are the test split.

    Args:
        root: Unused.
        train: Training (80%) or test (20%) side of the split.
        seed: Unused (the split never depends on it).

    Returns:
        ``1x8x8`` images with 10 classes.
    """
    del root, seed
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)
    labels = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.RandomState(0).permutation(labels.shape[0])
    n_test = int(round(_DIGITS_TEST_FRACTION * labels.shape[0]))
    idx = np.sort(perm[n_test:] if train else perm[:n_test])
    return ArrayDataset(
        images=_normalise(images[idx, None, :, :].astype(np.float32)),
        labels=torch.from_numpy(labels[idx]),
        num_classes=10,
        name="digits",
        class_names=tuple(str(d) for d in range(10)),
    )


_SYNTH_TRAIN = 2000
_SYNTH_TEST = 500
_SYNTH_CLASSES = 10
_SYNTH_SIZE = 28
_SYNTH_BLOCK = 4  # templates are 7x7 random grids upsampled 4x, so resizing keeps them
_SYNTH_NOISE = 0.35
_SYNTH_TEMPLATE_SEED = 20170417


def _synthetic_templates() -> np.ndarray:
    """Returns the fixed ``(10, 28, 28)`` class templates with values in ``[0, 1]``."""
    rng = np.random.default_rng(_SYNTH_TEMPLATE_SEED)
    coarse = _SYNTH_SIZE // _SYNTH_BLOCK
    grid = rng.random((_SYNTH_CLASSES, coarse, coarse))
    return np.kron(grid, np.ones((_SYNTH_BLOCK, _SYNTH_BLOCK)))


@register_dataset("synthetic")
def _load_synthetic(root: str | None, train: bool, seed: int) -> ArrayDataset:
    """Generates a small learnable dataset: class template plus Gaussian noise.

    Each of the 10 classes has a fixed blocky template (from a constant seed, so train and
    test share them). Samples are ``clip(template + N(0, 0.35^2), 0, 1) * 255``. Labels are
    balanced and shuffled. The data depend only on ``seed`` and ``train``.

    Args:
        root: Unused.
        train: 2000 training samples if true, else 500 test samples (different noise).
        seed: Seed for labels and noise.

    Returns:
        ``1x28x28`` images with 10 classes.
    """
    del root
    n = _SYNTH_TRAIN if train else _SYNTH_TEST
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0 if train else 1]))
    labels = rng.permutation(np.arange(n, dtype=np.int64) % _SYNTH_CLASSES)
    noise = rng.standard_normal((n, _SYNTH_SIZE, _SYNTH_SIZE), dtype=np.float32) * _SYNTH_NOISE
    images = np.clip(_synthetic_templates().astype(np.float32)[labels] + noise, 0.0, 1.0) * 255.0
    return ArrayDataset(
        images=_normalise(images[:, None, :, :]),
        labels=torch.from_numpy(labels),
        num_classes=_SYNTH_CLASSES,
        name="synthetic",
        class_names=tuple(f"class{c}" for c in range(_SYNTH_CLASSES)),
    )


# --------------------------------------------------------------------------------------
# torchvision-format datasets (local files only)
# --------------------------------------------------------------------------------------


def _torchvision_missing(name: str, expected: Path, exc: Exception, download_call: str) -> DataError:
    return DataError(
        f"{name} files not found at {expected} ({exc}). Put the torchvision-format files "
        f"there, or point data.root / ${ENV_DATA_ROOT} at the directory holding them. With "
        f"internet access, run torchvision's download once: "
        f"`python -c \"import torchvision; {download_call}\"`."
    )


def _load_cifar(root: str | None, train: bool, hundred: bool) -> ArrayDataset:
    import torchvision

    base = _torchvision_root(root)
    name = "cifar100" if hundred else "cifar10"
    cls = torchvision.datasets.CIFAR100 if hundred else torchvision.datasets.CIFAR10
    folder = "cifar-100-python" if hundred else "cifar-10-batches-py"
    try:
        ds = cls(str(base), train=train, download=False)
    except RuntimeError as exc:
        call = f"torchvision.datasets.{cls.__name__}('{base}', train={train}, download=True)"
        raise _torchvision_missing(name, base / folder, exc, call) from exc
    images = np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2)
    return ArrayDataset(
        images=_normalise(images),
        labels=torch.as_tensor(np.asarray(ds.targets, dtype=np.int64)),
        num_classes=100 if hundred else 10,
        name=name,
        class_names=tuple(ds.classes),
    )


@register_dataset("cifar10")
def _load_cifar10(root: str | None, train: bool, seed: int) -> ArrayDataset:
    """Loads CIFAR-10 (``3x32x32``, 10 classes) from ``<root>/cifar-10-batches-py``.

    Raises:
        DataError: The files are absent or corrupt.
    """
    del seed
    return _load_cifar(root, train, hundred=False)


@register_dataset("cifar100")
def _load_cifar100(root: str | None, train: bool, seed: int) -> ArrayDataset:
    """Loads CIFAR-100 (``3x32x32``, 100 classes) from ``<root>/cifar-100-python``.

    Raises:
        DataError: The files are absent or corrupt.
    """
    del seed
    return _load_cifar(root, train, hundred=True)


@register_dataset("svhn")
def _load_svhn(root: str | None, train: bool, seed: int) -> ArrayDataset:
    """Loads SVHN (``3x32x32``, 10 classes) from ``<root>/{train,test}_32x32.mat``.

    Raises:
        DataError: The files are absent or corrupt, or scipy (needed to read them) is missing.
    """
    del seed
    import torchvision

    base = _torchvision_root(root)
    split = "train" if train else "test"
    try:
        ds = torchvision.datasets.SVHN(str(base), split=split, download=False)
    except RuntimeError as exc:
        call = f"torchvision.datasets.SVHN('{base}', split='{split}', download=True)"
        raise _torchvision_missing("svhn", base / f"{split}_32x32.mat", exc, call) from exc
    except ImportError as exc:
        raise DataError(f"reading SVHN from {base} needs scipy: {exc}") from exc
    return ArrayDataset(
        images=_normalise(np.asarray(ds.data, dtype=np.uint8)),
        labels=torch.as_tensor(np.asarray(ds.labels, dtype=np.int64)),
        num_classes=10,
        name="svhn",
        class_names=tuple(str(d) for d in range(10)),
    )


# --------------------------------------------------------------------------------------
# Partitioning
# --------------------------------------------------------------------------------------


def partition(
    labels: np.ndarray | torch.Tensor,
    num_clients: int,
    scheme: Literal["iid", "dirichlet", "shards"] = "iid",
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    seed: int = 0,
    min_samples: int = 1,
) -> list[np.ndarray]:
    """Splits sample indices among federated clients.

    Schemes:

    * ``iid``: a seeded permutation of all indices cut into near-equal parts
      (:func:`numpy.array_split`).
    * ``dirichlet``: for each class, proportions ``p ~ Dirichlet(alpha * 1_K)`` over the
      ``K`` clients; that class's (shuffled) indices are cut at ``cumsum(p) * n_c``.
      Smaller ``alpha`` gives more label skew.
    * ``shards``: indices sorted by label (random order within a label) are cut into
      ``K * shards_per_client`` contiguous shards, and each client gets
      ``shards_per_client`` shards chosen at random (McMahan et al., 2017).

    Repair rule (``min_samples``): after partitioning, while some client has fewer than
    ``min_samples`` samples, take the lowest-numbered such client and move one sample,
    chosen at random, to it from the currently largest client (ties between equally large
    clients broken at random). All random choices come from the same seeded generator, so
    the result stays deterministic. The largest client always has more than
    ``min_samples`` samples while any client is short, so donors never fall below the
    minimum themselves.

    Every index ``0..N-1`` appears in exactly one client for every scheme, and the result
    depends only on the arguments.

    Args:
        labels: Class label of each sample, shape ``(N,)``.
        num_clients: Number of clients ``K`` (``federation.num_clients``), at least 1.
        scheme: ``"iid"``, ``"dirichlet"`` or ``"shards"`` (``data.partition``).
        alpha: Dirichlet concentration (``data.alpha``), greater than 0.
        shards_per_client: Shards per client for ``shards`` (``data.shards_per_client``).
        seed: Seed for all random choices.
        min_samples: Minimum samples per client after repair; 0 disables the repair.

    Returns:
        ``K`` sorted ``int64`` index arrays, one per client.

    Raises:
        ConfigError: ``num_clients < 1``; ``alpha <= 0``; unknown ``scheme``;
            ``shards_per_client < 1``; ``min_samples < 0``; or fewer than
            ``num_clients * min_samples`` samples in total.
    """
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    y = y.reshape(-1).astype(np.int64, copy=False)
    n = int(y.shape[0])

    if isinstance(num_clients, bool) or int(num_clients) != num_clients or num_clients < 1:
        raise ConfigError(f"federation.num_clients: must be an integer >= 1, got {num_clients!r}")
    k = int(num_clients)
    if scheme not in PARTITION_SCHEMES:
        raise ConfigError(
            f"data.partition: unknown scheme {scheme!r}; allowed: {', '.join(PARTITION_SCHEMES)}"
        )
    if not float(alpha) > 0:
        raise ConfigError(f"data.alpha: must be > 0, got {alpha!r}")
    if int(shards_per_client) != shards_per_client or shards_per_client < 1:
        raise ConfigError(
            f"data.shards_per_client: must be an integer >= 1, got {shards_per_client!r}"
        )
    if int(min_samples) != min_samples or min_samples < 0:
        raise ConfigError(f"data.min_samples: must be an integer >= 0, got {min_samples!r}")
    min_samples = int(min_samples)
    if n < k * min_samples:
        raise ConfigError(
            f"federation.num_clients: {k} clients with at least {min_samples} sample(s) each "
            f"need {k * min_samples} samples, but the dataset has only {n}; use fewer clients "
            f"or a larger dataset"
        )

    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), k)
    elif scheme == "dirichlet":
        parts = _dirichlet_split(y, k, float(alpha), rng)
    else:
        parts = _shard_split(y, k, int(shards_per_client), rng)

    if min_samples > 0:
        parts = _repair_min_samples(parts, min_samples, rng)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _dirichlet_split(y: np.ndarray, k: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    buckets: list[list[np.ndarray]] = [[] for _ in range(k)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        p = rng.dirichlet(np.full(k, alpha))
        if not np.all(np.isfinite(p)) or p.sum() <= 0:
            # Extremely small alpha can underflow; all mass goes to one client.
            p = np.zeros(k)
            p[rng.integers(k)] = 1.0
        cuts = np.floor(np.cumsum(p)[:-1] * idx.shape[0]).astype(np.int64)
        cuts = np.clip(cuts, 0, idx.shape[0])
        for client, piece in enumerate(np.split(idx, cuts)):
            buckets[client].append(piece)
    return [np.concatenate(b) if b else np.empty(0, dtype=np.int64) for b in buckets]


def _shard_split(y: np.ndarray, k: int, per_client: int, rng: np.random.Generator) -> list[np.ndarray]:
    shuffled = rng.permutation(y.shape[0])
    order = shuffled[np.argsort(y[shuffled], kind="stable")]
    num_shards = k * per_client
    shards = np.array_split(order, num_shards)
    owner = rng.permutation(num_shards).reshape(k, per_client)
    return [np.concatenate([shards[s] for s in owner[c]]) for c in range(k)]


def _repair_min_samples(parts: list[np.ndarray], minimum: int, rng: np.random.Generator) -> list[np.ndarray]:
    pools = [list(np.asarray(p, dtype=np.int64).tolist()) for p in parts]
    sizes = np.array([len(p) for p in pools], dtype=np.int64)
    while True:
        short = np.flatnonzero(sizes < minimum)
        if short.shape[0] == 0:
            break
        receiver = int(short[0])
        largest = np.flatnonzero(sizes == sizes.max())
        donor = int(largest[rng.integers(largest.shape[0])]) if largest.shape[0] > 1 else int(largest[0])
        pool = pools[donor]
        j = int(rng.integers(len(pool)))
        pool[j], pool[-1] = pool[-1], pool[j]
        pools[receiver].append(pool.pop())
        sizes[donor] -= 1
        sizes[receiver] += 1
    return [np.asarray(p, dtype=np.int64) for p in pools]


def label_skew(
    parts: Sequence[np.ndarray | Sequence[int]],
    labels: np.ndarray | torch.Tensor,
    num_classes: int,
) -> float:
    """Measures label skew of a partition.

    The skew is the mean, over clients, of the total-variation distance
    ``0.5 * sum_c |p_client(c) - p_global(c)|`` between a client's label distribution and
    the distribution over all ``labels``. It is 0 for perfectly balanced clients and at
    most 1. Clients without samples have no distribution and are left out of the mean.

    Args:
        parts: Index arrays, one per client (as returned by :func:`partition`).
        labels: Label of every sample, shape ``(N,)``.
        num_classes: Number of classes.

    Returns:
        The mean total-variation distance, or 0.0 if no client has samples.
    """
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    y = y.reshape(-1).astype(np.int64, copy=False)
    if y.shape[0] == 0:
        return 0.0
    global_dist = np.bincount(y, minlength=num_classes)[:num_classes] / y.shape[0]
    distances: list[float] = []
    for p in parts:
        idx = np.asarray(p, dtype=np.int64).reshape(-1)
        if idx.shape[0] == 0:
            continue
        counts = np.bincount(y[idx], minlength=num_classes)[:num_classes]
        distances.append(0.5 * float(np.abs(counts / idx.shape[0] - global_dist).sum()))
    return float(np.mean(distances)) if distances else 0.0
