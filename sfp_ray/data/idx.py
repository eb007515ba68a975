"""Fashion-MNIST from its original idx files: the idx format (MNIST family) and the loader.

``fashion-mnist``: Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
Benchmarking Machine Learning Algorithms" (2017, arXiv:1708.07747). Read from the original idx
files with the parser below (no download), found on
:func:`~sfp_ray.data.paths.dataset_search_path`. The idx format is the one described on the
MNIST database page (LeCun, Cortes and Burges): a big-endian header ``0x00 0x00 <dtype> <ndim>``
followed by ``ndim`` big-endian ``uint32`` sizes, then the data in C order. Damaged files raise
:class:`~sfp_ray.errors.DataError` naming the file and the fault (empty, not gzip, corrupt or
truncated, bad magic number, trailing bytes, images not 28x28, images and labels disagreeing).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from sfp_ray.data.core import ArrayDataset, normalise
from sfp_ray.data.paths import dataset_search_path
from sfp_ray.data.registry import register_dataset
from sfp_ray.errors import DataError

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
