"""Model creation and checkpoint I/O: timm ViTs by name or configuration, local checkpoint files.

:func:`create_model` builds a timm ``VisionTransformer`` by name with overrides (optionally
from timm's pre-trained weights or a local checkpoint), :func:`build_from_config` does so
from a ``ModelConfig`` (also on PyTorch's ``meta`` device, shapes only), and
:func:`read_checkpoint` / :func:`check_checkpoint` / :func:`load_checkpoint` /
:func:`save_checkpoint` read, check, load and write ``.pt``/``.pth``/``.safetensors``
state dicts (a ``.safetensors`` file optionally lazily, one tensor at a time:
:class:`LazySafetensors`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from sfp_ray.errors import ConfigError, ModelError

log = logging.getLogger("sfp_ray.models")  # the package's name, as before the split into modules

CLASSIFIER_KEYS = ("head.weight", "head.bias")


# --------------------------------------------------------------------------- creation


def create_model(
    name: str,
    *,
    num_classes: int,
    img_size: int | None = None,
    patch_size: int | None = None,
    in_chans: int | None = None,
    depth: int | None = None,
    embed_dim: int | None = None,
    num_heads: int | None = None,
    global_pool: str | None = None,
    pretrained: bool = False,
    checkpoint: str | os.PathLike | None = None,
) -> VisionTransformer:
    """Create a timm ViT by name with overrides, optionally from weights.

    Args:
        name: a timm model name, e.g. ``vit_base_patch16_224``.
        num_classes: classifier width.
        img_size: input size override (``None`` keeps the model's default, as below).
        patch_size: patch size override.
        in_chans: input channels override.
        depth: number of blocks override.
        embed_dim: token width override.
        num_heads: attention heads override.
        global_pool: pooling override (``token``, ``avg``, ...).
        pretrained: load timm's pre-trained weights (Hugging Face hub or its local cache;
            timm resamples position/patch embeddings and re-initialises a classifier of a
            different width).
        checkpoint: a local ``.pt``/``.pth``/``.safetensors`` file loaded after creation
            (see :func:`load_checkpoint`).

    Raises:
        ConfigError: unknown model name or a model that is not a timm ``VisionTransformer``.
        ModelError: weights cannot be obtained or do not fit.
    """
    arch = name.split(".")[0]  # "vit_base_patch16_224.augreg_in21k" -> architecture
    if arch not in timm.list_models():
        close = [m for m in timm.list_models("vit_*") if name.split("_")[0] in m][:5]
        raise ConfigError(
            f"model.name: unknown timm model {name!r}"
            + (f"; ViTs include e.g. {', '.join(close)}" if close else "")
        )
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    for key, value in (
        ("img_size", img_size),
        ("patch_size", patch_size),
        ("in_chans", in_chans),
        ("depth", depth),
        ("embed_dim", embed_dim),
        ("num_heads", num_heads),
        ("global_pool", global_pool),
    ):
        if value is not None:
            kwargs[key] = value
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:  # e.g. ResNet.__init__() got an unexpected keyword argument 'img_size'
        probe = _probe(name)
        if not isinstance(probe, VisionTransformer):
            raise _not_a_vit(name, type(probe).__name__ if probe is not None else None) from e
        raise ConfigError(f"model.name: cannot build {name!r} with {kwargs}: {e}".splitlines()[0]) from e
    except AssertionError as e:  # timm checks some overrides with assert (e.g. embed_dim % num_heads)
        raise ConfigError(f"model.name: cannot build {name!r} with {kwargs}: {e or 'an override is invalid'}"
                          .splitlines()[0]) from e
    except (OSError, RuntimeError, ValueError) as e:  # hub unreachable, bad overrides
        if pretrained:
            raise ModelError(
                f"model.pretrained: could not obtain timm weights for {name!r} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}). Without internet, pre-populate the Hugging Face "
                "cache, or set model.pretrained=false and model.checkpoint=PATH"
            ) from e
        raise ConfigError(f"model.name: cannot build {name!r} with {kwargs}: {e}".splitlines()[0]) from e
    if not isinstance(model, VisionTransformer):
        raise _not_a_vit(name, type(model).__name__)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def _not_a_vit(name: str, kind: str | None) -> ConfigError:
    return ConfigError(
        f"model.name: {name!r} is {'a ' + kind if kind else 'not a VisionTransformer'}; only timm ViT models "
        "(timm VisionTransformer: vit_*, deit_*, ...) are supported, e.g. vit_tiny_patch16_224"
    )


def _probe(name: str) -> nn.Module | None:
    """The model timm builds for ``name`` with its own arguments, on the meta device (None if that fails)."""
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False)
    except Exception:  # noqa: BLE001  (only used to word an error message)
        return None


def set_fused_attn(model: nn.Module, enabled: bool) -> int:
    """Switch timm's fused attention kernel on every attention module; return how many."""
    n = 0
    for mod in model.modules():
        if hasattr(mod, "fused_attn") and isinstance(mod.fused_attn, bool):
            mod.fused_attn = enabled
            n += 1
    return n


def build_from_config(model_cfg: Any, num_classes: int, *, checkpoint: str | os.PathLike | None = None,
                      device: str | torch.device | None = None) -> VisionTransformer:
    """Create the model described by a ``ModelConfig`` (checkpoint path already resolved).

    ``device="meta"`` builds the architecture without storage (no weights are loaded, and
    ``pretrained``/``checkpoint`` are ignored): for cost projection and for processes that
    materialise only the parts they hold (:func:`~sfp_ray.models.materialize`).
    """
    m = model_cfg
    meta = device is not None and torch.device(device).type == "meta"
    kwargs = dict(num_classes=num_classes, img_size=m.img_size, patch_size=m.patch_size, in_chans=m.in_chans,
                  depth=m.depth, embed_dim=m.embed_dim, num_heads=m.num_heads, global_pool=m.global_pool)
    if meta:
        with torch.device("meta"):
            model = create_model(m.name, **kwargs)
    else:
        model = create_model(m.name, pretrained=m.pretrained, checkpoint=checkpoint, **kwargs)
        if device is not None:
            model = model.to(device)
    set_fused_attn(model, m.fused_attn)
    return model


