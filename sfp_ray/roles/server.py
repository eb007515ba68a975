"""The server role: hosts the body and serves clients' forward/backward requests.

Plain Python, no Ray: the Ray server actor is a thin shell around :class:`ServerRole`, and
the serial executor calls it directly. Two modes:

* **frozen body** (``train=None``; SFPrompt, Cao et al., arXiv 2407.17533): SFPrompt trains
  only prompts and tails, so a backward request computes gradients with respect to the
  body's *input* only; its cost is what is executed, not a 2x-forward rule.
* **trained body** (``train=`` a ``TrainConfig``; the split-learning baselines): each
  client's work is bracketed by :meth:`ServerRole.open`, which makes that client its own
  copy of the body from the global body state it is given (with a fresh optimizer, like
  the client's own), and :meth:`ServerRole.close`, which hands the trained copy back. A
  backward request computes the input gradient *and* the copy's weight gradients and
  takes one optimizer step. Averaging the copies is FedAvg's job, done with the clients'
  own states (SplitFed-V1, Thapa et al., AAAI 2022); relaying one client's copy to the
  next is vanilla split learning (Gupta & Raskar, 2018). The server keeps no global body
  of its own between clients: the orchestrator owns it, like every other global state.

Requests are keyed by ``(client_id, round, step)``; the autograd graph of a forward pass
is kept until its backward request arrives (or :meth:`ServerRole.release` drops it), so
several clients can interleave their steps. Body states use the parameter names of
:class:`~sfp_ray.models.SplitViT` (``body.blocks.1.attn.qkv.weight``, ...).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sfp_ray.compute import autocast, sync, wire_dtype
from sfp_ray.costs import FlopMeter, Work, payload_bytes, serialized_bytes, shape_str
from sfp_ray.faults import InjectedFault, InjectedServerLoss, check_finite
from sfp_ray.roles.optim import make_optimizer
from sfp_ray.tensors import as_tensor, from_wire, to_wire

if TYPE_CHECKING:
    from sfp_ray.config import TrainConfig

BODY_PREFIX = "body."  # body parameters are named as in SplitViT


@dataclass
class BodyReply:
    """The server's answer to one request, with what it cost the server.

    ``moved_bytes``, ``ops`` and ``kernels`` complete ``flops`` into the request's :class:`~sfp_ray.costs.Work`
    (what a measured server class is timed on).
    """

    tensor: torch.Tensor | np.ndarray | None
    flops: int
    compute_s: float
    queue_s: float
    payload_bytes: int
    serialized_bytes: int
    shapes: str = ""
    moved_bytes: int = 0
    ops: int = 0
    #: CPU seconds of the request in the server thread that ran it
    compute_cpu_s: float = 0.0
    kernels: int = 0

    def work(self) -> Work:
        """The request's work as the ledger charges it."""
        return Work(self.flops, self.moved_bytes, self.ops, self.kernels)


@dataclass
class _BodyCopy:
    """One client's copy of the global body for a round, with its optimizer."""

    module: torch.nn.Module
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer


