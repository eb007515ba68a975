"""A process-local copy of the split model: only the parts this process holds.

A client process of a split method holds the head and the tail, the server the body, an
in-process run or a federated client all three. The model is built on the ``meta`` device
(no storage), cut (:func:`~sfp_ray.models.split_vit`), and only the held parts get real
tensors (:func:`~sfp_ray.models.materialize`): their values come from the checkpoint
where it has them, and otherwise from a per-name seeded initialisation
(:func:`~sfp_ray.models.init_parameters`, :func:`~sfp_ray.models.init_prompts`). So every
process holds bit-identical values for every parameter it holds, whatever else it holds.
The checkpoint is read lazily: a process reads the tensors of the parts it holds and no
others. timm's pre-trained weights (``model.pretrained``) reach a workspace as such a
checkpoint file, made once from timm's hub cache (:func:`sfp_ray.pretrain.resolve_checkpoint`).

Trainable state travels as name -> tensor mappings whose names are those of
:class:`~sfp_ray.models.SplitViT` (``head.prompt``, ``tail.blocks.5.attn.qkv.weight``,
``body.blocks.2.mlp.fc1.bias``, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch

from sfp_ray.config import ModelConfig, PromptConfig, SplitConfig
from sfp_ray.models import (
    SplitViT,
    build_from_config,
    check_checkpoint,
    init_parameters,
    init_prompts,
    materialize,
    read_checkpoint,
    split_vit,
)
from sfp_ray.tensors import as_tensor

PARTS = ("head", "body", "tail")


class Workspace:
    """The split model of one process, holding ``parts``, plus helpers to move trainable state.

    Args:
        model: the ``model`` section (which timm ViT, fused attention, pretrained).
        split: the ``split`` section (the cut).
        prompt: the ``prompt`` section.
        num_classes: classifier width of the target task.
        checkpoint: resolved checkpoint path (or None).
        seed: the run seed (initial values of parameters the checkpoint does not hold).
        parts: which of ``head``, ``body``, ``tail`` to hold; :meth:`hold` adds more later.
        meta: hold the parts on the ``meta`` device (shapes only: cost models, validation).
        device: where the held parts compute (:func:`sfp_ray.compute.choose_device`). Values are
            made on the CPU (initialisation and checkpoint, the same bits in every process) and
            then moved there.
    """

    def __init__(self, model: ModelConfig, split: SplitConfig, prompt: PromptConfig, *, num_classes: int,
                 checkpoint: str | None, seed: int, parts: Iterable[str] = PARTS, meta: bool = False,
                 device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.checkpoint = checkpoint
        self.seed = seed
        self.meta = meta
        self.device = torch.device("meta") if meta else torch.device(device)
        self.held: set[str] = set()
        self._params: dict[str, torch.nn.Parameter] = {}
        self.vit = build_from_config(model, num_classes, device="meta")
        self.split: SplitViT = split_vit(self.vit, split.head_blocks, split.tail_blocks, prompt.num_tokens,
                                         deep=prompt.deep, bypass_pool=split.bypass_pool, seed=seed)
        self.split.eval()  # dropout off: ViT fine-tuning here uses no stochastic layers
        self.hold(parts)

    # ---------------------------------------------------------------- parts

    def hold(self, parts: Iterable[str]) -> None:
        """Make sure ``parts`` have real tensors (initialised, then loaded from the checkpoint)."""
        todo = [p for p in dict.fromkeys(parts) if p not in self.held]
        unknown = set(todo) - set(PARTS)
        if unknown:
            raise ValueError(f"workspace: unknown parts {sorted(unknown)}; parts are {PARTS}")
        if not todo:
            return
        if self.meta:
            self.held.update(todo)
            self._index()
            return
        modules = [getattr(self.split, p) for p in todo]
        new = materialize(modules, [self.vit, self.split])
        init_parameters(self.vit, new, self.seed)
        init_prompts(self.split, self.seed)
        if self.checkpoint is not None:
            state = read_checkpoint(self.checkpoint, lazy=True)  # only the held parts' tensors are read
            left = set(check_checkpoint(self.vit, state, self.checkpoint))
            fresh = {id(p) for p in new}
            with torch.no_grad():
                for name, p in self.vit.named_parameters():
                    if id(p) in fresh and name in state and name not in left:
                        p.copy_(state[name])
            del state
        if self.device.type != "cpu":
            with torch.no_grad():
                for p in new:
                    p.data = p.data.to(self.device)
        self.held.update(todo)
        self._index()

    def _index(self) -> None:
        self._params = {n: p for n, p in self.split.named_parameters() if n.split(".", 1)[0] in self.held}

    # ---------------------------------------------------------------- state

    def names(self, predicate: Callable[[str], bool] | None = None) -> list[str]:
        """Names of the held parameters (optionally those matching ``predicate``)."""
        return [n for n in self._params if predicate is None or predicate(n)]

    def set_trainable(self, names: Iterable[str]) -> list[torch.nn.Parameter]:
        """Make exactly ``names`` require grad, with no gradient left over; return those parameters in name order.

        Left-over gradients are dropped: a call that failed between a backward pass and its
        optimizer step (a body request that failed, say) leaves them behind, and the retry
        would add them to its own first step.
        """
        wanted = set(names)
        unknown = wanted - set(self._params)
        if unknown:
            raise KeyError(f"unknown or not held parameter names: {sorted(unknown)[:3]}")
        for n, p in self._params.items():
            p.requires_grad_(n in wanted)
            p.grad = None
        return [self._params[n] for n in self._params if n in wanted]

    def get_state(self, names: Iterable[str], *, copy: bool = True) -> dict[str, torch.Tensor]:
        """Detached copies of the named parameters (``copy=False``: detached views, which change as they train)."""
        return {n: self._params[n].detach().clone() if copy else self._params[n].detach() for n in names}

    def load_state(self, state: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Copy tensors (or numpy arrays) into the named parameters."""
        with torch.no_grad():
            for n, v in state.items():
                p = self._params.get(n)
                if p is None:
                    raise KeyError(f"state has unknown or not held parameter {n!r}")
                t = as_tensor(v)
                if t.shape != p.shape:
                    raise ValueError(f"state {n!r}: shape {tuple(t.shape)} != {tuple(p.shape)}")
                p.copy_(t)

    def meta_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images of the model's input shape and ``n`` labels on the ``meta`` device (for cost models)."""
        pe = self.vit.patch_embed
        h, w = pe.img_size
        return (torch.empty(n, pe.proj.in_channels, h, w, device="meta"),
                torch.zeros(n, dtype=torch.long, device="meta"))

    def parameters_bytes(self, names: Iterable[str]) -> int:
        return sum(self._params[n].numel() * self._params[n].element_size() for n in names)


__all__ = ["PARTS", "Workspace"]
