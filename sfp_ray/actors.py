"""Ray actors: thin ``@ray.remote`` shells around the plain roles (DESIGN.md §2, §3).

No algorithm lives here. :class:`ClientActor` builds a
:class:`~sfp_ray.roles.workspace.Workspace` and the method's client and calls its ``run``;
:class:`ServerActor` wraps a :class:`~sfp_ray.roles.server.ServerRole` (and evaluates the
assembled model); :class:`AggregatorActor` calls :func:`sfp_ray.aggregation.fedavg`.

Data crosses actor boundaries as numpy arrays (Ray moves them zero-copy through the object
store); torch tensors exist only inside an actor. Large inputs (the training images, the
global state, client states) are passed as ``ObjectRef`` *top-level* arguments so Ray
resolves them in the receiving actor, never through the driver.

Ray's ``num_cpus``/``num_gpus`` are scheduling tickets only. Each actor enforces what can be
enforced from its device profile and reports requested vs enforced vs observed resources
(:func:`enforce_limits`, :func:`observe`):

* torch intra-op threads: ``max(1, floor(num_cpus))`` - enforced;
* CPU affinity: pinned to the CPU ids Ray assigned, when Ray assigns any (Ray 2.60 assigns
  ids for GPUs and other accelerators but not for CPUs, so this is normally
  ``not enforced``, and the observed affinity is reported);
* GPU memory: ``torch.cuda.set_per_process_memory_fraction(num_gpus)`` when CUDA exists;
* memory: checked, not capped - the resident set size is compared with ``memory_mb``
  after the model is built and after every round (``memory_cap_exceeded``).

Tensors live on torch's device choice, never on Ray's GPU ids: Ray sets
``CUDA_VISIBLE_DEVICES`` for a GPU share, but on a machine with logical GPUs only
``torch.cuda.is_available()`` stays False and everything runs on the CPU. The roles
compute on the CPU (they have no device placement yet); ``tensor_device`` reports where
the parameters actually are.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import resource
import threading
import time
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import ray
import torch

from sfp_ray.aggregation import fedavg
from sfp_ray.config import Config
from sfp_ray.costs import FlopMeter, state_bytes
from sfp_ray.data import ArrayDataset
from sfp_ray.executors.base import aggregation_flops
from sfp_ray.roles.client import ClientOutput, ClientTask, evaluate
from sfp_ray.roles.server import BodyAggregate, BodyReply, RequestStat, ServerRole
from sfp_ray.roles.workspace import Workspace, to_numpy_state

log = logging.getLogger(__name__)

_MIB = 2**20

__all__ = [
    "AggregatorActor",
    "ClientActor",
    "ExclusiveCountingMeter",
    "RayBodyLink",
    "ServerActor",
    "enforce_limits",
    "observe",
]


# --------------------------------------------------------------------------- resources


def _assigned_cpu_ids() -> list[int] | None:
    """CPU ids Ray assigned to this worker, or None when Ray assigns none (the usual case)."""
    try:
        ids = ray.get_runtime_context().get_accelerator_ids().get("CPU")
    except Exception:  # noqa: BLE001 - outside a Ray worker, or an API change
        return None
    return [int(i) for i in ids] if ids else None


def _fmt_cpus(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / _MIB


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def pick_cores(available: Sequence[int], num_cpus: float, index: int) -> list[int]:
    """The ``ceil(num_cpus)`` cores (at least 1) an actor with placement ``index`` pins itself to.

    Ray grants fractional CPUs as tickets without CPU ids, so actors spread themselves over
    the node's cores by index: a 0.25-CPU device then really cannot use two cores.

    Example:
        >>> pick_cores([0, 1], 0.25, 0), pick_cores([0, 1], 0.25, 3), pick_cores([0, 1, 2, 3], 2, 1)
        ([0], [1], [2, 3])
    """
    cores = sorted(available)
    k = max(1, math.ceil(num_cpus - 1e-9))
    if not cores or k >= len(cores):
        return cores
    start = (index * k) % len(cores)
    return [cores[(start + j) % len(cores)] for j in range(k)]


def enforce_limits(device: Any, index: int | None = None) -> dict[str, Any]:
    """Apply the enforceable limits of a device profile to this process; return what was done.

    Returns a flat dict with ``requested_*`` (from the profile), ``assigned_*`` (what Ray
    granted) and ``enforced_*`` entries.
    """
    ctx = ray.get_runtime_context() if ray.is_initialized() else None
    assigned = ctx.get_assigned_resources() if ctx is not None else {}
    out: dict[str, Any] = {
        "device": device.name,
        "requested_num_cpus": float(device.num_cpus),
        "requested_num_gpus": float(device.num_gpus),
        "requested_memory_mb": int(device.memory_mb),
        "assigned_num_cpus": float(assigned.get("CPU", 0.0)),
        "assigned_num_gpus": float(assigned.get("GPU", 0.0)),
        "assigned_gpu_ids": ",".join(str(i) for i in ray.get_gpu_ids()) if ctx is not None else "",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }
    threads = max(1, math.floor(device.num_cpus))
    torch.set_num_threads(threads)
    out["enforced_threads"] = threads
    cpus = _assigned_cpu_ids()
    if not hasattr(os, "sched_setaffinity"):
        out["enforced_affinity"] = "not enforced: os.sched_setaffinity is unavailable on this platform"
    elif cpus:
        os.sched_setaffinity(0, cpus)
        out["enforced_affinity"] = _fmt_cpus(cpus)
    elif index is not None:
        # Ray assigns no CPU ids to actors: pin to ceil(num_cpus) cores chosen by index
        chosen = pick_cores(os.sched_getaffinity(0), device.num_cpus, index)
        os.sched_setaffinity(0, chosen)
        out["enforced_affinity"] = _fmt_cpus(chosen)
    else:
        out["enforced_affinity"] = "not enforced: Ray assigns no CPU ids to actors"
    if torch.cuda.is_available() and device.num_gpus > 0:
        frac = min(1.0, float(device.num_gpus))
        torch.cuda.set_per_process_memory_fraction(frac)
        out["enforced_gpu_fraction"] = frac
        out["enforced_gpu_note"] = "torch.cuda.set_per_process_memory_fraction"
    else:
        out["enforced_gpu_fraction"] = float("nan")
        out["enforced_gpu_note"] = ("not enforced: no GPU requested" if device.num_gpus <= 0
                                    else "not enforced: torch sees no CUDA device (logical GPU share)")
    out["enforced_memory"] = "checked, not capped"
    return out


def observe(device: Any, module: torch.nn.Module | None = None) -> dict[str, Any]:
    """What this process actually uses now: threads, affinity, memory, GPU, node and pid."""
    ctx = ray.get_runtime_context() if ray.is_initialized() else None
    rss = _rss_mb()
    peak = max(_peak_rss_mb(), rss)
    out: dict[str, Any] = {
        "observed_threads": torch.get_num_threads(),
        "observed_affinity": _fmt_cpus(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "",
        "observed_rss_mb": round(rss, 1),
        "observed_peak_rss_mb": round(peak, 1),
        "memory_cap_exceeded": bool(device.memory_mb > 0 and peak > device.memory_mb),
        "cuda_available": torch.cuda.is_available(),
        "observed_gpu_mem_mb": (torch.cuda.max_memory_allocated() / _MIB) if torch.cuda.is_available()
        else float("nan"),
        "node_id": ctx.get_node_id() if ctx is not None else "",
        "actor_id": (ctx.get_actor_id() or "") if ctx is not None else "",
        "pid": os.getpid(),
    }
    if module is not None:
        p = next(module.parameters(), None)
        out["tensor_device"] = str(p.device) if p is not None else "none"
    return out


# --------------------------------------------------------------------------- client


class RayBodyLink:
    """A :class:`~sfp_ray.roles.client.BodyLink` to a :class:`ServerActor`.

    Sends activations/gradients as numpy arrays and returns replies as torch tensors.
    Requests are keyed ``(client_id, round, step)`` like :class:`~sfp_ray.roles.client.LocalBodyLink`.
    """

    def __init__(self, server: Any, client_id: int, round: int) -> None:
        self.server = server
        self.client_id = client_id
        self.round = round
        self.step = 0

    def _key(self) -> tuple[int, int, int]:
        return (self.client_id, self.round, self.step)

    @staticmethod
    def _to_torch(reply: BodyReply) -> BodyReply:
        if reply.tensor is not None and not isinstance(reply.tensor, torch.Tensor):
            reply.tensor = torch.from_numpy(np.array(reply.tensor))  # own a writable copy
        return reply

    def forward(self, acts: torch.Tensor, *, need_grad: bool) -> BodyReply:
        self.step += 1
        ref = self.server.forward.remote(self._key(), acts.detach().cpu().numpy(), need_grad=need_grad,
                                         sent_at=time.time())
        return self._to_torch(ray.get(ref))

    def backward(self, grad: torch.Tensor, grad_slice: tuple[int, int] | None) -> BodyReply:
        ref = self.server.backward.remote(self._key(), grad.detach().cpu().numpy(), grad_slice,
                                          sent_at=time.time())
        return self._to_torch(ray.get(ref))


@ray.remote
class ClientActor:
    """Hosts one client (or, in pooled mode, one device slot serving many logical clients).

    The actor keeps no per-client state between calls: everything a logical client carries
    from round to round (``client_state``, e.g. the kept EL2N indices) travels with each
    task and comes back in the output, so any slot of the right device class can serve any
    client of that class.

    Args:
        cfg: resolved configuration.
        method: the :class:`~sfp_ray.methods.Method` (its ``make_client`` builds the role).
        num_classes: classifier width.
        checkpoint: checkpoint path (must exist on the node the actor runs on).
        dataset: ``(num_classes, name, class_names)`` of the training set.
        device: the :class:`~sfp_ray.devices.DeviceProfile` whose limits are enforced.
        server: handle of the :class:`ServerActor` (None for federated methods).
        slot: slot index in pooled mode (None: one actor per client).
        index: placement index of this actor; it pins itself to ``ceil(num_cpus)`` cores
            chosen by it (:func:`pick_cores`), since Ray gives actors no CPU ids.
    """

    def __init__(self, cfg: Config, method: Any, num_classes: int, checkpoint: str | None,
                 dataset: tuple[int, str, tuple[str, ...]], device: Any, server: Any = None,
                 slot: int | None = None, index: int | None = None) -> None:
        self.device = device
        self.slot = slot
        self.info = enforce_limits(device, index)
        self.ws = Workspace(cfg, num_classes, checkpoint, drop_body=method.uses_server)
        self.client = method.make_client(self.ws)
        self.meter = FlopMeter()
        self.server = server
        self.dataset = dataset
        self.info.update(observe(device, self.ws.split))
        self.info["role"] = "client"
        self.info["slot"] = -1 if slot is None else slot
        if self.info["memory_cap_exceeded"]:
            log.warning("client actor (%s): RSS %.0f MB exceeds the device's memory_mb=%d",
                        device.name, self.info["observed_rss_mb"], device.memory_mb)

    def ready(self) -> dict[str, Any]:
        """Resources at start-up (called once to wait until the actor is placed and built)."""
        return dict(self.info)

    def initial_state(self) -> dict[str, np.ndarray]:
        """The method's trainable state as built (the global state before round 1)."""
        return to_numpy_state(self.ws.get_state(self.client.names))

    @ray.method(num_returns=2)
    def run(self, round: int, client_id: int, seed: int, client_state: dict[str, Any], device: Any,
            server_device: Any, indices: np.ndarray, global_state: Mapping[str, np.ndarray],
            images: np.ndarray, labels: np.ndarray) -> tuple[dict[str, np.ndarray], ClientOutput]:
        """One client's round; returns ``(new state as numpy, ClientOutput without the state)``."""
        nc, name, class_names = self.dataset
        data = ArrayDataset(images=torch.from_numpy(images[indices]), labels=torch.from_numpy(labels[indices]),
                            num_classes=nc, name=name, class_names=class_names)
        task = ClientTask(round=round, client_id=client_id, device=device, seed=seed, data=data,
                          client_state=client_state, server_device=server_device)
        link = RayBodyLink(self.server, client_id, round) if self.server is not None else None
        try:
            out = self.client.run(task, global_state, link, self.meter)
        except BaseException:
            if self.server is not None:
                self.server.release.remote(client_id, round)
            raise
        state = to_numpy_state(out.state)
        res = {k: v for k, v in self.info.items() if not k.startswith("observed_")}
        res.update(observe(self.device, self.ws.split))
        meta = dataclasses.replace(out, state={}, resources=res)
        return state, meta

    def resources(self) -> dict[str, Any]:
        """Requested / enforced / observed resources now."""
        return dict(self.info, **observe(self.device, self.ws.split))


