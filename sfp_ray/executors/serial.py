"""The serial in-process executor: the reference every other executor must agree with.

One workspace serves all clients one after another (clients download the global state at
the start of each round, so nothing but their small persistent state - the kept EL2N
indices - needs to live between rounds); the server role shares that workspace's body.
When the method trains the body, the server trains per-client copies and writes their
average into that shared body at :meth:`SerialExecutor.finish_round`, so evaluation sees
the new global body.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import torch

from sfp_ray.aggregation import fedavg
from sfp_ray.costs import FlopMeter, state_bytes
from sfp_ray.executors.base import AggregateResult, ClientSpec, EvalResult, Executor, RunSpec, aggregation_flops
from sfp_ray.roles.client import ClientOutput, ClientTask, LocalBodyLink, evaluate
from sfp_ray.roles.server import BodyAggregate, ServerRole
from sfp_ray.roles.workspace import Workspace


class SerialExecutor(Executor):
    """Runs every role in this process, clients in ascending id order."""

    name = "serial"

    def __init__(self, num_threads: int | None = None) -> None:
        self.num_threads = num_threads
        self.spec: RunSpec | None = None

    def start(self, spec: RunSpec) -> None:
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        self.spec = spec
        self.ws = Workspace(spec.cfg, spec.num_classes, spec.checkpoint)
        self.client = spec.method.make_client(self.ws)
        self.meter = FlopMeter()
        self.server = (ServerRole(self.ws.split.body, meter=self.meter,
                                  train=spec.cfg.train if spec.method.trains_body else None)
                       if spec.method.uses_server else None)
        self._init = self.ws.get_state(self.client.names)

    def initial_state(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self._init.items()}

    def run_clients(self, specs: Sequence[ClientSpec], global_state: Mapping[str, torch.Tensor]) -> list[ClientOutput]:
        assert self.spec is not None, "start() first"
        outputs = []
        for cs in sorted(specs, key=lambda s: s.client_id):
            task = ClientTask(
                round=cs.round,
                client_id=cs.client_id,
                device=self.spec.devices[cs.client_id],
                seed=cs.seed,
                data=self.spec.train.subset(self.spec.client_indices[cs.client_id]),
                client_state=cs.client_state,
                server_device=self.spec.server_device,
            )
            link = LocalBodyLink(self.server, cs.client_id, cs.round) if self.server is not None else None
            # restore the frozen trainable set (another method instance may share the workspace)
            self.ws.set_trainable(self.client.names)
            outputs.append(self.client.run(task, global_state, link, self.meter))
        return outputs

    def begin_round(self, round: int, client_ids: Sequence[int]) -> None:
        if self.server is not None and self.server.trains_body:
            self.server.begin_round(round, client_ids)

    def finish_round(self, outputs: Sequence[ClientOutput]) -> BodyAggregate | None:
        if self.server is None or not self.server.trains_body:
            return None
        return self.server.finish_round({o.client_id: o.num_samples for o in outputs})

    def body_state(self) -> dict[str, torch.Tensor] | None:
        return self.server.body_state() if self.server is not None else None

    def aggregate(self, outputs: Sequence[ClientOutput]) -> AggregateResult:
        t0 = time.perf_counter()
        states = [o.state for o in outputs]
        new = fedavg(states, [o.num_samples for o in outputs], [o.client_id for o in outputs])
        return AggregateResult(new, aggregation_flops(states), time.perf_counter() - t0, state_bytes(new)[0])

    def evaluate(self, global_state: Mapping[str, torch.Tensor]) -> EvalResult:
        assert self.spec is not None
        self.ws.load_state(global_state)
        acc, loss, flops, wall = evaluate(self.ws, self.spec.test, self.spec.cfg.train.eval_batch_size, self.meter)
        return EvalResult(acc, loss, flops, wall)

    def server_stats(self) -> list:
        return self.server.take_stats() if self.server is not None else []
