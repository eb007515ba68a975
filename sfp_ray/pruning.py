"""EL2N data pruning (Paul, Ganguli, Dziugaite, NeurIPS 2021), as used by SFPrompt.

The EL2N score of a sample is the L2 norm of the error vector
``softmax(f(x)) - onehot(y)``. SFPrompt (Cao et al., arXiv 2407.17533, §4.2) scores every
local sample with the client's own head and tail (body bypassed) and keeps a fraction
``keep_ratio`` of them; the literal reading keeps the hardest (highest-scoring) ones.

The selection rules are pure functions of (scores, labels, keep ratio, parameters) that
return the kept indices sorted ascending; :func:`select` dispatches on the policy name
(``pruning.policy``):

========== ===============================================================================
policy     keeps
========== ===============================================================================
hardest    the highest scores (the literal reading of the paper)
easiest    the lowest scores (Sorscher et al. 2022: favoured when data are scarce)
random     a seeded uniform draw (the control; scores are not used)
========== ===============================================================================

Two parameters apply to every policy:

* ``per_class`` (``pruning.per_class``): under label skew, split the kept count into class
  quotas proportional to the class sizes (:func:`class_quotas`) and apply the rule inside
  each class, so the kept set has the client's label mix;
* ``skip_top`` (``pruning.skip_top``): first set aside that fraction of the highest scores
  (Paul et al.'s offset: the top EL2N samples are often noisy or mislabeled), within each
  class when ``per_class``; never so many that fewer than the kept count remain.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Policy = Literal["hardest", "easiest", "random"]
POLICIES: tuple[str, ...] = ("hardest", "easiest", "random")


def el2n_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``||softmax(logits) - onehot(labels)||_2`` per row.

    Example:
        >>> el2n_scores(torch.tensor([[0.0, 0.0]]), torch.tensor([0]))  # p = (.5, .5)
        tensor([0.7071])
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"el2n_scores: logits (N, C) and labels (N,) expected, got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(labels.long(), num_classes=logits.shape[1]).to(probs.dtype)
    return torch.linalg.vector_norm(probs - onehot, dim=1)


def keep_count(n: int, keep_ratio: float) -> int:
    """Samples kept from ``n``: ``ceil(keep_ratio * n)``, at least 1 when ``n > 0``.

    Example:
        >>> keep_count(10, 0.25), keep_count(3, 0.01), keep_count(0, 0.5)
        (3, 1, 0)
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"pruning.keep_ratio: must be in (0, 1], got {keep_ratio}")
    if n <= 0:
        return 0
    return max(1, min(n, math.ceil(keep_ratio * n - 1e-9)))


def _skip_count(n: int, k: int, skip_top: float) -> int:
    """How many of the ``n`` highest scores to set aside: ``floor(skip_top * n)``, at most ``n - k``."""
    if not 0.0 <= skip_top < 1.0:
        raise ValueError(f"pruning.skip_top: must be in [0, 1), got {skip_top}")
    return max(0, min(n - k, math.floor(skip_top * n + 1e-9)))


def _descending(scores: torch.Tensor) -> torch.Tensor:
    """Positions by score, highest first; ties keep lower positions first."""
    return torch.argsort(-scores.double(), stable=True)


def _ascending(scores: torch.Tensor) -> torch.Tensor:
    """Positions by score, lowest first; ties keep lower positions first."""
    return torch.argsort(scores.double(), stable=True)


def _pick(scores: torch.Tensor, k: int, policy: str, skip_top: float, rng: np.random.Generator) -> torch.Tensor:
    """Positions (unsorted) of the ``k`` samples the rule keeps among ``scores``."""
    n = scores.numel()
    if k <= 0 or n == 0:
        return torch.empty(0, dtype=torch.long)
    skip = _skip_count(n, k, skip_top)
    candidates = _descending(scores)[skip:]  # the top `skip` set aside
    if policy == "hardest":
        return candidates[:k]
    if policy == "easiest":
        return candidates[_ascending(scores[candidates])[:k]]
    if policy == "random":
        pool = torch.sort(candidates).values  # by position: without skip_top the draw ignores the scores
        return pool[torch.from_numpy(rng.permutation(pool.numel())[:k])]
    raise ValueError(f"pruning.policy: got {policy!r}, allowed: {', '.join(repr(p) for p in POLICIES)}")


