"""How much memory each actor of a run needs, counted on the ``meta`` device before any actor starts.

The Ray pool asks Ray for this memory (``memory=`` on each actor), so Ray never places more
actors on a node than its memory holds, and the pool's size is the smallest that the
CPUs, the GPUs and the memory each allow (:mod:`sfp_ray.executors.ray.planning`). An estimate
has five terms:

* **floor**: the process itself, measured: the private memory of a Ray actor that imported
  torch, timm and sfp-ray (:data:`TORCH_FLOOR_MB`); the aggregator imports numpy only
  (:data:`NUMPY_FLOOR_MB`);
* **params**: the parameters it holds. A client slot holds the parts its method's client
  holds, and every part when it also evaluates the global model (the Ray executor
  evaluates on the client slots); the server holds the body;
* **trained**: gradients and optimizer state of what it trains (Adam/AdamW: two slots per
  parameter, SGD with momentum one), plus the optimizer step's scratch (two of the largest
  trained tensors);
* **activations**: the peak of the tensors a training step (or an evaluation batch, or a
  scoring batch) keeps alive at once, measured by running the very passes the roles run on
  ``meta`` tensors under :class:`LiveBytes`; for the server, once per request it holds at
  the same time;
* **states**: what an aggregator folds into (float64 sums of a client state: twice its
  float32 bytes), or the server's per-client body copies of the split-learning baselines.

Everything except the floor is what a GPU share must hold when the actor computes on a
GPU (:attr:`MemoryEstimate.device_bytes`).

The floors were measured on this project's machine (torch 2.14.1 CUDA build, Ray 2.60) as
the private memory of an idle actor (resident minus shared pages): what ``resources.csv``
sets beside the estimate as ``observed_peak_private_mb``. Shared libraries (~350 MiB for a
torch process) are mapped once per node, and the object store's pages are Ray's own
budget, so neither is in an actor's estimate. ``benchmarks/scale_models.py`` compares
estimates with the observed peaks at ViT-B and ViT-L scale.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from sfp_ray.config import Config

_MIB = 2**20

#: Private memory of an idle client or server actor (torch 2.14.1 CUDA build + timm + sfp-ray + Ray's worker), MiB:
#: 427 measured (resources.csv, ``observed_peak_private_mb`` at start); shared libraries (~350 MiB) not counted.
TORCH_FLOOR_MB = 430
#: Private memory of the aggregator actor (numpy + Ray's worker, no torch), MiB: 51 measured.
NUMPY_FLOOR_MB = 55


# --------------------------------------------------------------------------- live tensor bytes


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes of tensors created while it is active and still alive; keeps the peak.

    Every operator output that is not a view of an input counts from its creation until the
    tensor is freed (autograd's saved tensors stay alive until backward, so they count);
    tensors that existed before (parameters) do not. Works on the ``meta`` device, where
    nothing is allocated, so a ViT-L step at 224 px is measured in milliseconds.

    Example:
        >>> lin = torch.nn.Linear(1000, 1000, device="meta")
        >>> with LiveBytes() as live:
        ...     lin(torch.empty(8, 1000, device="meta")).sum().backward()
        >>> live.peak >= 4 * 1000 * 1000  # the weight's gradient
        True
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        returns = getattr(getattr(func, "_schema", None), "returns", ())
        aliased = {i for i, r in enumerate(returns) if r.alias_info is not None}
        flat, _ = tree_flatten(out)
        for i, t in enumerate(flat):
            if isinstance(t, torch.Tensor) and i not in aliased:
                n = t.numel() * t.element_size()
                self.live += n
                weakref.finalize(t, self._free, n)
        self.peak = max(self.peak, self.live)
        return out


def peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes of the tensors ``fn()`` keeps alive at once (see :class:`LiveBytes`)."""
    with LiveBytes() as live:
        result = fn()
        del result
    return live.peak


# --------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class MemoryEstimate:
    """An actor's memory, term by term, in bytes (see the module docstring)."""

    role: str
    floor: int = 0
    params: int = 0
    trained: int = 0
    activations: int = 0
    states: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def total(self) -> int:
        return self.floor + self.params + self.trained + self.activations + self.states

    @property
    def device_bytes(self) -> int:
        """What a GPU holds when the actor computes there: everything but the process floor."""
        return self.total - self.floor

    @property
    def mib(self) -> float:
        return self.total / _MIB

    def describe(self) -> str:
        """One line: the total and its terms, e.g. ``1.9 GiB (params 330 MiB, gradients + optimizer ...)``."""
        terms = [("params", self.params), ("gradients + optimizer", self.trained), ("activations", self.activations),
                 ("states", self.states), ("process", self.floor)]
        return f"{fmt_bytes(self.total)} (" + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in terms if v) + ")"

    def row(self) -> dict[str, float]:
        """Columns of ``resources.csv``."""
        return {"estimated_memory_mb": round(self.total / _MIB, 1),
                "estimated_device_memory_mb": round(self.device_bytes / _MIB, 1)}


