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


class StateSum:
    """A sample-weighted sum of client states, folded in one state at a time.

    Each name is summed in float64 over the states that hold it, with its own total weight,
    so clients of different cuts fold together; :meth:`average` divides and casts back to
    the dtype of the first state that held the name (float32 when that dtype is not
    floating). Folding states one after another in ascending client id gives exactly the
    float64 sums, hence the bits, of :func:`fedavg_arrays`; the sum holds two float32
    states' worth of memory (float64) whatever the number of clients. :meth:`merge` adds
    another sum (a per-node partial) into this one.

    Example:
        >>> s = StateSum()
        >>> s.add(1, {"w": np.float32([1, 2])}); s.add(2, {"w": np.float32([4, 8])})
        >>> s.average()["w"], s.clients, s.flops  # (1*[1,2] + 2*[4,8]) / 3
        (array([3., 6.], dtype=float32), 2, 8.0)
    """

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.weights: dict[str, float] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.clients = 0
        #: FedAvg arithmetic folded so far: one multiply and one add per element and client
        self.flops = 0.0

    def __len__(self) -> int:
        return len(self.sums)

    def add(self, weight: float, state: Mapping[str, Any]) -> None:
        """Fold one client's state (name -> array; only read) with its weight (a sample count)."""
        w = float(weight)
        if not w >= 0:
            raise ValueError(f"fedavg: weights must be >= 0, got {weight!r}")
        for k, v in state.items():
            a = np.asarray(v)
            term = a.astype(np.float64)
            term *= w
            acc = self.sums.get(k)
            if acc is None:
                self.sums[k] = term
                self.weights[k] = w
                self.dtypes[k] = a.dtype
            else:
                acc += term
                self.weights[k] += w
            self.flops += 2 * a.size
        self.clients += 1

    def merge(self, other: StateSum) -> None:
        """Add another sum into this one (its arrays are only read)."""
        for k, acc in other.sums.items():
            mine = self.sums.get(k)
            if mine is None:
                self.sums[k] = np.array(acc, dtype=np.float64, copy=True)
                self.weights[k] = other.weights[k]
                self.dtypes[k] = other.dtypes[k]
            else:
                mine += acc
                self.weights[k] += other.weights[k]
        self.clients += other.clients
        self.flops += other.flops

    def average(self, *, release: bool = False) -> dict[str, np.ndarray]:
        """Name -> weighted average; ``release`` frees each sum as soon as its average is made."""
        out: dict[str, np.ndarray] = {}
        for k in list(self.sums):
            total = self.weights[k]
            if total <= 0:
                raise ValueError(f"fedavg: key {k!r} has zero total weight")
            dtype = self.dtypes[k]
            out[k] = np.asarray(self.sums[k] / total).astype(dtype if dtype.kind == "f" else np.float32)
            if release:
                del self.sums[k]
        return out


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
    total = StateSum()
    for i in _order(len(states), weights, client_ids):
        total.add(weights[i], states[i])
    return total.average()


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
    sums = PartSums()
    for i in _order(len(client), weights, ids):
        sums.add(weights[i], client[i], server[i] if server is not None else None)
    return sums.finish(previous)


class PartSums:
    """The running sums of a round's FedAvg: the client part and, when the server trains one, the server part."""

    def __init__(self) -> None:
        self.client = StateSum()
        self.server: StateSum | None = None

    def add(self, weight: float, client: Mapping[str, Any], server: Mapping[str, Any] | None = None) -> None:
        """Fold one client's state parts."""
        self.client.add(weight, client)
        if server is not None:
            if self.server is None:
                self.server = StateSum()
            self.server.add(weight, server)

    def merge(self, other: PartSums) -> None:
        """Add another round's partial sums (another node's) into these."""
        self.client.merge(other.client)
        if other.server is not None:
            if self.server is None:
                self.server = StateSum()
            self.server.merge(other.server)

    @property
    def flops(self) -> dict[str, float]:
        """FedAvg FLOPs per part: ``all`` for the client part, ``body`` for the server's."""
        out = {"all": self.client.flops}
        if self.server is not None:
            out["body"] = self.server.flops
        return out

    def finish(self, previous: Mapping[str, np.ndarray] | None = None, *, release: bool = False,
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, dict[str, float]]:
        """``(averaged client part, averaged server part or None, FLOPs per part)``.

        ``previous`` supplies the names no client holds (per-device cuts); they keep their values.
        """
        if not self.client.clients:
            raise ValueError("fedavg: no client states to average")
        flops = self.flops
        new_server = self.server.average(release=release) if self.server is not None else None
        new_client = self.client.average(release=release)
        if previous is not None:
            new_client = {k: new_client[k] if k in new_client else np.array(v, copy=True)
                          for k, v in previous.items()} | {k: v for k, v in new_client.items() if k not in previous}
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


__all__ = ["PartSums", "StateSum", "aggregation_flops", "average_parts", "fedavg", "fedavg_arrays", "to_arrays"]
