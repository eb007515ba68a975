"""What each registered dataset is, without loading it or importing torch.

``sfp-ray datasets`` prints this table, and the checks before a run look ``data.name`` and
``data.classes`` up here in a fraction of a second. The loaders themselves are registered in
:mod:`sfp_ray.data.registry` (:func:`~sfp_ray.data.registry.register_dataset` adds an entry
here too).
"""

from __future__ import annotations

from dataclasses import dataclass

from sfp_ray.errors import ConfigError


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset: its canonical name, class count (None: unknown until loaded) and one line."""

    name: str
    num_classes: int | None = None
    description: str = ""


BUILTIN: tuple[DatasetInfo, ...] = (
    DatasetInfo("cifar10", 10, "CIFAR-10: 32x32 colour photos, 50,000 train / 10,000 test; read from a local "
                               "torchvision root (data.root, $SFP_DATA_ROOT or ./data), never downloaded"),
    DatasetInfo("cifar100", 100, "CIFAR-100: 32x32 colour photos, 50,000 train / 10,000 test; from a local "
                                 "torchvision root, like cifar10"),
    DatasetInfo("digits", 10, "scikit-learn's 8x8 grey handwritten digits, 1,797 images split 80/20 (fixed); "
                              "ships with scikit-learn"),
    DatasetInfo("fashion-mnist", 10, "Fashion-MNIST: 28x28 grey clothing images, 60,000 train / 10,000 test; idx "
                                     "files from the Debian package dataset-fashion-mnist or data.root (default)"),
    DatasetInfo("svhn", 10, "SVHN: 32x32 colour house-number digits, 73,257 train / 26,032 test; from a local "
                            "torchvision root, like cifar10"),
    DatasetInfo("synthetic", 10, "generated 28x28 grey class templates plus noise, 2,000 train / 500 test; "
                                 "deterministic from the seed, needs no files (tests)"),
)

_INFO: dict[str, DatasetInfo] = {d.name: d for d in BUILTIN}


def canonical(name: str) -> str:
    """Dataset names are case-insensitive and ``_`` stands for ``-``.

    Example:
        >>> canonical(" Fashion_MNIST ")
        'fashion-mnist'
    """
    return name.strip().lower().replace("_", "-")


def record(name: str, num_classes: int | None = None, description: str | None = None) -> None:
    """Add (or update) the entry of dataset ``name``; an update keeps what it does not give."""
    key = canonical(name)
    old = _INFO.get(key, DatasetInfo(key))
    _INFO[key] = DatasetInfo(key, int(num_classes) if num_classes is not None else old.num_classes,
                             description if description is not None else old.description)


def dataset_names() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(_INFO)


def dataset_info(name: str) -> DatasetInfo:
    """The entry of dataset ``name``; an unknown name is a ConfigError naming ``data.name`` and the registered ones.

    Example:
        >>> dataset_info("FASHION_MNIST").num_classes
        10
        >>> dataset_info("mnist")
        Traceback (most recent call last):
        ...
        sfp_ray.errors.ConfigError: data.name: unknown dataset 'mnist'; registered datasets: cifar10, cifar100, \
digits, fashion-mnist, svhn, synthetic
    """
    info = _INFO.get(canonical(str(name)))
    if info is None:
        raise ConfigError(f"data.name: unknown dataset {name!r}; registered datasets: {', '.join(dataset_names())}")
    return info


def dataset_num_classes(name: str) -> int | None:
    """Classes of a registered dataset without loading it (None when unknown or not said).

    Example:
        >>> dataset_num_classes("cifar100"), dataset_num_classes("fashion-mnist")
        (100, 10)
    """
    info = _INFO.get(canonical(str(name)))
    return info.num_classes if info is not None else None


__all__ = ["BUILTIN", "DatasetInfo", "canonical", "dataset_info", "dataset_names", "dataset_num_classes", "record"]
