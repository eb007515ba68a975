"""Datasets and client partitions for the split-federated-learning simulator.

A lower layer: of sfp-ray it imports only :mod:`sfp_ray.errors` (:mod:`sfp_ray.config` is
the only other module it would be allowed), and it never imports Ray. Its parts:

* :mod:`sfp_ray.data.core`: :class:`ArrayDataset`, the in-memory container, and the
  array transforms shared by all loaders (normalisation to ``[-1, 1]``, class
  selection, stratified sub-sampling, resizing, channel conversion).
* :mod:`sfp_ray.data.sources`: the dataset registry, the raw loaders (Fashion-MNIST idx
  files, scikit-learn digits, synthetic data, CIFAR-10/100 and SVHN from a local
  torchvision root), :func:`load_dataset` and the file search path.
* :mod:`sfp_ray.data.partitioning`: :func:`partition` (``iid``, ``dirichlet``,
  ``shards``, with a minimum-samples repair) and :func:`label_skew`.

The names below are re-exported so that ``from sfp_ray.data import X`` works for every
public ``X``. Module-level settings (such as ``DEFAULT_SEARCH_DIRS``) are read where
they are defined: patch them on the submodule, not on this package.

Example:
    >>> from sfp_ray.data import load_dataset, partition
    >>> ds = load_dataset("synthetic", train=False)
    >>> parts = partition(ds.labels, num_clients=4, scheme="dirichlet", alpha=0.5, seed=0)
    >>> sum(len(p) for p in parts) == len(ds)
    True
"""

from __future__ import annotations

from sfp_ray.data.core import NORM_MEAN, NORM_STD, ArrayDataset
from sfp_ray.data.partitioning import PARTITION_SCHEMES, label_skew, partition
from sfp_ray.data.sources import (
    DEFAULT_SEARCH_DIRS,
    DEFAULT_TORCHVISION_ROOT,
    ENV_DATA_ROOT,
    FASHION_MNIST_CLASSES,
    Loader,
    dataset_num_classes,
    dataset_search_path,
    list_datasets,
    load_dataset,
    register_dataset,
)

__all__ = [
    "ArrayDataset",
    "DEFAULT_SEARCH_DIRS",
    "DEFAULT_TORCHVISION_ROOT",
    "ENV_DATA_ROOT",
    "FASHION_MNIST_CLASSES",
    "Loader",
    "NORM_MEAN",
    "NORM_STD",
    "PARTITION_SCHEMES",
    "dataset_num_classes",
    "dataset_search_path",
    "label_skew",
    "list_datasets",
    "load_dataset",
    "partition",
    "register_dataset",
]
