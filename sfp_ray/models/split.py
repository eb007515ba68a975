"""The SFPrompt three-way split of a timm ViT: head / body / tail, with soft prompts.

SFPrompt (Cao, Zhu, Gong, arXiv 2407.17533) cuts a pre-trained ViT into a client-side
*head* (patch + position embedding + the first ``head_blocks`` blocks), a server-side
*body* (the middle blocks) and a client-side *tail* (the last ``tail_blocks`` blocks, the
final norm and the classifier). Learnable soft prompts (VPT, Jia et al., ECCV 2022) are
inserted after the class/prefix tokens at the head's input and ignored by pooling.

The split uses only timm's named seams (``patch_embed``, ``cls_token``, ``reg_token``,
``pos_embed``, ``blocks``, ``norm``, ``fc_norm``, ``head``); the one piece of timm
behaviour re-implemented here, the position embedding, lives in :func:`vit_embed` and is
pinned by a test against ``VisionTransformer.forward_features`` so a timm upgrade that
changes it fails loudly.

Parameter names are absolute: the tail's last block of a 12-block model is
``blocks.11.*`` in the tail's ``state_dict``, exactly as in the unsplit model, so states
from clients with different cuts can be averaged by name.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from sfp_ray.errors import ConfigError

log = logging.getLogger("sfp_ray.models")  # the package's name, as before the split into modules


# --------------------------------------------------------------------------- seams


def vit_embed(model: VisionTransformer | Embeddings, x: torch.Tensor) -> torch.Tensor:
    """Patch embedding, prefix tokens, position embedding, dropout and pre-norm.

    This re-implements timm's private ``VisionTransformer._pos_embed`` for a fixed image
    size (the one place the split relies on timm internals; ``tests/test_models.py``
    checks it against ``forward_features``).
    """
    x = model.patch_embed(x)
    if x.ndim == 4:  # NHWC from dynamic_img_size models
        x = x.reshape(x.shape[0], -1, x.shape[-1])
    to_cat = []
    if model.cls_token is not None:
        to_cat.append(model.cls_token.expand(x.shape[0], -1, -1))
    if model.reg_token is not None:
        to_cat.append(model.reg_token.expand(x.shape[0], -1, -1))
    if model.pos_embed is None:
        x = torch.cat(to_cat + [x], dim=1) if to_cat else x
    elif model.no_embed_class:
        x = x + model.pos_embed
        x = torch.cat(to_cat + [x], dim=1) if to_cat else x
    else:
        x = torch.cat(to_cat + [x], dim=1) if to_cat else x
        x = x + model.pos_embed
    x = model.pos_drop(x)
    x = model.patch_drop(x)
    return model.norm_pre(x)


def _share(part: nn.Module, vit: VisionTransformer, names: tuple[str, ...]) -> None:
    """Give ``part`` the ViT's attributes ``names`` (the same modules and parameters, not copies)."""
    for name in names:
        setattr(part, name, getattr(vit, name))


