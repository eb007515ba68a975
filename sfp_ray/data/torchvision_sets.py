"""CIFAR-10, CIFAR-100 and SVHN from a local torchvision root (fetched only on request: ``data.download``).

``cifar10``, ``cifar100`` (Krizhevsky, "Learning Multiple Layers of Features from Tiny
Images", 2009) and ``svhn`` (Netzer et al., "Reading Digits in Natural Images with
Unsupervised Feature Learning", 2011): read from a local torchvision root
(:func:`~sfp_ray.data.paths.dataset_search_path`; ``download=False``: nothing is downloaded
at run time unless :func:`fetch_torchvision` is asked to).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from sfp_ray.data.core import ArrayDataset, normalise
from sfp_ray.data.paths import ENV_DATA_ROOT, _torchvision_root
from sfp_ray.data.registry import register_dataset
from sfp_ray.errors import DataError, first_line


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
        first = first_line(exc)
        raise DataError(f"data.download: could not fetch {name} into {base} ({type(exc).__name__}: {first}); "
                        "without internet, put the torchvision-format files there and set data.download=false"
                        ) from None
    return base


def _load_cifar(root: str | None, train: bool, seed: int, *, hundred: bool) -> ArrayDataset:
    """Loads CIFAR-10 (``<root>/cifar-10-batches-py``) or CIFAR-100 (``<root>/cifar-100-python``): ``3x32x32``.

    Raises:
        DataError: The files are absent or corrupt.
    """
    del seed
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


for _name, _hundred in (("cifar10", False), ("cifar100", True)):
    register_dataset(_name, num_classes=100 if _hundred else 10)(functools.partial(_load_cifar, hundred=_hundred))


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
