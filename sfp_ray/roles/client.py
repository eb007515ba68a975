"""The client role: one client's round of SFPrompt or of a federated baseline.

Plain Python, no Ray. A client reaches the server's body only through a :class:`BodyLink`
it is handed, so the same code runs in-process (serial executor) and against a Ray server
actor. SFPrompt's phases follow Cao, Zhu, Gong (arXiv 2407.17533) as laid out in
DESIGN.md §1:

0. ``download``: receive the global ``(p, W_t)``;
1a. ``prune``: EL2N-score every local sample with head+tail (body bypassed) and keep the
    hardest ``keep_ratio`` fraction (once, or every round);
1b. ``local_update``: train ``(p, W_t)`` on the kept samples with the body bypassed;
2. ``split_train``: head forward -> activations up; body forward -> outputs down; tail
   forward/backward -> output gradients up; body input-gradients -> down; head backward
   into the prompts; one optimizer step over ``(p, W_t)`` per batch;
3. ``upload``: send ``(p, W_t)`` to the aggregator.

The split-learning baselines (:class:`SplitLearningClient`: SplitFed-V1 and vanilla split
learning) run phases 0, 2 and 3 only, training all of head and tail while the server
trains the body. :class:`FedAvgClient` runs the federated baselines (``local_train`` on the
whole model).

Every compute step goes through the :class:`~sfp_ray.costs.Ledger`, which counts FLOPs per
(phase, part), and every message is recorded where it is sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from sfp_ray.costs import CostRecord, Ledger, MessageRecord
from sfp_ray.data import ArrayDataset
from sfp_ray.errors import ConfigError
from sfp_ray.pruning import el2n_scores, select_hardest
from sfp_ray.roles.optim import make_optimizer
from sfp_ray.roles.server import BodyReply, ServerRole
from sfp_ray.roles.workspace import Workspace


class BodyLink(Protocol):
    """How a client reaches the body: forward activations, backward output gradients."""

    def forward(self, acts: torch.Tensor, *, need_grad: bool) -> BodyReply: ...

    def backward(self, grad: torch.Tensor, grad_slice: tuple[int, int] | None) -> BodyReply: ...


class LocalBodyLink:
    """In-process link to a :class:`ServerRole` (the serial executor's transport)."""

    def __init__(self, server: ServerRole, client_id: int, round: int) -> None:
        self.server = server
        self.client_id = client_id
        self.round = round
        self.step = 0

    def forward(self, acts: torch.Tensor, *, need_grad: bool) -> BodyReply:
        self.step += 1
        return self.server.forward((self.client_id, self.round, self.step), acts, need_grad=need_grad)

    def backward(self, grad: torch.Tensor, grad_slice: tuple[int, int] | None) -> BodyReply:
        return self.server.backward((self.client_id, self.round, self.step), grad, grad_slice)


@dataclass
class ClientTask:
    """What a client needs for one round (besides the global state and the body link)."""

    round: int
    client_id: int
    device: Any  # DeviceProfile
    seed: int
    data: ArrayDataset
    client_state: dict[str, Any] = field(default_factory=dict)
    server_device: Any = None


@dataclass
class ClientOutput:
    """What a client returns: its new trainable state, weight and records."""

    client_id: int
    state: Mapping[str, Any]
    num_samples: int
    client_state: dict[str, Any]
    costs: list[CostRecord]
    messages: list[MessageRecord]
    sim_s: float
    train_loss: float
    resources: dict[str, Any] = field(default_factory=dict)


def batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Index batches over ``n`` samples, shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def sfprompt_state_names(ws: Workspace) -> list[str]:
    """``(p, W_t)``: the prompts in the head (shallow and deep) and every tail parameter."""
    return ws.names(lambda n: n.startswith("head.prompt") or n.startswith("tail."))


def _part_of(name: str) -> str:
    return "prompt" if ".prompt" in name else name.split(".", 1)[0]


def _split_by_part(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state.items():
        out.setdefault(_part_of(k), {})[k] = v
    return out


class SplitClient:
    """What the split clients share: the split-training step and phase over a :class:`BodyLink`.

    A subclass sets ``ws``, ``cfg``, ``names`` (its trainable state), ``params`` and
    ``head_trains`` (whether anything before the cut trains, so that the head output's
    gradient must come back down), and says which tokens of that gradient it needs
    (:meth:`head_grad_slice`).
    """

    ws: Workspace
    cfg: Any
    names: list[str]
    params: list[torch.nn.Parameter]
    head_trains: bool

    def head_grad_slice(self) -> tuple[int, int] | None:
        """Tokens of the head output whose gradient comes back down (None: all of them)."""
        return None

    def split_step(self, x: torch.Tensor, y: torch.Tensor, link: BodyLink, ledger: Ledger,
                   opt: torch.optim.Optimizer) -> float:
        """One split-training step over the network (phase 2)."""
        split = self.ws.split
        need_grad = self.head_trains
        h = ledger.compute("head", ("fwd", tuple(x.shape), need_grad),
                           lambda: split.head(x) if need_grad else _no_grad(split.head, x))
        acts = h.detach()
        ledger.send_tensor(acts, part="head", direction="up", kind="activation")
        reply = link.forward(acts, need_grad=need_grad)
        ledger.add_flops("split_train", "body", reply.flops, wall_s=reply.compute_s)
        ledger.message(part="body", direction="down", kind="activation", payload=reply.payload_bytes,
                       serialized=reply.serialized_bytes)
        out = _as_tensor(reply.tensor).requires_grad_(True)

        def tail_step() -> torch.Tensor:
            loss = F.cross_entropy(split.tail(out), y)
            loss.backward()
            return loss

        loss = ledger.compute("tail", ("fwdbwd", tuple(out.shape)), tail_step)
        if need_grad:
            g = out.grad.detach()
            ledger.send_tensor(g, part="tail", direction="up", kind="gradient")
            grad_slice = self.head_grad_slice()
            back = link.backward(g, grad_slice)
            ledger.add_flops("split_train", "body", back.flops, wall_s=back.compute_s)
            ledger.message(part="body", direction="down", kind="gradient", payload=back.payload_bytes,
                           serialized=back.serialized_bytes)
            gh = _as_tensor(back.tensor)
            if grad_slice is not None:
                full = torch.zeros_like(h)
                full[:, grad_slice[0]:grad_slice[1]] = gh
                gh = full
            ledger.compute("head", ("bwd", tuple(h.shape)), lambda: h.backward(gh))
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.item())

    def download(self, global_state: Mapping[str, Any], ledger: Ledger) -> None:
        """Phase 0: load the global trainable state; one message per part (prompt, head, tail)."""
        self.ws.load_state(global_state)
        for part, sub in _split_by_part(global_state).items():
            ledger.send_state(sub, part=part, direction="down")

    def upload(self, ledger: Ledger) -> dict[str, torch.Tensor]:
        """Phase 3: the new trainable state, sent to the aggregator one message per part."""
        new_state = self.ws.get_state(self.names)
        with ledger.phase("upload"):
            for part, sub in _split_by_part(new_state).items():
                ledger.send_state(sub, part=part, direction="up")
        return new_state

    def train_split(self, data: ArrayDataset, link: BodyLink | None, ledger: Ledger, gen: torch.Generator) -> float:
        """Phase ``split_train``: ``split_epochs`` passes of split steps over ``data``; mean loss.

        One optimizer (``train.optimizer``) over the client's trainable parameters, one
        :meth:`split_step` per batch.
        """
        t = self.cfg.train
        if link is None:
            raise RuntimeError(f"{self.cfg.method}: split training needs a link to the server's body")
        with ledger.phase("split_train"):
            opt = make_optimizer(self.params, t)
            losses = []
            for _ in range(t.split_epochs):
                for idx in batches(len(data), t.batch_size, gen):
                    losses.append(self.split_step(data.images[idx], data.labels[idx], link, ledger, opt))
            ledger.add_samples("split_train", "tail", len(data) * t.split_epochs)
        return float(np.mean(losses)) if losses else float("nan")


class SFPromptClient(SplitClient):
    """SFPrompt's client procedure on a workspace (phases 0-3 of DESIGN.md §1)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.cfg = ws.cfg
        self.names = sfprompt_state_names(ws)
        self.params = ws.set_trainable(self.names)
        self.has_prompts = ws.split.num_prompts > 0
        # the head output's gradient is needed when something trainable (the prompts) sits before the cut
        self.head_trains = self.has_prompts

    def head_grad_slice(self) -> tuple[int, int] | None:
        """Only the prompt tokens' gradient when no head block trains (see ``SplitViT.prompt_grad_slice``)."""
        sl = self.ws.split.prompt_grad_slice()
        return (sl.start, sl.stop) if sl is not None else None

    # ----------------------------------------------------------------- phases

    def score(self, data: ArrayDataset, ledger: Ledger) -> torch.Tensor:
        """EL2N scores of every sample with head+tail, body bypassed (phase 1a)."""
        split = self.ws.split
        bs = self.cfg.train.eval_batch_size
        scores = []
        with torch.no_grad():
            for idx in batches(len(data), bs, None):
                x, y = data.images[idx], data.labels[idx]
                h = ledger.compute("head", ("fwd", tuple(x.shape)), lambda: split.head(x))
                logits = ledger.compute("tail", ("fwd", tuple(h.shape)), lambda: split.bypass_tail(h))
                scores.append(el2n_scores(logits, y))
        return torch.cat(scores) if scores else torch.empty(0)

    def local_update(self, data: ArrayDataset, ledger: Ledger, gen: torch.Generator) -> float:
        """Train ``(p, W_t)`` on ``data`` with the body bypassed (phase 1b); return mean loss."""
        split, t = self.ws.split, self.cfg.train
        opt = make_optimizer(self.params, t)
        losses = []
        for _ in range(t.local_epochs):
            for idx in batches(len(data), t.batch_size, gen):
                x, y = data.images[idx], data.labels[idx]
                h = ledger.compute("head", ("fwd", tuple(x.shape)), lambda: split.head(x))
                hd = h.detach().requires_grad_(self.has_prompts)

                def tail_step() -> torch.Tensor:
                    loss = F.cross_entropy(split.bypass_tail(hd), y)
                    loss.backward()
                    return loss

                loss = ledger.compute("tail", ("fwdbwd", tuple(hd.shape)), tail_step)
                if self.has_prompts:
                    ledger.compute("head", ("bwd", tuple(h.shape)), lambda: h.backward(hd.grad))
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.item())
        return float(np.mean(losses)) if losses else float("nan")

    # ----------------------------------------------------------------- round

    def run(self, task: ClientTask, global_state: Mapping[str, Any], link: BodyLink | None,
            meter: Any) -> ClientOutput:
        cfg = self.cfg
        ledger = Ledger(task.round, task.client_id, task.device, task.server_device, meter)
        gen = torch.Generator().manual_seed(task.seed)
        cs = dict(task.client_state)

        with ledger.phase("download"):
            self.download(global_state, ledger)

        data = task.data
        kept = cs.get("kept")
        if cfg.pruning.keep_ratio < 1.0 and (kept is None or cfg.pruning.every_round):
            with ledger.phase("prune"):
                scores = self.score(data, ledger)
                kept = select_hardest(scores, cfg.pruning.keep_ratio).numpy()
                ledger.add_samples("prune", "head", len(data))
            cs["kept"] = kept
            cs["pruned_at_round"] = task.round
            cs["prune_flops"] = sum(r.flops for r in ledger.cells.values() if r.phase == "prune")
        train_data = data.subset(kept) if kept is not None else data

        losses = []
        if cfg.train.local_update and cfg.train.local_epochs > 0:
            with ledger.phase("local_update"):
                losses.append(self.local_update(train_data, ledger, gen))
                ledger.add_samples("local_update", "tail", len(train_data) * cfg.train.local_epochs)

        if cfg.train.split_epochs > 0:
            losses.append(self.train_split(train_data, link, ledger, gen))

        new_state = self.upload(ledger)

        return ClientOutput(
            client_id=task.client_id,
            state=new_state,
            num_samples=len(data),
            client_state=cs,
            costs=ledger.records(),
            messages=ledger.messages,
            sim_s=ledger.sim_seconds(),
            train_loss=losses[-1] if losses else float("nan"),
        )


