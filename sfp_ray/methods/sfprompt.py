"""SFPrompt (Cao, Zhu, Gong, arXiv 2407.17533) and its ablations.

The client holds the head (embeddings + first blocks) and the tail (last blocks + final
norm + classifier); the server holds the frozen body. Only the soft prompts ``p`` and the
tail ``W_t`` train. One round per client:

0. ``download``: receive the global ``(p, W_t)``;
1a. ``prune``: EL2N-score every local sample with head + tail, body bypassed (Paul et al.,
    NeurIPS 2021), and keep a fraction ``pruning.keep_ratio`` chosen by ``pruning.policy``
    (:mod:`sfp_ray.pruning`); at the first participation, then per ``pruning.every_round`` /
    ``pruning.refresh_every``; after 1b instead when ``pruning.score_at=local_update``;
1b. ``local_update``: train ``(p, W_t)`` on the kept samples with the body bypassed;
2. ``split_train``: U-shaped split training through the server's frozen body
   (:func:`~sfp_ray.roles.client.split_step`); only the tokens the other side needs cross
   the cut;
3. ``upload``: send ``(p, W_t)``; the aggregator averages them (FedAvg, sample-weighted).

Registered: ``sfprompt`` and the ablations ``sfprompt_no_prune`` (``pruning.keep_ratio=1``),
``sfprompt_no_local`` (``train.local_update=false``) and ``sfprompt_no_prompt``
(``prompt.num_tokens=0``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sfp_ray.config import Config
from sfp_ray.costs import Ledger
from sfp_ray.data import ArrayDataset
from sfp_ray.methods.base import SFPROMPT_PHASES, CostContext, Method, Projection, ServerSpec
from sfp_ray.methods.catalog import method_info
from sfp_ray.pruning import el2n_scores, keep_count, select
from sfp_ray.roles.client import (
    BodyLink,
    ClientTask,
    SplitClientRole,
    TrainResult,
    batches,
    bypass_loss,
    forward_pass,
    loss_scale,
    optimizer_step,
    run_epochs,
    split_by_part,
    tail_loss,
)
from sfp_ray.roles.optim import make_optimizer
from sfp_ray.roles.workspace import Workspace


def sfprompt_names(ws: Workspace) -> list[str]:
    """``(p, W_t)``: the prompts in the head (shallow and deep) and every tail parameter."""
    return ws.names(lambda n: n.startswith("head.prompt") or n.startswith("tail."))


class SFPromptClient(SplitClientRole):
    """SFPrompt's client procedure on a workspace holding head and tail."""

    def __init__(self, ws: Workspace, cfg: Config) -> None:
        super().__init__(ws, cfg, sfprompt_names(ws))
        # the head output's gradient is needed when something trainable (the prompts) sits before the cut
        self.head_trains = ws.split.num_prompts > 0

    def head_grad_slice(self) -> tuple[int, int] | None:
        """Only the prompt tokens' gradient when no head block trains (see ``SplitViT.prompt_grad_slice``)."""
        sl = self.ws.split.prompt_grad_slice()
        return (sl.start, sl.stop) if sl is not None else None

    # ----------------------------------------------------------------- phases

    def score(self, data: ArrayDataset, ledger: Ledger) -> torch.Tensor:
        """EL2N scores of every sample with head + tail, body bypassed (phase 1a)."""
        split = self.ws.split
        scores = []
        with torch.no_grad():
            for idx in batches(len(data), self.cfg.train.eval_batch_size, None):
                x, y = data.images[idx], data.labels[idx]
                h = ledger.compute("head", ("fwd", tuple(x.shape), False), lambda: forward_pass(split.head, x, False))
                # the scores are the tail's work too: softmax and norm count no FLOPs, but a measured device times them
                scores.append(ledger.compute("tail", ("fwd", tuple(h.shape)),
                                             lambda: el2n_scores(split.bypass_tail(h), y)))
        return torch.cat(scores) if scores else torch.empty(0)

    def local_step(self, x: torch.Tensor, y: torch.Tensor, ledger: Ledger, opt: torch.optim.Optimizer) -> float:
        """One local-loss step (phase 1b): head, tail on the head output (body bypassed), backward."""
        split = self.ws.split
        h = ledger.compute("head", ("fwd", tuple(x.shape), self.head_trains),
                           lambda: forward_pass(split.head, x, self.head_trains))
        hd = h.detach().requires_grad_(self.head_trains)
        scale = loss_scale(self.scaler)
        loss = ledger.compute("tail", ("fwdbwd", tuple(hd.shape)), lambda: bypass_loss(split, hd, y, scale))
        if self.head_trains:
            ledger.compute("head", ("bwd", tuple(h.shape)), lambda: h.backward(hd.grad))
        optimizer_step(opt, ledger, scaler=self.scaler)
        return float(loss.item())

    def local_update(self, data: ArrayDataset, ledger: Ledger, gen: torch.Generator) -> float:
        """Train ``(p, W_t)`` on ``data`` with the body bypassed (phase 1b); return the mean loss."""
        t = self.cfg.train
        opt = make_optimizer(self.params, t)
        return run_epochs(data, t.local_epochs, t.batch_size, gen, lambda x, y: self.local_step(x, y, ledger, opt))

    def rescore_due(self, task: ClientTask, cs: dict[str, Any]) -> bool:
        """Whether this participation scores: the first one, then per ``every_round`` / ``refresh_every``."""
        pc = self.cfg.pruning
        if pc.keep_ratio >= 1.0:
            return False
        if cs.get("kept") is None or pc.every_round:
            return True
        return pc.refresh_every > 0 and task.round - int(cs["pruned_at_round"]) >= pc.refresh_every

    def prune(self, task: ClientTask, data: ArrayDataset, ledger: Ledger, cs: dict[str, Any]) -> Any:
        """Phase 1a: EL2N-score ``data`` and select by ``pruning.policy``; the kept indices (also in ``cs``)."""
        pc = self.cfg.pruning
        with ledger.phase("prune"):
            scores = self.score(data, ledger).float().cpu()  # the selection runs on the CPU on every device
            kept = select(scores, data.labels.cpu(), pc.keep_ratio, pc.policy, per_class=pc.per_class,
                          skip_top=pc.skip_top, seed=task.seed).numpy()
            ledger.add_samples("head", len(data))
        cs["kept"] = kept
        cs["pruned_at_round"] = task.round
        return kept

    def train(self, task: ClientTask, data: ArrayDataset, link: BodyLink | None, ledger: Ledger,
              gen: torch.Generator) -> TrainResult:
        cfg, cs = self.cfg, dict(task.client_state)
        local = cfg.train.local_update and cfg.train.local_epochs > 0
        rescore = self.rescore_due(task, cs)
        after_local = rescore and local and cfg.pruning.score_at == "local_update"
        kept = self.prune(task, data, ledger, cs) if rescore and not after_local else cs.get("kept")
        train_data = data.subset(kept) if kept is not None else data
        loss = float("nan")
        if local:
            # 1b sees every sample when scoring after it, or when pruning only thins split training
            local_data = data if after_local or cfg.pruning.scope == "split" else train_data
            with ledger.phase("local_update"):
                loss = self.local_update(local_data, ledger, gen)
                ledger.add_samples("tail", len(local_data) * cfg.train.local_epochs)
        if after_local:
            train_data = data.subset(self.prune(task, data, ledger, cs))
        if cfg.train.split_epochs > 0:
            loss = self.train_split(train_data, link, ledger, gen)
        return TrainResult(loss, cs)


