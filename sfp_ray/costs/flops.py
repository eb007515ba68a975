"""FLOP counting: the FLOPs and :class:`Work` of the operations a call actually executes.

FLOPs are counted from the operations actually executed, with
``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-accumulate; e.g.
``vit_base_patch16_224`` costs 35.13 GFLOPs forward per 224 px image). On CPU timm's fused
attention dispatches to a kernel the counter does not see, so counted runs force
PyTorch's MATH scaled-dot-product backend, which decomposes attention into countable
matmuls. A ViT's FLOPs depend only on tensor shapes and on what requires grad, so
:class:`FlopMeter` counts each distinct key (phase, part, pass, batch shape) once and
reuses the figure; counting under the mode on every step would slow training several-fold.
Counted runs hold the process-wide :data:`COUNT_GATE` alone.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, flop_registry


class _CountGate:
    """Keeps counted runs apart from every other measured run of the process (a readers-writer lock).

    ``FlopCounterMode`` tracks modules with *process-wide* forward hooks, and ``sdpa_kernel``
    sets a process-wide backend flag. In a threaded actor (the server serves several client
    requests at once), another thread's forward pass during a counted run would pick up the
    counter's gradient hooks, and its ``autograd.grad`` then fails ("A leaf node was passed to
    _will_engine_execute_node ..."); interleaved ``sdpa_kernel`` exits could also leave the
    MATH backend set for good. So a counted run is exclusive and the uncounted runs of a
    :class:`FlopMeter` share the gate; a waiting count goes before new shared runs, and a
    thread already inside the gate passes through (a nested call cannot deadlock).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0
        self._local = threading.local()

    @contextlib.contextmanager
    def _hold(self, exclusive: bool) -> Iterator[None]:
        if getattr(self._local, "depth", 0):
            self._local.depth += 1
            try:
                yield
            finally:
                self._local.depth -= 1
            return
        with self._cond:
            if exclusive:
                self._waiting_writers += 1
                while self._writer or self._readers:
                    self._cond.wait()
                self._waiting_writers -= 1
                self._writer = True
            else:
                while self._writer or self._waiting_writers:
                    self._cond.wait()
                self._readers += 1
        self._local.depth = 1
        try:
            yield
        finally:
            self._local.depth = 0
            with self._cond:
                if exclusive:
                    self._writer = False
                else:
                    self._readers -= 1
                self._cond.notify_all()

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Hold the gate alone (a counted run)."""
        return self._hold(True)

    def shared(self) -> contextlib.AbstractContextManager[None]:
        """Hold the gate beside other shared holders (an uncounted run)."""
        return self._hold(False)


#: the process's gate between counted and uncounted runs
COUNT_GATE = _CountGate()


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn()`` under the FLOP counter (MATH attention backend); return (result, flops).

    Example:
        >>> lin = torch.nn.Linear(4, 3, bias=False)
        >>> _, flops = count_flops(lambda: lin(torch.ones(2, 4)))
        >>> flops  # 2 * batch * in * out
        48
    """
    with COUNT_GATE.exclusive(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = fn()
    return out, int(counter.get_total_flops())


@dataclass(frozen=True)
class Work:
    """What one compute call executes: the input of a measured device's clock (:class:`~sfp_ray.devices.Throughput`).

    ``flops`` as :func:`count_flops` counts them; ``kernels`` the operations they come from (matrix
    products, convolutions: each also costs a fixed set-up time, however small); ``moved_bytes`` the
    bytes read and written by the other operations (layer norms, softmax, GELU, additions, copies,
    the optimizer's element-wise updates); ``ops`` how many of those there were (each costs a fixed
    amount of framework time). Views (reshapes, transposes, detaches) move nothing and are not counted.
    """

    flops: int = 0
    moved_bytes: int = 0
    ops: int = 0
    kernels: int = 0


def _flop_counted(func: Any) -> bool:
    """Whether the FLOP counter has a formula for an aten operator (its time is charged as FLOPs)."""
    return func.overloadpacket in flop_registry


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class _WorkMode(TorchDispatchMode):
    """Counts the operations dispatched (FLOP kernels, other operations) and the bytes the others touch.

    The bytes of an operation are its inputs and its new outputs (read and written once).
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.kernels = 0
        self.moved = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        if _flop_counted(func):
            self.kernels += 1
        else:
            self.ops += 1
            ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            seen = {id(t) for t in ins}
            outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and id(t) not in seen]
            self.moved += sum(_nbytes(t) for t in ins) + sum(_nbytes(t) for t in outs)
        return out


def count_work(fn: Callable[[], Any]) -> tuple[Any, Work]:
    """Run ``fn`` under the FLOP counter and an operation counter; return (result, :class:`Work`).

    Example:
        >>> lin, x = torch.nn.Linear(4, 3, bias=False), torch.ones(2, 4)
        >>> with torch.no_grad():
        ...     _, w = count_work(lambda: torch.relu(lin(x)))
        >>> w.flops, w.kernels, w.ops, w.moved_bytes  # mm: 2*2*4*3 FLOPs; relu reads and writes 2x3 floats
        (48, 1, 1, 48)
    """
    with (COUNT_GATE.exclusive(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter,
          _WorkMode() as mode):
        out = fn()
    return out, Work(int(counter.get_total_flops()), int(mode.moved), int(mode.ops), int(mode.kernels))


class FlopMeter:
    """Counts the work of a callable (FLOPs, :class:`Work`) once per key and reuses the figure afterwards.

    The key must capture everything the work depends on: the pass (forward/backward), the
    part, the batch shape and the set of tensors requiring grad (callers include the
    phase, which fixes that set).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._cache: dict[Hashable, Work] = {}
        self._lock = threading.Lock()
        self.counted_runs = 0

    def run(self, key: Hashable, fn: Callable[[], Any]) -> tuple[Any, int]:
        """Run ``fn`` and return ``(result, flops)``; the first call per key is counted."""
        out, work = self.measure(key, fn)
        return out, work.flops

    def measure(self, key: Hashable, fn: Callable[[], Any]) -> tuple[Any, Work]:
        """Run ``fn`` and return ``(result, work)``; the first call per key is counted."""
        if not self.enabled:
            with COUNT_GATE.shared():
                return fn(), Work()
        cached = self._cache.get(key)
        if cached is not None:
            with COUNT_GATE.shared():
                return fn(), cached
        out, work = count_work(fn)
        with self._lock:
            self._cache[key] = work
            self.counted_runs += 1
        return out, work

    def __len__(self) -> int:
        return len(self._cache)
