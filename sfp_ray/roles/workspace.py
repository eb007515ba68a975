"""A process-local copy of the split model that client and server roles work on.

A workspace is built deterministically from the configuration (the torch RNG is seeded
with ``cfg.seed`` before the model is created, prompts with ``cfg.seed`` too), so every
process - the driver, each client actor and the server actor - holds bit-identical frozen
weights. Trainable state travels as name -> tensor mappings whose names are those of
:class:`~sfp_ray.models.SplitViT` (``head.prompt``, ``tail.blocks.5.attn.qkv.weight``, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from sfp_ray.config import Config
from sfp_ray.models import SplitViT, build_from_config, split_vit


class Workspace:
    """The split model of one process, plus helpers to move trainable state in and out.

    Args:
        cfg: the resolved configuration.
        num_classes: classifier width of the target task.
        checkpoint: resolved checkpoint path (or None).
        drop_body: free the body's blocks (a client process never runs them).
    """

    def __init__(self, cfg: Config, num_classes: int, checkpoint: str | None, *, drop_body: bool = False) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.vit = build_from_config(cfg, num_classes, checkpoint=checkpoint)
        self.split: SplitViT = split_vit(
            self.vit,
            cfg.split.head_blocks,
            cfg.split.tail_blocks,
            cfg.prompt.num_tokens,
            deep=cfg.prompt.deep,
            bypass_pool=cfg.split.bypass_pool,
            seed=cfg.seed,
        )
        self.split.eval()  # dropout off: ViT fine-tuning here uses no stochastic layers
        if drop_body:
            for i in self.split.body.block_ids:
                self.split.body.blocks[str(i)] = torch.nn.Identity()
                self.vit.blocks[i] = torch.nn.Identity()
        self._params = dict(self.split.named_parameters())

    # ---------------------------------------------------------------- state

    def names(self, predicate=None) -> list[str]:
        return [n for n in self._params if predicate is None or predicate(n)]

    def set_trainable(self, names: Iterable[str]) -> list[torch.nn.Parameter]:
        """Make exactly ``names`` require grad; return those parameters in name order."""
        wanted = set(names)
        unknown = wanted - set(self._params)
        if unknown:
            raise KeyError(f"unknown parameter names: {sorted(unknown)[:3]}")
        for n, p in self._params.items():
            p.requires_grad_(n in wanted)
        return [self._params[n] for n in self._params if n in wanted]

    def get_state(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Detached copies of the named parameters."""
        return {n: self._params[n].detach().clone() for n in names}

    def load_state(self, state: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Copy tensors (or numpy arrays) into the named parameters."""
        with torch.no_grad():
            for n, v in state.items():
                p = self._params.get(n)
                if p is None:
                    raise KeyError(f"state has unknown parameter {n!r}")
                t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v))
                if t.shape != p.shape:
                    raise ValueError(f"state {n!r}: shape {tuple(t.shape)} != {tuple(p.shape)}")
                p.copy_(t)

    def parameters_bytes(self, names: Iterable[str]) -> int:
        return sum(self._params[n].numel() * self._params[n].element_size() for n in names)


def to_numpy_state(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Tensors -> numpy arrays (Ray moves numpy zero-copy)."""
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def to_torch_state(state: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, torch.Tensor]:
    """Numpy arrays (possibly read-only views from the object store) -> owned tensors."""
    return {k: (v.clone() if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v))) for k, v in state.items()}