class SFPrompt(Method):
    """SFPrompt: prompts + tail on clients, frozen body on the server."""

    phases = SFPROMPT_PHASES
    client_parts = ("head", "tail")

    def client_names(self, ws: Workspace) -> list[str]:
        return sfprompt_names(ws)

    def server(self, cfg: Config) -> ServerSpec:
        return ServerSpec(train=None)

    def client_role(self, ws: Workspace, cfg: Config) -> SFPromptClient:
        return SFPromptClient(ws, cfg)

    @staticmethod
    def scoring_share(ctx: CostContext) -> float:
        """Expected fraction of a client's participations in which it scores (1a).

        Once: ``1 / participations``. ``every_round``: 1. ``refresh_every = k``: a client that
        takes part with probability ``q = clients_per_round / num_clients`` rescores about every
        ``max(1, k q)`` participations (an average; the executed rounds are exact).
        """
        pc, f = ctx.cfg.pruning, ctx.cfg.federation
        if pc.every_round:
            return 1.0
        once = 1.0 / ctx.participations()
        if pc.refresh_every <= 0:
            return once
        q = f.clients_per_round / f.num_clients
        return max(once, 1.0 / max(1.0, pc.refresh_every * q))

    def project(self, ctx: CostContext) -> Projection:
        """Per-client costs of one round from the passes one sample takes (see the module docstring)."""
        cfg, split, x, y, n = ctx.cfg, ctx.split, ctx.x, ctx.y, ctx.samples
        t, pc = cfg.train, cfg.pruning
        names = set(self.client_names(ctx.ws))
        ctx.ws.set_trainable(names)
        has_p = split.num_prompts > 0
        kept = keep_count(n, pc.keep_ratio)
        prune = 0
        if pc.keep_ratio < 1.0:  # 1a: EL2N scoring, head + tail without grad, body bypassed
            h0 = forward_pass(split.head, x, False)
            prune = n * (ctx.flops(lambda: forward_pass(split.head, x, False))
                         + ctx.flops(lambda: split.bypass_tail(h0)))
        local = local_scoring = 0
        if t.local_update and t.local_epochs > 0:  # 1b: local-loss update, body bypassed
            h = forward_pass(split.head, x, has_p)
            hd = h.detach().requires_grad_(has_p)
            f = ctx.flops(lambda: forward_pass(split.head, x, has_p)) + ctx.flops(lambda: bypass_loss(split, hd, y))
            if has_p:
                f += ctx.flops(lambda: h.backward(hd.grad, retain_graph=True))
            local = kept * t.local_epochs * f
            if pc.keep_ratio < 1.0 and pc.scope == "split":  # 1b always sees every sample
                local = n * t.local_epochs * f
            elif pc.keep_ratio < 1.0 and pc.score_at == "local_update":  # 1b sees every sample when scoring
                local_scoring = n * t.local_epochs * f
        # 2: split training, per sample: head fwd, body fwd, tail fwd+bwd, body bwd, head bwd
        h = forward_pass(split.head, x, has_p)
        f_head = ctx.flops(lambda: forward_pass(split.head, x, has_p))
        act = h.detach().requires_grad_(has_p)
        body_out = forward_pass(split.body, act, has_p)
        f_body = ctx.flops(lambda: forward_pass(split.body, act, has_p))
        out = body_out.detach().requires_grad_(True)
        f_tail = ctx.flops(lambda: tail_loss(split, out, y))
        up, down = ctx.wire_bytes(act), ctx.wire_bytes(out)
        f_hb = 0
        if has_p:
            up += ctx.wire_bytes(out.grad)
            (gx,) = torch.autograd.grad(body_out, act, out.grad, retain_graph=True)
            f_body += ctx.flops(lambda: torch.autograd.grad(body_out, act, out.grad, retain_graph=True))
            sl = split.prompt_grad_slice()
            down += ctx.wire_bytes(gx if sl is None else gx[:, sl])
            f_hb = ctx.flops(lambda: h.backward(gx, retain_graph=True))
        e = t.split_epochs
        split_client = kept * e * (f_head + f_tail + f_hb)
        # one message per state part each way, and per split batch: activations up and down (+ gradients)
        messages = 2 * len(split_by_part(dict.fromkeys(names))) + e * math.ceil(kept / t.batch_size) * (
            4 if has_p else 2)
        state = ctx.state_bytes(sorted(names))
        share = self.scoring_share(ctx)
        extra_local = (local_scoring - local) if local_scoring else 0
        return Projection(
            client_flops=local + split_client + share * (prune + extra_local),
            client_flops_first_round=local + split_client + prune + extra_local,
            prune_flops=prune,
            local_update_flops=local,
            split_client_flops=split_client,
            server_flops=kept * e * f_body,
            bytes_up=kept * e * up + state,
            bytes_down=kept * e * down + state,
            split_bytes_per_sample=up + down,
            state_bytes=state,
            split_epochs=e,
            messages_per_round=messages,
        )


def register(register_method: Any) -> None:
    # descriptions, the family's shared rate and the ablations' forced settings: sfp_ray.methods.catalog
    for name in ("sfprompt", "sfprompt_no_prune", "sfprompt_no_local", "sfprompt_no_prompt"):
        register_method(SFPrompt.from_info(method_info(name)))
