"""The server role: hosts the body and serves clients' forward/backward requests.

Plain Python, no Ray: the Ray server actor is a thin shell around :class:`ServerRole`, and
the serial executor calls it directly. Two modes:

* **frozen body** (``train=None``; SFPrompt, Cao et al., arXiv 2407.17533): SFPrompt trains
  only prompts and tails, so a backward request computes gradients with respect to the
  body's *input* only; its cost is what is executed, not a 2x-forward rule.
* **trained body** (``train=`` a ``TrainConfig``; the split-learning baselines): a round is
  bracketed by :meth:`ServerRole.begin_round` and :meth:`ServerRole.finish_round`. At the
  start every participating client gets its own copy of the global body with its own
  optimizer (``train.optimizer``/``lr``, fresh each round like the clients' own); a
  backward request computes the input gradient *and* the weight gradients of that copy
  and takes one optimizer step; at the end the copies are averaged, weighted by the
  clients' sample counts, into the new global body. This is SplitFed-V1's server (Thapa
  et al., "SplitFed: When Federated Learning Meets Split Learning", AAAI 2022). Vanilla
  split learning (Gupta & Raskar, J. Netw. Comput. Appl. 2018) is the same server run
  with one client per ``begin_round``/``finish_round``: the single copy is adopted as the
  new global body, so the next client continues from it.

Requests are keyed by ``(client_id, round, step)``; the autograd graph of a forward pass
is kept until its backward request arrives (or :meth:`ServerRole.release` drops it), so
several clients can interleave their steps. Body states use the parameter names of
:class:`~sfp_ray.models.SplitViT` (``body.blocks.1.attn.qkv.weight``, ...).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sfp_ray.aggregation import fedavg
from sfp_ray.costs import FlopMeter, payload_bytes, serialized_bytes
from sfp_ray.roles.optim import make_optimizer

BODY_PREFIX = "body."  # body parameters are named as in SplitViT


@dataclass
class BodyReply:
    """The server's answer to one request, with what it cost the server."""

    tensor: torch.Tensor | np.ndarray | None
    flops: int
    compute_s: float
    queue_s: float
    payload_bytes: int
    serialized_bytes: int


@dataclass
class RequestStat:
    client_id: int
    round: int
    kind: str
    queue_s: float
    compute_s: float
    flops: int
    tokens: int


@dataclass
class BodyAggregate:
    """What closing a round of a trained body cost the server (:meth:`ServerRole.finish_round`).

    ``flops`` is the server-side FedAvg arithmetic (2 per element per averaged copy); it
    is 0 when a single copy is adopted as the new global body (split learning).
    """

    round: int
    clients: int
    flops: float
    wall_s: float


@dataclass
class _BodyCopy:
    """One client's copy of the global body for a round, with its optimizer."""

    module: torch.nn.Module
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer


