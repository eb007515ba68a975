"""Who of a round's selected clients is online, who drops out, who is too late.

Device profiles may carry two probabilities (:class:`~sfp_ray.devices.DeviceProfile`):
``availability`` (a selected client is online this round) and ``dropout`` (an online
client drops out mid-round, at a uniformly drawn point of its simulated timeline). Both
are drawn from ``(seed, round, client_id)`` (:func:`draw`), so a run is reproducible
whatever executes it and a resumed run draws the same.

A round then goes:

* offline clients get no task; they appear in ``clients.csv`` as ``offline`` and cost
  nothing;
* online clients run; a client drawn to drop out is cut at its drop point
  (:func:`truncate`): the work it did before (compute and transfers, pro rata within the
  phase it dropped in) is charged to the costs, its state is discarded, its status is
  ``dropped``;
* with ``federation.deadline_s``, a client whose simulated finish (the round clock, with
  the server's queue) is later than the deadline is ``late``;
* with ``federation.over_select``, more clients are selected and only the first
  ``federation.clients_per_round`` to finish in simulated time are averaged; the others
  are ``late`` (FedScale's over-commitment).

Late and dropped clients are never averaged. :class:`RoundJudge` applies these rules to a
round's outputs (it is handed to the method's round plan, which averages what is left)
and says how long the server waited (:meth:`RoundJudge.round_seconds`).

Instead of the ``availability`` probability, a FedScale-format client behaviour trace
(``federation.availability_trace``, :func:`load_trace`) can say who is online: client ``c``
follows the trace's ``c mod n``-th entry (entries in key order) and is online in a round when
the round's simulated start time, modulo the entry's ``finish_time``, falls in one of its
``[active[i], inactive[i]]`` windows (FedScale's rule; Lai et al., ICML 2022).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sfp_ray.errors import ConfigError
from sfp_ray.faults import one_line
from sfp_ray.records import FINISHED, Segment

#: Statuses of a client whose state is averaged.
#: Stream of the availability draws within a ``(seed, round, client_id)`` seed.
_STREAM = 104729


@dataclass(frozen=True)
class Draw:
    """A client's draws for one round: online, whether it drops out, and where (a fraction of its timeline)."""

    online: bool = True
    drops: bool = False
    point: float = 1.0


def draw(seed: int, round: int, client_id: int, availability: float, dropout: float) -> Draw:
    """The draws of one client in one round (independent of everything but its arguments).

    Example:
        >>> draw(0, 1, 2, 1.0, 0.0)
        Draw(online=True, drops=False, point=1.0)
        >>> draw(0, 1, 2, 0.0, 0.0).online
        False
    """
    ss = np.random.SeedSequence([int(seed), int(round), int(client_id), _STREAM])
    u_online, u_drop, u_point = np.random.default_rng(ss).random(3)
    online = bool(u_online < availability)
    drops = online and bool(u_drop < dropout)
    return Draw(online, drops, float(u_point) if drops else 1.0)


def draw_traced(seed: int, round: int, client_id: int, online: bool, dropout: float) -> Draw:
    """The draws of a client whose being online a trace decides: the dropout draw as :func:`draw`'s.

    Example:
        >>> draw_traced(0, 1, 2, False, 1.0)
        Draw(online=False, drops=False, point=1.0)
        >>> draw_traced(0, 1, 2, True, 1.0).drops
        True
    """
    d = draw(seed, round, client_id, 1.0, dropout)
    return Draw(online, d.drops and online, d.point if online else 1.0)


@dataclass(frozen=True)
class ClientTrace:
    """One client's behaviour in a FedScale trace: online during ``[active[i], inactive[i]]``, repeating every
    ``finish_time`` seconds.
    """

    active: tuple[float, ...]
    inactive: tuple[float, ...]
    finish_time: float

    def online(self, t: float) -> bool:
        """Whether the client is online at ``t`` seconds.

        Example:
            >>> c = ClientTrace(active=(0.0, 100.0), inactive=(50.0, 150.0), finish_time=200.0)
            >>> [c.online(t) for t in (25, 75, 120, 175, 225)]
            [True, False, True, False, True]
        """
        x = math.fmod(float(t), self.finish_time)
        return any(a <= x <= b for a, b in zip(self.active, self.inactive))


