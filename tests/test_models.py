"""Tests for sfp_ray.models: the SFPrompt head / body / tail split of timm ViTs ("ViT split").

Tiny models only (16 px images, 4 px patches, 4 blocks), except the meta-device checks of
ViT-Base/Large, which allocate no memory. No network: HF_HUB_OFFLINE is set in conftest.
"""

from __future__ import annotations

import logging
import os
import time

import pytest
import timm
import torch
import torch.nn.functional as F

import sfp_ray.models.split as split_mod
from sfp_ray.errors import ConfigError, ModelError
from sfp_ray.models import (
    create_model,
    load_checkpoint,
    prompt_init_bound,
    save_checkpoint,
    split_vit,
    vit_embed,
)

DEPTH = 4
IMG = 16
PATCH = 4
NUM_PATCHES = (IMG // PATCH) ** 2  # 16
TINY = dict(num_classes=3, img_size=IMG, patch_size=PATCH, in_chans=1, depth=DEPTH)


# ----------------------------------------------------------------------------- helpers


def _spice(model: torch.nn.Module) -> torch.nn.Module:
    """Give prefix tokens and position embeddings O(1) values.

    timm initialises the class token with std 1e-6 and position embeddings with std 0.02,
    which would let an embedding bug (e.g. a position embedding added to the wrong tokens)
    slip under a 1e-5 tolerance.
    """
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for name in ("cls_token", "reg_token", "pos_embed"):
            p = getattr(model, name, None)
            if p is not None:
                p.copy_(torch.randn(p.shape, generator=g))
    return model.eval()


def _make(kind: str, seed: int = 0) -> torch.nn.Module:
    """Tiny ViT variants covering every prefix-token / pooling layout the split supports."""
    torch.manual_seed(seed)
    if kind == "cls":  # class token, token pooling
        m = create_model("vit_tiny_patch16_224", **TINY)
    elif kind == "avg":  # class token, average pooling of the patch tokens
        m = create_model("vit_tiny_patch16_224", global_pool="avg", **TINY)
    elif kind == "reg":  # class token + 2 register tokens (timm kwarg create_model does not forward)
        m = timm.create_model("vit_small_patch16_224", reg_tokens=2, embed_dim=64, num_heads=2, **TINY)
    elif kind == "reg_avg":  # register tokens with average pooling
        m = timm.create_model("vit_small_patch16_224", reg_tokens=2, embed_dim=64, num_heads=2,
                              global_pool="avg", **TINY)
    elif kind == "no_embed_class":  # position embedding on patches only, prefix concatenated after
        m = timm.create_model("vit_tiny_patch16_224", no_embed_class=True, **TINY)
    elif kind == "no_cls_avg":  # no prefix token at all
        m = timm.create_model("vit_tiny_patch16_224", class_token=False, global_pool="avg", **TINY)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return _spice(m)


def _x(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


MODEL_KINDS = ("cls", "avg", "reg", "reg_avg", "no_embed_class", "no_cls_avg")
CUTS = ((0, 0), (1, 1), (2, 1), (DEPTH, 0), (0, DEPTH), (0, 2), (3, 0))


# ----------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("cut", CUTS, ids=lambda c: f"h{c[0]}t{c[1]}")
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_split_without_prompts_equals_model(kind: str, cut: tuple[int, int]) -> None:
    model = _make(kind)
    x = _x()
    with torch.no_grad():
        ref = model(x)
        s = split_vit(model, *cut, num_prompts=0)
        out = s.tail(s.body(s.head(x)))
        assert _maxdiff(out, ref) <= 1e-5
        assert _maxdiff(s(x), ref) <= 1e-5
    assert s.head_blocks == cut[0] and s.tail_blocks == cut[1]
    # the three parts partition the blocks, with absolute block ids
    ids = s.head.block_ids + s.body.block_ids + s.tail.block_ids
    assert ids == list(range(DEPTH))


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_vit_embed_matches_timm_embedding(kind: str) -> None:
    """Pins the one re-implemented piece of timm (``VisionTransformer._pos_embed``)."""
    model = _make(kind)
    x = _x()
    with torch.no_grad():
        ref = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        s = split_vit(model, 0, 2, num_prompts=0)
        assert torch.equal(s.head(x), ref)
        assert torch.equal(vit_embed(model, x), ref)
        # and the whole model in the head reproduces timm's forward_features
        whole = split_vit(model, DEPTH, 0, num_prompts=0)
        assert _maxdiff(model.norm(whole.head(x)), model.forward_features(x)) <= 1e-5
    assert ref.shape == (2, model.num_prefix_tokens + NUM_PATCHES, model.embed_dim)


def test_split_shares_modules_with_model() -> None:
    model = _make("cls")
    s = split_vit(model, 1, 1, num_prompts=2)
    assert s.head.blocks["0"] is model.blocks[0]
    assert s.body.blocks["1"] is model.blocks[1]
    assert s.tail.blocks["3"] is model.blocks[3]
    assert s.tail.head is model.head
    # parameter names are absolute, as in the unsplit model
    tail_names = {n for n, _ in s.tail.named_parameters()}
    assert "blocks.3.attn.qkv.weight" in tail_names and "head.weight" in tail_names


# ----------------------------------------------------------------------------- invalid cuts


@pytest.mark.parametrize(
    "cut, key",
    [
        ((-1, 0), "split.head_blocks"),
        ((0, -1), "split.tail_blocks"),
        ((DEPTH + 1, 0), "split.head_blocks"),
        ((0, DEPTH + 1), "split.tail_blocks"),
        ((3, 2), "split.head_blocks"),  # overlap: 3 + 2 > 4
        ((2, 3), "split.tail_blocks"),  # overlap
    ],
)
def test_invalid_cut_raises_config_error_naming_key(cut: tuple[int, int], key: str) -> None:
    model = _make("cls")
    with pytest.raises(ValueError) as ei:
        split_vit(model, *cut)
    assert isinstance(ei.value, ConfigError)
    assert key in str(ei.value)


def test_negative_prompt_count_rejected() -> None:
    with pytest.raises(ConfigError, match="prompt.num_tokens"):
        split_vit(_make("cls"), 1, 1, num_prompts=-1)


# ----------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("kind", ("cls", "avg", "reg"))
@pytest.mark.parametrize("cut", ((1, 1), (0, 1), (2, 0), (0, 0)), ids=lambda c: f"h{c[0]}t{c[1]}")
def test_prompts_keep_shapes_and_only_prompts_and_tail_get_gradients(kind: str, cut: tuple[int, int]) -> None:
    model = _make(kind)
    P = 3
    s = split_vit(model, *cut, num_prompts=P)
    x, y = _x(4), torch.tensor([0, 1, 2, 1])
    h = s.head(x)
    assert h.shape == (4, model.num_prefix_tokens + P + NUM_PATCHES, model.embed_dim)
    s.freeze_for_sfprompt()
    logits = s(x)
    assert logits.shape == (4, 3)
    F.cross_entropy(logits, y).backward()

    prompt_names = [n for n, _ in s.head.named_parameters() if n.startswith("prompt")]
    assert prompt_names == ["prompt"]
    for name, p in s.head.named_parameters():
        if name.startswith("prompt"):
            assert p.requires_grad
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad, name
            assert p.grad is None, name
    for name, p in s.body.named_parameters():
        assert not p.requires_grad, name
        assert p.grad is None, name
    tail_params = list(s.tail.named_parameters())
    assert any(n.startswith("head.") for n, _ in tail_params)
    for name, p in tail_params:
        assert p.requires_grad, name
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the trainable client state is exactly the prompts plus the tail
    client = {n for n, _ in s.client_parameters()}
    assert client == {"head.prompt"} | {f"tail.{n}" for n, _ in tail_params}


def test_deep_prompts_get_gradients() -> None:
    model = _make("cls")
    P = 2
    s = split_vit(model, 2, 2, num_prompts=P, deep=True)
    # VPT-deep on the client's blocks: block 1 of the head, blocks 2 and 3 of the tail
    assert set(s.head.prompt_deep.keys()) == {"1"}
    assert set(s.tail.prompt_deep.keys()) == {"2", "3"}
    s.freeze_for_sfprompt()
    x, y = _x(3), torch.tensor([0, 2, 1])
    out = s(x)
    assert out.shape == (3, 3)
    F.cross_entropy(out, y).backward()
    deep = [("head", n, p) for n, p in s.head.named_parameters() if n.startswith("prompt")]
    deep += [("tail", n, p) for n, p in s.tail.named_parameters() if n.startswith("prompt")]
    assert sorted((part, n) for part, n, _ in deep) == [
        ("head", "prompt"), ("head", "prompt_deep.1"), ("tail", "prompt_deep.2"), ("tail", "prompt_deep.3")
    ]
    for part, name, p in deep:
        assert p.grad is not None and p.grad.abs().sum() > 0, (part, name)
    # deep prompts change the output (they are not silently ignored)
    with torch.no_grad():
        before = s(x)
        # (the attention of a random-init ViT barely moves the residual stream, hence the
        # large perturbation and the small threshold, still far above float noise ~1e-7)
        s.tail.prompt_deep["3"].add_(5.0 * torch.randn(s.tail.prompt_deep["3"].shape))
        assert _maxdiff(s(x), before) > 1e-5


def test_prompt_init_within_bound_and_seeded() -> None:
    model = _make("cls")
    bound = prompt_init_bound(1, PATCH, model.embed_dim)
    assert bound == pytest.approx((6.0 / (1 * PATCH * PATCH + model.embed_dim)) ** 0.5)
    a = split_vit(model, 2, 1, num_prompts=8, deep=True, seed=7)
    b = split_vit(model, 2, 1, num_prompts=8, deep=True, seed=7)
    c = split_vit(model, 2, 1, num_prompts=8, deep=True, seed=8)
    prompts = [a.head.prompt, a.head.prompt_deep["1"], a.tail.prompt_deep["3"]]
    for p in prompts:
        assert p.shape == (1, 8, model.embed_dim)
        assert float(p.detach().abs().max()) <= bound
        assert float(p.detach().abs().max()) > 0.9 * bound  # uniform over the whole range, not a narrow init
    assert torch.equal(a.head.prompt, b.head.prompt)
    assert torch.equal(a.tail.prompt_deep["3"], b.tail.prompt_deep["3"])
    assert not torch.equal(a.head.prompt, c.head.prompt)
    # independent draws for different prompt sets
    assert not torch.equal(a.head.prompt, a.head.prompt_deep["1"])


# ----------------------------------------------------------------------------- pooling ignores prompts


@pytest.mark.parametrize("kind", ("avg", "cls", "reg", "reg_avg", "no_cls_avg"))
def test_tail_pooling_ignores_prompt_tokens(kind: str) -> None:
    """With the whole model in the head, the tail's pooled features never read prompt tokens."""
    model = _make(kind)
    P = 3
    n = model.num_prefix_tokens
    s = split_vit(model, DEPTH, 0, num_prompts=P)
    with torch.no_grad():
        h = s.head(_x())
        h_noise = h.clone()
        h_noise[:, n:n + P] = 10.0 * torch.randn(h.shape[0], P, h.shape[2])
        out = s.tail(s.body(h))
        assert torch.equal(out, s.tail(s.body(h_noise)))
        assert torch.equal(s.tail(h, full=True), s.tail(h_noise, full=True))
        assert torch.equal(s.bypass_tail(h), s.bypass_tail(h_noise))
        # negative control: the token(s) pooling reads do reach the output (a random vector:
        # a constant shift would vanish in the LayerNorm)
        read = 0 if model.global_pool == "token" else n + P
        h_read = h.clone()
        h_read[:, read] += 5.0 * torch.randn(h.shape[0], h.shape[2])
        assert _maxdiff(s.tail(s.body(h_read)), out) > 1e-4


def test_tail_blocks_then_pool_patch_tokens_only() -> None:
    """Average pooling after tail blocks averages patch tokens only (no prefix, no prompts)."""
    model = _make("avg")
    P = 3
    s = split_vit(model, 2, 2, num_prompts=P)
    with torch.no_grad():
        h = s.body(s.head(_x()))
        z = h
        for i in (2, 3):
            z = model.blocks[i](z)
        manual = model.head(model.fc_norm(model.norm(z)[:, 1 + P:].mean(dim=1)))
        assert _maxdiff(s.tail(h), manual) <= 1e-5


# ----------------------------------------------------------------------------- minimal transfer


def test_body_sends_only_what_the_tail_reads() -> None:
    P = 3
    x = _x(2)
    with torch.no_grad():
        # class-token pooling, no tail blocks: only the class token goes down
        s = split_vit(_make("cls"), 1, 0, num_prompts=P)
        assert s.body.selector.mode == "cls"
        assert s.body(s.head(x)).shape == (2, 1, 192)
        # average pooling, no tail blocks: only the patch tokens go down
        s = split_vit(_make("avg"), 1, 0, num_prompts=P)
        assert s.body.selector.mode == "patches"
        assert s.body(s.head(x)).shape == (2, NUM_PATCHES, 192)
        # register tokens are prefix tokens too: still only the patches / the class token
        s = split_vit(_make("reg_avg"), 0, 0, num_prompts=P)
        assert s.body(s.head(x)).shape == (2, NUM_PATCHES, 64)
        s = split_vit(_make("reg"), 0, 0, num_prompts=P)
        assert s.body(s.head(x)).shape == (2, 1, 64)
        # no prefix token, average pooling
        s = split_vit(_make("no_cls_avg"), 2, 0, num_prompts=P)
        assert s.body(s.head(x)).shape == (2, NUM_PATCHES, 192)
        # tail blocks need every token
        for kind in ("cls", "avg"):
            s = split_vit(_make(kind), 1, 1, num_prompts=P)
            assert s.body.selector.mode == "all"
            assert s.body(s.head(x)).shape == (2, 1 + P + NUM_PATCHES, 192)
    assert s.body.selector.num_tokens(1 + P + NUM_PATCHES) == 1 + P + NUM_PATCHES


def test_prompt_grad_slice() -> None:
    assert split_vit(_make("cls"), 0, 1, num_prompts=3).prompt_grad_slice() == slice(1, 4)
    assert split_vit(_make("reg"), 0, 0, num_prompts=3).prompt_grad_slice() == slice(3, 6)
    assert split_vit(_make("no_cls_avg"), 0, 1, num_prompts=2).prompt_grad_slice() == slice(0, 2)
    assert split_vit(_make("cls"), 1, 1, num_prompts=3).prompt_grad_slice() is None
    empty = split_vit(_make("cls"), 0, 1, num_prompts=0).prompt_grad_slice()
    assert empty is not None and empty.stop - empty.start == 0
    assert split_vit(_make("cls"), 2, 1, num_prompts=0).prompt_grad_slice() == slice(0, 0)


def test_prompt_grad_slice_holds_the_whole_prompt_gradient() -> None:
    """With head_blocks=0, the head-output gradient outside the slice cannot reach the prompts."""
    s = split_vit(_make("cls"), 0, 1, num_prompts=3)
    s.freeze_for_sfprompt()
    h = s.head(_x())
    hd = h.detach().requires_grad_(True)
    F.cross_entropy(s.tail(s.body(hd)), torch.tensor([0, 1])).backward()
    full = torch.autograd.grad(h, s.head.prompt, hd.grad, retain_graph=True)[0]
    sl = s.prompt_grad_slice()
    masked = torch.zeros_like(hd.grad)
    masked[:, sl] = hd.grad[:, sl]
    only_slice = torch.autograd.grad(h, s.head.prompt, masked)[0]
    assert torch.equal(full, only_slice)
    assert full.abs().sum() > 0


# ----------------------------------------------------------------------------- bypass trap


def test_bypass_trap_auto_pools_patches_and_warns(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(split_mod, "_TRAP_WARNED", set())  # the warning is once per process
    model = _make("cls")
    with caplog.at_level(logging.WARNING, logger="sfp_ray.models"):
        s = split_vit(model, 0, 0, num_prompts=2, bypass_pool="auto")
    assert s.bypass_pool == "avg"
    assert any("head_blocks = tail_blocks = 0" in r.getMessage() for r in caplog.records)
    with torch.no_grad():
        a, b = s.bypass(_x(2, seed=1)), s.bypass(_x(2, seed=2))
    assert a.shape == (2, 3)
    assert _maxdiff(a, b) > 1e-4  # the bypassed path sees the image


def test_bypass_trap_model_pool_keeps_token_and_warns(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(split_mod, "_TRAP_WARNED", set())  # the warning is once per process
    model = _make("cls")
    with caplog.at_level(logging.WARNING, logger="sfp_ray.models"):
        s = split_vit(model, 0, 0, num_prompts=2, bypass_pool="model")
    assert s.bypass_pool is None
    assert any("head_blocks = tail_blocks = 0" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    with torch.no_grad():
        # the trap itself: the class token never meets the image, so the logits ignore it
        assert torch.equal(s.bypass(_x(2, seed=1)), s.bypass(_x(2, seed=2)))


@pytest.mark.parametrize("kind, cut", [("avg", (0, 0)), ("cls", (1, 0)), ("cls", (0, 1))])
def test_no_trap_no_warning(kind: str, cut: tuple[int, int], caplog: pytest.LogCaptureFixture) -> None:
    model = _make(kind)
    with caplog.at_level(logging.WARNING, logger="sfp_ray.models"):
        s = split_vit(model, *cut, num_prompts=2)
    assert s.bypass_pool is None
    assert not [r for r in caplog.records if r.name == "sfp_ray.models"]
    with torch.no_grad():
        assert _maxdiff(s.bypass(_x(2, seed=1)), s.bypass(_x(2, seed=2))) > 1e-4


def test_bypass_invalid_value() -> None:
    with pytest.raises(ConfigError, match="split.bypass_pool"):
        split_vit(_make("cls"), 0, 0, bypass_pool="max")


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    a = create_model("vit_tiny_patch16_224", **TINY).eval()
    path = save_checkpoint(a, tmp_path / "a.pt", meta={"note": "test"})
    assert path.is_file() and not (tmp_path / "a.pt.tmp").exists()
    torch.manual_seed(1)
    fresh = create_model("vit_tiny_patch16_224", **TINY).eval()
    torch.manual_seed(1)
    b = create_model("vit_tiny_patch16_224", checkpoint=path, **TINY).eval()
    x = _x()
    with torch.no_grad():
        assert not torch.equal(fresh(x), a(x))  # a different init: loading is what matters
        assert torch.equal(b(x), a(x))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_checkpoint_other_classifier_width_loads(tmp_path) -> None:
    torch.manual_seed(0)
    src = create_model("vit_tiny_patch16_224", **TINY)
    path = save_checkpoint(src, tmp_path / "src.pt")
    five = dict(TINY, num_classes=5)
    torch.manual_seed(3)
    init = create_model("vit_tiny_patch16_224", **five)
    torch.manual_seed(3)
    m = create_model("vit_tiny_patch16_224", checkpoint=path, **five)
    for k, v in m.state_dict().items():
        if k in ("head.weight", "head.bias"):
            assert torch.equal(v, init.state_dict()[k]), k  # left as initialised
        else:
            assert torch.equal(v, src.state_dict()[k]), k
    assert m.head.weight.shape == (5, 192)
    # load_checkpoint reports the keys it left alone
    torch.manual_seed(3)
    assert sorted(load_checkpoint(create_model("vit_tiny_patch16_224", **five), path)) == ["head.bias", "head.weight"]
    # a backbone-only checkpoint (classifier dropped) loads the same way
    backbone = save_checkpoint(src, tmp_path / "backbone.pt", include_classifier=False)
    left = load_checkpoint(create_model("vit_tiny_patch16_224", **TINY), backbone)
    assert sorted(left) == ["head.bias", "head.weight"]


@pytest.mark.parametrize("other", [dict(depth=2), dict(embed_dim=96, num_heads=3)])
def test_checkpoint_of_other_architecture_rejected(tmp_path, other: dict) -> None:
    src = create_model("vit_tiny_patch16_224", **dict(TINY, **other))
    path = save_checkpoint(src, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="model.checkpoint"):
        create_model("vit_tiny_patch16_224", checkpoint=path, **TINY)


def test_checkpoint_missing_or_garbage(tmp_path) -> None:
    with pytest.raises(ModelError, match="model.checkpoint"):
        create_model("vit_tiny_patch16_224", checkpoint=tmp_path / "nope.pt", **TINY)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(ModelError, match="model.checkpoint"):
        create_model("vit_tiny_patch16_224", checkpoint=junk, **TINY)
    not_tensors = tmp_path / "dict.pt"
    torch.save({"model": {"a": 1}}, not_tensors)
    with pytest.raises(ModelError, match="model.checkpoint"):
        create_model("vit_tiny_patch16_224", checkpoint=not_tensors, **TINY)


def test_unknown_or_non_vit_model_name() -> None:
    with pytest.raises(ConfigError, match="model.name"):
        create_model("vit_does_not_exist_patch3", num_classes=3)
    with pytest.raises(ConfigError, match="model.name"):
        create_model("resnet18", num_classes=3)


def test_pretrained_offline_fails_fast() -> None:
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        pytest.skip("needs HF_HUB_OFFLINE=1, otherwise timm takes the (slow) network path")
    t0 = time.perf_counter()
    try:
        create_model("vit_tiny_patch16_224", pretrained=True, **TINY)
    except ModelError as e:
        assert "model.pretrained" in str(e)
    else:
        pytest.skip("timm weights for vit_tiny_patch16_224 are in the local cache")
    assert time.perf_counter() - t0 < 10.0


# ----------------------------------------------------------------------------- paper-scale names


@pytest.mark.parametrize("name, depth, dim", [("vit_base_patch16_224", 12, 768), ("vit_large_patch16_224", 24, 1024)])
def test_split_supports_base_and_large_on_meta(name: str, depth: int, dim: int) -> None:
    model = timm.create_model(name, device="meta")
    P = 10
    s = split_vit(model, 1, 1, num_prompts=P)
    assert s.depth == depth and s.embed_dim == dim
    assert s.body.block_ids == list(range(1, depth - 1))
    assert s.head.prompt.device.type == "meta"
    x = torch.empty(2, 3, 224, 224, device="meta")
    h = s.head(x)
    assert h.shape == (2, 1 + P + 196, dim)
    b = s.body(h)
    assert b.shape == h.shape
    assert s.tail(b).shape == (2, 1000)
    s0 = split_vit(model, 0, 0, num_prompts=P)
    assert s0.body(s0.head(x)).shape == (2, 1, dim)
    assert s0.bypass(x).shape == (2, 1000)
