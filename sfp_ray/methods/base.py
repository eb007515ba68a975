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
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from sfp_ray.config import Config, TrainConfig, dotted_items
from sfp_ray.costs import RoundClock, ServerLink, simulate_round
from sfp_ray.errors import ConfigError
from sfp_ray.methods.catalog import (
    FEDERATED_PHASES,
    NOT_IN_RESULTS,
    SFPROMPT_PHASES,
    SPLIT_PHASES,
    MethodInfo,
    ignored,
    reads,
    resolve,
)
from sfp_ray.records import FINISHED, Segment
from sfp_ray.roles.client import ClientOutput, ClientRole, ClientTask, bypass_loss, forward_pass, model_loss, tail_loss
from sfp_ray.roles.server import BODY_PREFIX
from sfp_ray.roles.workspace import Workspace


@dataclass(frozen=True)
class ServerSpec:
    """The server a method needs: a body that is frozen (``train=None``) or trained per client."""

    train: TrainConfig | None = None


class Runner(Protocol):
    """The executor verbs a round plan uses (see :class:`sfp_ray.executors.base.Executor`)."""

    def run_clients(self, tasks: Sequence[ClientTask], state: Any) -> list[ClientOutput]: ...

    def aggregate(self, outputs: Sequence[ClientOutput], state: Any) -> Any: ...

    def run_and_aggregate(self, tasks: Sequence[ClientTask], state: Any,
                          accept: Callable[[ClientOutput], bool]) -> tuple[list[ClientOutput], Any]: ...