def split_learning_state_names(ws: Workspace) -> list[str]:
    """The client side of a split-learning baseline: every head and tail parameter."""
    return ws.names(lambda n: n.startswith("head.") or n.startswith("tail."))


class SplitLearningClient(SplitClient):
    """The client of the split-learning baselines ``sfl`` and ``sl`` on SFPrompt's U-shaped cut.

    SplitFed-V1 (Thapa et al., AAAI 2022) and vanilla split learning (Gupta & Raskar,
    2018) with the labels kept on the client: the client trains *all* of head and tail,
    the server trains the body (:class:`~sfp_ray.roles.server.ServerRole` with
    ``train=``). No prompts, no pruning, no local-loss update; a round is ``download`` ->
    ``split_train`` -> ``upload``. Each split step sends the head output up, receives the
    body output, sends the gradient w.r.t. the body output up and receives the *full*
    gradient w.r.t. the head output (every head parameter trains). The split step is
    SFPrompt's (:meth:`SplitClient.split_step`); the trainable set, the gradient rule and
    the phases differ.
    """

    def __init__(self, ws: Workspace) -> None:
        if ws.split.num_prompts:
            raise ConfigError(f"prompt.num_tokens: {ws.cfg.method} trains no prompts, got "
                              f"{ws.split.num_prompts}; set prompt.num_tokens=0")
        self.ws = ws
        self.cfg = ws.cfg
        self.names = split_learning_state_names(ws)
        self.params = ws.set_trainable(self.names)
        self.head_trains = True  # every head parameter trains: the whole head output's gradient comes down

    def run(self, task: ClientTask, global_state: Mapping[str, Any], link: BodyLink | None,
            meter: Any) -> ClientOutput:
        ledger = Ledger(task.round, task.client_id, task.device, task.server_device, meter)
        gen = torch.Generator().manual_seed(task.seed)
        with ledger.phase("download"):
            self.download(global_state, ledger)
        loss = self.train_split(task.data, link, ledger, gen) if self.cfg.train.split_epochs > 0 else float("nan")
        new_state = self.upload(ledger)
        return ClientOutput(
            client_id=task.client_id,
            state=new_state,
            num_samples=len(task.data),
            client_state=dict(task.client_state),
            costs=ledger.records(),
            messages=ledger.messages,
            sim_s=ledger.sim_seconds(),
            train_loss=loss,
        )


