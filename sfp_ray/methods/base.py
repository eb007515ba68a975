"""What a method is: one object that owns everything method-specific.

A :class:`Method` (in the spirit of Flower's ``Strategy`` and pfl-research's algorithm
objects) owns

* its **trainable set** (:meth:`Method.client_names`) and the parts a client process must
  hold (:attr:`Method.client_parts`);
* its **client role** (:meth:`Method.client_role`) and its **server mode**
  (:meth:`Method.server`: no server, a frozen body, or a trained body);
* its **round plan** (:attr:`Method.plan`): clients in parallel followed by FedAvg, or a
  sequential relay from client to client;
* its **cost model** (:meth:`Method.project`) for paper-scale projections, built from the
  same pass functions its client runs.

The orchestrator, the executors and the projection run every method through this
interface; nothing outside a method's own file looks at its name or settings. Adding a
method means adding one file under ``sfp_ray/methods/`` that registers its objects.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sfp_ray.config import Config
from sfp_ray.costs import RoundClock, ServerLink, simulate_round
from sfp_ray.records import Segment
from sfp_ray.roles.client import ClientOutput, ClientRole, ClientTask
from sfp_ray.roles.server import BODY_PREFIX
from sfp_ray.roles.workspace import Workspace

SFPROMPT_PHASES = ("download", "prune", "local_update", "split_train", "upload", "aggregate", "eval")
FEDERATED_PHASES = ("download", "local_train", "upload", "aggregate", "eval")
SPLIT_PHASES = ("download", "split_train", "upload", "aggregate", "eval")  # split-learning baselines


@dataclass(frozen=True)
class ServerSpec:
    """The server a method needs: a body that is frozen (``train=None``) or trained per client."""

    train: Any = None  # TrainConfig | None


class Runner(Protocol):
    """The executor verbs a round plan uses (see :class:`sfp_ray.executors.base.Executor`)."""

    def run_clients(self, tasks: Sequence[ClientTask], state: Any) -> list[ClientOutput]: ...

    def aggregate(self, outputs: Sequence[ClientOutput], state: Any) -> Any: ...


#: Marks a round's outputs ``dropped`` or ``late`` before averaging (see :class:`sfp_ray.availability.RoundJudge`).
Judge = Callable[[Sequence[ClientOutput]], None]


@dataclass
class RoundOutcome:
    """A round's client outputs (sorted by client id) and the new global state with its cost."""

    outputs: list[ClientOutput]
    state: Any
    aggregate_flops: dict[str, float] = field(default_factory=dict)
    aggregate_wall_s: float = 0.0


class RoundPlan(abc.ABC):
    """How a round's clients run and how their states become the next global state."""

    @abc.abstractmethod
    def run(self, runner: Runner, tasks: Sequence[ClientTask], state: Any, judge: Judge | None = None) -> RoundOutcome:
        """Run the round; ``judge`` marks outputs dropped or late before anything is averaged."""

    @abc.abstractmethod
    def clock(self, timelines: Mapping[int, Sequence[Segment]], link: ServerLink | None = None) -> RoundClock:
        """The round's simulated schedule (before aggregation); ``link``: the shared server link, if any."""


class ParallelFedAvg(RoundPlan):
    """Every client starts from the global state; their states are averaged (FedAvg)."""

    def run(self, runner: Runner, tasks: Sequence[ClientTask], state: Any, judge: Judge | None = None) -> RoundOutcome:
        outputs = sorted(runner.run_clients(tasks, state), key=lambda o: o.client_id) if tasks else []
        if judge is not None:
            judge(outputs)
        usable = [o for o in outputs if o.status in ("ok", "retried")]
        if not usable:
            return RoundOutcome(outputs, state)
        agg = runner.aggregate(usable, state)
        return RoundOutcome(outputs, agg.state, agg.flops, agg.wall_s)

    def clock(self, timelines: Mapping[int, Sequence[Segment]], link: ServerLink | None = None) -> RoundClock:
        return simulate_round(timelines, link=link)


class SequentialRelay(RoundPlan):
    """Clients one after another (ascending id), each starting from the previous one's state.

    The last client's state becomes the global state as it is: no averaging (vanilla split
    learning, Gupta & Raskar 2018).
    """

    def run(self, runner: Runner, tasks: Sequence[ClientTask], state: Any, judge: Judge | None = None) -> RoundOutcome:
        outputs = []
        current = state
        for task in sorted(tasks, key=lambda t: t.client_id):
            (out,) = runner.run_clients([task], current)
            if judge is not None:
                judge([out])
            outputs.append(out)
            if out.status in ("ok", "retried"):
                current = out.state
        return RoundOutcome(outputs, current, {"all": 0.0})

    def clock(self, timelines: Mapping[int, Sequence[Segment]], link: ServerLink | None = None) -> RoundClock:
        return simulate_round(timelines, sequential=True, link=link)