# --------------------------------------------------------------------------- server


class ExclusiveCountingMeter(FlopMeter):
    """A :class:`~sfp_ray.costs.FlopMeter` for a threaded actor: counting runs alone.

    Counting (the first run of a key) switches PyTorch's scaled-dot-product-attention
    backend to MATH for the duration of the call, and that switch is process-global. In a
    threaded server, a request running concurrently with a counted one would then see
    the switched backend, and two overlapping counted runs can undo each other's switch
    (the second one then runs the fused kernel that the counter cannot see, and its FLOPs
    are under-counted). A reader-writer lock makes every counted run exclusive while
    already-counted keys still run concurrently.
    """

    def __init__(self, enabled: bool = True) -> None:
        super().__init__(enabled)
        self._cond = threading.Condition()
        self._running = 0
        self._counting = False
        self._writers_waiting = 0

    def run(self, key: Hashable, fn: Callable[[], Any]) -> tuple[Any, int]:
        with self._cond:
            exclusive = self.enabled and key not in self._cache
            if exclusive:
                self._writers_waiting += 1
                while self._counting or self._running:
                    self._cond.wait()
                self._writers_waiting -= 1
                self._counting = True
            else:
                while self._counting or self._writers_waiting:
                    self._cond.wait()
                self._running += 1
        try:
            return super().run(key, fn)
        finally:
            with self._cond:
                if exclusive:
                    self._counting = False
                else:
                    self._running -= 1
                self._cond.notify_all()



