"""Sample-count-weighted federated averaging (FedAvg, McMahan et al., AISTATS 2017).

States are name -> array mappings. Each key is averaged over the clients that hold it,
weighted by their sample counts, so clients with different cuts (different tail blocks)
can be averaged by parameter name. Clients are processed in ascending client-id order so
that the completion order of a parallel round never changes a float sum.

The arithmetic is numpy (float64 accumulation, cast back to the state's dtype), so the Ray
aggregator actor averages without importing torch; :func:`fedavg` is the same average for
torch tensors and gives the same bits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def _order(n: int, weights: Sequence[float], client_ids: Sequence[int] | None) -> list[int]:
    if n != len(weights):
        raise ValueError(f"fedavg: {n} states but {len(weights)} weights")
    if not n:
        raise ValueError("fedavg: no client states to average")
    if any(w < 0 for w in weights):
        raise ValueError(f"fedavg: weights must be >= 0, got {list(weights)}")
    order = list(range(n))
    if client_ids is not None:
        order.sort(key=lambda i: client_ids[i])
    return order


def fedavg_arrays(states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float],
                  client_ids: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Weighted average of numpy states, key by key over the clients that hold the key.

    Args:
        states: one mapping per client (arrays are only read).
        weights: non-negative weights (sample counts), one per client.
        client_ids: if given, states are summed in ascending id order.

    Returns:
        name -> array of the dtype of the first state holding the key (float32 when that
        dtype is not floating).

    Example:
        >>> a = {"w": np.array([1.0, 2.0], dtype=np.float32)}
        >>> b = {"w": np.array([4.0, 8.0], dtype=np.float32)}
        >>> fedavg_arrays([a, b], [1, 2])["w"]  # (1*[1,2] + 2*[4,8]) / 3
        array([3., 6.], dtype=float32)
    """
    order = _order(len(states), weights, client_ids)
    keys = list(dict.fromkeys(k for i in order for k in states[i]))
    out: dict[str, np.ndarray] = {}
    for k in keys:
        total = 0.0
        acc: np.ndarray | None = None
        dtype = None
        for i in order:
            if k not in states[i]:
                continue
            v = np.asarray(states[i][k])
            if dtype is None:  # (a numpy dtype is falsy: no `or` here)
                dtype = v.dtype
            w = float(weights[i])
            term = v.astype(np.float64) * w
            acc = term if acc is None else acc + term
            total += w
        if acc is None or total <= 0:
            raise ValueError(f"fedavg: key {k!r} has zero total weight")
        out[k] = np.asarray(acc / total).astype(dtype if dtype is not None and dtype.kind == "f" else np.float32)
    return out


def aggregation_flops(states: Sequence[Mapping[str, Any]]) -> float:
    """FedAvg arithmetic: one multiply and one add per element per client (2 FLOPs).

    Example:
        >>> aggregation_flops([{"tail.w": np.zeros(3), "tail.b": np.zeros(2)}] * 2)
        20.0
    """
    return float(sum(2 * int(np.prod(np.shape(v))) for s in states for v in s.values()))


def average_parts(weights: Sequence[float], ids: Sequence[int], client: Sequence[Mapping[str, np.ndarray]],
                  server: Sequence[Mapping[str, np.ndarray]] | None,
                  previous: Mapping[str, np.ndarray] | None = None,
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, dict[str, float]]:
    """FedAvg of both parts of the clients' numpy states (``weights``: their sample counts).

    Returns ``(client part, server part or None, FLOPs per part)``; the server part's
    averaging is charged as part ``body`` (it is the body the server trains), the client
    part's as ``all``. ``previous`` (the global client part) supplies the names that no
    client holds (per-device cuts); they keep their values.

    Example:
        >>> a, b = {"t.w": np.float32([0.0, 4.0])}, {"t.w": np.float32([4.0, 8.0]), "t.v": np.float32([2.0])}
        >>> c, s, f = average_parts([1, 1], [0, 1], [a, b], None, {"t.w": np.float32([9, 9]), "t.u": np.float32([1])})
        >>> {k: v.tolist() for k, v in c.items()}, s, f
        ({'t.w': [2.0, 6.0], 't.u': [1.0], 't.v': [2.0]}, None, {'all': 10.0})
    """
    flops = {"all": aggregation_flops(client)}
    new_server = None
    if server is not None:
        new_server = fedavg_arrays(server, weights, ids)
        flops["body"] = aggregation_flops(server)
    new_client = fedavg_arrays(client, weights, ids)
    if previous is not None:
        new_client = {k: new_client[k] if k in new_client else np.array(v, copy=True) for k, v in previous.items()} | {
            k: v for k, v in new_client.items() if k not in previous}
    return new_client, new_server, flops


def to_arrays(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Name -> numpy array of a state of torch tensors or arrays (CPU views where possible).

    A tensor whose dtype numpy lacks (bfloat16) is widened to float32, exactly.
    """
    out = {}
    for k, v in state.items():
        if isinstance(v, np.ndarray):
            out[k] = v
            continue
        t = v.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        out[k] = t.numpy()
    return out


def fedavg(states: Sequence[Mapping[str, torch.Tensor | np.ndarray]], weights: Sequence[float],
           client_ids: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """:func:`fedavg_arrays` for states of torch tensors (or arrays); returns torch tensors.

    Each result has the dtype of the first state holding the key (float32 when that dtype
    is not floating).

    Example:
        >>> import torch
        >>> a = {"w": torch.tensor([1.0, 2.0])}
        >>> b = {"w": torch.tensor([4.0, 8.0])}
        >>> fedavg([a, b], [1, 2])["w"]  # (1*[1,2] + 2*[4,8]) / 3
        tensor([3., 6.])
    """
    import torch

    dtypes: dict[str, torch.dtype] = {}
    for i in _order(len(states), weights, client_ids):
        for k, v in states[i].items():
            if k not in dtypes:
                dt = v.dtype if isinstance(v, torch.Tensor) else torch.from_numpy(np.zeros(0, v.dtype)).dtype
                dtypes[k] = dt if dt.is_floating_point else torch.float32
    out = fedavg_arrays([to_arrays(s) for s in states], weights, client_ids)
    return {k: torch.from_numpy(v).to(dtypes[k]) for k, v in out.items()}


__all__ = ["aggregation_flops", "average_parts", "fedavg", "fedavg_arrays", "to_arrays"]
