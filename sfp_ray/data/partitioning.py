"""Client partitioners: split a dataset's sample indices among federated clients.

:func:`partition` implements three schemes, all deterministic given ``seed``:

* ``iid``: a seeded random permutation cut into near-equal parts.
* ``dirichlet``: label skew from per-class client proportions drawn from a symmetric
  Dirichlet distribution, as introduced by Hsu, Qi and Brown, "Measuring the Effects of
  Non-Identical Data Distribution for Federated Visual Classification" (2019,
  arXiv:1909.06335). Smaller ``alpha`` gives more skew.
* ``shards``: sort by label, cut into shards and deal a few shards to each client, the
  pathological non-IID split of McMahan et al., "Communication-Efficient Learning of Deep
  Networks from Decentralized Data" (AISTATS 2017).

A repair step then guarantees every client at least ``min_samples`` samples.
:func:`label_skew` measures how far clients' label distributions are from the global one
(mean total-variation distance).

Example:
    >>> import numpy as np
    >>> labels = np.array([0, 0, 0, 1, 1, 1])
    >>> [p.tolist() for p in partition(labels, 2, "shards", shards_per_client=1, seed=0)]
    [[3, 4, 5], [0, 1, 2]]
    >>> label_skew([[0, 1, 2], [3, 4, 5]], labels, num_classes=2)
    0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from sfp_ray.errors import ConfigError

__all__ = ["PARTITION_SCHEMES", "label_skew", "partition"]

PARTITION_SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "shards")


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
      ``K`` clients; that class's (shuffled) indices are cut at ``cumsum(p) * n_c``
      (Hsu et al., 2019). Smaller ``alpha`` gives more label skew.
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
    """Per class: shuffle its indices, draw ``p ~ Dir(alpha * 1_k)``, cut at ``cumsum(p)``."""
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
    """Label-sorted indices cut into ``k * per_client`` shards, dealt out in random order."""
    shuffled = rng.permutation(y.shape[0])
    order = shuffled[np.argsort(y[shuffled], kind="stable")]
    num_shards = k * per_client
    shards = np.array_split(order, num_shards)
    owner = rng.permutation(num_shards).reshape(k, per_client)
    return [np.concatenate([shards[s] for s in owner[c]]) for c in range(k)]


def _repair_min_samples(parts: list[np.ndarray], minimum: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Moves single samples from the largest client to short ones (rule in :func:`partition`)."""
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
