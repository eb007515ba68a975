"""Cost accounting: executed FLOPs, message bytes, wall time and simulated device time.

FLOPs are counted from the operations actually executed, with
``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-accumulate; e.g.
``vit_base_patch16_224`` costs 35.13 GFLOPs forward per 224 px image). On CPU timm's fused
attention dispatches to a kernel the counter does not see, so counted runs force
PyTorch's MATH scaled-dot-product backend, which decomposes attention into countable
matmuls. A ViT's FLOPs depend only on tensor shapes and on what requires grad, so
:class:`FlopMeter` counts each distinct key (phase, part, pass, batch shape) once and
reuses the figure; counting under the mode on every step would slow training several-fold.

Bytes are counted per message where it is sent: payload bytes (``numel * element_size``)
and the serialized size (pickle protocol 5 of the numpy array, as Ray serialises it; the
constant header overhead is measured once per shape and dtype).

Simulated time follows the device profile: ``flops / (peak * efficiency)`` for compute and
``bytes * 8 / bandwidth + latency`` per message and direction.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

Direction = Literal["up", "down"]
Kind = Literal["activation", "gradient", "parameters"]


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn()`` under the FLOP counter (MATH attention backend); return (result, flops).

    Example:
        >>> lin = torch.nn.Linear(4, 3, bias=False)
        >>> _, flops = count_flops(lambda: lin(torch.ones(2, 4)))
        >>> flops  # 2 * batch * in * out
        48
    """
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = fn()
    return out, int(counter.get_total_flops())


