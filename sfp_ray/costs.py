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
``bytes * 8 / bandwidth + latency`` per message and direction. A :class:`Ledger` records
every cost of one client's round twice: as rows by (phase, part, side) for the reports,
and as a timeline of :class:`~sfp_ray.records.Segment` for the round clock
(:func:`simulate_round`), which runs clients and their links in parallel and the server as
one first-come-first-served queue.
"""

from __future__ import annotations

import contextlib
import heapq
import pickle
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sfp_ray.records import CostRecord, Direction, Kind, MessageRecord, Segment, Side


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
        if isinstance(t, torch.Tensor) and t.dtype == torch.bfloat16:
            arr = np.zeros(shape, dtype=np.int16)  # numpy has no bfloat16: it crosses as its 16-bit patterns
        elif isinstance(t, torch.Tensor):
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


def shape_str(*tensors: torch.Tensor | np.ndarray) -> str:
    """Shapes of a message's tensors for ``messages.csv``: ``"4x27x192"``, several joined by ``;``.

    Example:
        >>> shape_str(torch.zeros(4, 27, 192), torch.zeros(3))
        '4x27x192;3'
    """
    return ";".join("x".join(str(int(d)) for d in t.shape) for t in tensors)


# --------------------------------------------------------------------------- ledger


@dataclass
class Ledger:
    """Collects the costs of one client's round: rows by (phase, part, side) and a timeline.

    * :meth:`compute` runs and counts the client's own compute (side ``client``, timed on
      the client's device profile);
    * :meth:`server_compute` charges work the server did for this client (side
      ``server``, timed on the server's profile);
    * :meth:`message` charges a transfer (side ``link``, timed on the client's uplink or
      downlink, whichever direction it goes).

    Every charge also extends the client's timeline (:attr:`timeline`), which the round
    clock (:func:`simulate_round`) plays against the other clients' timelines.
    """

    round: int
    client_id: int
    device: Any  # DeviceProfile | None
    server_device: Any = None
    meter: FlopMeter = field(default_factory=FlopMeter)
    cells: dict[tuple[str, str, str], CostRecord] = field(default_factory=dict)
    messages: list[MessageRecord] = field(default_factory=list)
    timeline: list[Segment] = field(default_factory=list)
    phase_wall: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    server_queue_s: float = 0.0
    #: waits for the compute device's queued work (a GPU's) before a phase's wall time is read
    sync: Callable[[], None] | None = None
    _phase: str = "idle"

    def _device_of(self, side: Side) -> Any:
        return self.server_device if side == "server" else self.device

    def cell(self, phase: str, part: str, side: Side) -> CostRecord:
        key = (phase, part, side)
        rec = self.cells.get(key)
        if rec is None:
            dev = self._device_of(side)
            rec = CostRecord(self.round, self.client_id, getattr(dev, "name", "unknown"), phase, part, side)
            self.cells[key] = rec
        return rec

    @property
    def current_phase(self) -> str:
        return self._phase

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Measure the wall time of a phase (attributed to its cells at the end)."""
        prev, self._phase = self._phase, name
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.sync is not None:
                self.sync()
            self.phase_wall[name] += time.perf_counter() - t0
            self._phase = prev

    def _advance(self, phase: str, side: Side, seconds: float) -> None:
        if seconds <= 0:
            return
        if self.timeline and self.timeline[-1].phase == phase and self.timeline[-1].side == side:
            last = self.timeline.pop()
            seconds += last.seconds
        self.timeline.append(Segment(phase, side, seconds))

    def compute(self, part: str, key: Hashable, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` as the client's compute of ``part`` in the current phase; charge its FLOPs."""
        phase = self._phase
        out, flops = self.meter.run((phase, part) + (key if isinstance(key, tuple) else (key,)), fn)
        rec = self.cell(phase, part, "client")
        rec.flops += flops
        if self.device is not None and flops:
            sim = self.device.compute_seconds(flops)
            rec.sim_s += sim
            self._advance(phase, "client", sim)
        return out

    def server_compute(self, part: str, flops: float, *, wall_s: float = 0.0, queue_s: float = 0.0) -> None:
        """Charge ``flops`` the server computed for this client (e.g. a body request)."""
        phase = self._phase
        rec = self.cell(phase, part, "server")
        rec.flops += flops
        rec.wall_s += wall_s
        self.server_queue_s += queue_s
        if self.server_device is not None and flops:
            sim = self.server_device.compute_seconds(flops)
            rec.sim_s += sim
            self._advance(phase, "server", sim)

    def message(self, *, part: str, direction: Direction, kind: Kind, payload: int, serialized: int,
                shapes: str = "") -> None:
        """Record a message over the client's link: ``up`` is sent by the client, ``down`` by the server."""
        phase = self._phase
        rec = self.cell(phase, part, "link")
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
        self._advance(phase, "link", sim)
        self.messages.append(MessageRecord(self.round, self.client_id, phase, part, direction, kind, sender, receiver,
                                           payload, serialized, sim, shapes))

    def send_tensor(self, t: torch.Tensor, *, part: str, direction: Direction, kind: Kind) -> None:
        self.message(part=part, direction=direction, kind=kind, payload=payload_bytes(t),
                     serialized=serialized_bytes(t), shapes=shape_str(t))

    def send_state(self, state: Mapping[str, torch.Tensor], *, part: str, direction: Direction) -> None:
        payload, ser = state_bytes(state)
        self.message(part=part, direction=direction, kind="parameters", payload=payload, serialized=ser,
                     shapes=shape_str(*state.values()))

    def add_samples(self, part: str, n: int) -> None:
        """Count ``n`` samples processed by the client's ``part`` in the current phase."""
        self.cell(self._phase, part, "client").samples += n

    def records(self) -> list[CostRecord]:
        """Cells with the phase wall time spread over the phase's unmeasured cells by their FLOPs share."""
        by_phase: dict[str, list[CostRecord]] = defaultdict(list)
        for rec in self.cells.values():
            by_phase[rec.phase].append(rec)
        for phase, recs in by_phase.items():
            wall = self.phase_wall.get(phase, 0.0)
            rest = max(wall - sum(r.wall_s for r in recs), 0.0)
            free = [r for r in recs if r.wall_s == 0.0]
            total_flops = sum(r.flops for r in free)
            for r in free:
                r.wall_s = rest * ((r.flops / total_flops) if total_flops > 0 else 1.0 / len(free))
        return sorted(self.cells.values(), key=lambda r: (r.phase, r.part, r.side))

    def sim_seconds(self) -> float:
        """Simulated duration of this client's round on its own (no server queueing)."""
        return sum(s.seconds for s in self.timeline)


# --------------------------------------------------------------------------- round clock


@dataclass
class RoundClock:
    """The simulated schedule of one synchronous round (see :func:`simulate_round`).

    ``finish`` and ``wait`` are per client: when its last segment ends, and how long it
    waited in the server's queue. ``schedule`` holds ``(phase, side, start, end)`` per
    client, with the waits as side ``wait``. ``seconds`` is the round's length: the last
    client's finish (or the sum of the clients' times for a sequential round).
    """

    seconds: float
    finish: dict[int, float]
    wait: dict[int, float]
    schedule: dict[int, list[tuple[str, str, float, float]]]


def simulate_round(timelines: Mapping[int, Sequence[Segment]], *, sequential: bool = False) -> RoundClock:
    """Play the clients' timelines against one server; return the round's schedule.

    Each client runs its segments in order, starting at time 0. ``client`` and ``link``
    segments use the client's own device and link, so they never wait for anyone. The
    server is a single first-come-first-served queue: a ``server`` segment starts when the
    client's request arrives or when the server finishes its previous request, whichever is
    later. Requests arriving at the same time are served in ascending client id.
    ``sequential`` (vanilla split learning) runs the clients one after another in
    ascending id instead, so nobody waits and the round lasts the sum of their timelines.

    Example (two clients whose server work overlaps):
        >>> tl = [Segment("t", "client", 1.0), Segment("t", "server", 2.0), Segment("t", "client", 1.0)]
        >>> clock = simulate_round({0: tl, 1: tl})
        >>> clock.seconds, clock.finish, clock.wait
        (6.0, {0: 4.0, 1: 6.0}, {0: 0.0, 1: 2.0})
    """
    ids = sorted(timelines)
    finish = {c: 0.0 for c in ids}
    wait = {c: 0.0 for c in ids}
    schedule: dict[int, list[tuple[str, str, float, float]]] = {c: [] for c in ids}
    if sequential:
        t = 0.0
        for c in ids:
            for s in timelines[c]:
                schedule[c].append((s.phase, s.side, t, t + s.seconds))
                t += s.seconds
            finish[c] = t
        return RoundClock(t, finish, wait, schedule)
    server_free = 0.0
    heap: list[tuple[float, int, int]] = [(0.0, c, 0) for c in ids if timelines[c]]
    heapq.heapify(heap)
    while heap:
        ready, c, i = heapq.heappop(heap)
        seg = timelines[c][i]
        start = ready
        if seg.side == "server":
            start = max(ready, server_free)
            if start > ready:
                wait[c] += start - ready
                schedule[c].append((seg.phase, "wait", ready, start))
            server_free = start + seg.seconds
        end = start + seg.seconds
        schedule[c].append((seg.phase, seg.side, start, end))
        finish[c] = end
        if i + 1 < len(timelines[c]):
            heapq.heappush(heap, (end, c, i + 1))
    return RoundClock(max(finish.values(), default=0.0), finish, wait, schedule)
