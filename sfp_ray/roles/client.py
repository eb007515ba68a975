"""The client role: one client's round, as a plain class (no Ray).

:class:`ClientRole` is the skeleton every method's client shares: receive the global
trainable state (phase ``download``), run the method's training (:meth:`ClientRole.train`),
send the new state back (phase ``upload``). A method supplies the trainable set and the
training in its own file under :mod:`sfp_ray.methods`.

A split client reaches the server's body only through a :class:`BodyLink` it is handed,
so the same code runs in-process (serial executor) and against a Ray server actor.
:func:`split_step` is the U-shaped split-training step of SFPrompt (Cao, Zhu, Gong, arXiv
2407.17533) and of the split-learning baselines: head forward -> activations up; body
forward -> outputs down; tail forward/backward -> output gradients up; body backward ->
the head output's gradient down (only the tokens the client needs); head backward; one
optimizer step.

Every compute step goes through the :class:`~sfp_ray.costs.Ledger`, which counts FLOPs
per (phase, part), and every message is recorded where it is sent. The pass functions
(:func:`forward_pass`, :func:`tail_loss`, :func:`bypass_loss`, :func:`model_loss`) are the
same ones the methods' cost models run on the ``meta`` device for ``sfp-ray project``.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from sfp_ray.compute import autocast, check_precision, sync, wire_dtype
from sfp_ray.costs import Ledger
from sfp_ray.data import ArrayDataset
from sfp_ray.faults import InjectedFault, check_loss, exit_process
from sfp_ray.records import CostRecord, MessageRecord, Segment, Status
from sfp_ray.roles.optim import make_optimizer
from sfp_ray.roles.server import BodyReply
from sfp_ray.roles.workspace import Workspace
from sfp_ray.tensors import from_wire

if TYPE_CHECKING:
    from sfp_ray.devices import DeviceProfile


class BodyLink(Protocol):
    """How a client reaches the body: forward activations, backward output gradients."""

    def forward(self, acts: torch.Tensor, *, need_grad: bool) -> BodyReply: ...

    def backward(self, grad: torch.Tensor, grad_slice: tuple[int, int] | None) -> BodyReply: ...


@dataclass(frozen=True)
class ClientTask:
    """One client's assignment for one round: the single object a task travels as.

    ``indices`` are the client's rows of the training set (the executor holds the set);
    ``client_state`` is what the client keeps between rounds (e.g. its kept EL2N indices),
    owned by the orchestrator and sent with every task so any worker can serve any client.
    ``cut`` is the client's own cut when cuts differ per device.
    ``attempt`` counts the executor's tries of this task in the round (1, then 2 for the
    retry); ``faults`` holds, per attempt, the fault kinds the test-only ``SFP_RAY_FAULT``
    hook injects (:mod:`sfp_ray.faults`), empty in normal runs.
    """

    round: int
    client_id: int
    seed: int
    device: DeviceProfile
    server_device: DeviceProfile
    indices: np.ndarray
    client_state: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 1
    faults: tuple[tuple[str, ...], ...] = ()
    #: ``(head_blocks, tail_blocks)`` of this client (``split.policy=per_device``); None: the configured cut
    cut: tuple[int, int] | None = None

    def injected(self) -> tuple[str, ...]:
        """Fault kinds injected into this attempt (testing aid; empty in normal runs)."""
        return self.faults[self.attempt - 1] if 0 < self.attempt <= len(self.faults) else ()


@dataclass
class ClientOutput:
    """What a client returns: its new trainable state, its weight and its records.

    ``state`` is a plain name -> tensor mapping when a role returns it; executors replace
    it with their own handle (:class:`~sfp_ray.executors.base.State`). ``timeline`` is the
    client's simulated round, segment by segment, for the round clock.
    """

    client_id: int
    state: Any
    num_samples: int
    client_state: dict[str, Any]
    costs: list[CostRecord]
    messages: list[MessageRecord]
    timeline: list[Segment]
    train_loss: float
    server_queue_s: float = 0.0
    wall_s: float = 0.0
    resources: dict[str, Any] = field(default_factory=dict)
    status: Status = "ok"
    attempts: int = 1
    error: str = ""

    @property
    def sim_s(self) -> float:
        """Simulated duration of this client's round on its own (no server queueing)."""
        return sum(s.seconds for s in self.timeline)


