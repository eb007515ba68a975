"""The serial in-process executor: the reference every other executor must agree with.

One workspace holding the whole model serves all clients one after another (clients
download the global state at the start of each round, so nothing but their small
persistent state, e.g. the kept EL2N indices, lives between rounds, and that travels with
the tasks); the server role, when the method has one, serves that workspace's body.

A client attempt that raises or returns a non-finite state is tried once more (every
attempt starts from the same inputs, so a retried client's result is the one it would
have had). There is no process to lose in-process: an injected ``exit`` fault fails the
attempt instead, and an injected server ``exit`` replaces the server role with a fresh one
and raises :class:`~sfp_ray.errors.ServerLost`, as the Ray executor does when its server
actor dies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from sfp_ray.compute import ComputeDevice, DeviceChoice, choose_device, set_determinism
from sfp_ray.errors import ServerLost
from sfp_ray.executors.base import (
    Aggregate,
    CutRoles,
    Executor,
    LocalState,
    RunSpec,
    Started,
    State,
    TensorSums,
    failed_output,
    fedavg_parts,
    settle,
)
from sfp_ray.faults import ATTEMPTS, InjectedFault, InjectedServerLoss, check_finite, one_line, server_fault
from sfp_ray.roles.client import ClientOutput, ClientRole, ClientTask
from sfp_ray.roles.evaluation import EvalResult, evaluate
from sfp_ray.roles.server import LocalBodyLink, ServerRole
from sfp_ray.roles.workspace import PARTS


class SerialExecutor(Executor):
    """Runs every role in this process, clients in ascending id order.

    Args:
        num_threads: torch intra-op threads. Default: the count the Ray executor's actors
            use (:attr:`~sfp_ray.devices.DeviceProfile.torch_threads` of the run's device
            classes), so that the two executors compute the same floats. A matrix product
            splits its work by thread count, so another count changes results in the last
            bits, and over rounds in the last digits of accuracy.
        device: ``auto`` (default: the device the Ray executor's actors would compute on,
            :func:`mirrored_device`), ``cpu`` or ``cuda`` (``--device``).
    """

    name = "serial"

    def __init__(self, num_threads: int | None = None, device: DeviceChoice = "auto") -> None:
        self.num_threads = num_threads
        self.device = device
        self.spec: RunSpec | None = None

    def start(self, spec: RunSpec) -> Started:
        notices = []
        threads = self.num_threads
        if threads is None:
            threads, note = mirrored_threads(spec)
            notices += [note] if note else []
        torch.set_num_threads(threads)
        compute, note = mirrored_device(spec, self.device)
        notices += [note] if note else []
        self.compute = compute
        device = compute.device
        set_determinism(spec.cfg.train.deterministic, device)
        self.spec = spec
        self.ws = spec.workspace(PARTS, device=device)  # the global cut: evaluation, every client under a fixed cut
        # a fixed cut: every client trains in the global workspace; per-device cuts: a workspace per cut
        self.cuts = CutRoles(spec.method, spec.cfg, lambda cut: self.ws if cut is None else spec.workspace(
            spec.method.client_parts, cut=cut, device=device))
        if spec.cut_plan is None:
            self.cuts.role(None)  # built now, so set-up errors surface at start
        self.meter = self.cuts.meter
        server = spec.method.server(spec.cfg)
        # per-device cuts: the server's frozen body is a workspace of its own (evaluation loads trained tail
        # blocks into the global one, and the server must keep serving the frozen ones to thinner cuts)
        self.server_ws = (self.ws if spec.cut_plan is None
                          else spec.workspace(("body",), cut=spec.server_cut, device=device))
        self.server = ServerRole(self.server_ws.split.body, meter=self.meter, train=server.train,
                                 body_of=self._body_of, precision=spec.cfg.train.precision) if server else None
        return Started(LocalState(*spec.initial_state()), notices=notices)

    @property
    def role(self) -> ClientRole:
        """The client role of a run with a fixed cut."""
        return self.cuts.role(None)

    def _body_of(self, cut: tuple[int, int]) -> torch.nn.Module:
        return self.server_ws.split.body_for(*cut)

    def run_clients(self, tasks: Sequence[ClientTask], state: State,
                    on_done: Callable[[ClientOutput], None] | None = None) -> list[ClientOutput]:
        """See :meth:`Executor.run_clients`; ``on_done`` sees each client's final output as soon as it is made."""
        assert self.spec is not None, "start() first"
        values = LocalState(*_parts(state))
        outputs: list[ClientOutput] = []
        for task in sorted(tasks, key=lambda t: t.client_id):
            errors: list[str] = []
            t0 = time.perf_counter()
            for attempt in range(1, ATTEMPTS + 1):
                try:
                    out = self._attempt(replace(task, attempt=attempt), values)
                except InjectedServerLoss as e:
                    self._restart_server()
                    raise ServerLost(f"round {task.round}: the server was lost ({one_line(e)}); "
                                     "it was restarted") from e
                except Exception as e:  # noqa: BLE001 - any failure of a client's attempt is that client's
                    errors.append(one_line(e))
                    continue
                outputs.append(settle(out, attempt, errors))
                break
            else:
                outputs.append(failed_output(task, ATTEMPTS, errors[-1], time.perf_counter() - t0))
            if on_done is not None:
                on_done(outputs[-1])
        return outputs

    def run_and_aggregate(self, tasks: Sequence[ClientTask], state: State,
                          accept: Callable[[ClientOutput], bool]) -> tuple[list[ClientOutput], Aggregate | None]:
        """Clients in ascending id, each accepted state folded into the running sums as soon as it is made."""
        assert self.spec is not None, "start() first"
        sums = TensorSums()
        seconds = 0.0

        def fold(out: ClientOutput) -> None:
            nonlocal seconds
            if not accept(out):
                return
            t0 = time.perf_counter()
            client, server = _parts(out.state)
            sums.add(out.num_samples, client, server)
            out.state = None
            seconds += time.perf_counter() - t0

        outputs = self.run_clients(tasks, state, fold)
        if not sums.sums.client.clients:
            return outputs, None
        t0 = time.perf_counter()
        previous = _parts(state)[0] if self.spec.cut_plan is not None else None
        client, server, flops = sums.finish(previous)
        return outputs, Aggregate(LocalState(client, server), flops, seconds + time.perf_counter() - t0)

    def _attempt(self, task: ClientTask, values: LocalState) -> ClientOutput:
        """One attempt of one client; raises when it fails."""
        spec = self.spec
        assert spec is not None
        injected = task.injected()
        link = (LocalBodyLink(self.server, task.client_id, task.round, values.server, fault=server_fault(injected),
                              cut=task.cut if spec.cut_plan is not None else None)
                if self.server is not None else None)
        try:
            if "exit" in injected:  # in-process there is no process to lose: the attempt fails instead
                raise InjectedFault(f"injected fault (SFP_RAY_FAULT): client {task.client_id} in round {task.round} "
                                    f"lost its process (simulated: the serial executor runs in-process)")
            cut = task.cut if spec.cut_plan is not None else None
            out = self.cuts.role(cut).run(task, spec.train.subset(task.indices), values.client, link,
                                          self.cuts.meter_of(cut))
            check_finite(out.state, out.train_loss)
            body = link.finish() if link is not None else None
        except BaseException:
            if link is not None:
                link.abort()
            raise
        out.state = LocalState(out.state, body)
        return out

    def _restart_server(self) -> None:
        """A fresh server role in place of a lost one (what a restarted server actor is)."""
        if self.server is not None:
            self.server = ServerRole(self.server_ws.split.body, meter=self.meter, train=self.server.train,
                                     body_of=self._body_of, precision=self.server.precision)

    def aggregate(self, outputs: Sequence[ClientOutput], state: State) -> Aggregate:
        assert self.spec is not None, "start() first"
        t0 = time.perf_counter()
        states = [_parts(o.state) for o in outputs]
        server = [s[1] for s in states] if states[0][1] is not None else None
        previous = _parts(state)[0] if self.spec.cut_plan is not None else None
        client, new_server, flops = fedavg_parts([o.num_samples for o in outputs], [o.client_id for o in outputs],
                                                 [s[0] for s in states], server, previous)
        return Aggregate(LocalState(client, new_server), flops, time.perf_counter() - t0)

    def evaluate(self, state: State) -> EvalResult:
        assert self.spec is not None, "start() first"
        self.ws.load_state(state.tensors())
        t = self.spec.cfg.train
        return evaluate(self.ws.split, self.spec.test, t.eval_batch_size, self.meter, precision=t.precision)