class Method(abc.ABC):
    """A registered method. Subclasses implement the trainable set, the client role and the cost model.

    Args:
        name: registry name (``--method``).
        description: one line for listings.
        overrides: dotted settings the method forces (see :meth:`resolve`).
        default_lr: the learning rate it trains with when ``train.lr`` is null (the default),
            tuned per method on the default task (``benchmarks/results/learning_rate.md``).
    """

    #: phase names its cost rows may carry
    phases: tuple[str, ...] = ()
    #: the parts of the split model a client process holds
    client_parts: tuple[str, ...] = ("head", "tail")
    #: how a round runs
    plan: RoundPlan = ParallelFedAvg()

    def __init__(self, name: str, description: str, overrides: Mapping[str, Any] | None = None, *,
                 default_lr: float = 1e-3) -> None:
        self.name = name
        self.description = description
        self.overrides = dict(overrides or {})
        self.default_lr = float(default_lr)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def resolve(self, cfg: Config) -> Config:
        """The configuration this method runs with: its forced settings, and its own learning rate
        when ``train.lr`` is null.
        """
        lr = {"train.lr": self.default_lr} if cfg.train.lr is None else {}
        return cfg.replace(method=self.name, **lr, **self.overrides)

    # ------------------------------------------------------------------ state

    @abc.abstractmethod
    def client_names(self, ws: Workspace) -> list[str]:
        """The client's trainable state: parameter names of the split model."""

    def server(self, cfg: Config) -> ServerSpec | None:
        """The server this method's clients use (None: clients never reach a body)."""
        return None

    def state_parts(self) -> tuple[str, ...]:
        """Parts of the model the global state covers (the client's, plus the body when it trains)."""
        return self.client_parts

    def server_names(self, ws: Workspace) -> list[str]:
        """The state the server trains for each client (the body of split learning); empty for most methods."""
        return []

    @abc.abstractmethod
    def client_role(self, ws: Workspace, cfg: Config) -> ClientRole:
        """The client's procedure on a workspace holding :attr:`client_parts`."""

    # ------------------------------------------------------------------ round

    def run_round(self, runner: Runner, tasks: Sequence[ClientTask], state: Any,
                  judge: Judge | None = None) -> RoundOutcome:
        return self.plan.run(runner, tasks, state, judge)

    @property
    def sequential(self) -> bool:
        """Whether the round plan runs clients one after another."""
        return isinstance(self.plan, SequentialRelay)

    def round_clock(self, timelines: Mapping[int, Sequence[Segment]], link: ServerLink | None = None) -> RoundClock:
        """The round's simulated schedule under this method's plan (``link``: a shared server link)."""
        return self.plan.clock(timelines, link)

    # ------------------------------------------------------------------ costs

    @abc.abstractmethod
    def project(self, ctx: Any) -> dict[str, float]:
        """Per-client per-round costs from the method's cost model (see :mod:`sfp_ray.projection`)."""


@dataclass
class CostContext:
    """What a method's cost model works on: one sample through the split model on ``meta``.

    ``ws`` holds a workspace built on the ``meta`` device from the run's configuration (no
    storage, no arithmetic); ``x``/``y`` are one input image and label; ``samples`` is the
    client's local data size. :meth:`flops` runs a pass under the FLOP counter. A ViT's
    FLOPs and message sizes are linear in the batch, so per-sample figures times the
    number of samples are what a round executes.
    """

    ws: Workspace
    cfg: Config
    x: Any
    y: Any
    samples: int

    @property
    def split(self) -> Any:
        return self.ws.split

    def flops(self, fn: Any) -> int:
        from sfp_ray.costs import count_flops

        return count_flops(fn)[1]

    def state_bytes(self, names: Sequence[str]) -> int:
        params = dict(self.split.named_parameters())
        return sum(params[n].numel() * params[n].element_size() for n in names)

    def participations(self) -> float:
        """Expected rounds a client takes part in (for spreading one-off costs), at least 1."""
        f = self.cfg.federation
        return max(1.0, f.rounds * f.clients_per_round / f.num_clients)


def is_body(name: str) -> bool:
    """Whether a state name belongs to the server's body."""
    return name.startswith(BODY_PREFIX)


__all__ = [
    "FEDERATED_PHASES",
    "Judge",
    "SFPROMPT_PHASES",
    "SPLIT_PHASES",
    "Method",
    "ParallelFedAvg",
    "CostContext",
    "RoundOutcome",
    "RoundPlan",
    "Runner",
    "SequentialRelay",
    "ServerSpec",
    "is_body",
]