# --------------------------------------------------------------------------- passes


def batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Index batches over ``n`` samples, shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def forward_pass(module: Any, x: torch.Tensor, need_grad: bool) -> torch.Tensor:
    """A forward pass of ``module``; without autograd when nothing upstream of its output trains."""
    if need_grad:
        return module(x)
    with torch.no_grad():
        return module(x)


def _backward(loss: torch.Tensor, scale: float) -> torch.Tensor:
    """``loss.backward()``, of ``loss * scale`` when a loss scale is in use (fp16); returns the unscaled loss."""
    (loss * scale if scale != 1.0 else loss).backward()
    return loss


def tail_loss(split: Any, out: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Tail forward on what the body sent, cross-entropy, backward (into the tail and ``out``)."""
    return _backward(F.cross_entropy(split.tail(out), y), scale)


def bypass_loss(split: Any, h: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Tail applied to the head output directly (body bypassed), cross-entropy, backward."""
    return _backward(F.cross_entropy(split.bypass_tail(h), y), scale)


def model_loss(split: Any, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """The whole model's forward, cross-entropy, backward (federated baselines)."""
    return _backward(F.cross_entropy(split(x), y), scale)


def run_epochs(data: ArrayDataset, epochs: int, batch_size: int, gen: torch.Generator,
               step: Callable[[torch.Tensor, torch.Tensor], float]) -> float:
    """``epochs`` shuffled passes of ``step(x, y)`` over ``data``; the mean loss (NaN if none).

    A non-finite batch loss stops the client at once (:class:`~sfp_ray.faults.NonFiniteError`):
    its state would only carry NaNs into the average.
    """
    losses = []
    for e in range(epochs):
        for b, idx in enumerate(batches(len(data), batch_size, gen)):
            loss = step(data.images[idx], data.labels[idx])
            check_loss(loss, f"epoch {e + 1}, batch {b + 1}")
            losses.append(loss)
    return float(np.mean(losses)) if losses else float("nan")


def optimizer_step(opt: torch.optim.Optimizer, ledger: Ledger | None = None, part: str = "tail", *,
                   scaler: Any = None) -> None:
    """One step of ``opt`` (then its gradients are dropped); with a ``ledger``, charged to the client's ``part``.

    With a loss ``scaler`` (fp16) the gradients are unscaled first, the step is skipped when one
    overflowed, and the scale is updated. The step executes no counted FLOPs; a measured device
    class still charges its time (the bytes its element-wise updates move and the operations it
    dispatches), and its wall time is measured.
    """

    def step() -> None:
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)

    if ledger is None:
        step()
        return
    params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
    # what the step's work depends on: the optimizer, the tensors it updates, and whether its state is still empty
    key = ("step", type(opt).__name__, len(params), sum(p.numel() for p in params), not opt.state)
    ledger.compute(part, key, step)


def loss_scale(scaler: Any) -> float:
    """The scale a loss is multiplied by before backward: the scaler's now, 1 without one."""
    return float(scaler.get_scale()) if scaler is not None else 1.0


def split_step(split: Any, x: torch.Tensor, y: torch.Tensor, link: BodyLink, ledger: Ledger,
               opt: torch.optim.Optimizer, *, head_trains: bool, grad_slice: tuple[int, int] | None,
               wire: torch.dtype = torch.float32, scaler: Any = None) -> float:
    """One U-shaped split-training step over the network; returns the loss.

    ``head_trains``: something before the cut trains (prompts, or head blocks), so the
    head output's gradient must come back down; ``grad_slice`` names the tokens of that
    gradient the client needs (None: all of them). What crosses the cut is sent in
    ``wire`` (the training precision) and computed on in float32 on arrival; ``scaler``
    scales the loss (fp16), so the gradients that cross are scaled too until the
    optimizer step unscales them.
    """
    device = x.device
    h = ledger.compute("head", ("fwd", tuple(x.shape), head_trains), lambda: forward_pass(split.head, x, head_trains))
    acts = h.detach().to(wire)
    ledger.send_tensor(acts, part="head", direction="up", kind="activation")
    reply = link.forward(acts, need_grad=head_trains)
    ledger.server_compute("body", reply.flops, wall_s=reply.compute_s, queue_s=reply.queue_s, work=reply.work(),
                          cpu_s=reply.compute_cpu_s)
    out = from_wire(reply.tensor, device).float()
    ledger.message(part="body", direction="down", kind="activation", payload=reply.payload_bytes,
                   serialized=reply.serialized_bytes, shapes=reply.shapes)
    out.requires_grad_(True)
    scale = loss_scale(scaler)
    loss = ledger.compute("tail", ("fwdbwd", tuple(out.shape)), lambda: tail_loss(split, out, y, scale))
    if head_trains:
        g = out.grad.detach().to(wire)
        ledger.send_tensor(g, part="tail", direction="up", kind="gradient")
        back = link.backward(g, grad_slice)
        ledger.server_compute("body", back.flops, wall_s=back.compute_s, queue_s=back.queue_s, work=back.work(),
                              cpu_s=back.compute_cpu_s)
        ledger.message(part="body", direction="down", kind="gradient", payload=back.payload_bytes,
                       serialized=back.serialized_bytes, shapes=back.shapes)
        gh = from_wire(back.tensor, device).to(h.dtype)
        if grad_slice is not None:
            full = torch.zeros_like(h)
            full[:, grad_slice[0]:grad_slice[1]] = gh
            gh = full
        ledger.compute("head", ("bwd", tuple(h.shape)), lambda: h.backward(gh))
    optimizer_step(opt, ledger, scaler=scaler)
    return float(loss.item())


# --------------------------------------------------------------------------- roles


def _part_of(name: str) -> str:
    return "prompt" if ".prompt" in name else name.split(".", 1)[0]


def split_by_part(state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A state cut into the messages a split client sends: one per part (prompt, head, tail)."""
    out: dict[str, dict[str, Any]] = {}
    for k, v in state.items():
        out.setdefault(_part_of(k), {})[k] = v
    return out


@dataclass
class TrainResult:
    """What a method's training of one round returns to :meth:`ClientRole.run`."""

    loss: float
    client_state: dict[str, Any]


class ClientRole(abc.ABC):
    """One client's round on a workspace: download, the method's training, upload.

    Args:
        ws: the process's workspace (holding at least the parts the client trains).
        cfg: the resolved configuration (the role reads its ``train``/``pruning`` sections).
        names: the client's trainable state (parameter names of the split model).
    """

    #: Cost rows of the whole model on the client use part ``all``; split clients send
    #: one message per part (:func:`split_by_part`).
    whole_model: bool = False

    def __init__(self, ws: Workspace, cfg: Any, names: list[str]) -> None:
        self.ws = ws
        self.cfg = cfg
        self.names = names
        self.params = ws.set_trainable(names)
        precision = cfg.train.precision
        if not ws.meta:
            check_precision(precision, ws.device)
        #: the dtype activations and gradients cross the cut in
        self.wire = wire_dtype(precision)
        #: fp16's loss scaler (one per task, like the optimizer); None otherwise
        self.scaler: Any = None

    def message_parts(self, state: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
        return {"all": state} if self.whole_model else split_by_part(state)

    @abc.abstractmethod
    def train(self, task: ClientTask, data: ArrayDataset, link: BodyLink | None, ledger: Ledger,
              gen: torch.Generator) -> TrainResult:
        """The method's work between download and upload (phases of its own)."""

    def own_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The part of a global state this client trains (under per-device cuts the global state also holds
        tail blocks of deeper cuts); every name the client trains must be in it.
        """
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"the global state lacks {len(missing)} of this client's trainable names, e.g. "
                           f"{missing[0]!r}")
        wanted = set(self.names)
        return {k: v for k, v in state.items() if k in wanted}

    def run(self, task: ClientTask, data: ArrayDataset, state: Mapping[str, Any], link: BodyLink | None,
            meter: Any, *, copy_state: bool = True) -> ClientOutput:
        """One round: download ``state`` (the client's part of the global state), train, upload.

        ``copy_state=False`` returns the new state as the workspace's own tensors (detached,
        not copied): for a caller that serialises or folds it before this workspace trains
        again, which saves a copy of the state (330 MiB for ViT-B).

        Injected faults (``task.injected()``, a testing aid): ``raise`` raises at the start,
        ``exit`` ends the process at the start, ``nan`` returns a NaN loss and state.
        """
        t0 = time.perf_counter()
        injected = task.injected()
        if "raise" in injected or "exit" in injected:
            if "exit" in injected:
                exit_process()
            raise InjectedFault(f"injected fault (SFP_RAY_FAULT): client {task.client_id} in round {task.round}, "
                                f"attempt {task.attempt}")
        device, precision = self.ws.device, self.cfg.train.precision
        ledger = Ledger(task.round, task.client_id, task.device, task.server_device, meter,
                        sync=(lambda: sync(device)) if device.type == "cuda" else None)
        gen = torch.Generator().manual_seed(task.seed)  # on the CPU: the same draws on every device
        self.ws.set_trainable(self.names)  # another role may share this workspace (serial executor)
        state = self.own_state(state)
        with ledger.phase("download"):
            self.ws.load_state(state)
            for part, sub in self.message_parts(state).items():
                ledger.send_state(sub, part=part, direction="down")
        data = data.to(device)
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        with autocast(precision, device):
            result = self.train(task, data, link, ledger, gen)
        new_state = self.ws.get_state(self.names, copy=copy_state)
        loss = result.loss
        if "nan" in injected and new_state:
            loss = float("nan")
            first = next(iter(new_state))
            new_state[first] = torch.full_like(new_state[first], float("nan"))
        with ledger.phase("upload"):
            for part, sub in self.message_parts(new_state).items():
                ledger.send_state(sub, part=part, direction="up")
        sync(device)
        return ClientOutput(
            client_id=task.client_id,
            state=new_state,
            num_samples=len(data),
            client_state=result.client_state,
            costs=ledger.records(),
            messages=ledger.messages,
            timeline=ledger.timeline,
            train_loss=loss,
            server_queue_s=ledger.server_queue_s,
            wall_s=time.perf_counter() - t0,
        )


class SplitClientRole(ClientRole):
    """A client that trains through the server's body with :func:`split_step`.

    Subclasses say whether anything before the cut trains (``head_trains``) and which
    tokens of the head output's gradient they need (:meth:`head_grad_slice`).
    """

    head_trains: bool = True

    def head_grad_slice(self) -> tuple[int, int] | None:
        """Tokens of the head output whose gradient comes back down (None: all of them)."""
        return None

    def split_step(self, x: torch.Tensor, y: torch.Tensor, link: BodyLink, ledger: Ledger,
                   opt: torch.optim.Optimizer) -> float:
        """One :func:`split_step` of this client's model over ``link``."""
        return split_step(self.ws.split, x, y, link, ledger, opt, head_trains=self.head_trains,
                          grad_slice=self.head_grad_slice(), wire=self.wire, scaler=self.scaler)

    def train_split(self, data: ArrayDataset, link: BodyLink | None, ledger: Ledger, gen: torch.Generator) -> float:
        """Phase ``split_train``: ``train.split_epochs`` passes of split steps over ``data``; mean loss."""
        t = self.cfg.train
        if link is None:
            raise RuntimeError(f"{self.cfg.method}: split training needs a link to the server's body")
        with ledger.phase("split_train"):
            opt = make_optimizer(self.params, t)
            loss = run_epochs(data, t.split_epochs, t.batch_size, gen,
                              lambda x, y: self.split_step(x, y, link, ledger, opt))
            ledger.add_samples("tail", len(data) * t.split_epochs)
        return loss


__all__ = [
    "BodyLink",
    "ClientOutput",
    "ClientRole",
    "ClientTask",
    "SplitClientRole",
    "TrainResult",
    "batches",
    "bypass_loss",
    "forward_pass",
    "loss_scale",
    "model_loss",
    "optimizer_step",
    "run_epochs",
    "split_by_part",
    "split_step",
    "tail_loss",
]