@dataclass
class ServerRole:
    """Serves the body of a :class:`~sfp_ray.roles.workspace.Workspace`.

    Args:
        body: the server-side module; it is the *global* body and is never trained in
            place (its parameters are frozen; a trained body is updated only by
            :meth:`finish_round`).
        meter: FLOP meter shared by this server's requests.
        as_numpy: reply with numpy arrays (for Ray) instead of tensors.
        train: ``None`` for a frozen body (SFPrompt); a ``TrainConfig`` to train the body
            on per-client copies (split-learning baselines, see the module docstring).
    """

    body: torch.nn.Module
    meter: FlopMeter = field(default_factory=FlopMeter)
    as_numpy: bool = False
    train: Any = None  # TrainConfig | None
    stats: list[RequestStat] = field(default_factory=list)
    _graphs: dict[Hashable, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _copies: dict[int, _BodyCopy] = field(default_factory=dict)
    _round: int | None = None

    def __post_init__(self) -> None:
        for p in self.body.parameters():
            p.requires_grad_(False)

    @property
    def trains_body(self) -> bool:
        return self.train is not None

    def _tensor(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))

    def _reply(self, t: torch.Tensor | None, flops: int, compute_s: float, queue_s: float) -> BodyReply:
        if t is None:
            return BodyReply(None, flops, compute_s, queue_s, 0, 0)
        t = t.detach()
        out: torch.Tensor | np.ndarray = t.numpy() if self.as_numpy else t
        return BodyReply(out, flops, compute_s, queue_s, payload_bytes(t), serialized_bytes(t))

    # ------------------------------------------------------------- trained body: rounds

    def begin_round(self, round: int, client_ids: Iterable[int],
                    body_state: Mapping[str, torch.Tensor | np.ndarray] | None = None) -> None:
        """Open a round of a trained body: one copy of the global body per client.

        ``body_state`` (names ``body.*``) replaces the global body first; by default the
        round starts from the body the previous :meth:`finish_round` left.
        """
        self._need_trained("begin_round")
        with self._lock:
            if self._copies:
                raise RuntimeError(f"server: round {self._round} is still open "
                                   f"(clients {sorted(self._copies)}); call finish_round first")
        if body_state is not None:
            self._load_global(body_state)
        copies = {}
        for cid in sorted({int(c) for c in client_ids}):
            module = copy.deepcopy(self.body)
            params = list(module.parameters())
            for q in params:
                q.requires_grad_(True)
            copies[cid] = _BodyCopy(module, params, make_optimizer(params, self.train))
        with self._lock:
            self._copies = copies
            self._round = round

    def finish_round(self, weights: Mapping[int, float]) -> BodyAggregate:
        """Close the round: the copies' sample-weighted average becomes the global body.

        ``weights`` maps each participating client id to its weight (its sample count)
        and must name exactly the clients of :meth:`begin_round`. Copies are summed in
        ascending client-id order (:func:`~sfp_ray.aggregation.fedavg`), so the result
        does not depend on the order in which clients finished. A single copy is adopted
        as it is (no arithmetic).
        """
        self._need_trained("finish_round")
        t0 = time.perf_counter()
        with self._lock:
            copies, rnd = self._copies, self._round
            if set(copies) != {int(c) for c in weights}:
                raise ValueError(f"server: finish_round got weights for clients {sorted(weights)} but round "
                                 f"{rnd} was opened for {sorted(copies)}")
            pending = [k for k in self._graphs if k[0] in copies and k[1] == rnd]
            if pending:
                raise RuntimeError(f"server: {len(pending)} forward passes of round {rnd} still await their "
                                   f"backward request (first: {pending[0]})")
            self._copies, self._round = {}, None
        ids = sorted(copies)
        states = [self._state_of(copies[c].module) for c in ids]
        if len(ids) == 1:
            new, flops = states[0], 0.0
        else:
            new = fedavg(states, [float(weights[c]) for c in ids], ids)
            flops = float(sum(2 * v.numel() for st in states for v in st.values()))
        self._load_global(new)
        return BodyAggregate(rnd if rnd is not None else -1, len(ids), flops, time.perf_counter() - t0)

    def body_state(self) -> dict[str, torch.Tensor]:
        """Copy of the global body (names ``body.*``)."""
        return self._state_of(self.body)

    def client_body_state(self, client_id: int) -> dict[str, torch.Tensor]:
        """Copy of a client's body copy in the open round (names ``body.*``)."""
        return self._state_of(self._copy_of(client_id, self._round).module)

    def _need_trained(self, what: str) -> None:
        if not self.trains_body:
            raise RuntimeError(f"server: {what} needs a trained body (ServerRole(train=...)); this body is frozen")

    def _copy_of(self, client_id: int, round: int | None) -> _BodyCopy:
        with self._lock:
            c = self._copies.get(client_id)
            open_round = self._round
        if c is None or round != open_round:
            raise KeyError(f"server: no body copy for client {client_id} in round {round} (open round: "
                           f"{open_round}, clients {sorted(self._copies)}); call begin_round first")
        return c

    def _body_for(self, key: tuple[int, int, int]) -> torch.nn.Module:
        return self._copy_of(key[0], key[1]).module if self.trains_body else self.body

    @staticmethod
    def _state_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {BODY_PREFIX + n: p.detach().clone() for n, p in module.named_parameters()}

    def _load_global(self, state: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        own = dict(self.body.named_parameters())
        names = {BODY_PREFIX + n for n in own}
        if set(state) != names:
            missing, extra = sorted(names - set(state)), sorted(set(state) - names)
            raise KeyError(f"server: body state does not fit the body (missing {missing[:3]}, unexpected "
                           f"{extra[:3]})")
        with torch.no_grad():
            for n, p in own.items():
                p.copy_(self._tensor(state[BODY_PREFIX + n]))

    # ------------------------------------------------------------- requests

    def forward(self, key: tuple[int, int, int], acts: torch.Tensor | np.ndarray, *, need_grad: bool,
                sent_at: float | None = None) -> BodyReply:
        """Body forward on smashed activations; keep the graph when ``need_grad``."""
        start = time.time()
        queue_s = max(0.0, start - sent_at) if sent_at is not None else 0.0
        body = self._body_for(key)
        x = self._tensor(acts)
        t0 = time.perf_counter()
        if need_grad:
            x = x.detach().requires_grad_(True)

            def run() -> torch.Tensor:
                return body(x)

            out, flops = self.meter.run(("split_train", "body", "fwd", tuple(x.shape), True), run)
            with self._lock:
                self._graphs[key] = (x, out)
        else:
            with torch.no_grad():
                out, flops = self.meter.run(("split_train", "body", "fwd", tuple(x.shape), False),
                                            lambda: body(x))
        compute_s = time.perf_counter() - t0
        self.stats.append(RequestStat(key[0], key[1], "forward", queue_s, compute_s, flops, x.shape[1]))
        return self._reply(out, flops, compute_s, queue_s)

    def backward(self, key: tuple[int, int, int], grad_out: torch.Tensor | np.ndarray,
                 grad_slice: tuple[int, int] | None = None, *, sent_at: float | None = None) -> BodyReply:
        """Gradient w.r.t. the body input for the stored forward ``key``.

        ``grad_slice=(a, b)`` returns only tokens ``a:b`` of that gradient (the prompt
        tokens, when nothing trainable sits between prompts and the cut). With a trained
        body the same pass also computes the weight gradients of the client's body copy,
        and the copy's optimizer takes one step.
        """
        start = time.time()
        queue_s = max(0.0, start - sent_at) if sent_at is not None else 0.0
        with self._lock:
            graph = self._graphs.pop(key, None)
        if graph is None:
            raise KeyError(f"server: no stored forward pass for request {key}")
        x, out = graph
        g = self._tensor(grad_out)
        t0 = time.perf_counter()
        if self.trains_body:
            bc = self._copy_of(key[0], key[1])

            def run() -> torch.Tensor:
                gx, *gw = torch.autograd.grad(out, [x, *bc.params], grad_outputs=g)
                for q, gq in zip(bc.params, gw, strict=True):
                    q.grad = gq
                return gx

            gx, flops = self.meter.run(("split_train", "body", "bwd", tuple(x.shape), tuple(g.shape), "weights"),
                                       run)
            bc.opt.step()
            bc.opt.zero_grad(set_to_none=True)
        else:

            def run() -> torch.Tensor:
                (gx,) = torch.autograd.grad(out, x, grad_outputs=g)
                return gx

            gx, flops = self.meter.run(("split_train", "body", "bwd", tuple(x.shape), tuple(g.shape)), run)
        if grad_slice is not None:
            gx = gx[:, grad_slice[0]:grad_slice[1]].contiguous()
        compute_s = time.perf_counter() - t0
        self.stats.append(RequestStat(key[0], key[1], "backward", queue_s, compute_s, flops, gx.shape[1]))
        return self._reply(gx, flops, compute_s, queue_s)

    def release(self, client_id: int, round: int) -> int:
        """Drop stored graphs of a client's round (e.g. after an error); return how many."""
        with self._lock:
            keys = [k for k in self._graphs if k[0] == client_id and k[1] == round]
            for k in keys:
                del self._graphs[k]
        return len(keys)

    def pending(self) -> int:
        return len(self._graphs)

    def take_stats(self) -> list[RequestStat]:
        with self._lock:
            out, self.stats = self.stats, []
        return out
