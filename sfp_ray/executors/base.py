"""The executor interface: how one round of client work is run.

The orchestrator knows only this interface. :class:`~sfp_ray.executors.serial.SerialExecutor`
runs the roles in-process (the reference); :class:`~sfp_ray.executors.ray_executor.RayExecutor`
runs the same roles inside Ray actors. A test checks that they agree.

A round is ``begin_round`` -> ``run_clients`` -> ``aggregate`` -> ``finish_round``.
``begin_round``/``finish_round`` matter only for methods whose server trains the body
(``Method.trains_body``): they open one body copy per client on the server and average
the copies into the new global body, which stays on the server between rounds
(:meth:`Executor.body_state` reads it). Sequential methods (``Method.sequential``) run
each client as its own one-client round and :meth:`Executor.adopt` the last client's
state instead of aggregating.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sfp_ray.config import Config
from sfp_ray.costs import state_bytes
from sfp_ray.data import ArrayDataset
from sfp_ray.methods import Method
from sfp_ray.roles.client import ClientOutput
from sfp_ray.roles.server import BodyAggregate


@dataclass
class RunSpec:
    """Everything an executor needs to host a run, prepared by the orchestrator."""

    cfg: Config
    method: Method
    num_classes: int
    checkpoint: str | None
    train: ArrayDataset
    test: ArrayDataset
    client_indices: list[np.ndarray]
    devices: list[Any]  # DeviceProfile per client
    server_device: Any


@dataclass
class ClientSpec:
    """One client's assignment for a round."""

    round: int
    client_id: int
    seed: int
    client_state: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalResult:
    accuracy: float
    loss: float
    flops: float
    wall_s: float


@dataclass
class AggregateResult:
    state: Mapping[str, torch.Tensor]
    flops: float
    wall_s: float
    payload_bytes: int


class Executor(abc.ABC):
    """Runs clients, aggregation and evaluation for the orchestrator."""

    name: str = "base"

    @abc.abstractmethod
    def start(self, spec: RunSpec) -> None:
        """Build workspaces / actors for a run."""

    @abc.abstractmethod
    def initial_state(self) -> dict[str, torch.Tensor]:
        """The global trainable state before round 1."""

    @abc.abstractmethod
    def run_clients(self, specs: Sequence[ClientSpec], global_state: Mapping[str, torch.Tensor]) -> list[ClientOutput]:
        """Run one round for the given clients; outputs sorted by client id."""

    @abc.abstractmethod
    def aggregate(self, outputs: Sequence[ClientOutput]) -> AggregateResult:
        """Sample-count-weighted FedAvg of the outputs' states."""

    @abc.abstractmethod
    def evaluate(self, global_state: Mapping[str, torch.Tensor]) -> EvalResult:
        """Test accuracy/loss of the model assembled from the global state."""

    def begin_round(self, round: int, client_ids: Sequence[int]) -> None:  # noqa: B027  (optional hook)
        """Before ``run_clients``: a method that trains the body gets one body copy per client on the server.

        A no-op for every other method.
        """

    def finish_round(self, outputs: Sequence[ClientOutput]) -> BodyAggregate | None:
        """After the round's clients: the server averages their body copies (weighted by
        ``num_samples``) into the new global body, which stays on the server.

        None for a method whose server does not train the body.
        """
        return None

    def body_state(self) -> dict[str, torch.Tensor] | None:
        """The server's current global body (names ``body.*``); None for methods without a server."""
        return None

    def adopt(self, output: ClientOutput) -> AggregateResult:
        """A client's output state, unchanged, as the new global state (sequential methods: no averaging, 0 FLOPs)."""
        state = {k: v.clone() for k, v in output.state.items()}
        return AggregateResult(state, 0.0, 0.0, state_bytes(state)[0])

    def server_stats(self) -> list[Any]:
        """Per-request server statistics since the last call (queue wait, compute time)."""
        return []

    def resource_report(self) -> list[dict[str, Any]]:
        """Requested vs enforced vs observed resources per actor (empty for in-process)."""
        return []

    def close(self) -> None:  # noqa: B027  (optional hook, nothing to release by default)
        """Release actors / memory."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def aggregation_flops(states: Sequence[Mapping[str, Any]]) -> float:
    """FedAvg arithmetic: one multiply and one add per element per client (2 FLOPs)."""
    return float(sum(2 * int(np.prod(np.shape(v))) for s in states for v in s.values()))