@dataclass(frozen=True)
class AvailabilityTrace:
    """A client behaviour trace: client ``c`` follows entry ``c mod len(entries)`` (entries in key order)."""

    path: str
    entries: tuple[ClientTrace, ...]

    def online(self, client_id: int, t: float) -> bool:
        return self.entries[int(client_id) % len(self.entries)].online(t)


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only: containers, numbers, strings and numpy scalars; never a class or a function."""

    _ALLOWED = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}; a trace holds plain data only")


def read_plain(p: Path, where: str) -> Any:
    """The plain data in a trace file: ``.json``, ``.yaml``/``.yml``, else a pickle (as FedScale ships its
    traces) read with an unpickler that builds containers, numbers and strings only.

    Raises:
        ConfigError: ``where`` (the setting and the file) and why the file cannot be read.
    """
    if not p.is_file():
        raise ConfigError(f"{where}: no such file")
    raw = p.read_bytes()
    try:
        if p.suffix.lower() == ".json":
            return json.loads(raw)
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(raw)
        return _PlainUnpickler(io.BytesIO(raw)).load()
    except Exception as e:  # noqa: BLE001 - any parse failure is the file's
        raise ConfigError(f"{where}: cannot read it ({one_line(e)})") from None


def load_trace(path: str | Path) -> AvailabilityTrace:
    """Read a FedScale client behaviour trace (``federation.availability_trace``).

    The file maps client keys to entries with ``active`` and ``inactive`` (equally long lists
    of seconds, ``active[i] <= inactive[i]``) and ``finish_time`` (> 0 s, the period); other
    fields (FedScale's ``duration``, ``model``) are ignored. Formats by suffix: ``.json``,
    ``.yaml``/``.yml``, else a pickle as FedScale ships it (``client_behave_trace``), read
    with an unpickler that builds plain data only.

    Raises:
        ConfigError: one line naming the file and what is wrong.
    """
    p = Path(path).expanduser()
    where = f"federation.availability_trace: {p}"
    data = read_plain(p, where)
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(f"{where}: expected a non-empty mapping of client -> trace entry, got "
                          f"{type(data).__name__}")
    try:
        keys = sorted(data)
    except TypeError:
        keys = sorted(data, key=str)
    entries = []
    for k in keys:
        e = data[k]
        at = f"{where}: client {k!r}"
        if not isinstance(e, Mapping) or not {"active", "inactive", "finish_time"} <= set(e):
            raise ConfigError(f"{at}: an entry needs 'active', 'inactive' and 'finish_time'")
        try:
            active = tuple(float(x) for x in e["active"])
            inactive = tuple(float(x) for x in e["inactive"])
            finish = float(e["finish_time"])
        except (TypeError, ValueError):
            raise ConfigError(f"{at}: 'active' and 'inactive' must be lists of seconds, 'finish_time' a number"
                              ) from None
        if not active or len(active) != len(inactive):
            raise ConfigError(f"{at}: 'active' and 'inactive' must be equally long and not empty "
                              f"({len(active)} vs {len(inactive)})")
        if not all(math.isfinite(x) for x in (*active, *inactive, finish)) or finish <= 0:
            raise ConfigError(f"{at}: times must be finite and 'finish_time' > 0, got finish_time={finish}")
        if any(a > b for a, b in zip(active, inactive)):
            raise ConfigError(f"{at}: every active[i] must be <= inactive[i]")
        entries.append(ClientTrace(active, inactive, finish))
    return AvailabilityTrace(str(p), tuple(entries))


def cohort_size(clients_per_round: int, over_select: float, num_clients: int) -> int:
    """Clients selected per round: ``ceil(clients_per_round * (1 + over_select))``, at most ``num_clients``.

    Example:
        >>> cohort_size(10, 0.3, 100), cohort_size(10, 0.0, 100), cohort_size(10, 0.5, 12)
        (13, 10, 12)
    """
    return min(num_clients, math.ceil(clients_per_round * (1 + over_select) - 1e-9))


def phase_fractions(timeline: Sequence[Segment], until: float) -> tuple[list[Segment], dict[str, float]]:
    """The timeline cut at ``until`` seconds, and per phase the fraction of its time done by then.

    Example:
        >>> tl = [Segment("a", "client", 2.0), Segment("b", "link", 2.0)]
        >>> cut, done = phase_fractions(tl, 3.0)
        >>> [s.seconds for s in cut], done
        ([2.0, 1.0], {'a': 1.0, 'b': 0.5})
    """
    total: dict[str, float] = {}
    for s in timeline:
        total[s.phase] = total.get(s.phase, 0.0) + s.seconds
    spent = {p: 0.0 for p in total}
    reached: set[str] = set()
    cut: list[Segment] = []
    t = 0.0
    for s in timeline:
        if t >= until and s.seconds > 0:
            break
        take = min(s.seconds, until - t)
        share = take / s.seconds if s.seconds > 0 else 1.0
        cut.append(dataclasses.replace(s, seconds=take, nbytes=s.nbytes * share, latency_s=s.latency_s * share)
                   if take < s.seconds else s)
        reached.add(s.phase)
        spent[s.phase] += take
        t += take
    # a phase of zero simulated time is done once the client got to it
    done = {p: (spent[p] / total[p] if total[p] > 0 else float(p in reached)) for p in total}
    return cut, done


def truncate(out: object, point: float) -> None:
    """Cut a client's output at ``point`` (a fraction of its simulated time): status ``dropped``.

    Its cost rows keep, per phase, the fraction of the phase's time it got through (FLOPs,
    bytes, messages, simulated and wall seconds alike); message rows of a phase are kept in
    order up to that fraction; its state is discarded.
    """
    until = point * sum(s.seconds for s in out.timeline)
    cut, done = phase_fractions(out.timeline, until)
    for c in out.costs:
        f = done.get(c.phase, 0.0)
        c.flops *= f
        c.bytes_up = int(round(c.bytes_up * f))
        c.bytes_down = int(round(c.bytes_down * f))
        c.serialized_up = int(round(c.serialized_up * f))
        c.serialized_down = int(round(c.serialized_down * f))
        c.messages = int(round(c.messages * f))
        c.wall_s *= f
        c.compute_wall_s *= f
        c.compute_cpu_s *= f
        c.sim_s *= f
        c.samples = int(round(c.samples * f))
    by_phase: dict[str, list[object]] = {}
    for m in out.messages:
        by_phase.setdefault(m.phase, []).append(m)
    out.messages = [m for p, ms in by_phase.items() for m in ms[:int(round(len(ms) * done.get(p, 0.0)))]]
    out.timeline = cut
    out.state = None
    out.status = "dropped"
    out.error = f"dropped out at {point:.0%} of its round (simulated)"


class RoundJudge:
    """Applies dropouts, the deadline and over-selection to a round's outputs (see the module docstring).

    Args:
        draws: each running client's :class:`Draw`.
        keep: clients averaged at most (``federation.clients_per_round``).
        deadline_s: ``federation.deadline_s`` (None: no deadline).
        clock: the method's round clock (timelines -> :class:`~sfp_ray.costs.RoundClock`).
        sequential: the plan runs clients one after another (each is judged on its own timeline).
    """

    def __init__(self, draws: Mapping[int, Draw], keep: int, deadline_s: float | None,
                 clock: Callable[[Mapping[int, Sequence[Segment]]], object], sequential: bool = False) -> None:
        self.draws = dict(draws)
        self.keep = keep
        self.deadline_s = deadline_s
        self.clock = clock
        self.sequential = sequential
        self.kept = 0
        self.missed_deadline = False
        #: per client ``(phase, side, start, end)`` of the round's simulated schedule (after :meth:`round_seconds`)
        self.schedule: dict[int, list[tuple[str, str, float, float]]] = {}

    @property
    def decides_alone(self) -> bool:
        """Whether each client's fate is known without the others' finish times: no deadline, and no more clients
        running than are averaged (no over-selection). Then a client's state can be averaged as soon as it finishes.
        """
        return self.deadline_s is None and len(self.draws) <= self.keep

    def drops(self, client_id: int) -> bool:
        """Whether the client drops out this round (drawn before it runs)."""
        d = self.draws.get(client_id)
        return d is not None and d.drops

    def __call__(self, outputs: Sequence[object]) -> None:
        for o in outputs:
            d = self.draws.get(o.client_id)
            if o.status in FINISHED and d is not None and d.drops:
                truncate(o, d.point)
        done = [o for o in outputs if o.status in FINISHED]
        if not done:
            return
        if self.sequential:
            finish = {o.client_id: o.sim_s for o in done}
        else:
            finish = self.clock({o.client_id: o.timeline for o in outputs if o.timeline}).finish
        for o in sorted(done, key=lambda o: (finish[o.client_id], o.client_id)):
            if self.deadline_s is not None and finish[o.client_id] > self.deadline_s:
                o.status, o.error = "late", f"finished at {finish[o.client_id]:.3g} s, after the deadline"
                self.missed_deadline = True
            elif self.kept >= self.keep:
                o.status, o.error = "late", f"finished at {finish[o.client_id]:.3g} s, after the first {self.keep}"
            else:
                self.kept += 1
            if o.status == "late":
                o.state = None

    def round_seconds(self, outputs: Sequence[object]) -> float:
        """How long the server waited: until the last averaged client finished or the last dropout was noticed,
        or until the deadline when someone missed it (a sequential round: the sum of the clients' times).
        """
        ran = {o.client_id: o.timeline for o in outputs if o.timeline}
        if not ran:
            return 0.0
        clock = self.clock(ran)
        self.schedule = clock.schedule
        if self.sequential:
            return float(clock.seconds)
        averaged = [clock.finish[o.client_id] for o in outputs if o.status in FINISHED and o.client_id in clock.finish]
        dropped = [clock.finish[o.client_id] for o in outputs if o.status == "dropped" and o.client_id in clock.finish]
        # the round closes when enough clients finished; until then it also notices every dropout
        end = max(averaged) if averaged and len(averaged) >= self.keep else max(averaged + dropped, default=0.0)
        if self.deadline_s is not None:
            end = self.deadline_s if self.missed_deadline else min(end, self.deadline_s)
        return float(end)


__all__ = ["AvailabilityTrace", "ClientTrace", "Draw", "RoundJudge", "cohort_size", "draw", "draw_traced",
           "load_trace", "phase_fractions", "read_plain", "truncate"]