class Embeddings(nn.Module):
    """The embedding seams of a timm ViT, sharing (not copying) its modules and parameters."""

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        if getattr(vit, "dynamic_img_size", False):
            raise ConfigError("model: dynamic_img_size ViTs are not supported by split_vit")
        _share(self, vit, ("patch_embed", "cls_token", "reg_token", "pos_embed", "pos_drop", "patch_drop", "norm_pre",
                           "no_embed_class"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vit_embed(self, x)


def prompt_init_bound(in_chans: int, patch_size: int, dim: int) -> float:
    """VPT's Xavier-uniform bound for prompt init: ``sqrt(6 / (fan_in + fan_out))``.

    With ``fan_in = in_chans * patch_size**2`` (a patch) and ``fan_out = dim`` (Jia et al.
    2022, §3.2 / their released code initialise prompts uniformly in ``[-b, b]``).
    """
    return math.sqrt(6.0 / float(in_chans * patch_size * patch_size + dim))


# --------------------------------------------------------------------------- parts


class ViTHead(nn.Module):
    """Client-side head: embeddings, soft prompts, the first ``head_blocks`` blocks.

    Output: ``(B, num_prefix + num_prompts + num_patches, D)``.
    """

    def __init__(self, vit: VisionTransformer, head_blocks: int, num_prompts: int, deep: bool) -> None:
        super().__init__()
        self.embed = Embeddings(vit)
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.num_prompts = num_prompts
        self.block_ids = list(range(head_blocks))
        self.blocks = nn.ModuleDict({str(i): vit.blocks[i] for i in self.block_ids})
        self.prompt_bound = _prompt_bound_of(vit)
        if num_prompts > 0:
            self.prompt = nn.Parameter(_empty_prompt(vit, num_prompts))
            deep_ids = self.block_ids[1:] if deep else []
        else:
            self.register_parameter("prompt", None)
            deep_ids = []
        self.prompt_deep = nn.ParameterDict({str(i): nn.Parameter(_empty_prompt(vit, num_prompts)) for i in deep_ids})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        n = self.num_prefix_tokens
        if self.prompt is not None:
            x = torch.cat([x[:, :n], self.prompt.expand(x.shape[0], -1, -1), x[:, n:]], dim=1)
        for i in self.block_ids:
            key = str(i)
            if key in self.prompt_deep:
                x = _replace_prompts(x, self.prompt_deep[key], n)
            x = self.blocks[key](x)
        return x


def _prompt_bound_of(vit: VisionTransformer) -> float:
    patch = vit.patch_embed.patch_size[0]
    in_chans = vit.patch_embed.proj.in_channels if hasattr(vit.patch_embed, "proj") else 3
    return prompt_init_bound(in_chans, patch, vit.embed_dim)


def _empty_prompt(vit: VisionTransformer, num_prompts: int) -> torch.Tensor:
    """An uninitialised ``(1, num_prompts, D)`` tensor on the model's device and dtype (see :func:`init_prompts`)."""
    ref = vit.patch_embed.proj.weight if hasattr(vit.patch_embed, "proj") else next(vit.parameters())
    return torch.empty(1, num_prompts, vit.embed_dim, device=ref.device, dtype=ref.dtype)


def name_seed(seed: int, name: str) -> int:
    """A 63-bit seed for the parameter or module ``name`` under the run seed ``seed``.

    Every process derives the same initial values for a parameter from its name alone,
    whatever other parts of the model it builds.

    Example:
        >>> name_seed(0, "head.prompt") == name_seed(0, "head.prompt") != name_seed(1, "head.prompt")
        True
    """
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def init_prompts(split: nn.Module, seed: int) -> None:
    """(Re-)initialise every soft prompt of a split model, uniformly in ``[-b, b]``.

    ``b`` is VPT's Xavier bound (:func:`prompt_init_bound`); each prompt tensor is drawn on
    the CPU from a generator seeded with :func:`name_seed` of its parameter name, so the
    values depend only on ``seed`` and the name. Prompts on the ``meta`` device are skipped.
    """
    for part in (split.head, split.tail):
        bound = part.prompt_bound
        for name, p in part.named_parameters(recurse=False):
            _fill_prompt(p, bound, seed, f"{_part_name(split, part)}.{name}")
        for name, p in part.prompt_deep.named_parameters():
            _fill_prompt(p, bound, seed, f"{_part_name(split, part)}.prompt_deep.{name}")


def _part_name(split: nn.Module, part: nn.Module) -> str:
    return "head" if part is split.head else "tail"


def _fill_prompt(p: torch.Tensor, bound: float, seed: int, name: str) -> None:
    if p.is_meta:
        return
    gen = torch.Generator().manual_seed(name_seed(seed, name))
    values = torch.empty(p.shape).uniform_(-bound, bound, generator=gen)
    with torch.no_grad():
        p.copy_(values.to(device=p.device, dtype=p.dtype))


def _replace_prompts(x: torch.Tensor, prompt: torch.Tensor, n_prefix: int) -> torch.Tensor:
    p = prompt.shape[1]
    return torch.cat([x[:, :n_prefix], prompt.expand(x.shape[0], -1, -1), x[:, n_prefix + p:]], dim=1)


class ViTBody(nn.Module):
    """Server-side body: the middle blocks, then the token selection the tail needs.

    ``select`` keeps only the tokens the tail reads when it has no blocks (the class token
    for ``token`` pooling, the patch tokens for average/max pooling), so only those cross
    the network.
    """

    def __init__(self, vit: VisionTransformer, first: int, last: int, selector: TokenSelector) -> None:
        super().__init__()
        self.block_ids = list(range(first, last))
        self.blocks = nn.ModuleDict({str(i): vit.blocks[i] for i in self.block_ids})
        self.selector = selector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in self.block_ids:
            x = self.blocks[str(i)](x)
        return self.selector(x)

    @staticmethod
    def from_blocks(blocks: Mapping[str, nn.Module], first: int, last: int, selector: TokenSelector) -> ViTBody:
        """The body of blocks ``first..last-1`` taken from ``blocks`` (block id -> module, shared, not copied)."""
        missing = [i for i in range(first, last) if str(i) not in blocks]
        if missing:
            raise ValueError(f"body: blocks {missing} are not held here")
        new = ViTBody.__new__(ViTBody)
        nn.Module.__init__(new)
        new.block_ids = list(range(first, last))
        new.blocks = nn.ModuleDict({str(i): blocks[str(i)] for i in new.block_ids})
        new.selector = selector
        return new


@dataclass(frozen=True)
class TokenSelector:
    """Which tokens of the body output cross to the tail: ``all``, ``cls`` or ``patches``."""

    mode: str
    num_prefix_tokens: int
    num_prompts: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "cls":
            return x[:, :1]
        if self.mode == "patches":
            return x[:, self.num_prefix_tokens + self.num_prompts:]
        return x

    def num_tokens(self, total: int) -> int:
        """Tokens sent for a sequence of ``total`` tokens."""
        if self.mode == "cls":
            return 1
        if self.mode == "patches":
            return total - self.num_prefix_tokens - self.num_prompts
        return total


class ViTTail(nn.Module):
    """Client-side tail: the last ``tail_blocks`` blocks, final norm, pooling, classifier.

    ``forward(x)`` takes what the body sends (see :class:`TokenSelector`); pass
    ``full=True`` with a full token sequence (the body-bypassed path) and ``pool`` to
    override the pooling (``"avg"`` pools the patch tokens).
    """

    def __init__(self, vit: VisionTransformer, tail_blocks: int, num_prompts: int, deep: bool,
                 selector: TokenSelector) -> None:
        super().__init__()
        depth = len(vit.blocks)
        self.block_ids = list(range(depth - tail_blocks, depth))
        self.blocks = nn.ModuleDict({str(i): vit.blocks[i] for i in self.block_ids})
        _share(self, vit, ("norm", "fc_norm", "head_drop", "attn_pool", "head", "global_pool"))
        self.pool_include_prefix = getattr(vit, "pool_include_prefix", False)
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.num_prompts = num_prompts
        self.selector = selector
        self.prompt_bound = _prompt_bound_of(vit)
        deep_ids = self.block_ids if (deep and num_prompts > 0) else []
        self.prompt_deep = nn.ParameterDict({str(i): nn.Parameter(_empty_prompt(vit, num_prompts)) for i in deep_ids})

    def _pool(self, x: torch.Tensor, pool: str, n_prefix: int) -> torch.Tensor:
        if self.attn_pool is not None and pool == self.global_pool:
            if not self.pool_include_prefix:
                x = x[:, n_prefix:]
            return self.attn_pool(x)
        if not pool:
            return x
        if pool == "token":
            return x[:, 0]
        x = x if self.pool_include_prefix else x[:, n_prefix:]
        if pool == "avg":
            return x.mean(dim=1)
        if pool == "max":
            return x.amax(dim=1)
        if pool == "avgmax":
            return 0.5 * (x.amax(dim=1) + x.mean(dim=1))
        raise ConfigError(f"model.global_pool: unsupported pooling {pool!r}")

    def forward(self, x: torch.Tensor, *, full: bool | None = None, pool: str | None = None) -> torch.Tensor:
        if full is None:
            full = self.selector.mode == "all"
        n = self.num_prefix_tokens
        if full:
            for i in self.block_ids:
                key = str(i)
                if key in self.prompt_deep:
                    x = _replace_prompts(x, self.prompt_deep[key], n)
                x = self.blocks[key](x)
            if self.num_prompts:
                x = torch.cat([x[:, :n], x[:, n + self.num_prompts:]], dim=1)
            n_prefix = n
        else:
            # reduced input from the selector (tail has no blocks): class token or patches
            n_prefix = 0 if self.selector.mode == "patches" else 1
        x = self.norm(x)
        x = self._pool(x, pool or self.global_pool, n_prefix)
        x = self.fc_norm(x)
        x = self.head_drop(x)
        return self.head(x)


class SplitViT(nn.Module):
    """A ViT cut into ``head``, ``body`` and ``tail``; ``tail(body(head(x)))`` gives the logits.

    The parts share modules with the original model (no copies). ``bypass(x)`` is the
    body-bypassed client path of SFPrompt's EL2N scoring and local-loss update.
    """

    def __init__(self, vit: VisionTransformer, head: ViTHead, body: ViTBody, tail: ViTTail,
                 bypass_pool: str | None) -> None:
        super().__init__()
        self.head = head
        self.body = body
        self.tail = tail
        self.bypass_pool = bypass_pool
        self.depth = len(vit.blocks)
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.num_prompts = head.num_prompts
        self.embed_dim = vit.embed_dim
        self.thin_selector = body.selector  # what a tail of 0 blocks reads; split_vit sets it

    @property
    def head_blocks(self) -> int:
        return len(self.head.block_ids)

    @property
    def tail_blocks(self) -> int:
        return len(self.tail.block_ids)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(self.head(x)))

    def bypass(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``tail(head(x))`` with the body skipped (phases 1a/1b)."""
        h = self.head(x)
        return self.bypass_tail(h)

    def bypass_tail(self, h: torch.Tensor) -> torch.Tensor:
        """The tail applied to a head output directly (the body skipped)."""
        if self.bypass_pool is not None:
            return self.tail(h, full=True, pool=self.bypass_pool)
        return self.tail(self.body.selector(h))

    def body_for(self, head_blocks: int, tail_blocks: int) -> ViTBody:
        """The body a client cut at ``head_blocks``/``tail_blocks`` needs, sharing this split's block modules.

        A server holding the widest body of a run (the fewest client blocks) serves every
        client's cut from it (``split.policy=per_device``).
        """
        sel = self.body.selector if tail_blocks == self.tail_blocks else (
            TokenSelector("all", self.num_prefix_tokens, self.num_prompts) if tail_blocks > 0 else self.thin_selector)
        blocks = {k: m for part in (self.head, self.body, self.tail) for k, m in part.blocks.items()}
        return ViTBody.from_blocks(blocks, head_blocks, self.depth - tail_blocks, sel)

    def prompt_grad_slice(self) -> slice | None:
        """Tokens of the head output whose gradient the client needs, or None for all.

        With no trainable head block between prompts and the cut only the prompt tokens'
        gradients matter; with no prompts nothing trainable is upstream of the cut.
        """
        if self.num_prompts == 0:
            return slice(0, 0)
        if self.head_blocks == 0:
            return slice(self.num_prefix_tokens, self.num_prefix_tokens + self.num_prompts)
        return None

    def client_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """Trainable client state ``(p, W_t)``: prompts in the head and the whole tail."""
        for name, p in self.head.named_parameters():
            if name.startswith("prompt"):
                yield f"head.{name}", p
        for name, p in self.tail.named_parameters():
            yield f"tail.{name}", p

    def freeze_for_sfprompt(self) -> None:
        """Freeze head (except prompts) and body; prompts and tail stay trainable."""
        for name, p in self.head.named_parameters():
            p.requires_grad_(name.startswith("prompt"))
        for p in self.body.parameters():
            p.requires_grad_(False)
        for p in self.tail.parameters():
            p.requires_grad_(True)


_TRAP_WARNED: set[str | None] = set()


def split_vit(
    model: VisionTransformer,
    head_blocks: int,
    tail_blocks: int,
    num_prompts: int = 0,
    *,
    deep: bool = False,
    bypass_pool: str = "auto",
    seed: int = 0,
) -> SplitViT:
    """Cut a timm ViT into head / body / tail, with ``num_prompts`` soft prompts in the head.

    Prompts are initialised uniformly in ``[-b, b]`` with VPT's Xavier bound
    (:func:`prompt_init_bound`), each from a generator seeded by ``seed`` and its name
    (:func:`init_prompts`). With ``deep=True``
    every client-side block after the first gets its own prompts (VPT-deep restricted to
    the client's blocks; the body passes prompt tokens through unchanged).

    Args:
        model: a timm ``VisionTransformer``.
        head_blocks: blocks on the client before the cut (0 = embeddings only).
        tail_blocks: blocks on the client after the body (0 = norm + classifier only).
        num_prompts: soft prompt tokens (0 disables prompts).
        deep: per-block prompts in client-side blocks.
        bypass_pool: pooling of the body-bypassed path: ``model``, ``avg`` or ``auto``
            (``avg`` for a class-token model with ``head_blocks = tail_blocks = 0``, whose
            class token never meets the image on that path; a warning is logged).
        seed: prompt initialisation seed.

    Raises:
        ValueError (ConfigError): a negative cut, or head and tail overlapping / beyond depth.

    Example:
        >>> from sfp_ray.models import create_model
        >>> m = create_model("vit_tiny_patch16_224", num_classes=3, img_size=16, patch_size=4,
        ...                  in_chans=1, depth=4)
        >>> s = split_vit(m, 1, 1, num_prompts=2)
        >>> s.tail(s.body(s.head(torch.zeros(2, 1, 16, 16)))).shape
        torch.Size([2, 3])
    """
    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"model: split_vit needs a timm VisionTransformer, got {type(model).__name__}")
    depth = len(model.blocks)
    if head_blocks < 0:
        raise ConfigError(f"split.head_blocks: must be >= 0, got {head_blocks}")
    if tail_blocks < 0:
        raise ConfigError(f"split.tail_blocks: must be >= 0, got {tail_blocks}")
    if head_blocks > depth:
        raise ConfigError(f"split.head_blocks: {head_blocks} is beyond the model's depth ({depth} blocks)")
    if tail_blocks > depth:
        raise ConfigError(f"split.tail_blocks: {tail_blocks} is beyond the model's depth ({depth} blocks)")
    if head_blocks + tail_blocks > depth:
        raise ConfigError(
            f"split.head_blocks + split.tail_blocks: {head_blocks} + {tail_blocks} overlap in a "
            f"{depth}-block model (must be <= {depth})"
        )
    if num_prompts < 0:
        raise ConfigError(f"prompt.num_tokens: must be >= 0, got {num_prompts}")
    if bypass_pool not in ("auto", "model", "avg"):
        raise ConfigError(f"split.bypass_pool: got {bypass_pool!r}, allowed: 'auto', 'model', 'avg'")

    pool = model.global_pool
    selector = token_selector(model, tail_blocks, num_prompts)

    trap = pool == "token" and model.cls_token is not None and head_blocks == 0 and tail_blocks == 0
    resolved_bypass: str | None
    if bypass_pool == "avg":
        resolved_bypass = "avg"
    elif bypass_pool == "auto" and trap:
        resolved_bypass = "avg"
    else:
        resolved_bypass = None
    if trap and resolved_bypass not in _TRAP_WARNED:
        _TRAP_WARNED.add(resolved_bypass)  # once per process and setting: clients build many splits
        if resolved_bypass is None:
            log.warning(
                "split: head_blocks = tail_blocks = 0 on a class-token ViT: the body-bypassed "
                "path (EL2N scoring, local-loss update) never lets the class token see the image, "
                "so it depends on the label alone; set split.bypass_pool=avg to pool patch tokens"
            )
        else:
            log.warning(
                "split: head_blocks = tail_blocks = 0 on a class-token ViT: the body-bypassed "
                "path pools the patch tokens (split.bypass_pool=avg) because the class token "
                "never meets the image without blocks"
            )

    head = ViTHead(model, head_blocks, num_prompts, deep)
    body = ViTBody(model, head_blocks, depth - tail_blocks, selector)
    tail = ViTTail(model, tail_blocks, num_prompts, deep, selector)
    split = SplitViT(model, head, body, tail, resolved_bypass)
    split.thin_selector = token_selector(model, 0, num_prompts)
    init_prompts(split, seed)
    return split


def token_selector(model: VisionTransformer, tail_blocks: int, num_prompts: int) -> TokenSelector:
    """Which body-output tokens cross to a tail of ``tail_blocks`` blocks (see :class:`TokenSelector`)."""
    pool = model.global_pool
    if tail_blocks > 0 or model.attn_pool is not None or not pool:
        mode = "all"
    elif pool == "token":
        mode = "cls"
    elif pool in ("avg", "max", "avgmax") and not getattr(model, "pool_include_prefix", False):
        mode = "patches"
    else:
        mode = "all"
    return TokenSelector(mode, model.num_prefix_tokens, num_prompts)