def mirrored_threads(spec: RunSpec) -> tuple[int, str | None]:
    """The torch threads that reproduce the Ray executor's arithmetic, and a notice when none can.

    Every client actor computes with its device class's thread count, the server actor with
    the server class's. When the run's classes agree (the built-in catalogue: one thread each),
    that count reproduces the Ray run bit for bit; otherwise the serial executor uses the
    smallest and says that the executors then agree to rounding only.
    """
    counts = {d.torch_threads for d in spec.devices}
    if spec.method.server(spec.cfg):
        counts.add(spec.server_device.torch_threads)
    threads = min(counts)
    if len(counts) == 1:
        return threads, None
    return threads, (f"serial executor: the device classes of this run compute with {sorted(counts)} torch threads "
                     f"on Ray; the serial executor uses {threads} for all, so the two executors agree to float "
                     "rounding, not bit for bit")


def mirrored_device(spec: RunSpec, want: DeviceChoice = "auto") -> tuple[ComputeDevice, str | None]:
    """The device the serial executor computes on, and a notice when it cannot mirror the Ray executor.

    ``auto`` mirrors the Ray executor's device rule: the GPU when every device class of the
    run (and the server's, when the method has one) holds a GPU share and torch can use a GPU,
    the CPU when none does. Classes of both kinds compute on both on Ray: the serial executor
    then takes the CPU and says so. ``cpu``/``cuda`` are taken as asked.
    """
    if want != "auto":
        return choose_device(want), None
    classes = {d.name: d.num_gpus > 0 for d in spec.devices}
    if spec.method.server(spec.cfg):
        classes[spec.server_device.name] = spec.server_device.num_gpus > 0
    if not any(classes.values()):
        return ComputeDevice(torch.device("cpu"), "no device class holds a GPU share"), None
    compute = choose_device("auto")
    if all(classes.values()):
        return compute, None
    gpu = sorted(c for c, g in classes.items() if g)
    cpu = sorted(c for c, g in classes.items() if not g)
    if not compute.is_cuda:
        return compute, None
    return ComputeDevice(torch.device("cpu"), "classes with and without GPU shares"), (
        f"serial executor: on Ray, {', '.join(gpu)} compute on the GPU and {', '.join(cpu)} on the CPU; the serial "
        "executor computes everything on the CPU (--device cuda for the GPU), so the two executors agree to float "
        "rounding, not bit for bit")


def _parts(state: State) -> tuple[dict, dict | None]:
    """Both parts of a state as tensors (a state from another executor is fetched)."""
    if isinstance(state, LocalState):
        return dict(state.client), (dict(state.server) if state.server is not None else None)
    raise TypeError(f"the serial executor holds its states in-process, got {type(state).__name__}")


__all__ = ["SerialExecutor", "mirrored_device", "mirrored_threads"]