@dataclass
class ServerRole:
    """Serves a body module (:class:`~sfp_ray.models.ViTBody`) to clients.

    Args:
        body: the server-side module. Frozen mode runs it as it is; trained mode only
            copies it as the template of each client's body copy.
        meter: FLOP meter shared by this server's requests.
        as_numpy: reply with numpy arrays (for Ray) instead of tensors.
        train: ``None`` for a frozen body (SFPrompt); a ``TrainConfig`` to train per-client
            body copies (split-learning baselines, see the module docstring).
        body_of: for per-device cuts (frozen body only), a function giving the body of a
            client's cut ``(head_blocks, tail_blocks)``, sharing ``body``'s blocks
            (:meth:`~sfp_ray.models.SplitViT.body_for`); requests then name their cut.
    """

    body: torch.nn.Module
    meter: FlopMeter = field(default_factory=FlopMeter)
    as_numpy: bool = False
    train: TrainConfig | None = None
    #: ``train.precision``: the body's forward passes autocast to it, and what crosses the cut is sent in it
    precision: str = "fp32"
    #: ``(head_blocks, tail_blocks) -> body`` for clients cut elsewhere than ``body`` (per-device cuts)
    body_of: Any = None
    _bodies: dict[tuple[int, int], torch.nn.Module] = field(default_factory=dict)
    _graphs: dict[Hashable, tuple[torch.Tensor, torch.Tensor, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _copies: dict[tuple[int, int], _BodyCopy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for p in self.body.parameters():
            p.requires_grad_(False)
        first = next(iter(self.body.parameters()), None)
        #: where the body computes (its parameters' device; what arrives is moved there)
        self.device = first.device if first is not None else torch.device("cpu")
        self.wire = wire_dtype(self.precision)

    @property
    def trains_body(self) -> bool:
        return self.train is not None

    def _reply(self, t: torch.Tensor | None, work: Work, compute_s: float, queue_s: float,
               cpu_s: float = 0.0) -> BodyReply:
        if t is None:
            return BodyReply(None, work.flops, compute_s, queue_s, 0, 0, "", work.moved_bytes, work.ops, cpu_s,
                             work.kernels)
        t = t.detach().to(self.wire)
        out = to_wire(t) if self.as_numpy else t
        return BodyReply(out, work.flops, compute_s, queue_s, payload_bytes(t), serialized_bytes(t), shape_str(t),
                         work.moved_bytes, work.ops, cpu_s, work.kernels)

    # ------------------------------------------------------------- trained body

    def open(self, client_id: int, round: int, body_state: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Give a client its own copy of the body, loaded from ``body_state`` (names ``body.*``)."""
        if not self.trains_body:
            raise RuntimeError("server: open needs a trained body (ServerRole(train=...)); this body is frozen")
        module = copy.deepcopy(self.body)
        own = dict(module.named_parameters())
        names = {BODY_PREFIX + n for n in own}
        if set(body_state) != names:
            missing, extra = sorted(names - set(body_state)), sorted(set(body_state) - names)
            raise KeyError(f"server: body state does not fit the body (missing {missing[:3]}, unexpected {extra[:3]})")
        with torch.no_grad():
            for n, p in own.items():
                p.copy_(as_tensor(body_state[BODY_PREFIX + n]))
                p.requires_grad_(True)
        params = list(module.parameters())
        with self._lock:
            self._copies[(int(client_id), int(round))] = _BodyCopy(module, params, make_optimizer(params, self.train))

    def close(self, client_id: int, round: int) -> dict[str, torch.Tensor | np.ndarray]:
        """The client's trained body copy (names ``body.*``); the copy is dropped.

        Raises :class:`~sfp_ray.faults.NonFiniteError` when the copy holds NaN or inf.
        """
        with self._lock:
            c = self._copies.pop((int(client_id), int(round)), None)
            pending = [k for k in self._graphs if k[0] == client_id and k[1] == round]
        if c is None:
            raise KeyError(f"server: no body copy for client {client_id} in round {round}; call open first")
        if pending:
            raise RuntimeError(f"server: {len(pending)} forward passes of client {client_id} in round {round} "
                               f"still await their backward request")
        state = {BODY_PREFIX + n: p.detach().clone() for n, p in c.module.named_parameters()}
        check_finite(state, what="body state")  # a diverged copy must not reach the average
        return {k: v.cpu().numpy() for k, v in state.items()} if self.as_numpy else state

    def _copy_of(self, client_id: int, round: int) -> _BodyCopy:
        with self._lock:
            c = self._copies.get((client_id, round))
        if c is None:
            raise KeyError(f"server: no body copy for client {client_id} in round {round}; call open first")
        return c

    def _body_for(self, key: tuple[int, int, int], cut: tuple[int, int] | None = None) -> torch.nn.Module:
        if self.trains_body:
            return self._copy_of(key[0], key[1]).module
        if cut is None or self.body_of is None:
            return self.body
        cut = (int(cut[0]), int(cut[1]))
        with self._lock:
            body = self._bodies.get(cut)
            if body is None:
                body = self._bodies[cut] = self.body_of(cut)
                for p in body.parameters():
                    p.requires_grad_(False)
        return body

    # ------------------------------------------------------------- requests

    def forward(self, key: tuple[int, int, int], acts: torch.Tensor | np.ndarray, *, need_grad: bool,
                sent_at: float | None = None, cut: tuple[int, int] | None = None) -> BodyReply:
        """Body forward on smashed activations (of a client cut at ``cut``); keep the graph when ``need_grad``."""
        queue_s = max(0.0, time.time() - sent_at) if sent_at is not None else 0.0
        body = self._body_for(key, cut)
        x = from_wire(acts, self.device).float()  # computed on in float32, as sent by the client in its precision
        t0, c0 = time.perf_counter(), time.thread_time()
        with autocast(self.precision, self.device):
            if need_grad:
                x = x.detach().requires_grad_(True)
                out, work = self.meter.measure(("split_train", "body", "fwd", tuple(x.shape), True, cut),
                                               lambda: body(x))
                with self._lock:
                    self._graphs[key] = (x, out, cut)
            else:
                with torch.no_grad():
                    out, work = self.meter.measure(("split_train", "body", "fwd", tuple(x.shape), False, cut),
                                                   lambda: body(x))
        sync(self.device)
        return self._reply(out, work, time.perf_counter() - t0, queue_s, time.thread_time() - c0)

    def backward(self, key: tuple[int, int, int], grad_out: torch.Tensor | np.ndarray,
                 grad_slice: tuple[int, int] | None = None, *, sent_at: float | None = None) -> BodyReply:
        """Gradient w.r.t. the body input for the stored forward ``key``.

        ``grad_slice=(a, b)`` returns only tokens ``a:b`` of that gradient (the prompt
        tokens, when nothing trainable sits between prompts and the cut). With a trained
        body the same pass also computes the weight gradients of the client's body copy,
        and the copy's optimizer takes one step.
        """
        queue_s = max(0.0, time.time() - sent_at) if sent_at is not None else 0.0
        with self._lock:
            graph = self._graphs.pop(key, None)
        if graph is None:
            raise KeyError(f"server: no stored forward pass for request {key}")
        x, out, cut = graph
        g = from_wire(grad_out, self.device).to(out.dtype)
        t0, c0 = time.perf_counter(), time.thread_time()
        if self.trains_body:
            bc = self._copy_of(key[0], key[1])

            def run() -> torch.Tensor:
                gx, *gw = torch.autograd.grad(out, [x, *bc.params], grad_outputs=g)
                for q, gq in zip(bc.params, gw, strict=True):
                    q.grad = gq
                bc.opt.step()  # counts no FLOPs; inside, so that a measured server class times it
                bc.opt.zero_grad(set_to_none=True)
                return gx

            gx, work = self.meter.measure(("split_train", "body", "bwd", tuple(x.shape), tuple(g.shape), "weights",
                                           not bc.opt.state), run)
        else:
            gx, work = self.meter.measure(("split_train", "body", "bwd", tuple(x.shape), tuple(g.shape), cut),
                                          lambda: torch.autograd.grad(out, x, grad_outputs=g)[0])
        if grad_slice is not None:
            gx = gx[:, grad_slice[0]:grad_slice[1]].contiguous()
        sync(self.device)
        return self._reply(gx, work, time.perf_counter() - t0, queue_s, time.thread_time() - c0)

    def release(self, client_id: int, round: int) -> int:
        """Drop a client's stored graphs and body copy of a round (after an error); return how many graphs."""
        with self._lock:
            keys = [k for k in self._graphs if k[0] == client_id and k[1] == round]
            for k in keys:
                del self._graphs[k]
            self._copies.pop((client_id, round), None)
        return len(keys)

    def pending(self) -> int:
        return len(self._graphs)


class LocalBodyLink:
    """In-process :class:`~sfp_ray.roles.client.BodyLink` to a :class:`ServerRole`.

    For a trained body, the link opens the client's body copy from ``body_state`` when it
    is made, and :meth:`finish` hands the trained copy back. ``fault`` (a testing aid,
    :mod:`sfp_ray.faults`) fails the first request: ``raise`` as a failed request, ``exit``
    as a server that died (:class:`~sfp_ray.faults.InjectedServerLoss`).
    """

    def __init__(self, server: ServerRole, client_id: int, round: int,
                 body_state: Mapping[str, torch.Tensor] | None = None, fault: str | None = None,
                 cut: tuple[int, int] | None = None) -> None:
        self.server = server
        self.cut = cut
        self.client_id = client_id
        self.round = round
        self.step = 0
        self.fault = fault
        self.opened = body_state is not None
        if self.opened:
            server.open(client_id, round, body_state)

    def forward(self, acts: torch.Tensor, *, need_grad: bool) -> BodyReply:
        self.step += 1
        if self.fault is not None:
            fault, self.fault = self.fault, None
            where = f"request of client {self.client_id} in round {self.round}"
            if fault == "exit":
                raise InjectedServerLoss(f"injected fault (SFP_RAY_FAULT): the server lost its process ({where})")
            raise InjectedFault(f"injected fault (SFP_RAY_FAULT): the server failed a {where}")
        return self.server.forward((self.client_id, self.round, self.step), acts, need_grad=need_grad, cut=self.cut)

    def backward(self, grad: torch.Tensor, grad_slice: tuple[int, int] | None) -> BodyReply:
        return self.server.backward((self.client_id, self.round, self.step), grad, grad_slice)

    def finish(self) -> dict[str, torch.Tensor] | None:
        """The client's trained body copy (trained body), else None."""
        return self.server.close(self.client_id, self.round) if self.opened else None

    def abort(self) -> None:
        self.server.release(self.client_id, self.round)


__all__ = ["BODY_PREFIX", "BodyReply", "LocalBodyLink", "ServerRole"]