def input_shape(model_cfg: Any) -> tuple[int, int]:
    """``(img_size, in_chans)`` the configured model takes (its own values where the config has none).

    Example:
        >>> from sfp_ray.config import ModelConfig
        >>> input_shape(ModelConfig(name="vit_base_patch16_224", img_size=None, patch_size=None, in_chans=None,
        ...                         depth=None))
        (224, 3)
    """
    m = model_cfg
    if m.img_size is not None and m.in_chans is not None:
        return int(m.img_size), int(m.in_chans)
    vit = build_from_config(m, 2, device="meta")
    return int(vit.patch_embed.img_size[0]), int(vit.patch_embed.proj.in_channels)


# --------------------------------------------------------------------------- checkpoints


class LazySafetensors(Mapping):
    """The tensors of a ``.safetensors`` file, read one at a time on access (shapes without reading any).

    A process that holds only some parts of a model reads only their tensors: a ViT-L
    client actor does not load the server's 1 GB body to initialise its head and tail.
    """

    def __init__(self, path: str | os.PathLike, keys: Mapping[str, str], shapes: dict[str, tuple[int, ...]]) -> None:
        self.path = str(path)
        self._keys = dict(keys)  # name (``module.`` stripped) -> the file's own key
        self.shapes = shapes

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.shapes:
            raise KeyError(key)
        from safetensors import safe_open

        with safe_open(self.path, framework="pt", device="cpu") as f:
            return f.get_tensor(self._keys[key])

    def __iter__(self):  # noqa: ANN204
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def shape_of(state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    """The shape of ``state[key]`` without reading it when ``state`` is lazy."""
    if isinstance(state, LazySafetensors):
        return state.shapes[key]
    return tuple(state[key].shape)


def read_checkpoint(path: str | os.PathLike, *, lazy: bool = False) -> Mapping[str, torch.Tensor]:
    """The state dict in a local checkpoint file (``.pt``/``.pth``/``.safetensors``).

    Accepted: a raw state dict, or a dict holding it under ``model``/``state_dict``/
    ``model_state_dict``; a ``module.`` prefix (DataParallel) is stripped.

    ``lazy``: read tensors only when they are used: a ``.safetensors`` file one tensor at a
    time (:class:`LazySafetensors`), a ``.pt``/``.pth`` file memory-mapped (its pages are
    read when touched; a file in PyTorch's legacy format is read whole).

    Raises:
        ModelError: the file is missing, unreadable, or not a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model.checkpoint: file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open  # timm depends on safetensors

            if lazy:
                with safe_open(str(path), framework="pt", device="cpu") as f:
                    keys = {k.removeprefix("module."): k for k in f.keys()}
                    shapes = {k: tuple(f.get_slice(own).get_shape()) for k, own in keys.items()}
                if not keys:
                    raise ModelError(f"model.checkpoint: {path} does not hold a state dict of tensors")
                return LazySafetensors(path, keys, shapes)
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=lazy)
            except RuntimeError:
                if not lazy:
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy format: no mmap
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001  (any unreadable file is the same user error)
        raise ModelError(f"model.checkpoint: cannot read {path}: {type(e).__name__}: {e}".splitlines()[0]) from e
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"model.checkpoint: {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def check_checkpoint(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> list[str]:
    """Check that ``state`` fits ``model`` (which may live on ``meta``); return the keys it leaves alone.

    The classifier (``head.weight``/``head.bias``) may be absent or of another width (a
    checkpoint of another task): it is then left as initialised. Any other missing,
    unexpected or mis-shaped tensor is an error naming the file and the first offenders.
    ``state`` may be lazy (:func:`read_checkpoint`): only shapes are read.
    """
    own = model.state_dict()
    shapes = [f"{k} {shape_of(state, k)} vs model {tuple(own[k].shape)}" for k in state
              if k in own and k not in CLASSIFIER_KEYS and shape_of(state, k) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state and k not in CLASSIFIER_KEYS]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"shape mismatch: {'; '.join(shapes[:3])}")
        if missing:
            parts.append(f"missing: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected: {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        raise ModelError(f"model.checkpoint: {path} does not fit the model ({'; '.join(parts)})")
    return [k for k in CLASSIFIER_KEYS if k in own and (k not in state or shape_of(state, k) != tuple(own[k].shape))]


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load a local checkpoint into ``model``; return the keys left at their initial values.

    See :func:`read_checkpoint` for the accepted files and :func:`check_checkpoint` for
    what must fit (a classifier of another width is skipped and logged).

    Raises:
        ModelError: naming the file and the first offending tensors.
    """
    state = read_checkpoint(path)
    left = check_checkpoint(model, state, path)
    if left:
        log.info("checkpoint %s: classifier %s left freshly initialised", path, ", ".join(left))
    model.load_state_dict({k: v for k, v in state.items() if k not in left}, strict=False)
    return left


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, meta: Mapping[str, Any] | None = None,
                    include_classifier: bool = True) -> Path:
    """Write ``{"model": state_dict, "sfp_ray": meta}`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if not include_classifier:
        for key in CLASSIFIER_KEYS:
            state.pop(key, None)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"model": state, "sfp_ray": dict(meta or {})}, tmp)
    os.replace(tmp, path)
    return path
