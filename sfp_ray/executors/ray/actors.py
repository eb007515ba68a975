"""Ray actors: thin ``@ray.remote`` shells around the plain roles.

No algorithm lives here. :class:`ClientActor` hosts the clients of one or more runs: per
run it builds a :class:`~sfp_ray.roles.workspace.Workspace` holding only the parts the
method's client needs and the method's client role, and calls the role's ``run``.
:class:`ServerActor` wraps one :class:`~sfp_ray.roles.server.ServerRole` per run. The
aggregator actor lives in :mod:`.aggregator` (it imports no torch).

Data crosses actor boundaries as numpy arrays (Ray moves them zero-copy through the object
store); torch tensors exist only inside an actor. Large inputs (the training images, the
global state, client states) travel as object references, so they are fetched by the
actor that needs them and never pass through the driver.

Each actor enforces what it can of its device profile (:mod:`.limits`) and reports
requested vs enforced vs observed resources.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ray
import torch

from sfp_ray.compute import set_determinism
from sfp_ray.config import Config
from sfp_ray.costs import FlopMeter
from sfp_ray.data import ArrayDataset
from sfp_ray.errors import ClusterError
from sfp_ray.executors.base import CutRoles, State
from sfp_ray.executors.ray.limits import enforce_limits, mark_task, observe
from sfp_ray.faults import InjectedFault, check_finite, exit_process, one_line, server_fault
from sfp_ray.methods import Method
from sfp_ray.packing import Packed, pack, unpack
from sfp_ray.placement import with_cut
from sfp_ray.roles.client import ClientTask
from sfp_ray.roles.evaluation import eval_batches
from sfp_ray.roles.server import BodyReply, ServerRole
from sfp_ray.roles.workspace import PARTS, Workspace
from sfp_ray.tensors import as_view, numpy_state, to_wire, torch_state

log = logging.getLogger(__name__)

__all__ = ["ClientActor", "RayBodyLink", "RayState", "RunSetup", "ServerActor"]


# --------------------------------------------------------------------------- shared types


@dataclass(frozen=True)
class RayState(State):
    """A state in the object store: the client part, and the server part when the server trains one."""

    client: Any  # ObjectRef of a Packed state (or of name -> numpy)
    server: Any = None  # the same, or None

    def tensors(self) -> dict[str, torch.Tensor]:
        client, server = self.parts()
        return {**client, **(server or {})}

    def parts(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        if self.server is None:
            return torch_state(unpack(ray.get(self.client))), None
        client, server = ray.get([self.client, self.server])
        return torch_state(unpack(client)), torch_state(unpack(server))


@dataclass(frozen=True)
class RunSetup:
    """What an actor needs to host one run; sent once per run and actor.

    ``train``/``test`` are ``(images, labels)`` object references (numpy), fetched by the
    actor itself; ``dataset`` is ``(num_classes, name, class_names)``.
    """

    key: str
    cfg: Config
    method: Method
    num_classes: int
    checkpoint: str | None
    train: tuple[Any, Any]
    test: tuple[Any, Any]
    dataset: tuple[int, str, tuple[str, ...]]
    server: Any = None  # ServerActor handle when the method has a server
    #: per-device cuts: ``(global cut, server cut)``; None: every client at the configured cut
    cuts: tuple[tuple[int, int], tuple[int, int]] | None = None

    def workspace(self, parts: Sequence[str], cut: tuple[int, int] | None = None,
                  device: torch.device | str = "cpu") -> Workspace:
        """A workspace holding ``parts`` at ``cut`` (default: the global cut) on ``device``."""
        c = with_cut(self.cfg, cut if cut is not None else self.global_cut)
        return Workspace(c.model, c.split, c.prompt, num_classes=self.num_classes, checkpoint=self.checkpoint,
                         seed=c.seed, parts=parts, device=device)

    @property
    def global_cut(self) -> tuple[int, int]:
        return self.cuts[0] if self.cuts is not None else (self.cfg.split.head_blocks, self.cfg.split.tail_blocks)

    @property
    def server_cut(self) -> tuple[int, int]:
        return self.cuts[1] if self.cuts is not None else self.global_cut


def _dataset(refs: tuple[Any, Any], meta: tuple[int, str, tuple[str, ...]]) -> ArrayDataset:
    images, labels = ray.get(list(refs))
    nc, name, class_names = meta
    # read-only views into the object store: subsets copy, nothing writes to them
    return ArrayDataset(images=as_view(images), labels=as_view(labels), num_classes=nc, name=name,
                        class_names=class_names)


def _refuse_a_small_gpu_share(info: Mapping[str, Any]) -> None:
    if info.get("gpu_share_error"):
        raise ClusterError(str(info["gpu_share_error"]))


def _tensor_device(ws: Workspace) -> str:
    p = next((q for q in ws.split.parameters() if not q.is_meta), None)
    return str(p.device) if p is not None else "none"


# --------------------------------------------------------------------------- client


class RayBodyLink:
    """A :class:`~sfp_ray.roles.client.BodyLink` to a :class:`ServerActor`.

    Sends activations/gradients as numpy arrays; requests are keyed ``(client_id, round,
    step)`` like :class:`~sfp_ray.roles.server.LocalBodyLink`. Opening and closing a
    trained body copy is the executor's job (it owns the references of body states).
    """

    def __init__(self, server: Any, run_key: str, client_id: int, round: int, fault: str | None = None,
                 cut: tuple[int, int] | None = None) -> None:
        self.server = server
        self.cut = cut
        self.run_key = run_key
        self.client_id = client_id
        self.round = round
        self.step = 0
        self.fault = fault  # testing aid: sent with the first request (sfp_ray.faults)

    def _key(self) -> tuple[int, int, int]:
        return (self.client_id, self.round, self.step)

    def forward(self, acts: torch.Tensor, *, need_grad: bool) -> BodyReply:
        self.step += 1
        extra: dict[str, Any] = {"fault": self.fault} if self.fault is not None else {}
        if self.cut is not None:
            extra["cut"] = self.cut
        self.fault = None
        return ray.get(self.server.forward.remote(self.run_key, self._key(), to_wire(acts), need_grad=need_grad,
                                                  sent_at=time.time(), **extra))

    def backward(self, grad: torch.Tensor, grad_slice: tuple[int, int] | None) -> BodyReply:
        return ray.get(self.server.backward.remote(self.run_key, self._key(), to_wire(grad), grad_slice,
                                                   sent_at=time.time()))


def _release(server: Any, key: str, client_id: int, round: int, timeout_s: float = 10.0) -> None:
    """Drop a failed attempt's graphs and body copy on the server, and wait for it.

    Waiting matters: a retry of the client (on this or another actor) uses the same request
    keys, and the server actor serves requests concurrently in no set order, so a release
    still in flight could drop the retry's graphs. A server that died or hangs has nothing to
    release for the retry (a new server starts empty), so its error is only logged.
    """
    try:
        ray.get(server.release.remote(key, client_id, round), timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - the attempt's own error is what the caller raises
        log.warning("client %d round %d: the server did not release the failed attempt's requests: %s",
                    client_id, round, one_line(exc))


@dataclass
class _Hosted:
    """One run hosted by a client actor: a client role per cut it served, and the global-cut workspace."""

    setup: RunSetup
    cuts: CutRoles
    train: ArrayDataset
    device: torch.device
    test: ArrayDataset | None = None
    eval_ws: Workspace | None = None

    def role(self, cut: tuple[int, int] | None) -> Any:
        """The client role of ``cut`` (None: the run's configured cut), built on first use."""
        return self.cuts.role(cut if cut is not None else self.setup.global_cut)

    def global_workspace(self) -> Workspace:
        """The workspace evaluation uses (the global cut, every part)."""
        if self.eval_ws is None:
            cut = self.setup.global_cut
            role = self.cuts.roles.get(cut)
            self.eval_ws = role.ws if role is not None else self.setup.workspace((), cut, self.device)
        self.eval_ws.hold(PARTS)
        return self.eval_ws


@ray.remote
class ClientActor:
    """A device slot: hosts clients of one device class, for one or more runs.

    The actor keeps no per-client state between calls: everything a logical client carries
    from round to round (``client_state``, e.g. the kept EL2N indices) travels with each
    task and comes back in the output, so any slot of the right device class can serve any
    client of that class.

    Args:
        device: the :class:`~sfp_ray.devices.DeviceProfile` whose limits are enforced.
        slot: the slot's index in the pool.
        gpu_fallback: the profile's GPU share was dropped (no GPU in the cluster).
        memory: the estimate the pool asked Ray for (:meth:`~sfp_ray.sizing.MemoryEstimate.row`), reported
            beside the observed peak in ``resources.csv``.
    """

    def __init__(self, device: Any, slot: int, gpu_fallback: bool = False,
                 memory: Mapping[str, float] | None = None) -> None:
        self.device = device
        self.slot = slot
        self.info, self.compute = enforce_limits(device, slot, gpu_fallback=gpu_fallback, estimate=memory)
        self.info.update(role="client", slot=slot, **(memory or {}))
        self.runs: dict[str, _Hosted] = {}

    def ready(self) -> dict[str, Any]:
        """Resources at start-up (called once to wait until the actor is placed).

        Raises :class:`~sfp_ray.errors.ClusterError` when the actor's GPU share cannot hold its
        memory estimate: the pool then fails before training, with that line.
        """
        _refuse_a_small_gpu_share(self.info)
        return dict(self.info, **observe(self.device, full=True))

    def setup(self, setup: RunSetup) -> None:
        """Build the workspace and client role of a run (idempotent)."""
        if setup.key in self.runs:
            return
        self.info["determinism"] = set_determinism(setup.cfg.train.deterministic, self.compute.device)
        device = self.compute.device
        cuts = CutRoles(setup.method, setup.cfg, lambda cut: setup.workspace(setup.method.client_parts, cut, device))
        hosted = _Hosted(setup, cuts, _dataset(setup.train, setup.dataset), device)
        if setup.cuts is None:
            hosted.role(None)  # built now, so set-up errors surface at set-up
        self.runs[setup.key] = hosted
        self._check_memory()

    def drop(self, key: str) -> None:
        """Forget a finished run."""
        self.runs.pop(key, None)

    def _check_memory(self) -> None:
        obs = observe(self.device)
        if obs["memory_cap_exceeded"]:
            log.warning("client actor (%s): RSS %.0f MB exceeds the device's memory_mb=%d",
                        self.device.name, obs["observed_rss_mb"], self.device.memory_mb)

    @ray.method(num_returns=2)
    def run(self, key: str, task: ClientTask, state: RayState, server: Any = None) -> tuple[Packed, Any]:
        """One client's round; returns ``(new client state, packed; ClientOutput without the state)``.

        ``server`` is the server actor now serving the run's body (the executor passes the
        live handle: a server actor that died is replaced by a new one). A non-finite state
        or loss fails the task (:func:`~sfp_ray.faults.check_finite`).
        """
        mark_task(self.compute)  # this task's memory peaks start here
        h = self.runs[key]
        client_state = unpack(ray.get(state.client))
        cut = task.cut if h.setup.cuts is not None else None
        role = h.role(cut)
        link = (RayBodyLink(server, key, task.client_id, task.round, fault=server_fault(task.injected()), cut=cut)
                if server is not None else None)
        data = h.train.subset(task.indices)
        try:
            if server is not None and state.server is not None:  # this client's copy of the trained body
                ray.get(server.open.remote(key, task.client_id, task.round, state.server))
            # the new state is not copied: it is serialised when this call returns, before the next task runs
            out = role.run(task, data, client_state, link, h.cuts.meter_of(cut), copy_state=False)
            check_finite(out.state, out.train_loss)
        except BaseException:
            if server is not None:
                _release(server, key, task.client_id, task.round)
            raise
        res = {k: v for k, v in self.info.items()}
        res.update(observe(self.device, _tensor_device(role.ws)))
        return pack(numpy_state(out.state)), replace(out, state=None, resources=res)

    def evaluate(self, key: str, state: RayState, start: int, stop: int) -> list[tuple[int, float, float]]:
        """Per-batch ``(correct, loss_sum, flops)`` of test batches ``start..stop-1`` (the whole model)."""
        h = self.runs[key]
        if h.test is None:
            h.test = _dataset(h.setup.test, h.setup.dataset)
        ws = h.global_workspace()
        ws.load_state(state.tensors())
        t = h.setup.cfg.train
        return eval_batches(ws.split, h.test, t.eval_batch_size, h.cuts.meter, start=start, stop=stop,
                            precision=t.precision)

    def resources(self) -> dict[str, Any]:
        """Requested / enforced / observed resources now."""
        return dict(self.info, **observe(self.device, full=True))


# --------------------------------------------------------------------------- server


@ray.remote
class ServerActor:
    """Hosts the body of one or more runs (a :class:`ServerRole` each).

    Create it with ``max_concurrency=N`` (a threaded actor) so it serves N client requests
    at once; each role keys its stored autograd graphs per request and locks its
    bookkeeping, and a request whose FLOPs are being counted runs alone
    (:data:`~sfp_ray.costs.flops.COUNT_GATE`). A trained body's per-client copies are opened
    and closed by the executor (:meth:`open`, :meth:`close`); each call waits for the
    previous one it depends on, since a threaded actor does not order calls.
    """

    def __init__(self, device: Any, gpu_fallback: bool = False, memory: Mapping[str, float] | None = None) -> None:
        self.device = device
        self.info, self.compute = enforce_limits(device, gpu_fallback=gpu_fallback, estimate=memory)
        self.info.update(role="server", slot=-1, **(memory or {}))
        self.roles: dict[str, ServerRole] = {}
        self._lock = threading.Lock()

    def ready(self) -> dict[str, Any]:
        _refuse_a_small_gpu_share(self.info)
        return dict(self.info, **observe(self.device, full=True))

    def setup(self, setup: RunSetup) -> None:
        """Build the body of a run (idempotent)."""
        with self._lock:
            if setup.key in self.roles:
                return
            self.info["determinism"] = set_determinism(setup.cfg.train.deterministic, self.compute.device)
            ws = setup.workspace(("body",), setup.server_cut, self.compute.device)
            spec = setup.method.server(setup.cfg)
            body_of = (lambda cut: ws.split.body_for(*cut)) if setup.cuts is not None else None
            self.roles[setup.key] = ServerRole(ws.split.body, meter=FlopMeter(), as_numpy=True,
                                               train=spec.train if spec is not None else None, body_of=body_of,
                                               precision=setup.cfg.train.precision)

    def drop(self, key: str) -> None:
        with self._lock:
            self.roles.pop(key, None)

    def forward(self, key: str, req: tuple[int, int, int], acts: np.ndarray, *, need_grad: bool,
                sent_at: float | None = None, fault: str | None = None,
                cut: tuple[int, int] | None = None) -> BodyReply:
        """A body forward request; ``fault`` (testing aid) fails it: ``raise``, or ``exit`` ends this process."""
        if fault == "exit":
            exit_process()
        if fault is not None:
            raise InjectedFault(f"injected fault (SFP_RAY_FAULT): server, request {req}")
        return self.roles[key].forward(req, acts, need_grad=need_grad, sent_at=sent_at, cut=cut)

    def backward(self, key: str, req: tuple[int, int, int], grad: np.ndarray,
                 grad_slice: tuple[int, int] | None = None, *, sent_at: float | None = None) -> BodyReply:
        return self.roles[key].backward(req, grad, grad_slice, sent_at=sent_at)

    def open(self, key: str, client_id: int, round: int, body_state: Packed | Mapping[str, np.ndarray]) -> None:
        self.roles[key].open(client_id, round, unpack(body_state))

    @ray.method(num_returns=2)
    def close(self, key: str, client_id: int, round: int) -> tuple[Packed, bool]:
        """``(the client's trained body copy, packed; True)``; both fail when the copy is not finite."""
        return pack(self.roles[key].close(client_id, round)), True

    def release(self, key: str, client_id: int, round: int) -> int:
        role = self.roles.get(key)
        return role.release(client_id, round) if role is not None else 0

    def pending(self, key: str) -> int:
        return self.roles[key].pending()

    def resources(self) -> dict[str, Any]:
        return dict(self.info, **observe(self.device, full=True))
