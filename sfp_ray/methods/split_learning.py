"""The split-learning baselines on SFPrompt's U-shaped cut: SplitFed-V1 and vanilla split learning.

The client trains *all* of head and tail; the server trains the body. No prompts, no
pruning, no local-loss update; a round is ``download`` -> ``split_train`` -> ``upload``.
Each split step sends the head output up, receives the body output, sends the gradient
w.r.t. the body output up and receives the *full* gradient w.r.t. the head output
(every head parameter trains). The global state includes the body (names ``body.*``): the
server trains a copy of it per client (:class:`~sfp_ray.roles.server.ServerRole` with
``train=``), and the copies come back with the clients' own states.

* ``sfl``: SplitFed-V1 (Thapa et al., "SplitFed: When Federated Learning Meets Split
  Learning", AAAI 2022): clients in parallel, client parts and body copies averaged
  sample-weighted (FedAvg);
* ``sl``: vanilla split learning (Gupta & Raskar, J. Netw. Comput. Appl. 2018): the
  round's clients one after another in ascending id, each starting from the previous
  one's head, tail and body; no averaging.
"""

from __future__ import annotations

from typing import Any

import torch

from sfp_ray.config import Config
from sfp_ray.costs import Ledger
from sfp_ray.data import ArrayDataset
from sfp_ray.errors import ConfigError
from sfp_ray.methods.base import SPLIT_PHASES, CostContext, Method, Projection, SequentialRelay, ServerSpec, is_body
from sfp_ray.methods.catalog import method_info
from sfp_ray.roles.client import BodyLink, ClientTask, SplitClientRole, TrainResult, forward_pass, tail_loss
from sfp_ray.roles.workspace import PARTS, Workspace


def split_learning_names(ws: Workspace) -> list[str]:
    """The client side of a split-learning baseline: every head and tail parameter."""
    return ws.names(lambda n: n.startswith("head.") or n.startswith("tail."))


class SplitLearningClient(SplitClientRole):
    """The client of ``sfl`` and ``sl``: all of head and tail train, the whole head gradient comes down."""

    head_trains = True

    def __init__(self, ws: Workspace, cfg: Config) -> None:
        if cfg.train.precision == "fp16":
            raise ConfigError(f"train.precision=fp16: {cfg.method} trains the body on the server from gradients that "
                              "the client's fp16 loss scaler scales; use bf16 or fp32")
        if ws.split.num_prompts:
            raise ConfigError(f"prompt.num_tokens: {cfg.method} trains no prompts, got "
                              f"{ws.split.num_prompts}; set prompt.num_tokens=0")
        if not ws.split.body.block_ids:
            raise ConfigError(f"split.head_blocks + split.tail_blocks: {cfg.method} trains the body on the server, "
                              f"and the cut {ws.split.head_blocks} + {ws.split.tail_blocks} leaves no block of the "
                              f"{ws.split.depth} to it; cut fewer blocks to the client")
        super().__init__(ws, cfg, split_learning_names(ws))

    def train(self, task: ClientTask, data: ArrayDataset, link: BodyLink | None, ledger: Ledger,
              gen: torch.Generator) -> TrainResult:
        loss = self.train_split(data, link, ledger, gen) if self.cfg.train.split_epochs > 0 else float("nan")
        return TrainResult(loss, dict(task.client_state))


class SplitLearning(Method):
    """Split learning with a server-trained body (``sfl`` in parallel, ``sl`` as a relay)."""

    phases = SPLIT_PHASES
    client_parts = ("head", "tail")

    def client_names(self, ws: Workspace) -> list[str]:
        return split_learning_names(ws)

    def server(self, cfg: Config) -> ServerSpec:
        return ServerSpec(train=cfg.train)

    def state_parts(self) -> tuple[str, ...]:
        return PARTS

    def server_names(self, ws: Workspace) -> list[str]:
        return ws.names(is_body)

    def client_role(self, ws: Workspace, cfg: Config) -> SplitLearningClient:
        return SplitLearningClient(ws, cfg)

    def project(self, ctx: CostContext) -> Projection:
        """Per sample: head fwd, body fwd + bwd with weight gradients, tail fwd + bwd, head bwd."""
        split, x, y, n = ctx.split, ctx.x, ctx.y, ctx.samples
        names = self.client_names(ctx.ws)
        ctx.ws.set_trainable(names + ctx.ws.names(is_body))
        body_params = list(split.body.parameters())
        h = forward_pass(split.head, x, True)
        f_head = ctx.flops(lambda: forward_pass(split.head, x, True))
        act = h.detach().requires_grad_(True)
        body_out = split.body(act)
        f_body = ctx.flops(lambda: split.body(act))
        out = body_out.detach().requires_grad_(True)
        f_tail = ctx.flops(lambda: tail_loss(split, out, y))
        gx, *_ = torch.autograd.grad(body_out, [act, *body_params], out.grad, retain_graph=True)
        f_body += ctx.flops(lambda: torch.autograd.grad(body_out, [act, *body_params], out.grad, retain_graph=True))
        f_head_bwd = ctx.flops(lambda: h.backward(gx, retain_graph=True))
        up = ctx.wire_bytes(act) + ctx.wire_bytes(out.grad)
        down = ctx.wire_bytes(out) + ctx.wire_bytes(gx)
        state = ctx.state_bytes(names)
        e = ctx.cfg.train.split_epochs
        client = n * e * (f_head + f_tail + f_head_bwd)
        return Projection(client_flops=client, client_flops_first_round=client, prune_flops=0, local_update_flops=0,
                          split_client_flops=client, server_flops=n * e * f_body, bytes_up=n * e * up + state,
                          bytes_down=n * e * down + state, split_bytes_per_sample=up + down, state_bytes=state,
                          split_epochs=e, local_epochs=0)


class VanillaSplitLearning(SplitLearning):
    plan = SequentialRelay()


def register(register_method: Any) -> None:
    # descriptions and forced settings (no prompts, pruning or local-loss update): sfp_ray.methods.catalog
    register_method(SplitLearning.from_info(method_info("sfl")))
    register_method(VanillaSplitLearning.from_info(method_info("sl")))
