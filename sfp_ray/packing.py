"""States packed into one contiguous buffer per dtype, for Ray's object store.

A model state is a mapping of ~80 (ViT-Tiny) to ~200 (ViT-Base) named arrays. Ray puts each
numpy array of a pickled object into the object store as its own out-of-band buffer, and
that per-buffer cost, not the bytes, dominates: a 10.7 MB ViT-Tiny state put as a dict of
80 arrays takes ~10 ms on this project's 2-core machine, as one array ~1.4 ms. A client
actor returns its state once per task, so in pooled mode (several clients per actor and
round) the per-buffer cost added up to most of a round's framework overhead
(``benchmarks/results/ray_overhead.md``).

:func:`pack` copies a state into one 1-D buffer per dtype plus a small layout;
:func:`unpack` hands back name -> array *views* into those buffers (read-only when they
come from the object store). :func:`unpack` also accepts a plain mapping, so code that
reads states works with either form. numpy only: the torch-free aggregator actor uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Packed:
    """A name -> array state as one buffer per dtype.

    ``layout`` is ``(name, dtype, shape, offset)`` per entry, in the state's order;
    ``offset`` counts elements into ``buffers[dtype]``.
    """

    layout: tuple[tuple[str, str, tuple[int, ...], int], ...]
    buffers: Mapping[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (the layout not counted)."""
        return int(sum(b.nbytes for b in self.buffers.values()))


def pack(state: Mapping[str, Any]) -> Packed:
    """Copies ``state`` (name -> numpy array or array-like) into one buffer per dtype.

    Example:
        >>> p = pack({"w": np.float32([[1, 2], [3, 4]]), "b": np.float32([5]), "n": np.int64([7])})
        >>> sorted(p.buffers), p.buffers["<f4"].tolist()
        (['<f4', '<i8'], [1.0, 2.0, 3.0, 4.0, 5.0])
        >>> {k: v.tolist() for k, v in unpack(p).items()}
        {'w': [[1.0, 2.0], [3.0, 4.0]], 'b': [5.0], 'n': [7]}
    """
    arrays = {k: np.asarray(v) for k, v in state.items()}
    sizes: dict[str, int] = {}
    layout = []
    for name, a in arrays.items():
        dt = a.dtype.str
        layout.append((name, dt, tuple(int(s) for s in a.shape), sizes.get(dt, 0)))
        sizes[dt] = sizes.get(dt, 0) + int(a.size)
    buffers = {dt: np.empty(n, dtype=np.dtype(dt)) for dt, n in sizes.items()}
    for (_name, dt, _shape, off), a in zip(layout, arrays.values(), strict=True):
        buffers[dt][off:off + a.size] = a.reshape(-1)
    return Packed(tuple(layout), buffers)


def unpack(state: Packed | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Name -> array views into a :class:`Packed` state's buffers; a mapping is returned as a dict."""
    if not isinstance(state, Packed):
        return dict(state)
    out = {}
    for name, dt, shape, off in state.layout:
        n = int(np.prod(shape, dtype=np.int64))
        out[name] = state.buffers[dt][off:off + n].reshape(shape)
    return out


__all__ = ["Packed", "pack", "unpack"]
