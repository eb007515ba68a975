"""EL2N data pruning (Paul, Ganguli, Dziugaite, NeurIPS 2021), as used by SFPrompt.

The EL2N score of a sample is the L2 norm of the error vector
``softmax(f(x)) - onehot(y)``. SFPrompt (Cao et al., arXiv 2407.17533, §4.2) scores every
local sample with the client's own head and tail (body bypassed) and keeps the hardest
(highest-scoring) fraction ``keep_ratio``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


def select_hardest(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Indices (sorted ascending) of the ``keep_count`` highest scores; ties keep lower indices.

    Example:
        >>> select_hardest(torch.tensor([0.1, 0.9, 0.5, 0.7]), 0.5)
        tensor([1, 3])
    """
    k = keep_count(scores.numel(), keep_ratio)
    # stable descending order: sort by (-score, index)
    order = torch.argsort(-scores.double(), stable=True)
    return torch.sort(order[:k]).values