class FlopMeter:
    """Counts FLOPs of a callable once per key and reuses the figure afterwards.

    The key must capture everything FLOPs depend on: the pass (forward/backward), the
    part, the batch shape and the set of tensors requiring grad (callers include the
    phase, which fixes that set).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._cache: dict[Hashable, int] = {}
        self._lock = threading.Lock()
        self.counted_runs = 0

    def run(self, key: Hashable, fn: Callable[[], Any]) -> tuple[Any, int]:
        """Run ``fn`` and return ``(result, flops)``; the first call per key is counted."""
        if not self.enabled:
            return fn(), 0
        cached = self._cache.get(key)
        if cached is not None:
            return fn(), cached
        out, flops = count_flops(fn)
        with self._lock:
            self._cache[key] = flops
            self.counted_runs += 1
        return out, flops

    def __len__(self) -> int:
        return len(self._cache)


# --------------------------------------------------------------------------- bytes

_SER_OVERHEAD: dict[tuple[tuple[int, ...], str], int] = {}


def payload_bytes(t: torch.Tensor | np.ndarray) -> int:
    """``numel * element_size`` of a tensor or array."""
    if isinstance(t, torch.Tensor):
        return t.numel() * t.element_size()
    return int(t.size * t.itemsize)


def serialized_bytes(t: torch.Tensor | np.ndarray) -> int:
    """Size of the tensor serialised as a numpy array with pickle protocol 5.

    The header overhead above the payload depends only on shape and dtype; it is measured
    once per (shape, dtype) with a zero-filled array and cached.
    """
    shape = tuple(t.shape)
    dtype = str(t.dtype)
    key = (shape, dtype)
    overhead = _SER_OVERHEAD.get(key)
    if overhead is None:
        if isinstance(t, torch.Tensor):
            arr = np.zeros(shape, dtype=torch.empty((), dtype=t.dtype).numpy().dtype)
        else:
            arr = np.zeros(shape, dtype=t.dtype)
        overhead = len(pickle.dumps(arr, protocol=5)) - payload_bytes(arr)
        _SER_OVERHEAD[key] = overhead
    return payload_bytes(t) + overhead


def state_bytes(state: Mapping[str, torch.Tensor | np.ndarray]) -> tuple[int, int]:
    """(payload, serialized) bytes of a name -> tensor mapping sent as one message."""
    payload = sum(payload_bytes(v) for v in state.values())
    ser = sum(serialized_bytes(v) for v in state.values()) + sum(len(k) + 8 for k in state)
    return payload, ser


# --------------------------------------------------------------------------- records


@dataclass
class MessageRecord:
    """One message crossing the network."""

    round: int
    client_id: int
    phase: str
    part: str
    direction: Direction
    kind: Kind
    sender: str
    receiver: str
    payload_bytes: int
    serialized_bytes: int
    sim_s: float = 0.0


@dataclass
class CostRecord:
    """Cost of one (round, client, phase, part) cell; the row format of ``costs.csv``."""

    round: int
    client_id: int
    device: str
    phase: str
    part: str
    flops: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    serialized_up: int = 0
    serialized_down: int = 0
    messages: int = 0
    wall_s: float = 0.0
    sim_s: float = 0.0
    samples: int = 0


@dataclass
class Ledger:
    """Collects the costs of one client's round, cell by cell.

    Compute is charged to ``(phase, part)`` on the device that executed it; messages are
    charged to the sender's part. ``device_of(part)`` tells which device profile runs a part
    (the body runs on the server's).
    """

    round: int
    client_id: int
    device: Any  # DeviceProfile | None
    server_device: Any = None
    meter: FlopMeter = field(default_factory=FlopMeter)
    cells: dict[tuple[str, str], CostRecord] = field(default_factory=dict)
    messages: list[MessageRecord] = field(default_factory=list)
    phase_wall: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    _phase: str = "idle"

    def _device_for(self, part: str) -> Any:
        return self.server_device if part == "body" else self.device

    def cell(self, phase: str, part: str) -> CostRecord:
        key = (phase, part)
        rec = self.cells.get(key)
        if rec is None:
            dev = self._device_for(part)
            rec = CostRecord(self.round, self.client_id, getattr(dev, "name", "unknown"), phase, part)
            self.cells[key] = rec
        return rec

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Measure the wall time of a phase (attributed to its cells at the end)."""
        prev, self._phase = self._phase, name
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phase_wall[name] += time.perf_counter() - t0
            self._phase = prev

    def compute(self, part: str, key: Hashable, fn: Callable[[], Any], *, phase: str | None = None) -> Any:
        """Run ``fn`` as compute of ``part`` in the current phase; charge its FLOPs."""
        phase = phase or self._phase
        out, flops = self.meter.run((phase, part) + (key if isinstance(key, tuple) else (key,)), fn)
        self.add_flops(phase, part, flops)
        return out

    def add_flops(self, phase: str, part: str, flops: float, wall_s: float | None = None) -> None:
        rec = self.cell(phase, part)
        rec.flops += flops
        dev = self._device_for(part)
        if dev is not None and flops:
            rec.sim_s += dev.compute_seconds(flops)
        if wall_s is not None:
            rec.wall_s += wall_s

    def message(self, *, part: str, direction: Direction, kind: Kind, payload: int, serialized: int,
                phase: str | None = None) -> None:
        """Record a message sent by ``part`` (client side for ``up``, server side for ``down``)."""
        phase = phase or self._phase
        rec = self.cell(phase, part)
        # the link's speed is the client's: it is the client's uplink / downlink
        sim = self.device.transfer_seconds(payload, direction) if self.device is not None else 0.0
        if direction == "up":
            rec.bytes_up += payload
            rec.serialized_up += serialized
            sender, receiver = f"client{self.client_id}", "server"
        else:
            rec.bytes_down += payload
            rec.serialized_down += serialized
            sender, receiver = "server", f"client{self.client_id}"
        rec.messages += 1
        rec.sim_s += sim
        self.messages.append(
            MessageRecord(self.round, self.client_id, phase, part, direction, kind, sender, receiver,
                          payload, serialized, sim)
        )

    def send_tensor(self, t: torch.Tensor, *, part: str, direction: Direction, kind: Kind) -> None:
        self.message(part=part, direction=direction, kind=kind, payload=payload_bytes(t),
                     serialized=serialized_bytes(t))

    def send_state(self, state: Mapping[str, torch.Tensor], *, part: str, direction: Direction) -> None:
        payload, ser = state_bytes(state)
        self.message(part=part, direction=direction, kind="parameters", payload=payload, serialized=ser)

    def add_samples(self, phase: str, part: str, n: int) -> None:
        self.cell(phase, part).samples += n

    def records(self) -> list[CostRecord]:
        """Cells with the phase wall time spread over the phase's cells by their FLOPs share."""
        by_phase: dict[str, list[CostRecord]] = defaultdict(list)
        for rec in self.cells.values():
            by_phase[rec.phase].append(rec)
        for phase, recs in by_phase.items():
            wall = self.phase_wall.get(phase, 0.0)
            measured = sum(r.wall_s for r in recs)
            rest = max(wall - measured, 0.0)
            total_flops = sum(r.flops for r in recs if r.wall_s == 0.0)
            free = [r for r in recs if r.wall_s == 0.0]
            for r in free:
                share = (r.flops / total_flops) if total_flops > 0 else 1.0 / len(free)
                r.wall_s = rest * share
        return sorted(self.cells.values(), key=lambda r: (r.phase, r.part))

    def sim_seconds(self) -> float:
        """Simulated duration of this client's round (its phases run one after another)."""
        return sum(r.sim_s for r in self.cells.values())
