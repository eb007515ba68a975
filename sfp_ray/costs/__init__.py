"""Cost accounting: executed FLOPs, message bytes, wall time and simulated device time.

FLOPs are counted from the operations actually executed, once per distinct key and then
reused (:mod:`~sfp_ray.costs.flops`); bytes per message where it is sent, as payload and
serialized size (:mod:`~sfp_ray.costs.ledger`).

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

The package's modules: :mod:`~sfp_ray.costs.flops` (FLOP and :class:`Work` counting, the
process-wide :data:`COUNT_GATE`), :mod:`~sfp_ray.costs.ledger` (message bytes and the
:class:`Ledger`) and :mod:`~sfp_ray.costs.clock` (the round clock); every public name is
re-exported here.
"""

from __future__ import annotations

from sfp_ray.costs.clock import LinkPolicy, RoundClock, ServerLink, simulate_round
from sfp_ray.costs.flops import COUNT_GATE, FlopMeter, Work, count_flops, count_work
from sfp_ray.costs.ledger import Ledger, payload_bytes, serialized_bytes, shape_str, state_bytes

__all__ = [
    "COUNT_GATE",
    "FlopMeter",
    "Ledger",
    "LinkPolicy",
    "RoundClock",
    "ServerLink",
    "Work",
    "count_flops",
    "count_work",
    "payload_bytes",
    "serialized_bytes",
    "shape_str",
    "simulate_round",
    "state_bytes",
]
