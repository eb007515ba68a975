"""The small built-in datasets that need no files: scikit-learn's digits and generated synthetic data.

* ``digits``: scikit-learn's bundled 8x8 digits (a copy of the UCI "Optical Recognition
  of Handwritten Digits" test set, Alpaydin and Kaynak 1998), with a fixed 80/20 split.
* ``synthetic``: generated, learnable 28x28 data for tests; deterministic from ``seed``.
"""

from __future__ import annotations

import numpy as np
import torch

from sfp_ray.data.core import ArrayDataset, normalise
from sfp_ray.data.registry import register_dataset

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
