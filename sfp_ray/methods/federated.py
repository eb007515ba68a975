"""The federated baselines: the whole model on every client, a subset of it trained.

FedAvg (McMahan et al., AISTATS 2017) over clients that hold the whole ViT (part ``all``):

* ``fl_full``: every parameter trains (full fine-tuning; the paper's reference point for
  client compute and communication);
* ``fl_prompt``: prompts + classifier, the rest frozen (VPT, Jia et al. 2022, in FL);
* ``fl_linear``: the classifier only (linear probing).

One round per client: ``download`` the trained subset, ``local_train`` for
``train.local_epochs`` on all local samples, ``upload``. No server body is involved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sfp_ray.config import Config
from sfp_ray.costs import Ledger
from sfp_ray.data import ArrayDataset
from sfp_ray.methods.base import FEDERATED_PHASES, CostContext, Method, Projection
from sfp_ray.methods.catalog import method_info
from sfp_ray.roles.client import (
    BodyLink,
    ClientRole,
    ClientTask,
    TrainResult,
    loss_scale,
    model_loss,
    optimizer_step,
    run_epochs,
)
from sfp_ray.roles.optim import make_optimizer
from sfp_ray.roles.workspace import PARTS, Workspace


def is_prompt(name: str) -> bool:
    return ".prompt" in name


def is_classifier(name: str) -> bool:
    return name.startswith("tail.head.") or name.startswith("tail.fc_norm.")


class FedAvgClient(ClientRole):
    """A federated baseline's client: train a parameter subset of the whole model locally."""

    whole_model = True

    def train(self, task: ClientTask, data: ArrayDataset, link: BodyLink | None, ledger: Ledger,
              gen: torch.Generator) -> TrainResult:
        split, t = self.ws.split, self.cfg.train
        with ledger.phase("local_train"):
            opt = make_optimizer(self.params, t)

            def step(x: torch.Tensor, y: torch.Tensor) -> float:
                scale = loss_scale(self.scaler)
                loss = ledger.compute("all", ("fwdbwd", tuple(x.shape)), lambda: model_loss(split, x, y, scale))
                optimizer_step(opt, ledger, "all", scaler=self.scaler)
                return float(loss.item())

            loss = run_epochs(data, t.local_epochs, t.batch_size, gen, step)
            ledger.add_samples("all", len(data) * t.local_epochs)
        return TrainResult(loss, dict(task.client_state))


class FederatedMethod(Method):
    """FedAvg of a parameter subset (``select``) of the whole model held by every client."""

    phases = FEDERATED_PHASES
    client_parts = PARTS

    def __init__(self, name: str, description: str, select: Callable[[str], bool],
                 overrides: dict[str, Any] | None = None, *, default_lr: float = 1e-3,
                 ignores: tuple[str, ...] = ()) -> None:
        super().__init__(name, description, overrides, default_lr=default_lr, ignores=ignores)
        self.select = select

    def client_names(self, ws: Workspace) -> list[str]:
        return ws.names(self.select)

    def client_role(self, ws: Workspace, cfg: Config) -> FedAvgClient:
        return FedAvgClient(ws, cfg, self.client_names(ws))

    def project(self, ctx: CostContext) -> Projection:
        """``local_epochs`` passes of forward + backward over all local samples; the state both ways."""
        names = self.client_names(ctx.ws)
        ctx.ws.set_trainable(names)
        flops = ctx.samples * ctx.cfg.train.local_epochs * ctx.flops(lambda: model_loss(ctx.split, ctx.x, ctx.y))
        state = ctx.state_bytes(names)
        return Projection(client_flops=flops, client_flops_first_round=flops, prune_flops=0, local_update_flops=flops,
                          split_client_flops=0, server_flops=0, bytes_up=state, bytes_down=state,
                          split_bytes_per_sample=0, state_bytes=state, split_epochs=0)


def register(register_method: Any) -> None:
    # descriptions, rates (fl_full's tuned) and forced settings: sfp_ray.methods.catalog
    for name, select in (("fl_full", lambda n: True), ("fl_prompt", lambda n: is_prompt(n) or is_classifier(n)),
                         ("fl_linear", is_classifier)):
        register_method(FederatedMethod.from_info(method_info(name), select=select))
