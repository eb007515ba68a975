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

Simulated time follows the device profile: ``flops / (peak * efficiency)`` for compute, or
for a class measured with ``sfp-ray devices calibrate`` its
:class:`~sfp_ray.devices.Throughput` applied to the call's :class:`Work` (FLOPs, bytes the
other operations move, kernels and operations dispatched; :func:`count_work`), and
``bytes * 8 / bandwidth + latency`` per message and direction. A :class:`Ledger` records
every cost of one client's round twice: as rows by (phase, part, side) for the reports,
and as a timeline of :class:`~sfp_ray.records.Segment` for the round clock
(:func:`simulate_round`), which runs clients and their links in parallel and the server as
one first-come-first-served queue; with a :class:`ServerLink` the transfers also share the
server's link (processor sharing or FIFO). The model and its validation: ``docs/clock.md``.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import pickle
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from sfp_ray.records import CostRecord, Direction, Kind, MessageRecord, Segment, Side


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

    def _advance(self, phase: str, side: Side, seconds: float, *, nbytes: float = 0.0, direction: str = "",
                 latency_s: float = 0.0) -> None:
        if seconds <= 0:
            return
        last = self.timeline[-1] if self.timeline else None
        if last is not None and (last.phase, last.side, last.direction) == (phase, side, direction):
            self.timeline.pop()
            seconds += last.seconds
            nbytes += last.nbytes
            latency_s += last.latency_s
        self.timeline.append(Segment(phase, side, seconds, nbytes, direction, latency_s))

    @staticmethod
    def _seconds(device: Any, work: Work) -> float:
        """Simulated seconds of one compute call on ``device``: FLOPs only, unless the class is measured."""
        if device is None:
            return 0.0
        if getattr(device, "throughput", None) is None:
            return device.compute_seconds(work.flops) if work.flops else 0.0
        return device.compute_seconds(work.flops, moved_bytes=work.moved_bytes, ops=work.ops, kernels=work.kernels,
                                      calls=1)

    def compute(self, part: str, key: Hashable, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` as the client's compute of ``part`` in the current phase; charge its work.

        The call's wall and thread CPU time are measured (``compute_wall_s``, ``compute_cpu_s`` of the cell)
        beside its simulated time.
        """
        phase = self._phase
        t0, c0 = time.perf_counter(), time.thread_time()
        out, work = self.meter.measure((phase, part) + (key if isinstance(key, tuple) else (key,)), fn)
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        rec = self.cell(phase, part, "client")
        rec.flops += work.flops
        rec.compute_wall_s += wall
        rec.compute_cpu_s += cpu
        sim = self._seconds(self.device, work)
        if sim:
            rec.sim_s += sim
            self._advance(phase, "client", sim)
        return out

    def server_compute(self, part: str, flops: float, *, wall_s: float = 0.0, queue_s: float = 0.0,
                       work: Work | None = None, cpu_s: float = 0.0) -> None:
        """Charge ``flops`` the server computed for this client (e.g. a body request).

        ``work`` (the request's :class:`Work`, FLOPs included) times it on a measured server class;
        ``wall_s`` and ``cpu_s`` are what it measured.
        """
        phase = self._phase
        rec = self.cell(phase, part, "server")
        rec.flops += flops
        rec.wall_s += wall_s
        rec.compute_wall_s += wall_s
        rec.compute_cpu_s += cpu_s
        self.server_queue_s += queue_s
        sim = self._seconds(self.server_device, work if work is not None else Work(flops))  # type: ignore[arg-type]
        if sim:
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
        latency = self.device.latency_ms / 1000.0 if self.device is not None and payload else 0.0
        self._advance(phase, "link", sim, nbytes=payload, direction=direction, latency_s=min(latency, sim))
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


LinkPolicy = Literal["parallel", "shared", "fifo"]


@dataclass(frozen=True)
class ServerLink:
    """The server's link as one capacity that the clients' transfers share (``devices.server_link``).

    ``up_mbps`` carries what clients send (the server's ``downlink_mbps``), ``down_mbps`` what they
    receive (its ``uplink_mbps``). Each direction is shared on its own:

    * ``shared``: processor sharing. The transfers in flight share the capacity equally, none
      faster than its own client's link; what a slow client cannot use goes to the others
      (max-min fairness);
    * ``fifo``: one transfer at a time, in the order they reach the link (ties by client id),
      at the lesser of its client's link and the server's; the others wait.

    A transfer's one-way latency follows its last byte and is not shared.
    """

    policy: Literal["shared", "fifo"]
    up_mbps: float
    down_mbps: float

    @classmethod
    def of(cls, policy: LinkPolicy, server: Any) -> ServerLink | None:
        """The link of a server device class under ``policy`` (None for ``parallel``: the links run side by side)."""
        if policy == "parallel":
            return None
        return cls(policy, float(server.downlink_mbps), float(server.uplink_mbps))

    def capacity(self, direction: str) -> float:
        """Bytes per second of one direction (``up``: client to server)."""
        return (self.up_mbps if direction == "up" else self.down_mbps) * 1e6 / 8.0

    def rates(self, flows: Sequence[_Flow]) -> list[float]:
        """Bytes per second of each transfer in flight (all of one direction), in the order given."""
        if not flows:
            return []
        cap = self.capacity(flows[0].direction)
        if self.policy == "fifo":
            head = min(range(len(flows)), key=lambda i: (flows[i].arrived, flows[i].client))
            return [min(f.cap, cap) if i == head else 0.0 for i, f in enumerate(flows)]
        rates = [0.0] * len(flows)
        left, n = cap, len(flows)
        for i in sorted(range(len(flows)), key=lambda i: flows[i].cap):  # progressive filling
            rates[i] = min(flows[i].cap, left / n)
            left -= rates[i]
            n -= 1
        return rates


@dataclass
class _Flow:
    """A transfer in flight on the shared server link."""

    client: int
    direction: str
    left: float  # bytes still to send
    cap: float  # bytes per second of the client's own link
    arrived: float
    started: float | None = None


def simulate_round(timelines: Mapping[int, Sequence[Segment]], *, sequential: bool = False,
                   link: ServerLink | None = None) -> RoundClock:
    """Play the clients' timelines against one server; return the round's schedule.

    Each client runs its segments in order, starting at time 0. ``client`` and ``link``
    segments use the client's own device and link, so they never wait for anyone. The
    server is a single first-come-first-served queue: a ``server`` segment starts when the
    client's request arrives or when the server finishes its previous request, whichever is
    later. Requests arriving at the same time are served in ascending client id.
    ``sequential`` (vanilla split learning) runs the clients one after another in
    ascending id instead, so nobody waits and the round lasts the sum of their timelines.
    ``link`` (:class:`ServerLink`) makes the ``link`` segments that carry bytes share the
    server's link as well; None keeps them in parallel.

    Example (two clients whose server work overlaps):
        >>> tl = [Segment("t", "client", 1.0), Segment("t", "server", 2.0), Segment("t", "client", 1.0)]
        >>> clock = simulate_round({0: tl, 1: tl})
        >>> clock.seconds, clock.finish, clock.wait
        (6.0, {0: 4.0, 1: 6.0}, {0: 0.0, 1: 2.0})
    """
    if link is not None:
        return _simulate_linked(timelines, link, sequential)
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


def _simulate_linked(timelines: Mapping[int, Sequence[Segment]], link: ServerLink, sequential: bool) -> RoundClock:
    """:func:`simulate_round` with a shared server link: an event-driven simulation.

    Events are the ends of segments of fixed length (compute, the server's service, a
    transfer's latency) and the ends of transfers on the shared link, whose rates change
    whenever a transfer starts or ends. Events at the same time are handled in ascending
    client id. A sequential round plays each client alone, one after another.
    """
    ids = sorted(timelines)
    if sequential:
        t = 0.0
        finish, wait, schedule = {}, {}, {}
        for c in ids:
            alone = _simulate_linked({c: timelines[c]}, link, False)
            finish[c] = t + alone.finish[c]
            wait[c] = alone.wait[c]
            schedule[c] = [(ph, side, t + a, t + b) for ph, side, a, b in alone.schedule[c]]
            t = finish[c]
        return RoundClock(t, finish, wait, schedule)
    finish = {c: 0.0 for c in ids}
    wait = {c: 0.0 for c in ids}
    schedule: dict[int, list[tuple[str, str, float, float]]] = {c: [] for c in ids}
    pos = {c: 0 for c in ids}
    began = {c: 0.0 for c in ids}
    timed: list[tuple[float, int]] = []  # (end, client) of segments of known length
    flows: dict[int, _Flow] = {}
    queue: list[int] = []  # clients waiting for the server, in arrival order
    serving: int | None = None

    def shared(seg: Segment) -> bool:
        return seg.side == "link" and seg.nbytes > 0 and seg.direction in ("up", "down")

    def serve(c: int, now: float) -> None:
        nonlocal serving
        serving = c
        seg = timelines[c][pos[c]]
        if now > began[c]:
            wait[c] += now - began[c]
            schedule[c].append((seg.phase, "wait", began[c], now))
        began[c] = now
        heapq.heappush(timed, (now + seg.seconds, c))

    def begin(c: int, now: float) -> None:
        began[c] = now
        if pos[c] >= len(timelines[c]):
            finish[c] = now
            return
        seg = timelines[c][pos[c]]
        if seg.side == "server":
            queue.append(c)
            if serving is None:
                serve(queue.pop(0), now)
        elif shared(seg):
            send = seg.seconds - seg.latency_s
            flows[c] = _Flow(c, seg.direction, float(seg.nbytes), seg.nbytes / send if send > 0 else math.inf, now)
        else:
            heapq.heappush(timed, (now + seg.seconds, c))

    def end(c: int, now: float) -> None:
        nonlocal serving
        seg = timelines[c][pos[c]]
        schedule[c].append((seg.phase, seg.side, began[c], now))
        if seg.side == "server":
            serving = None
            if queue:
                serve(queue.pop(0), now)
        pos[c] += 1
        begin(c, now)

    for c in ids:
        begin(c, 0.0)
    now = 0.0
    while timed or flows:
        rate: dict[int, float] = {}
        for direction in ("up", "down"):
            group = [f for f in flows.values() if f.direction == direction]
            rate.update({f.client: r for f, r in zip(group, link.rates(group), strict=True)})
        done_at = {c: (now + f.left / rate[c] if rate[c] > 0 else math.inf) for c, f in flows.items()}
        t_next = min([*done_at.values(), timed[0][0] if timed else math.inf])
        for c, f in flows.items():
            if rate[c] > 0 and f.started is None:
                f.started = now
                if now > f.arrived:  # waited for the link (fifo)
                    seg = timelines[c][pos[c]]
                    wait[c] += now - f.arrived
                    schedule[c].append((seg.phase, "wait", f.arrived, now))
                    began[c] = now
            if rate[c] > 0:
                f.left = 0.0 if done_at[c] <= t_next else f.left - rate[c] * (t_next - now)
        now = t_next
        ended: list[int] = []
        for c in [c for c, f in flows.items() if f.left <= 0.0]:
            del flows[c]
            latency = timelines[c][pos[c]].latency_s
            if latency > 0:
                heapq.heappush(timed, (now + latency, c))
            else:
                ended.append(c)
        while timed and timed[0][0] <= now:
            ended.append(heapq.heappop(timed)[1])
        for c in sorted(ended):
            end(c, now)
    return RoundClock(max(finish.values(), default=0.0), finish, wait, schedule)