def class_quotas(labels: torch.Tensor | np.ndarray, k: int) -> dict[int, int]:
    """Split ``k`` kept samples among the classes of ``labels`` in proportion to their sizes.

    Largest-remainder (Hamilton) rounding: every class first gets ``floor(k * n_c / n)``;
    the samples still missing go, one each, to the classes with the largest remainders
    ``k * n_c / n - floor(...)``, ties to the larger class, then to the smaller label.
    The quotas sum to ``k`` and never exceed a class's size.

    Example:
        >>> class_quotas(torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 2]), 5)  # 3 + 1.5 + 0.5
        {0: 3, 1: 2, 2: 0}
    """
    y = torch.as_tensor(labels).reshape(-1).long()
    n = y.numel()
    if not 0 <= k <= n:
        raise ValueError(f"class_quotas: k must be in [0, {n}], got {k}")
    classes, sizes = torch.unique(y, return_counts=True)
    quotas = {int(c): (k * int(s)) // n for c, s in zip(classes, sizes)}
    remainders = sorted(((k * int(s)) % n, int(s), -int(c)) for c, s in zip(classes, sizes))
    for _ in range(k - sum(quotas.values())):
        _, _, neg_c = remainders.pop()
        quotas[-neg_c] += 1
    return quotas


def select(scores: torch.Tensor, labels: torch.Tensor | None, keep_ratio: float, policy: str = "hardest", *,
           per_class: bool = False, skip_top: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Indices (sorted ascending) of the ``keep_count(n, keep_ratio)`` samples ``policy`` keeps.

    Args:
        scores: EL2N score of every sample, shape ``(n,)`` (ignored by ``random`` except for
            ``skip_top``).
        labels: label of every sample (needed when ``per_class``).
        keep_ratio: fraction kept, in ``(0, 1]``.
        policy: ``hardest``, ``easiest`` or ``random`` (see the module docstring).
        per_class: class quotas proportional to the class sizes (:func:`class_quotas`),
            the rule applied within each class.
        skip_top: fraction of the highest scores set aside first (per class when ``per_class``).
        seed: seed of ``random``.

    Examples:
        >>> s = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.3, 0.2])
        >>> select(s, None, 0.5, "hardest"), select(s, None, 0.5, "easiest")
        (tensor([0, 2, 3]), tensor([1, 4, 5]))
        >>> select(s, None, 0.5, "hardest", skip_top=0.2)  # 0.9 set aside (floor(0.2 * 6) = 1)
        tensor([2, 3, 4])
        >>> y = torch.tensor([0, 0, 0, 0, 1, 1])  # quotas of 3: 2 of class 0, 1 of class 1
        >>> select(s, y, 0.5, "hardest", per_class=True), select(s, y, 0.5, "easiest", per_class=True)
        (tensor([0, 3, 4]), tensor([1, 2, 5]))
    """
    scores = torch.as_tensor(scores).reshape(-1)
    n = scores.numel()
    k = keep_count(n, keep_ratio)
    rng = np.random.default_rng(seed)
    if not per_class:
        kept = _pick(scores, k, policy, skip_top, rng)
    else:
        if labels is None:
            raise ValueError("select: per_class needs labels")
        y = torch.as_tensor(labels).reshape(-1).long()
        if y.numel() != n:
            raise ValueError(f"select: {n} scores but {y.numel()} labels")
        parts = []
        for c, q in class_quotas(y, k).items():
            members = torch.nonzero(y == c).reshape(-1)
            parts.append(members[_pick(scores[members], q, policy, skip_top, rng)])
        kept = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
    return torch.sort(kept).values


def select_hardest(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Indices (sorted ascending) of the ``keep_count`` highest scores; ties keep lower indices.

    Example:
        >>> select_hardest(torch.tensor([0.1, 0.9, 0.5, 0.7]), 0.5)
        tensor([1, 3])
    """
    return select(scores, None, keep_ratio, "hardest")
