"""Dataset sources: the name registry, the raw loaders and where their files are looked for.

:func:`load_dataset` is the entry point: it looks a name up in the registry
(:func:`register_dataset`, :func:`list_datasets`), calls the raw loader, then adapts the
result with the transforms of :mod:`sfp_ray.data.core` (class selection, stratified
sub-sampling, resizing, channel conversion). Built-in entries:

* ``fashion-mnist``: Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
  Benchmarking Machine Learning Algorithms" (2017, arXiv:1708.07747). Read from the
  original idx files with the parser below (no download). The idx format is the one
  described on the MNIST database page (LeCun, Cortes and Burges): a big-endian header
  ``0x00 0x00 <dtype> <ndim>`` followed by ``ndim`` big-endian ``uint32`` sizes, then
  the data in C order. Damaged files raise :class:`~sfp_ray.errors.DataError` naming the
  file and the fault (empty, not gzip, corrupt or truncated, bad magic number, trailing
  bytes, images not 28x28, images and labels disagreeing).
* ``digits``: scikit-learn's bundled 8x8 digits (a copy of the UCI "Optical Recognition
  of Handwritten Digits" test set, Alpaydin and Kaynak 1998), with a fixed 80/20 split.
* ``synthetic``: generated, learnable 28x28 data for tests; deterministic from ``seed``.
* ``cifar10``, ``cifar100`` (Krizhevsky, "Learning Multiple Layers of Features from Tiny
  Images", 2009) and ``svhn`` (Netzer et al., "Reading Digits in Natural Images with
  Unsupervised Feature Learning", 2011): read from a local torchvision root
  (``download=False``; nothing is ever downloaded at run time).

Where files are looked for is given by :func:`dataset_search_path`: ``data.root``, then
``$SFP_DATA_ROOT`` (:data:`ENV_DATA_ROOT`), then :data:`DEFAULT_SEARCH_DIRS`. Patch those
constants here, on this module, not on the :mod:`sfp_ray.data` package.

Example:
    >>> "synthetic" in list_datasets()
    True
    >>> ds = load_dataset("synthetic", train=False, classes=[3, 1], img_size=8, in_chans=3)
    >>> ds.images.shape, ds.class_names
    (torch.Size([100, 3, 8, 8]), ('class3', 'class1'))
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from sfp_ray.data.catalog import canonical, dataset_num_classes, record
from sfp_ray.data.core import (
    ArrayDataset,
    convert_channels,
    normalise,
    resize,
    select_classes,
    stratified_sample,
)
from sfp_ray.errors import ConfigError, DataError

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

_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_IDX_KINDS = {_IDX_IMAGES_MAGIC: "an images file (3-D)", _IDX_LABELS_MAGIC: "a labels file (1-D)"}
_GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK = 1 << 20
_FMNIST_SIZE = 28

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


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

Loader = Callable[[str | None, bool, int], ArrayDataset]
"""A raw loader: ``fn(root, train, seed) -> ArrayDataset`` (native size/channels, all classes)."""

_REGISTRY: dict[str, Loader] = {}


def register_dataset(name: str, num_classes: int | None = None,
                     description: str | None = None) -> Callable[[Loader], Loader]:
    """Registers a raw dataset loader under ``name``.

    Use as a decorator. The loader is called as ``fn(root, train, seed)`` and must return
    an :class:`ArrayDataset` at its native size and channel count, with all classes.
    Names are case-insensitive and ``_`` is treated as ``-``; registering a name again
    replaces the earlier loader.

    Args:
        name: Dataset name, e.g. ``"fashion-mnist"``.
        num_classes: how many classes the dataset has, when known without loading it
            (cost projections and the checks before a run use it; see :func:`dataset_num_classes`).
        description: one line for ``sfp-ray datasets`` (the built-in ones are in
            :mod:`sfp_ray.data.catalog`).

    Returns:
        A decorator that registers the function and returns it unchanged.
    """
    key = canonical(name)
    if not key:
        raise ConfigError("data.name: a dataset name must not be empty")

    def decorator(fn: Loader) -> Loader:
        _REGISTRY[key] = fn
        record(key, num_classes, description)
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
    key = canonical(str(name))
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

    The file is read in bounded chunks, so a header claiming absurd dimensions costs no
    more memory than the data actually present.

    Args:
        path: File to read; a ``.gz`` suffix means gzip.
        expected_magic: ``0x00000803`` for images, ``0x00000801`` for labels.

    Returns:
        A ``uint8`` array with the dimensions given in the header.

    Raises:
        DataError: With a one-line message naming ``path`` and the fault: the file cannot
            be opened, is empty, has a ``.gz`` name but is not gzip, is corrupt or cut short
            gzip, has the wrong magic number, is truncated, has trailing bytes, or declares
            dimensions that cannot form an array.
    """
    where = f"idx file {path}"
    compressed = path.suffix == ".gz"
    try:
        with path.open("rb") as raw:
            lead = raw.read(len(_GZIP_MAGIC))
            if not lead:
                raise DataError(f"{where} is empty (0 bytes)")
            if not compressed:
                raw.seek(0)
                return _parse_idx(raw, where, expected_magic, compressed=False)
            if lead != _GZIP_MAGIC:
                if _GZIP_MAGIC.startswith(lead):
                    raise DataError(f"{where} is truncated: only {len(lead)} byte(s), not even a gzip header")
                raise DataError(
                    f"{where} has a .gz name but is not gzip-compressed (it starts with bytes "
                    f"0x{lead.hex()}, gzip starts with 0x{_GZIP_MAGIC.hex()}); if it is a plain "
                    f"idx file, drop the .gz suffix"
                )
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as fh:
                return _parse_idx(fh, where, expected_magic, compressed=True)
    except EOFError as exc:
        raise DataError(f"{where} is truncated: the gzip stream ends early ({exc})") from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{where} is corrupt: its gzip data cannot be decompressed ({exc})") from exc
    except OSError as exc:
        raise DataError(f"cannot read {where}: {exc.strerror or exc}") from exc


