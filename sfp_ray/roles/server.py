"""The server role: hosts the frozen body and serves clients' forward/backward requests.

Plain Python, no Ray: the Ray server actor is a thin shell around :class:`ServerRole`, and
the serial executor calls it directly. The body is frozen (SFPrompt trains only prompts
and tails), so a backward request computes gradients with respect to the body's *input*
only; its cost is what is executed, not a 2x-forward rule.

Requests are keyed by ``(client_id, round, step)``; the autograd graph of a forward pass
is kept until its backward request arrives (or :meth:`ServerRole.release` drops it), so
several clients can interleave their steps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import torch

from sfp_ray.costs import FlopMeter, payload_bytes, serialized_bytes


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
class ServerRole:
    """Serves the body of a :class:`~sfp_ray.roles.workspace.Workspace`.

    Args:
        body: the server-side module (frozen).
        meter: FLOP meter shared by this server's requests.
        as_numpy: reply with numpy arrays (for Ray) instead of tensors.
    """

    body: torch.nn.Module
    meter: FlopMeter = field(default_factory=FlopMeter)
    as_numpy: bool = False
    stats: list[RequestStat] = field(default_factory=list)
    _graphs: dict[Hashable, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for p in self.body.parameters():
            p.requires_grad_(False)

    def _tensor(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))

    def _reply(self, t: torch.Tensor | None, flops: int, compute_s: float, queue_s: float) -> BodyReply:
        if t is None:
            return BodyReply(None, flops, compute_s, queue_s, 0, 0)
        t = t.detach()
        out: torch.Tensor | np.ndarray = t.numpy() if self.as_numpy else t
        return BodyReply(out, flops, compute_s, queue_s, payload_bytes(t), serialized_bytes(t))

    def forward(self, key: tuple[int, int, int], acts: torch.Tensor | np.ndarray, *, need_grad: bool,
                sent_at: float | None = None) -> BodyReply:
        """Body forward on smashed activations; keep the graph when ``need_grad``."""
        start = time.time()
        queue_s = max(0.0, start - sent_at) if sent_at is not None else 0.0
        x = self._tensor(acts)
        t0 = time.perf_counter()
        if need_grad:
            x = x.detach().requires_grad_(True)

            def run() -> torch.Tensor:
                return self.body(x)

            out, flops = self.meter.run(("split_train", "body", "fwd", tuple(x.shape), True), run)
            with self._lock:
                self._graphs[key] = (x, out)
        else:
            with torch.no_grad():
                out, flops = self.meter.run(("split_train", "body", "fwd", tuple(x.shape), False),
                                            lambda: self.body(x))
        compute_s = time.perf_counter() - t0
        self.stats.append(RequestStat(key[0], key[1], "forward", queue_s, compute_s, flops, x.shape[1]))
        return self._reply(out, flops, compute_s, queue_s)

    def backward(self, key: tuple[int, int, int], grad_out: torch.Tensor | np.ndarray,
                 grad_slice: tuple[int, int] | None = None, *, sent_at: float | None = None) -> BodyReply:
        """Gradient w.r.t. the body input for the stored forward ``key``.

        ``grad_slice=(a, b)`` returns only tokens ``a:b`` of that gradient (the prompt
        tokens, when nothing trainable sits between prompts and the cut).
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
