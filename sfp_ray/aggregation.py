"""Sample-count-weighted federated averaging (FedAvg, McMahan et al., AISTATS 2017).

States are name -> tensor mappings. Each key is averaged over the clients that hold it,
weighted by their sample counts, so clients with different cuts (different tail blocks)
can be averaged by parameter name. Clients are processed in ascending client-id order so
that the completion order of a parallel round never changes a float sum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from sfp_ray.tensors import as_view

Tensorish = torch.Tensor | np.ndarray


def fedavg(
    states: Sequence[Mapping[str, Tensorish]],
    weights: Sequence[float],
    client_ids: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Weighted average of states, key by key over the clients that hold the key.

    Args:
        states: one mapping per client.
        weights: non-negative weights (sample counts), one per client.
        client_ids: if given, states are summed in ascending id order.

    Returns:
        name -> float tensor (the dtype of the first state holding the key).

    Example:
        >>> a = {"w": torch.tensor([1.0, 2.0])}
        >>> b = {"w": torch.tensor([4.0, 8.0])}
        >>> fedavg([a, b], [1, 2])["w"]  # (1*[1,2] + 2*[4,8]) / 3
        tensor([3., 6.])
    """
    if len(states) != len(weights):
        raise ValueError(f"fedavg: {len(states)} states but {len(weights)} weights")
    if not states:
        raise ValueError("fedavg: no client states to average")
    if any(w < 0 for w in weights):
        raise ValueError(f"fedavg: weights must be >= 0, got {list(weights)}")
    order = list(range(len(states)))
    if client_ids is not None:
        order.sort(key=lambda i: client_ids[i])
    keys: list[str] = []
    seen = set()
    for i in order:
        for k in states[i]:
            if k not in seen:
                seen.add(k)
                keys.append(k)
    out: dict[str, torch.Tensor] = {}
    for k in keys:
        total = 0.0
        acc: torch.Tensor | None = None
        dtype = None
        for i in order:
            if k not in states[i]:
                continue
            v = states[i][k]
            t = as_view(v)
            dtype = dtype or t.dtype
            w = float(weights[i])
            term = t.detach().to(torch.float64) * w
            acc = term if acc is None else acc + term
            total += w
        if acc is None or total <= 0:
            raise ValueError(f"fedavg: key {k!r} has zero total weight")
        out[k] = (acc / total).to(dtype if dtype is not None and dtype.is_floating_point else torch.float32)
    return out