def fmt_bytes(n: float) -> str:
    """``1.9 GiB`` / ``330 MiB``.

    Example:
        >>> fmt_bytes(3 * 2**30), fmt_bytes(5 * 2**20)
        ('3.0 GiB', '5 MiB')
    """
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / _MIB:.0f} MiB"


def optimizer_slots(cfg: Config) -> int:
    """Tensors the optimizer keeps per trainable parameter: Adam/AdamW 2, SGD with momentum 1, plain SGD 0."""
    t = cfg.train
    if t.optimizer in ("adam", "adamw"):
        return 2
    return 1 if t.momentum > 0 else 0


def _unique(params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    seen: dict[int, torch.nn.Parameter] = {}
    for p in params:
        seen.setdefault(id(p), p)
    return list(seen.values())


def _nbytes(params: Iterable[torch.Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def trained_bytes(ws: Any, names: Sequence[str], cfg: Config) -> int:
    """Gradients and optimizer state of ``names``, plus the optimizer step's scratch (two of the largest)."""
    named = dict(ws.split.named_parameters())
    sizes = [named[n].numel() * named[n].element_size() for n in names]
    if not sizes:
        return 0
    return sum(sizes) * (1 + optimizer_slots(cfg)) + 2 * max(sizes)


def _meta_workspace(cfg: Config, num_classes: int, parts: Sequence[str]) -> Any:
    from sfp_ray.roles.workspace import Workspace

    return Workspace(cfg.model, cfg.split, cfg.prompt, num_classes=num_classes, checkpoint=None, seed=cfg.seed,
                     parts=parts, meta=True)


def device_memory_bytes(ws: Any, method: Any, cfg: Config, x: torch.Tensor, y: torch.Tensor) -> int:
    """What the emulated device of a split client holds at its cut (``split.policy=per_device``): its head and tail
    parameters, gradients and optimizer state of what it trains, and the peak of one training batch ``x`` (no
    evaluation, no process). ``ws`` is a workspace on ``meta`` holding every part, cut where the client is.
    """
    split = ws.split
    params = _nbytes(_unique(p for part in (split.head, split.tail) for p in part.parameters()))
    role = method.client_role(ws, cfg)
    acts = max((peak_bytes(fn) for fn in method.client_passes(role, x, y)), default=0)
    return params + trained_bytes(ws, method.client_names(ws), cfg) + acts


def client_estimate(cfg: Config, method: Any, num_classes: int, *, evaluates: bool = True) -> MemoryEstimate:
    """A client slot of ``method`` (its configuration ``cfg``, already resolved by the method)."""
    from sfp_ray.roles.workspace import PARTS

    parts = PARTS if evaluates else method.client_parts
    ws = _meta_workspace(cfg, num_classes, PARTS)
    held = _unique(p for part in parts for p in getattr(ws.split, part).parameters())
    role = method.client_role(ws, cfg)
    names = method.client_names(ws)
    t = cfg.train
    train = max((peak_bytes(fn) for fn in method.client_passes(role, *ws.meta_batch(t.batch_size))), default=0)
    if evaluates:
        x, _ = ws.meta_batch(t.eval_batch_size)
        with torch.no_grad():
            train = max(train, peak_bytes(lambda: ws.split(x)))
    return MemoryEstimate("client", floor=TORCH_FLOOR_MB * _MIB, params=_nbytes(held),
                          trained=trained_bytes(ws, names, cfg), activations=train)


def server_estimate(cfg: Config, method: Any, num_classes: int, concurrency: int) -> MemoryEstimate:
    """The server actor of ``method``: the body, and ``concurrency`` requests' graphs (and body copies) at once."""
    spec = method.server(cfg)
    ws = _meta_workspace(cfg, num_classes, ("head", "body", "tail"))
    body = ws.split.body
    params = _nbytes(_unique(body.parameters()))
    x, _ = ws.meta_batch(cfg.train.batch_size)
    with torch.no_grad():
        h = ws.split.head(x)
    trains = spec is not None and spec.train is not None
    for p in body.parameters():
        p.requires_grad_(trains)

    def request() -> None:
        a = h.detach().requires_grad_(True)
        out = body(a)
        torch.autograd.grad(out, [a], torch.empty_like(out), retain_graph=False)

    graph = peak_bytes(request)
    copies = 0
    if trains:
        names = method.server_names(ws)
        copies = params + trained_bytes(ws, names, cfg)
    n = max(1, int(concurrency))
    return MemoryEstimate("server", floor=TORCH_FLOOR_MB * _MIB, params=params, activations=graph * n,
                          states=copies * n)


def state_bytes(cfg: Config, method: Any, num_classes: int) -> tuple[int, int, int]:
    """Bytes of a client's state, of its server part (the trained body; 0 for most methods), and of its largest
    array.
    """
    ws = _meta_workspace(cfg, num_classes, ("head", "body", "tail"))
    named = dict(ws.split.named_parameters())
    sizes = {n: _nbytes([named[n]]) for n in [*method.client_names(ws), *method.server_names(ws)]}
    client = sum(sizes[n] for n in method.client_names(ws))
    return client, sum(sizes[n] for n in method.server_names(ws)), max(sizes.values(), default=0)


def aggregator_estimate(states: Sequence[tuple[int, int, int]]) -> MemoryEstimate:
    """The aggregator: float64 running sums of the largest state it folds (twice the float32 bytes), and the
    float64 copy of one array a fold makes on its way (twice the largest array).
    """
    largest = max((c + s for c, s, _ in states), default=0)
    scratch = max((a for _, _, a in states), default=0)
    return MemoryEstimate("aggregator", floor=NUMPY_FLOOR_MB * _MIB, states=2 * largest, activations=2 * scratch)


def with_concurrency(server: MemoryEstimate, n: int) -> MemoryEstimate:
    """A server estimate made for one request at a time, for ``n`` requests at once."""
    n = max(1, int(n))
    return MemoryEstimate(server.role, floor=server.floor, params=server.params, trained=server.trained,
                          activations=server.activations * n, states=server.states * n)


@dataclass(frozen=True)
class PoolMemory:
    """What the actors of a pool need: a client slot, the server (per request at once), the aggregator."""

    client: MemoryEstimate
    aggregator: MemoryEstimate
    server: MemoryEstimate | None = None
    #: bytes of the largest client state (with its server part): what one state in flight takes in the object store
    state_bytes: int = 0

    def server_at(self, concurrency: int) -> MemoryEstimate | None:
        """The server's estimate when it serves ``concurrency`` requests at once."""
        return with_concurrency(self.server, concurrency) if self.server is not None else None

    def with_traffic(self) -> PoolMemory:
        """The estimates plus the states a round keeps in flight in Ray's object store (for planning only).

        A slot's finished client state waits there until it is folded (one per slot), and the
        round holds four more: the global state, the next one, and the folds allowed to be
        behind. The object store is memory too, so the pool plans for them, without asking Ray
        for them on the actors' behalf.
        """
        traffic = self.state_bytes
        return PoolMemory(dataclasses.replace(self.client, states=self.client.states + traffic),
                          dataclasses.replace(self.aggregator, states=self.aggregator.states + 4 * traffic),
                          self.server, self.state_bytes)


def expected_classes(cfg: Config) -> int:
    """The classifier width a run of ``cfg`` will have, without loading its data (10 when unknown)."""
    from sfp_ray.data import dataset_num_classes

    d = cfg.data
    return len(d.classes) if d.classes else int(dataset_num_classes(d.name) or 10)


def pool_memory(runs: Sequence[tuple[Config, Any]], num_classes: int | None = None) -> PoolMemory:
    """The largest needs of the runs ``(resolved configuration, method)`` that share one pool."""
    clients, servers, states = [], [], []
    distinct = {(method.name, repr(cfg.replace(seed=0))): (cfg, method) for cfg, method in runs}  # seeds change nothing
    for cfg, method in distinct.values():
        n = num_classes if num_classes is not None else expected_classes(cfg)
        clients.append(client_estimate(cfg, method, n))
        if method.server(cfg) is not None:
            servers.append(server_estimate(cfg, method, n, 1))
        states.append(state_bytes(cfg, method, n))
    return PoolMemory(max(clients, key=lambda e: e.total), aggregator_estimate(states),
                      max(servers, key=lambda e: e.total) if servers else None,
                      max((c + s for c, s, _ in states), default=0))


__all__ = ["NUMPY_FLOOR_MB", "TORCH_FLOOR_MB", "LiveBytes", "MemoryEstimate", "PoolMemory", "aggregator_estimate",
           "client_estimate", "device_memory_bytes", "expected_classes", "fmt_bytes", "optimizer_slots", "peak_bytes",
           "pool_memory", "server_estimate", "state_bytes", "trained_bytes", "with_concurrency"]