@ray.remote
class ServerActor:
    """Hosts the body (a :class:`ServerRole` on a full workspace) and evaluation.

    Create it with ``max_concurrency=N`` (a threaded actor) so it serves N client requests
    at once; the role keys stored autograd graphs per request and locks its bookkeeping.
    Per-request queue wait (from the client's send time) and compute time are in the
    role's stats (:meth:`take_stats`). With ``train_body=True`` the role trains the body
    (split-learning baselines): the caller brackets each round with :meth:`begin_round`
    and :meth:`finish_round` and waits for each to return (a threaded actor does not
    order calls); the global body never leaves the actor unless :meth:`body_state` is asked.
    """

    def __init__(self, cfg: Config, num_classes: int, checkpoint: str | None, device: Any,
                 test_images: np.ndarray, test_labels: np.ndarray,
                 test_meta: tuple[int, str, tuple[str, ...]], train_body: bool = False) -> None:
        self.device = device
        self.info = enforce_limits(device)
        self.ws = Workspace(cfg, num_classes, checkpoint)
        self.meter = ExclusiveCountingMeter()
        self.role = ServerRole(self.ws.split.body, meter=self.meter, as_numpy=True,
                               train=cfg.train if train_body else None)
        nc, name, class_names = test_meta
        self.test = ArrayDataset(images=torch.from_numpy(np.array(test_images)),
                                 labels=torch.from_numpy(np.array(test_labels)),
                                 num_classes=nc, name=name, class_names=class_names)
        self.eval_batch_size = cfg.train.eval_batch_size
        self.info.update(observe(device, self.ws.split))
        self.info["role"] = "server"
        self.info["slot"] = -1

    def ready(self) -> dict[str, Any]:
        return dict(self.info)

    def forward(self, key: tuple[int, int, int], acts: np.ndarray, *, need_grad: bool,
                sent_at: float | None = None) -> BodyReply:
        return self.role.forward(key, acts, need_grad=need_grad, sent_at=sent_at)

    def backward(self, key: tuple[int, int, int], grad: np.ndarray, grad_slice: tuple[int, int] | None = None,
                 *, sent_at: float | None = None) -> BodyReply:
        return self.role.backward(key, grad, grad_slice, sent_at=sent_at)

    def release(self, client_id: int, round: int) -> int:
        return self.role.release(client_id, round)

    def take_stats(self) -> list[RequestStat]:
        return self.role.take_stats()

    def pending(self) -> int:
        return self.role.pending()

    def begin_round(self, round: int, client_ids: Sequence[int]) -> None:
        self.role.begin_round(round, client_ids)

    def finish_round(self, weights: Mapping[int, float]) -> BodyAggregate:
        return self.role.finish_round(weights)

    def body_state(self) -> dict[str, np.ndarray]:
        return to_numpy_state(self.role.body_state())

    def evaluate(self, global_state: Mapping[str, np.ndarray]) -> tuple[float, float, float, float]:
        """``(accuracy, loss, flops, wall_s)`` of the model with ``global_state`` loaded."""
        self.ws.load_state(global_state)
        return evaluate(self.ws, self.test, self.eval_batch_size, self.meter)

    def resources(self) -> dict[str, Any]:
        return dict(self.info, **observe(self.device, self.ws.split))


# --------------------------------------------------------------------------- aggregator


@ray.remote
class AggregatorActor:
    """Sample-count-weighted FedAvg of client states that arrive as object refs.

    Pass the client states' object refs as *top-level* arguments
    (``aggregate.remote(weights, ids, *refs)``): Ray then resolves them here, zero-copy from
    the object store, and they never pass through the driver.
    """

    @ray.method(num_returns=2)
    def aggregate(self, weights: Sequence[float], client_ids: Sequence[int],
                  *states: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """``(averaged state as numpy, {"flops", "wall_s", "payload_bytes"})``."""
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # states are read-only views into the object store; fedavg only reads them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            new = fedavg(list(states), list(weights), list(client_ids))
        wall = time.perf_counter() - t0
        info = {"flops": aggregation_flops(states), "wall_s": wall, "payload_bytes": state_bytes(new)[0]}
        return to_numpy_state(new), info

    def ready(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {"role": "aggregator", "node_id": ctx.get_node_id(), "pid": os.getpid()}
