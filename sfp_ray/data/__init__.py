"""Datasets and client partitions for the split-federated-learning simulator.

A lower layer: of sfp-ray it imports only :mod:`sfp_ray.errors` (:mod:`sfp_ray.config` is
the only other module it would be allowed), and it never imports Ray. Its parts:

* :mod:`sfp_ray.data.core`: :class:`ArrayDataset`, the in-memory container, and the
  array transforms shared by all loaders (normalisation to ``[-1, 1]``, class
  selection, stratified sub-sampling, resizing, channel conversion).
* :mod:`sfp_ray.data.sources`: :func:`load_dataset`, which looks a name up in the dataset
  registry (:mod:`sfp_ray.data.registry`), calls its raw loader and adapts the result;
  importing it registers the built-in loaders: Fashion-MNIST idx files
  (:mod:`sfp_ray.data.idx`), scikit-learn digits and synthetic data
  (:mod:`sfp_ray.data.small`), CIFAR-10/100 and SVHN from a local torchvision root
  (:mod:`sfp_ray.data.torchvision_sets`). Where their files are looked for:
  :mod:`sfp_ray.data.paths`.
* :mod:`sfp_ray.data.partitioning`: :func:`partition` (``iid``, ``dirichlet``,
  ``shards``, with a minimum-samples repair) and :func:`label_skew`.

* :mod:`sfp_ray.data.catalog`: what each registered dataset is (class count, one line of
  description), without torch: ``sfp-ray datasets`` and the checks before a run read it.

The names below are re-exported so that ``from sfp_ray.data import X`` works for every
public ``X``; they are imported on first use (PEP 562), so that the catalogue can be read
without loading torch. Module-level settings (such as ``DEFAULT_SEARCH_DIRS``) are read where
they are defined: patch them on the submodule that defines them (:mod:`sfp_ray.data.paths`), not
on this package.

Example:
    >>> from sfp_ray.data import load_dataset, partition
    >>> ds = load_dataset("synthetic", train=False)
    >>> parts = partition(ds.labels, num_clients=4, scheme="dirichlet", alpha=0.5, seed=0)
    >>> sum(len(p) for p in parts) == len(ds)
    True
"""

from __future__ import annotations

from sfp_ray.lazy import lazy_exports

#: Re-exported names and the submodule that defines each (imported on first use).
_EXPORTS = {
    ".core": ("ArrayDataset", "NORM_MEAN", "NORM_STD"),
    ".partitioning": ("PARTITION_SCHEMES", "label_skew", "partition"),
    # through .sources, which registers the built-in loaders when imported
    ".sources": ("DEFAULT_SEARCH_DIRS", "DEFAULT_TORCHVISION_ROOT", "ENV_DATA_ROOT", "FASHION_MNIST_CLASSES", "Loader",
                 "adapt", "dataset_search_path", "list_datasets", "load_dataset", "register_dataset"),
    ".catalog": ("DatasetInfo", "dataset_info", "dataset_num_classes"),
}

__all__ = sorted(n for names in _EXPORTS.values() for n in names)
__getattr__ = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return __all__
