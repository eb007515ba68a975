"""Dataset sources: :func:`load_dataset` loads a registered dataset by name and adapts it to the model.

:func:`load_dataset` is the entry point: it looks a name up in the registry
(:func:`register_dataset`, :func:`list_datasets`: :mod:`sfp_ray.data.registry`), calls the raw
loader, then adapts the result with the transforms of :mod:`sfp_ray.data.core` (class
selection, stratified sub-sampling, resizing, channel conversion). Importing this module
registers the built-in entries:

* ``fashion-mnist``: Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017), read from the original idx
  files (no download; :mod:`sfp_ray.data.idx`);
* ``digits``: scikit-learn's bundled 8x8 digits with a fixed 80/20 split, and ``synthetic``:
  generated, learnable 28x28 data for tests, deterministic from ``seed`` (:mod:`sfp_ray.data.small`);
* ``cifar10``, ``cifar100`` and ``svhn``: read from a local torchvision root (``download=False``;
  nothing is ever downloaded at run time; :mod:`sfp_ray.data.torchvision_sets`).

Where files are looked for is given by :func:`dataset_search_path` (:mod:`sfp_ray.data.paths`):
``data.root``, then ``$SFP_DATA_ROOT`` (:data:`ENV_DATA_ROOT`), then :data:`DEFAULT_SEARCH_DIRS`.
This module re-exports those constants; patch them on :mod:`sfp_ray.data.paths`, where they
are read, not here nor on the :mod:`sfp_ray.data` package.

Example:
    >>> "synthetic" in list_datasets()
    True
    >>> ds = load_dataset("synthetic", train=False, classes=[3, 1], img_size=8, in_chans=3)
    >>> ds.images.shape, ds.class_names
    (torch.Size([100, 3, 8, 8]), ('class3', 'class1'))
"""

from __future__ import annotations

from collections.abc import Sequence

from sfp_ray.data.catalog import canonical, dataset_num_classes
from sfp_ray.data.core import (
    ArrayDataset,
    convert_channels,
    resize,
    select_classes,
    stratified_sample,
)
from sfp_ray.data.idx import FASHION_MNIST_CLASSES
from sfp_ray.data.paths import (
    _TORCHVISION_DATASETS,
    DEFAULT_SEARCH_DIRS,
    DEFAULT_TORCHVISION_ROOT,
    ENV_DATA_ROOT,
    dataset_search_path,
)
from sfp_ray.data.registry import _REGISTRY, Loader, list_datasets, register_dataset

# the built-in loaders register themselves when their modules are imported (idx above: fashion-mnist)
from sfp_ray.data.small import _load_digits, _load_synthetic  # noqa: F401
from sfp_ray.data.torchvision_sets import fetch_torchvision
from sfp_ray.errors import ConfigError

__all__ = [
    "DEFAULT_SEARCH_DIRS",
    "DEFAULT_TORCHVISION_ROOT",
    "ENV_DATA_ROOT",
    "FASHION_MNIST_CLASSES",
    "Loader",
    "adapt",
    "dataset_num_classes",
    "dataset_search_path",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]


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
    download: bool = False,
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
        download: For ``cifar10``, ``cifar100`` and ``svhn``: fetch the split into its
            torchvision root first when it is missing (:func:`fetch_torchvision`).

    Returns:
        The dataset, images normalised to ``[-1, 1]`` as described in the module docstring.

    Raises:
        ConfigError: Unknown ``name`` (``data.name``), bad ``classes`` (``data.classes``),
            bad ``img_size`` (``model.img_size``), bad ``in_chans`` (``model.in_chans``) or
            bad ``max_samples`` (``data.max_samples``).
        DataError: The dataset's files cannot be found or read.
    """
    key = canonical(str(name))
    if key not in _REGISTRY:
        raise ConfigError(
            f"data.name: unknown dataset {name!r}; registered datasets: "
            f"{', '.join(list_datasets())}"
        )
    _check_shape(img_size, in_chans)
    bad_max = max_samples is not None and (
        isinstance(max_samples, bool) or int(max_samples) != max_samples or max_samples < 1
    )
    if bad_max:
        raise ConfigError(f"data.max_samples: must be a positive integer, got {max_samples!r}")

    if download and key in _TORCHVISION_DATASETS:
        fetch_torchvision(key, root, bool(train))
    ds = _REGISTRY[key](root, bool(train), int(seed))

    if classes is not None:
        ds = select_classes(ds, classes)
    if max_samples is not None and int(max_samples) < len(ds):
        ds = ds.subset(stratified_sample(ds.labels.numpy(), int(max_samples), int(seed)))
    return adapt(ds, img_size=img_size, in_chans=in_chans)


def _check_shape(img_size: int | None, in_chans: int | None) -> None:
    if in_chans is not None and in_chans not in (1, 3):
        raise ConfigError(f"model.in_chans: must be 1 or 3, got {in_chans!r}")
    if img_size is not None and (isinstance(img_size, bool) or int(img_size) != img_size or img_size < 1):
        raise ConfigError(f"model.img_size: must be a positive integer, got {img_size!r}")


def adapt(ds: ArrayDataset, *, img_size: int | None = None, in_chans: int | None = None) -> ArrayDataset:
    """``ds`` with its images resized to ``img_size`` and converted to ``in_chans`` channels, in place.

    The last two steps of :func:`load_dataset`, for a caller that first keeps only the samples
    it uses (each image is adapted on its own, so adapting a subset gives the same images):
    at 224 px a float32 image of 3 channels takes 588 KiB, 35 GiB for Fashion-MNIST's 60,000.

    Example:
        >>> adapt(load_dataset("synthetic", train=False, max_samples=4), img_size=8, in_chans=3).images.shape
        torch.Size([4, 3, 8, 8])
    """
    _check_shape(img_size, in_chans)
    if img_size is not None:
        ds.images = resize(ds.images, int(img_size))
    if in_chans is not None:
        ds.images = convert_channels(ds.images, int(in_chans), ds.name)
    return ds
