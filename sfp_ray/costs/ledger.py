"""Bytes and the Ledger: what each message weighs and every cost of one client's round.

Bytes are counted per message where it is sent: payload bytes (``numel * element_size``)
and the serialized size (pickle protocol 5 of the numpy array, as Ray serialises it; the
constant header overhead is measured once per shape and dtype). A :class:`Ledger` records
every cost of one client's round twice: as rows by (phase, part, side) for the reports,
and as a timeline of :class:`~sfp_ray.records.Segment` for the round clock
(:func:`~sfp_ray.costs.clock.simulate_round`).
"""

from __future__ import annotations

import contextlib
import pickle
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sfp_ray.costs.flops import FlopMeter, Work
from sfp_ray.records import CostRecord, Direction, Kind, MessageRecord, Segment, Side

if TYPE_CHECKING:
    from sfp_ray.devices import DeviceProfile

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
    clock (:func:`~sfp_ray.costs.clock.simulate_round`) plays against the other clients' timelines.
    """

    round: int
    client_id: int
    device: DeviceProfile | None
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
