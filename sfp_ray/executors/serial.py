"""The serial in-process executor: the reference every other executor must agree with.

One workspace holding the whole model serves all clients one after another (clients
download the global state at the start of each round, so nothing but their small
persistent state, e.g. the kept EL2N indices, lives between rounds, and that travels with
the tasks); the server role, when the method has one, serves that workspace's body.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from sfp_ray.costs import FlopMeter
from sfp_ray.executors.base import Aggregate, Executor, LocalState, RunSpec, Started, State, fedavg_parts
from sfp_ray.roles.client import ClientOutput, ClientTask
from sfp_ray.roles.evaluation import EvalResult, evaluate
from sfp_ray.roles.server import LocalBodyLink, ServerRole
from sfp_ray.roles.workspace import PARTS


class SerialExecutor(Executor):
    """Runs every role in this process, clients in ascending id order."""

    name = "serial"

    def __init__(self, num_threads: int | None = None) -> None:
        self.num_threads = num_threads
        self.spec: RunSpec | None = None

    def start(self, spec: RunSpec) -> Started:
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        self.spec = spec
        self.ws = spec.workspace(PARTS)
        self.role = spec.method.client_role(self.ws, spec.cfg)
        self.meter = FlopMeter()
        server = spec.method.server(spec.cfg)
        self.server = ServerRole(self.ws.split.body, meter=self.meter, train=server.train) if server else None
        return Started(LocalState(*spec.initial_state()))

    def run_clients(self, tasks: Sequence[ClientTask], state: State) -> list[ClientOutput]:
        spec = self.spec
        assert spec is not None, "start() first"
        values = LocalState(*_parts(state))
        outputs = []
        for task in sorted(tasks, key=lambda t: t.client_id):
            link = (LocalBodyLink(self.server, task.client_id, task.round, values.server)
                    if self.server is not None else None)
            data = spec.train.subset(task.indices)
            try:
                out = self.role.run(task, data, values.client, link, self.meter)
            except BaseException:
                if link is not None:
                    link.abort()
                raise
            body = link.finish() if link is not None else None
            out.state = LocalState(out.state, body)
            outputs.append(out)
        return outputs

    def aggregate(self, outputs: Sequence[ClientOutput]) -> Aggregate:
        t0 = time.perf_counter()
        states = [_parts(o.state) for o in outputs]
        server = [s[1] for s in states] if states[0][1] is not None else None
        client, new_server, flops = fedavg_parts([o.num_samples for o in outputs], [o.client_id for o in outputs],
                                                 [s[0] for s in states], server)
        return Aggregate(LocalState(client, new_server), flops, time.perf_counter() - t0)

    def evaluate(self, state: State) -> EvalResult:
        assert self.spec is not None, "start() first"
        self.ws.load_state(state.tensors())
        return evaluate(self.ws.split, self.spec.test, self.spec.cfg.train.eval_batch_size, self.meter)


def _parts(state: State) -> tuple[dict, dict | None]:
    """Both parts of a state as tensors (a state from another executor is fetched)."""
    if isinstance(state, LocalState):
        return dict(state.client), (dict(state.server) if state.server is not None else None)
    raise TypeError(f"the serial executor holds its states in-process, got {type(state).__name__}")


__all__ = ["SerialExecutor"]