class Judge(Protocol):
    """Marks a round's outputs ``dropped`` or ``late`` before averaging (:class:`sfp_ray.availability.RoundJudge`)."""

    def __call__(self, outputs: Sequence[ClientOutput]) -> None: ...

    @property
    def decides_alone(self) -> bool:
        """Whether each client's fate is known without the others' (no deadline, no over-selection)."""

    def drops(self, client_id: int) -> bool:
        """Whether the client drops out this round (known before it runs)."""


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
    """Every client starts from the global state; their states are averaged (FedAvg).

    When each client's fate is known on its own (no deadline, no over-selection; dropouts
    are drawn before the round), the executor folds every accepted state into the average
    as soon as its client finishes (:meth:`~sfp_ray.executors.base.Executor.run_and_aggregate`),
    so a round holds a constant number of states whatever its size. A deadline or
    over-selection needs every client's simulated finish first: then the round runs all
    clients, the judge decides, and the chosen states are averaged.
    """

    def run(self, runner: Runner, tasks: Sequence[ClientTask], state: Any, judge: Judge | None = None) -> RoundOutcome:
        if not tasks:
            return RoundOutcome([], state)
        if judge is None or judge.decides_alone:
            def accept(o: ClientOutput) -> bool:
                return o.status in FINISHED and (judge is None or not judge.drops(o.client_id))

            outputs, agg = runner.run_and_aggregate(tasks, state, accept)
            outputs = sorted(outputs, key=lambda o: o.client_id)
            if judge is not None:
                judge(outputs)
            if agg is None:
                return RoundOutcome(outputs, state)
            return RoundOutcome(outputs, agg.state, agg.flops, agg.wall_s)
        outputs = sorted(runner.run_clients(tasks, state), key=lambda o: o.client_id)
        if judge is not None:
            judge(outputs)
        usable = [o for o in outputs if o.status in FINISHED]
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
            if out.status in FINISHED:
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
        ignores: configuration keys (a section stands for all its keys) whose values the method
            never reads once its forced settings apply (see :meth:`reads`); default none.
    """

    #: phase names its cost rows may carry
    phases: tuple[str, ...] = ()
    #: the parts of the split model a client process holds
    client_parts: tuple[str, ...] = ("head", "tail")
    #: how a round runs
    plan: RoundPlan = ParallelFedAvg()

    def __init__(self, name: str, description: str, overrides: Mapping[str, Any] | None = None, *,
                 default_lr: float = 1e-3, ignores: Sequence[str] = ()) -> None:
        self.name = name
        self.description = description
        self.overrides = dict(overrides or {})
        self.default_lr = float(default_lr)
        self.ignores = tuple(ignores)

    @classmethod
    def from_info(cls, info: MethodInfo, **kwargs: Any) -> Method:
        """The method described by a catalogue entry (``kwargs``: what the subclass needs besides)."""
        return cls(info.name, info.description, overrides=info.overrides, default_lr=info.default_lr,
                   ignores=info.ignores, **kwargs)

    def info(self) -> MethodInfo:
        """The method's catalogue entry (what ``sfp-ray methods`` lists and a sweep compares)."""
        return MethodInfo(self.name, self.description, self.default_lr, dict(self.overrides), self.ignores)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def reads(self, cfg: Config | None = None) -> list[str]:
        """The dotted configuration keys whose values this method reads: every key but those it ignores.

        ``ignores`` (keys, or sections standing for all their keys) is the method's declaration of
        what it never looks at once its forced settings are applied (:mod:`sfp_ray.methods.catalog`).
        """
        return reads(self.info(), dotted_items(cfg if cfg is not None else Config()))

    def effective_config(self, cfg: Config) -> dict[str, Any]:
        """What identifies a run of this method: the resolved configuration (:meth:`resolve`) restricted
        to the keys it reads, without the sections that never change results (``ray``, ``project``).

        Two configurations with the same effective configuration (and seed) give the same run.
        """
        resolved = dotted_items(self.resolve(cfg))
        return {k: v for k, v in resolved.items()
                if k.split(".", 1)[0] not in NOT_IN_RESULTS and not ignored(k, self.ignores)}

    def resolve(self, cfg: Config) -> Config:
        """The configuration this method runs with: its forced settings, and its own learning rate
        when ``train.lr`` is null.
        """
        return resolve(self.info(), cfg)

    # ------------------------------------------------------------------ state

    @abc.abstractmethod
    def client_names(self, ws: Workspace) -> list[str]:
        """The client's trainable state: parameter names of the split model."""

    def server(self, cfg: Config) -> ServerSpec | None:
        """The server this method's clients use (None: clients never reach a body)."""
        return None

    def cuts_per_device(self, cfg: Config) -> bool:
        """Whether ``split.policy=per_device`` gives this method's clients cuts of their own.

        False when its clients never reach a server (the cut does not apply); a ConfigError when
        something of the method must be alike on every client: a body the server trains and
        shares, or deep prompts, which live in the blocks of each client's own cut.
        """
        server = self.server(cfg)
        if server is None:
            return False
        if server.train is not None:
            raise ConfigError(f"split.policy=per_device: {self.name}'s server trains the body it shares between "
                              "clients, so every client must be cut alike; use split.policy=fixed")
        if cfg.prompt.deep and cfg.prompt.num_tokens > 0:
            raise ConfigError("split.policy=per_device: deep prompts (prompt.deep=true) belong to the blocks of each "
                              "client's own cut and cannot be averaged across cuts; use prompt.deep=false")
        return True

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

    def client_passes(self, role: ClientRole, x: Any, y: Any) -> list[Callable[[], Any]]:
        """The passes a client of this method runs on one training batch ``(x, y)``, as callables.

        :mod:`sfp_ray.sizing` runs them on ``meta`` tensors to measure a client's activation
        memory. A client holding the whole model runs it forward and backward; a split client
        runs the split step (head, tail on what the body sends, head backward when something
        before the cut trains) and the body-bypassed step of SFPrompt's local-loss update.
        """
        split = role.ws.split
        if role.whole_model:
            return [lambda: model_loss(split, x, y)]
        head_trains = bool(getattr(role, "head_trains", False))
        with torch.no_grad():
            body_out = split.body(split.head(x))  # the shape the server sends back (the body runs elsewhere)

        def split_step() -> None:
            h = forward_pass(split.head, x, head_trains)
            tail_loss(split, torch.empty_like(body_out).requires_grad_(True), y)
            if head_trains:
                h.backward(torch.empty_like(h))

        def bypassed_step() -> None:
            h = forward_pass(split.head, x, head_trains)
            hd = h.detach().requires_grad_(head_trains)
            bypass_loss(split, hd, y)
            if head_trains:
                h.backward(hd.grad)

        return [split_step, bypassed_step]

    # ------------------------------------------------------------------ costs

    @abc.abstractmethod
    def project(self, ctx: Any) -> Projection:
        """Per-client per-round costs from the method's cost model (see :mod:`sfp_ray.projection`)."""


@dataclass(frozen=True)
class Projection:
    """What a method's cost model says one client costs in one round (a row of ``projection.csv``).

    FLOPs and bytes are per client per round; ``client_flops`` spreads pruning's scoring over the
    rounds that share it, ``client_flops_first_round`` charges it whole. ``local_epochs`` is set
    by a method that overrides the configured count (None: as configured); ``messages_per_round``
    by a method that counts its messages.
    """

    client_flops: float
    client_flops_first_round: float
    prune_flops: float
    local_update_flops: float
    split_client_flops: float
    server_flops: float
    bytes_up: float
    bytes_down: float
    split_bytes_per_sample: float
    state_bytes: float
    split_epochs: int
    local_epochs: int | None = None
    messages_per_round: float | None = None

    def row(self) -> dict[str, float]:
        """The record as columns, in field order (the unset optional ones left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


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

    def wire_bytes(self, t: Any) -> int:
        """Bytes of an activation or gradient crossing the cut: its elements in ``train.precision``'s dtype."""
        from sfp_ray.compute import wire_dtype

        return int(t.numel()) * torch.empty((), dtype=wire_dtype(self.cfg.train.precision)).element_size()

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
