"""Materialising meta-device parts: real storage for only the parts a process holds, and their initial values.

A model built on PyTorch's ``meta`` device has shapes but no storage; :func:`materialize`
gives the parameters of the parts a process holds fresh storage (or drops parts back to
``meta``), and :func:`init_parameters` fills them with timm's ViT initialisation, seeded
per parameter name so every process derives the same values whatever else it builds.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from sfp_ray.errors import ModelError
from sfp_ray.models.split import name_seed


def materialize(parts: Iterable[nn.Module], owners: Iterable[nn.Module],
                device: str | torch.device = "cpu") -> list[nn.Parameter]:
    """Give the parameters of ``parts`` fresh, uninitialised storage on ``device``.

    Parameters that are not on ``meta`` already hold values and are kept. Building on
    ``meta`` and materialising on ``cpu`` gives a process only the parts it holds;
    materialising on ``meta`` frees parts again. A parameter object may be registered in
    several modules (the split parts share the ViT's modules and some of its parameters,
    e.g. ``cls_token``); every module of ``owners`` that registers a replaced parameter is
    updated, so all views stay one tensor. Returns the new parameters (fill them with :func:`init_parameters` and a
    checkpoint).

    Raises:
        ModelError: a part holds ``meta`` buffers, whose values only the model's own
            constructor knows.
    """
    target = torch.device(device)
    new: dict[int, nn.Parameter] = {}
    for part in parts:
        for mod in part.modules():
            for p in mod.parameters(recurse=False):
                # materialising replaces meta parameters only (one held elsewhere, e.g. on a GPU, stays); dropping
                # to meta replaces every real one
                pending = (not p.is_meta) if target.type == "meta" else p.is_meta
                if pending and id(p) not in new:
                    new[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=target),
                                              requires_grad=p.requires_grad)
            for name, b in mod.named_buffers(recurse=False):
                if b is not None and b.is_meta and target.type != "meta":
                    raise ModelError(f"model: buffer {name!r} of {type(mod).__name__} cannot be materialised from meta")
    if new:
        seen: set[int] = set()
        for owner in owners:
            for mod in owner.modules():
                if id(mod) in seen:
                    continue
                seen.add(id(mod))
                for name, p in list(mod._parameters.items()):
                    if p is not None and id(p) in new:
                        mod._parameters[name] = new[id(p)]
    return list(new.values())


def init_parameters(vit: VisionTransformer, params: Iterable[nn.Parameter], seed: int) -> None:
    """Initialise ``params`` of ``vit`` with timm's ViT scheme, each module from its own seed.

    timm's ``init_weights_vit_timm`` (truncated normal 0.02 for linear layers, the layers'
    own reset otherwise) runs per module under :func:`~sfp_ray.models.split.name_seed` of the module's name, and
    the position embedding / class and register tokens get timm's truncated normal 0.02 /
    normal 1e-6. Values therefore depend only on ``seed`` and the parameter's name, not on
    which other parts a process builds. Parameters of ``vit`` not in ``params`` are untouched.
    """
    from timm.models.vision_transformer import init_weights_vit_timm

    wanted = {id(p) for p in params}
    with torch.no_grad():
        for name, mod in vit.named_modules():
            if mod is vit or not any(id(p) in wanted for p in mod.parameters(recurse=False)):
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(name_seed(seed, name))
                init_weights_vit_timm(mod, name)
        for name, std, trunc in (("pos_embed", 0.02, True), ("cls_token", 1e-6, False), ("reg_token", 1e-6, False)):
            p = getattr(vit, name, None)
            if p is None or id(p) not in wanted:
                continue
            gen = torch.Generator().manual_seed(name_seed(seed, name))
            values = torch.empty(p.shape)
            if trunc:
                nn.init.trunc_normal_(values, std=std, generator=gen)  # timm: bounds +-2 (absolute)
            else:
                nn.init.normal_(values, std=std, generator=gen)
            p.copy_(values.to(p.dtype))