class FedAvgClient:
    """A federated baseline's client: train a parameter subset of the whole model locally.

    ``fl_full`` trains every parameter, ``fl_prompt`` prompts + classifier (VPT in FL),
    ``fl_linear`` the classifier only. The whole model runs on the client (part ``all``).
    """

    def __init__(self, ws: Workspace, select: Callable[[str], bool]) -> None:
        self.ws = ws
        self.cfg = ws.cfg
        self.names = ws.names(select)
        self.params = ws.set_trainable(self.names)

    def run(self, task: ClientTask, global_state: Mapping[str, Any], link: BodyLink | None,
            meter: Any) -> ClientOutput:
        cfg, split = self.cfg, self.ws.split
        ledger = Ledger(task.round, task.client_id, task.device, task.server_device, meter)
        gen = torch.Generator().manual_seed(task.seed)
        with ledger.phase("download"):
            self.ws.load_state(global_state)
            ledger.send_state(global_state, part="all", direction="down")
        data = task.data
        losses = []
        with ledger.phase("local_train"):
            opt = make_optimizer(self.params, cfg.train)
            for _ in range(cfg.train.local_epochs):
                for idx in batches(len(data), cfg.train.batch_size, gen):
                    x, y = data.images[idx], data.labels[idx]

                    def step() -> torch.Tensor:
                        loss = F.cross_entropy(split(x), y)
                        loss.backward()
                        return loss

                    loss = ledger.compute("all", ("fwdbwd", tuple(x.shape)), step)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    losses.append(loss.item())
            ledger.add_samples("local_train", "all", len(data) * cfg.train.local_epochs)
        new_state = self.ws.get_state(self.names)
        with ledger.phase("upload"):
            ledger.send_state(new_state, part="all", direction="up")
        return ClientOutput(
            client_id=task.client_id,
            state=new_state,
            num_samples=len(data),
            client_state=dict(task.client_state),
            costs=ledger.records(),
            messages=ledger.messages,
            sim_s=ledger.sim_seconds(),
            train_loss=float(np.mean(losses)) if losses else float("nan"),
        )


def _no_grad(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return fn(x)


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))


def evaluate(
    ws: Workspace, data: ArrayDataset, batch_size: int, meter: Any = None
) -> tuple[float, float, float, float]:
    """Accuracy, mean loss, FLOPs and wall seconds of the full model on ``data``."""
    split = ws.split
    t0 = time.perf_counter()
    correct, loss_sum, flops = 0, 0.0, 0.0
    with torch.no_grad():
        for idx in batches(len(data), batch_size, None):
            x, y = data.images[idx], data.labels[idx]
            if meter is not None:
                logits, f = meter.run(("eval", "all", "fwd", tuple(x.shape)), lambda: split(x))
                flops += f
            else:
                logits = split(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
    n = max(len(data), 1)
    return correct / n, loss_sum / n, flops, time.perf_counter() - t0
