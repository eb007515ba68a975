"""Typed records: the rows every report file is made of.

One leaf module holds every record type, so that the orchestrator emits them, the
executors and roles fill them in, and :mod:`sfp_ray.reports` turns them into files,
without any of them defining a row format of its own.

Who pays for a cost row is said once, when the row is made, in its ``side`` column:

* ``client``: compute on the client's device (its head, tail or whole model);
* ``server``: compute on the server (the body, aggregation, evaluation);
* ``link``: a transfer over the client's own up- or downlink.

A row's ``sim_s`` is therefore compute time for ``client``/``server`` rows and transfer
time for ``link`` rows, never a mix. :func:`tally` is the one rule that turns rows into
client FLOPs, server FLOPs and bytes; the orchestrator and the reports both call it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Side = Literal["client", "server", "link"]
Direction = Literal["up", "down"]
Kind = Literal["activation", "gradient", "parameters"]
Status = Literal["ok", "retried", "failed", "offline", "dropped", "late"]
#: Statuses of a client whose state reaches the round's result (averaged, or relayed).
FINISHED: tuple[Status, ...] = ("ok", "retried")

#: The phase of evaluation rows: a measurement of the global model, not part of the
#: protocol, so it counts towards neither client nor server FLOPs.
EVAL_PHASE = "eval"

#: ``client_id`` of rows that belong to no client (aggregation, evaluation).
NO_CLIENT = -1


@dataclass
class CostRecord:
    """Cost of one (round, client, phase, part, side) cell: a row of ``costs.csv``."""

    round: int
    client_id: int
    device: str
    phase: str
    part: str
    side: Side
    flops: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    serialized_up: int = 0
    serialized_down: int = 0
    messages: int = 0
    wall_s: float = 0.0
    sim_s: float = 0.0
    samples: int = 0
    #: measured wall seconds of the cell's own compute (client: its timed passes and optimizer steps; server:
    #: the body's requests); 0 on link rows. ``sim_s`` of a compute row is the clock's figure for the same work.
    compute_wall_s: float = 0.0
    #: CPU seconds of the same compute in the thread that ran it (``time.thread_time``): time the operating
    #: system gave other processes is not in it, so it is the figure to trust on a busy machine at one thread
    compute_cpu_s: float = 0.0


@dataclass
class MessageRecord:
    """One message crossing the network: a row of ``messages.csv``.

    ``shapes`` lists the shape of every tensor in the payload (``"4x27x192"``; several
    tensors joined by ``;``), so a report can show exactly what crossed the cut.
    """

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
    shapes: str = ""


@dataclass(frozen=True)
class Segment:
    """A stretch of a client's simulated round spent on one side (for the round clock).

    Segments of a client run one after another; ``client`` and ``link`` segments use the
    client's own device and link, ``server`` segments queue for the one server. A ``link``
    segment also says what it carries (``nbytes`` in ``direction``, and the one-way
    latency included in ``seconds``), so that a round clock with a shared server link
    (``devices.server_link``) can stretch it; alone on the link it takes ``seconds``.
    """

    phase: str
    side: Side
    seconds: float
    nbytes: float = 0.0
    direction: str = ""
    latency_s: float = 0.0


@dataclass
class RoundRecord:
    """One row of ``rounds.csv``."""

    run_id: str
    method: str
    round: int
    participants: int
    test_accuracy: float
    test_loss: float
    train_loss: float
    wall_s: float
    sim_s: float
    bytes_round: int
    bytes_total: int
    client_flops_round: float
    client_flops_total: float
    server_flops_round: float
    server_flops_total: float
    cum_wall_s: float
    cum_sim_s: float
    server_queue_s: float = 0.0
    seed: int = 0
    selected: int = 0
    finished: int = 0
    failed: int = 0
    offline: int = 0
    dropped: int = 0
    late: int = 0
    #: ``train.precision`` the round computed in
    precision: str = "fp32"


@dataclass
class ClientRecord:
    """One row of ``clients.csv``: what became of one selected client in one round."""

    round: int
    client_id: int
    device: str
    status: Status
    attempts: int = 1
    error: str = ""
    samples: int = 0
    kept: int = 0
    wall_s: float = 0.0
    sim_s: float = 0.0
    head_blocks: int = 0
    tail_blocks: int = 0
    compute_wall_s: float = 0.0
    compute_cpu_s: float = 0.0
    compute_sim_s: float = 0.0
    flops_per_s: float = 0.0
    uplink_mbps: float = 0.0
    downlink_mbps: float = 0.0


@dataclass
class RunMeta:
    """Static facts of a run, attached to every row it emits."""

    run_id: str
    method: str
    executor: str
    config: Any  # sfp_ray.config.Config
    devices: list[str]
    num_classes: int
    train_sizes: list[int]
    checkpoint: str | None
    seed: int = 0
    notices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Tally:
    """Client FLOPs, server FLOPs and bytes of a set of cost rows (evaluation excluded)."""

    client_flops: float = 0.0
    server_flops: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0

    @property
    def bytes(self) -> int:
        return self.bytes_up + self.bytes_down


def tally(rows: Iterable[Any]) -> Tally:
    """Sum rows (``CostRecord`` or any objects with the same attributes) by the side that paid.

    Evaluation (phase ``eval``) is a measurement of the global model and counts towards
    neither side. Bytes are the ``link`` rows' (every transfer crosses a client's link).

    Example:
        >>> t = tally([CostRecord(1, 0, "rpi4", "split_train", "head", "client", flops=5.0),
        ...            CostRecord(1, 0, "edge", "split_train", "body", "server", flops=7.0),
        ...            CostRecord(1, 0, "rpi4", "split_train", "head", "link", bytes_up=64),
        ...            CostRecord(1, -1, "edge", "eval", "all", "server", flops=100.0)])
        >>> t.client_flops, t.server_flops, t.bytes
        (5.0, 7.0, 64)
    """
    client = server = 0.0
    up = down = 0
    for r in rows:
        if r.phase == EVAL_PHASE:
            continue
        if r.side == "client":
            client += float(r.flops)
        elif r.side == "server":
            server += float(r.flops)
        else:
            up += int(r.bytes_up)
            down += int(r.bytes_down)
    return Tally(client, server, up, down)


__all__ = [
    "EVAL_PHASE",
    "NO_CLIENT",
    "ClientRecord",
    "CostRecord",
    "Direction",
    "Kind",
    "MessageRecord",
    "RoundRecord",
    "RunMeta",
    "Segment",
    "Side",
    "FINISHED",
    "Status",
    "Tally",
    "tally",
]