def _parse_idx(fh: BinaryIO, where: str, expected_magic: int, *, compressed: bool) -> np.ndarray:
    """Parses an open idx stream positioned at its first byte (see :func:`_read_idx`)."""
    got = " after decompression" if compressed else ""
    head = _read_up_to(fh, 4)
    if len(head) < 4:
        raise DataError(f"{where} is truncated: {len(head)} byte(s){got}, too short for the 4-byte magic number")
    (magic,) = struct.unpack(">I", head)
    if magic != expected_magic:
        if magic in _IDX_KINDS:
            hint = f"it is {_IDX_KINDS[magic]} where {_IDX_KINDS[expected_magic]} was expected; are files swapped?"
        elif not compressed and head[:2] == _GZIP_MAGIC:
            hint = "it looks gzip-compressed; give it a .gz suffix"
        else:
            hint = "the file is corrupt or not an idx file"
        raise DataError(
            f"{where} has bad magic number 0x{magic:08x} (expected 0x{expected_magic:08x}); {hint}"
        )
    ndim = expected_magic & 0xFF
    header = 4 + 4 * ndim
    dims_raw = _read_up_to(fh, 4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DataError(f"{where} is truncated: header needs {header} bytes, got {4 + len(dims_raw)}{got}")
    dims = struct.unpack(f">{ndim}I", dims_raw)
    count = math.prod(dims)
    payload = _read_up_to(fh, count)
    if len(payload) < count:
        raise DataError(
            f"{where} is truncated: dims {dims} need {header + count} bytes, got {header + len(payload)}{got}"
        )
    extra = _count_rest(fh)
    if extra:
        raise DataError(
            f"{where} has {extra} unexpected trailing bytes: dims {dims} need {header + count} bytes, "
            f"got {header + count + extra}{got}"
        )
    try:
        return np.frombuffer(payload, dtype=np.uint8).reshape(dims)
    except ValueError as exc:
        raise DataError(f"{where} declares dims {dims}, which cannot form an array ({exc})") from exc


def _read_up_to(fh: BinaryIO, n: int) -> bytearray:
    """Reads ``n`` bytes from ``fh`` in bounded chunks; fewer only if the stream ends first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = fh.read(min(_READ_CHUNK, n - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _count_rest(fh: BinaryIO) -> int:
    """Reads ``fh`` to its end (which makes gzip check its CRC) and returns the bytes left."""
    total = 0
    while chunk := fh.read(_READ_CHUNK):
        total += len(chunk)
    return total


@register_dataset("fashion-mnist", num_classes=10)
def _load_fashion_mnist(root: str | None, train: bool, seed: int) -> ArrayDataset:
    """Loads Fashion-MNIST from idx files found on :func:`dataset_search_path`.

    Args:
        root: The ``data.root`` setting, or ``None``.
        train: Load ``train-*`` files if true, else ``t10k-*``.
        seed: Unused.

    Returns:
        ``1x28x28`` images with 10 classes.

    Raises:
        DataError: No searched directory holds both files of the split; a file is damaged
            (see :func:`_read_idx`); the images are not 28x28; the two files disagree on
            the number of samples; or a label is outside ``0..9``.
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
        if images.shape[1:] != (_FMNIST_SIZE, _FMNIST_SIZE):
            raise DataError(
                f"Fashion-MNIST images in {img_path} are {images.shape[1]}x{images.shape[2]}; "
                f"expected {_FMNIST_SIZE}x{_FMNIST_SIZE}"
            )
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
            images=normalise(images[:, None, :, :]),
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


@register_dataset("digits", num_classes=10)
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
        images=normalise(images[idx, None, :, :].astype(np.float32)),
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


@register_dataset("synthetic", num_classes=_SYNTH_CLASSES)
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
        images=normalise(images[:, None, :, :]),
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


def fetch_torchvision(name: str, root: str | None, train: bool) -> Path:
    """Fetch a torchvision dataset's split into its root (``data.download``); return the root.

    torchvision checks the files it finds first and downloads only what is missing or
    corrupt, so a present dataset costs a checksum.

    Raises:
        DataError: the download failed (no internet, a full disk), with the root and the cause.
    """
    import torchvision

    base = _torchvision_root(root)
    try:
        base.mkdir(parents=True, exist_ok=True)
        if name == "svhn":
            torchvision.datasets.SVHN(str(base), split="train" if train else "test", download=True)
        else:
            cls = torchvision.datasets.CIFAR100 if name == "cifar100" else torchvision.datasets.CIFAR10
            cls(str(base), train=train, download=True)
    except Exception as exc:  # noqa: BLE001 - URLError, OSError, a bad checksum: all the same user error
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"data.download: could not fetch {name} into {base} ({type(exc).__name__}: {first}); "
                        "without internet, put the torchvision-format files there and set data.download=false"
                        ) from None
    return base


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
        images=normalise(images),
        labels=torch.as_tensor(np.asarray(ds.targets, dtype=np.int64)),
        num_classes=100 if hundred else 10,
        name=name,
        class_names=tuple(ds.classes),
    )


@register_dataset("cifar10", num_classes=10)
def _load_cifar10(root: str | None, train: bool, seed: int) -> ArrayDataset:
    """Loads CIFAR-10 (``3x32x32``, 10 classes) from ``<root>/cifar-10-batches-py``.

    Raises:
        DataError: The files are absent or corrupt.
    """
    del seed
    return _load_cifar(root, train, hundred=False)


@register_dataset("cifar100", num_classes=100)
def _load_cifar100(root: str | None, train: bool, seed: int) -> ArrayDataset:
    """Loads CIFAR-100 (``3x32x32``, 100 classes) from ``<root>/cifar-100-python``.

    Raises:
        DataError: The files are absent or corrupt.
    """
    del seed
    return _load_cifar(root, train, hundred=True)


@register_dataset("svhn", num_classes=10)
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
        images=normalise(np.asarray(ds.data, dtype=np.uint8)),
        labels=torch.as_tensor(np.asarray(ds.labels, dtype=np.int64)),
        num_classes=10,
        name="svhn",
        class_names=tuple(str(d) for d in range(10)),
    )
