"""The executor interface: where the clients, the aggregation and the evaluation of a run execute.

The orchestrator and the methods' round plans know only this interface, six verbs:
:meth:`Executor.start`, :meth:`Executor.run_clients`, :meth:`Executor.aggregate`,
:meth:`Executor.run_and_aggregate` (both at once, each state folded into the average as
soon as its client finishes), :meth:`Executor.evaluate` and :meth:`Executor.close`.
:class:`~sfp_ray.executors.serial.SerialExecutor` runs everything in-process (the
reference); :class:`~sfp_ray.executors.ray.RayExecutor` runs the same roles inside Ray
actors. A test checks that they agree.

Global and client states are :class:`State` handles owned by the executor that made them
(in-process tensors, or object references in the Ray object store): the orchestrator
passes them back to the executor without looking inside, and calls
:meth:`State.tensors` only when it needs the values (checkpoints, the final state).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sfp_ray.aggregation import PartSums, aggregation_flops, to_arrays
from sfp_ray.config import Config
from sfp_ray.costs import FlopMeter
from sfp_ray.data import ArrayDataset
from sfp_ray.methods.base import Method
from sfp_ray.placement import CutPlan, with_cut
from sfp_ray.records import FINISHED
from sfp_ray.roles.client import ClientOutput, ClientTask
from sfp_ray.roles.evaluation import EvalResult
from sfp_ray.roles.workspace import Workspace
from sfp_ray.tensors import as_tensor, as_view


@dataclass
class RunSpec:
    """Everything an executor needs to host a run, prepared (and validated) by the orchestrator."""

    cfg: Config
    method: Method
    num_classes: int
    checkpoint: str | None
    train: ArrayDataset
    test: ArrayDataset
    client_indices: list[np.ndarray]
    devices: list[Any]  # DeviceProfile per client
    server_device: Any
    notices: list[str] = field(default_factory=list)  # one line per cap applied or fallback taken
    #: the global state to start from instead of the method's initial one (a resumed run)
    start_state: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None] | None = None
    #: every client's cut under ``split.policy=per_device`` (None: every client at the configured cut)
    cut_plan: CutPlan | None = None
    #: who is online when (``federation.availability_trace``; None: the device classes' ``availability``)
    trace: Any = None

    def cut_of(self, client_id: int) -> tuple[int, int]:
        """``(head_blocks, tail_blocks)`` of a client."""
        if self.cut_plan is None:
            return (self.cfg.split.head_blocks, self.cfg.split.tail_blocks)
        return self.cut_plan.cuts[client_id]

    @property
    def global_cut(self) -> tuple[int, int]:
        """The cut of the global model: evaluation and the global state (every client's trained names)."""
        return self.cut_plan.global_cut if self.cut_plan is not None else self.cut_of(0)

    @property
    def server_cut(self) -> tuple[int, int]:
        """The cut whose body holds every client's body (the server's workspace)."""
        return self.cut_plan.server_cut if self.cut_plan is not None else self.cut_of(0)

    def workspace(self, parts: Sequence[str], *, meta: bool = False, cut: tuple[int, int] | None = None,
                  device: torch.device | str = "cpu") -> Workspace:
        """A workspace of this run holding ``parts`` on ``device``, cut at ``cut`` (default: the global cut)."""
        c = with_cut(self.cfg, cut if cut is not None else self.global_cut)
        return Workspace(c.model, c.split, c.prompt, num_classes=self.num_classes, checkpoint=self.checkpoint,
                         seed=c.seed, parts=parts, meta=meta, device=device)

    def initial_state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """The method's global state before round 1: ``(client part, server part or None)``.

        Built from a workspace holding only the parts the state covers; a resumed run
        starts from its checkpoint's state (``start_state``) instead.
        """
        if self.start_state is not None:
            client, server = self.start_state
            return dict(client), (dict(server) if server is not None else None)
        ws = self.workspace(self.method.state_parts())
        server = self.method.server_names(ws)
        return (ws.get_state(self.method.client_names(ws), copy=False),
                ws.get_state(server, copy=False) if server else None)


class State(abc.ABC):
    """A global or client state held by an executor, possibly elsewhere.

    It has two parts: what the client trains (``client``), and what the server trains for
    it (``server``: the body of the split-learning baselines; None for other methods).
    """

    @abc.abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """Both parts' values as one name -> tensor mapping in this process."""

    @abc.abstractmethod
    def parts(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """``(client part, server part or None)`` as tensors in this process (checkpoints)."""


@dataclass(frozen=True)
class LocalState(State):
    """A state held in this process."""

    client: Mapping[str, torch.Tensor]
    server: Mapping[str, torch.Tensor] | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**self.client, **(self.server or {})}

    def parts(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        return dict(self.client), (dict(self.server) if self.server is not None else None)


@dataclass
class Aggregate:
    """The new global state of a round and what averaging cost, per part (``all``, ``body``)."""

    state: State
    flops: dict[str, float]
    wall_s: float


@dataclass
class Started:
    """What :meth:`Executor.start` returns: the initial global state and facts about the set-up."""

    state: State
    resources: list[dict[str, Any]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


class Executor(abc.ABC):
    """Runs clients, aggregation and evaluation for the orchestrator."""

    name: str = "base"

    @abc.abstractmethod
    def start(self, spec: RunSpec) -> Started:
        """Build workspaces / actors for a run; return the initial global state."""

    @abc.abstractmethod
    def run_clients(self, tasks: Sequence[ClientTask], state: State) -> list[ClientOutput]:
        """Run one round's client work from the global ``state``; outputs sorted by client id.

        A client whose attempt fails (its task raises, its process dies, its loss or state
        is not finite) is tried once more; every output says ``ok``, ``retried`` or
        ``failed`` (no state then). When the server dies, the executor restarts it and
        raises :class:`~sfp_ray.errors.ServerLost`: the caller starts the round over.
        """

    @abc.abstractmethod
    def aggregate(self, outputs: Sequence[ClientOutput], state: State) -> Aggregate:
        """Sample-count-weighted FedAvg of the outputs' states, each name over the clients that hold it.

        ``state`` is the round's global state: under per-device cuts, a name no client of
        the round holds (a tail block only deeper cuts have) keeps its value from it.
        """

    def run_and_aggregate(self, tasks: Sequence[ClientTask], state: State,
                          accept: Callable[[ClientOutput], bool]) -> tuple[list[ClientOutput], Aggregate | None]:
        """Run a round's clients and average the outputs ``accept`` takes, as they finish.

        Returns the outputs sorted by client id (the accepted ones without their state: it
        went into the average) and the new global state (None when nothing was accepted).
        Executors fold each accepted state into a running sum as soon as its client finishes
        and release it, so memory does not grow with the clients of a round; this default
        runs every client first, then averages.
        """
        outputs = sorted(self.run_clients(tasks, state), key=lambda o: o.client_id)
        usable = [o for o in outputs if accept(o)]
        agg = self.aggregate(usable, state) if usable else None
        for o in usable:
            o.state = None
        return outputs, agg

    @abc.abstractmethod
    def evaluate(self, state: State) -> EvalResult:
        """Test accuracy/loss of the model assembled from the global ``state``."""

    def resources(self) -> list[dict[str, Any]]:
        """One ``resources.csv`` row per process the executor runs on, now (none in-process)."""
        return []

    def close(self) -> None:  # noqa: B027  (optional hook, nothing to release by default)
        """Release actors / memory."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()




class CutRoles:
    """The client role and the FLOP meter of each cut a process serves, each built on first use.

    ``workspace(cut)`` makes the workspace a role of ``cut`` trains in; cut None stands for the
    run's configured cut (its role gets the configuration as it is). FLOPs are counted once per
    shape and reused, and shapes do not tell cuts apart, so every cut has a meter of its own.
    """

    def __init__(self, method: Method, cfg: Config, workspace: Callable[[tuple[int, int] | None], Workspace]) -> None:
        self.method, self.cfg, self._workspace = method, cfg, workspace
        self.roles: dict[tuple[int, int] | None, Any] = {}
        self.meters: dict[tuple[int, int], FlopMeter] = {}
        #: the meter of the configured cut (and of evaluation)
        self.meter = FlopMeter()

    def role(self, cut: tuple[int, int] | None) -> Any:
        """The client role of ``cut``."""
        key = tuple(cut) if cut is not None else None
        role = self.roles.get(key)
        if role is None:
            cfg = with_cut(self.cfg, key) if key is not None else self.cfg
            role = self.roles[key] = self.method.client_role(self._workspace(key), cfg)
        return role

    def meter_of(self, cut: tuple[int, int] | None) -> FlopMeter:
        """The FLOP meter of ``cut``."""
        return self.meter if cut is None else self.meters.setdefault(tuple(cut), FlopMeter())


def failed_output(task: ClientTask, attempts: int, error: str, wall_s: float = 0.0) -> ClientOutput:
    """The output of a client that failed every attempt: no state, no costs, its error (one line)."""
    return ClientOutput(client_id=task.client_id, state=None, num_samples=len(task.indices),
                        client_state=dict(task.client_state), costs=[], messages=[], timeline=[],
                        train_loss=float("nan"), wall_s=wall_s, status="failed", attempts=attempts, error=error)


def settle(out: ClientOutput, attempt: int, errors: Sequence[str]) -> ClientOutput:
    """Mark a client's output ``ok`` (first attempt) or ``retried`` (with the error that caused the retry)."""
    out.status = "ok" if attempt == 1 else "retried"
    out.attempts = attempt
    out.error = errors[0] if errors else ""
    return out


class TensorSums:
    """:class:`~sfp_ray.aggregation.PartSums` for states of torch tensors; averages come back as tensors.

    Each name comes back in the dtype of the first state that held it (float32 for a
    non-float one), as :func:`~sfp_ray.aggregation.fedavg` does.
    """

    def __init__(self) -> None:
        self.sums = PartSums()
        self.types: dict[str, torch.dtype] = {}
        self.server_types: dict[str, torch.dtype] = {}

    @staticmethod
    def _note(types: dict[str, torch.dtype], state: Mapping[str, Any]) -> None:
        for k, v in state.items():
            if k not in types:
                dt = as_view(v).dtype
                types[k] = dt if dt.is_floating_point else torch.float32

    def add(self, weight: float, client: Mapping[str, Any], server: Mapping[str, Any] | None = None) -> None:
        """Fold one client's state parts (name -> tensor or array)."""
        self._note(self.types, client)
        if server is not None:
            self._note(self.server_types, server)
        self.sums.add(weight, to_arrays(client), to_arrays(server) if server is not None else None)

    def finish(self, previous: Mapping[str, Any] | None = None,
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict[str, float]]:
        """``(client part, server part or None, FLOPs per part)`` as tensors (see ``PartSums.finish``)."""
        def back(arrays: Mapping[str, np.ndarray], types: Mapping[str, torch.dtype]) -> dict[str, torch.Tensor]:
            return {k: torch.from_numpy(v).to(types[k]) if k in types else as_tensor(v) for k, v in arrays.items()}

        new_client, new_server, flops = self.sums.finish(to_arrays(previous) if previous is not None else None)
        prev_types = {k: as_view(v).dtype for k, v in previous.items()} if previous is not None else {}
        return (back(new_client, {**prev_types, **self.types}),
                back(new_server, self.server_types) if new_server is not None else None, flops)


def fedavg_parts(weights: Sequence[float], ids: Sequence[int], client: Sequence[Mapping[str, Any]],
                 server: Sequence[Mapping[str, Any]] | None, previous: Mapping[str, Any] | None = None,
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict[str, float]]:
    """FedAvg of states of torch tensors, summed in ascending client id; returns tensors.

    Returns ``(client part, server part or None, FLOPs per part)`` (see
    :func:`~sfp_ray.aggregation.average_parts`).
    """
    if len(weights) != len(client) or len(ids) != len(client):
        raise ValueError(f"fedavg: {len(client)} states but {len(weights)} weights and {len(ids)} ids")
    sums = TensorSums()
    for i in sorted(range(len(client)), key=lambda j: ids[j]):
        sums.add(weights[i], client[i], server[i] if server is not None else None)
    return sums.finish(previous)


__all__ = ["FINISHED", "Aggregate", "CutRoles", "Executor", "LocalState", "RunSpec", "Started", "State",
           "TensorSums", "aggregation_flops", "failed_output", "fedavg_parts", "settle"]
