"""The round clock: plays the clients' timelines against one server (and its link) to time a round.

:func:`simulate_round` runs clients and their links in parallel and the server as one
first-come-first-served queue; with a :class:`ServerLink` the transfers also share the
server's link (processor sharing or FIFO). The model and its validation: ``docs/clock.md``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sfp_ray.records import Segment


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
