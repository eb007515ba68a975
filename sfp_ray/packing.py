"""States packed into one contiguous buffer per dtype, for Ray's object store.

A model state is a mapping of ~80 (ViT-Tiny) to ~200 (ViT-Base) named arrays. Ray puts each
numpy array of a pickled object into the object store as its own out-of-band buffer, and
that per-buffer cost, not the bytes, dominates: a 10.7 MB ViT-Tiny state put as a dict of
80 arrays takes ~10 ms on this project's 2-core machine, as one array ~1.4 ms. A client
actor returns its state once per task, so in pooled mode (several clients per actor and
round) the per-buffer cost added up to most of a round's framework overhead
(``benchmarks/results/ray_overhead.md``).

:func:`pack` copies a state's small arrays into one 1-D buffer per dtype plus a small
layout, and keeps arrays of a megabyte or more as they are: for those the bytes, not the
buffer count, are the cost, and a copy would only double the memory a ViT-B or ViT-L state
takes on its way out (a ViT-B state is 330 MiB). :func:`unpack` hands back name -> array
*views* into those buffers (read-only when they come from the object store). :func:`unpack`
also accepts a plain mapping, so code that reads states works with either form. numpy only:
the torch-free aggregator actor uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Arrays of at least this many bytes travel as they are (each its own out-of-band buffer, no copy).
LARGE_BYTES = 2**20


@dataclass(frozen=True)
class Packed:
    """A name -> array state as one buffer per dtype for its small arrays, its large arrays as they are.

    ``layout`` is ``(name, dtype, shape, offset)`` per entry, in the state's order;
    ``offset`` counts elements into ``buffers[dtype]``, or is -1 for an array of ``large``.
    Packing copies only the small arrays: a large array costs Ray one buffer of its own,
    which is cheap next to its bytes, and is serialised straight from the caller's memory.
    """

    layout: tuple[tuple[str, str, tuple[int, ...], int], ...]
    buffers: Mapping[str, np.ndarray]
    large: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (the layout not counted)."""
        return int(sum(b.nbytes for b in self.buffers.values()) + sum(a.nbytes for a in self.large.values()))


def pack(state: Mapping[str, Any]) -> Packed:
    """Copies the small arrays of ``state`` (name -> numpy array or array-like) into one buffer per dtype.

    Arrays of :data:`LARGE_BYTES` or more are kept as they are (not copied): the state must
    not change until the packed object has been serialised (returned from a Ray task, put
    into the object store).

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
    large = {}
    for name, a in arrays.items():
        dt = a.dtype.str
        if a.nbytes >= LARGE_BYTES:
            layout.append((name, dt, tuple(int(s) for s in a.shape), -1))
            large[name] = a
            continue
        layout.append((name, dt, tuple(int(s) for s in a.shape), sizes.get(dt, 0)))
        sizes[dt] = sizes.get(dt, 0) + int(a.size)
    buffers = {dt: np.empty(n, dtype=np.dtype(dt)) for dt, n in sizes.items()}
    for name, dt, _shape, off in layout:
        if off >= 0:
            a = arrays[name]
            buffers[dt][off:off + a.size] = a.reshape(-1)
    return Packed(tuple(layout), buffers, large)


def unpack(state: Packed | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Name -> array views into a :class:`Packed` state's buffers; a mapping is returned as a dict."""
    if not isinstance(state, Packed):
        return dict(state)
    out = {}
    for name, dt, shape, off in state.layout:
        if off < 0:
            out[name] = state.large[name]
            continue
        n = int(np.prod(shape, dtype=np.int64))
        out[name] = state.buffers[dt][off:off + n].reshape(shape)
    return out


__all__ = ["LARGE_BYTES", "Packed", "pack", "unpack"]
