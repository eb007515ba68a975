"""``model.pretrained=true`` through timm's hub cache, offline: a cache the test writes in the hub's layout.

The cache holds random weights of the right shapes for ``vit_tiny_patch16_224`` at 224 px and 3
channels, as ``model.safetensors`` under ``models--timm--<tag>/snapshots/<commit>/``. The run asks
for 32 px, 1 channel: timm resamples the position embedding and sums the patch embedding over
the input channels. The split's head, body and tail must hold exactly those tensors.
"""

from __future__ import annotations

import hashlib

import pytest
import timm
import torch
from safetensors.torch import save_file

from sfp_ray.config import load_config
from sfp_ray.models import read_checkpoint
from sfp_ray.pretrain import resolve_checkpoint, timm_weights_path
from sfp_ray.roles.workspace import PARTS, Workspace

NAME = "vit_tiny_patch16_224"
RUN = [f"model.name={NAME}", "model.img_size=32", "model.patch_size=16", "model.in_chans=1", "model.depth=null",
       "model.pretrained=true", "model.checkpoint=none", "prompt.num_tokens=2", "split.head_blocks=2",
       "split.tail_blocks=3"]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face hub cache holding seeded random weights of ``NAME``; returns the saved tensors."""
    import huggingface_hub.constants as hub

    repo = timm.models.get_pretrained_cfg(NAME).hf_hub_id  # e.g. timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k
    commit = hashlib.sha1(repo.encode()).hexdigest()
    root = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    with torch.device("meta"):
        shapes = timm.create_model(NAME, pretrained=False).state_dict()
    gen = torch.Generator().manual_seed(7)
    saved = {k: torch.randn(v.shape, generator=gen) for k, v in shapes.items()}
    save_file(saved, str(snap / "model.safetensors"))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("SFP_CACHE_DIR", str(tmp_path / "sfp-cache"))
    return saved


def test_pretrained_weights_come_from_the_hub_cache_adapted_to_the_input(hub_cache):
    from timm.layers import resample_abs_pos_embed

    cfg = load_config(overrides=RUN)
    path = resolve_checkpoint(cfg)
    assert path == str(timm_weights_path(cfg)) and path.endswith(".safetensors")
    ws = Workspace(cfg.model, cfg.split, cfg.prompt, num_classes=5, checkpoint=path, seed=0, parts=PARTS)
    split = ws.split
    assert (split.head_blocks, len(split.body.block_ids), split.tail_blocks) == (2, 7, 3)
    held = dict(split.named_parameters())
    # every transformer block, wherever the cut put it, holds the cache's tensors bit for bit
    for i in range(12):
        part = "head" if i < 2 else "body" if i < 9 else "tail"
        for leaf in ("attn.qkv.weight", "attn.proj.bias", "mlp.fc1.weight", "norm2.weight"):
            assert torch.equal(held[f"{part}.blocks.{i}.{leaf}"], hub_cache[f"blocks.{i}.{leaf}"]), (part, i, leaf)
    assert torch.equal(held["tail.norm.weight"], hub_cache["norm.weight"])
    assert torch.equal(held["head.embed.cls_token"], hub_cache["cls_token"])
    # 1 input channel: timm sums the patch embedding over the 3 RGB channels
    assert torch.equal(held["head.embed.patch_embed.proj.weight"],
                       hub_cache["patch_embed.proj.weight"].sum(dim=1, keepdim=True))
    # 32 px: the 14 x 14 position grid resampled to 2 x 2 (bicubic, antialiased), the class token's kept
    pos = resample_abs_pos_embed(hub_cache["pos_embed"], new_size=(2, 2), num_prefix_tokens=1,
                                 interpolation="bicubic", antialias=True)
    assert held["head.embed.pos_embed"].shape == (1, 5, 192) and torch.equal(held["head.embed.pos_embed"], pos)
    # the classifier is the target task's own: left out of the file, initialised per name and seed
    assert "head.weight" not in read_checkpoint(path, lazy=True)
    assert held["tail.head.weight"].shape == (5, 192)
    again = Workspace(cfg.model, cfg.split, cfg.prompt, num_classes=5, checkpoint=path, seed=0, parts=("tail",))
    assert torch.equal(dict(again.split.named_parameters())["tail.head.weight"], held["tail.head.weight"])


def test_a_process_reads_only_the_parts_it_holds_and_the_file_is_made_once(hub_cache, monkeypatch):
    cfg = load_config(overrides=RUN)
    path = resolve_checkpoint(cfg)
    # a second resolution does not go back to timm (the hub is not asked again)
    create = timm.create_model
    monkeypatch.setattr(timm, "create_model",
                        lambda *a, **k: pytest.fail("timm's weights asked for again") if k.get("pretrained")
                        else create(*a, **k))
    assert resolve_checkpoint(cfg) == path
    body = Workspace(cfg.model, cfg.split, cfg.prompt, num_classes=5, checkpoint=path, seed=0, parts=("body",))
    params = dict(body.split.named_parameters())
    assert torch.equal(params["body.blocks.5.mlp.fc2.weight"], hub_cache["blocks.5.mlp.fc2.weight"])
    assert params["head.embed.pos_embed"].is_meta and params["tail.blocks.11.attn.qkv.weight"].is_meta
    lazy = read_checkpoint(path, lazy=True)
    assert dict(lazy.shapes)["blocks.0.attn.qkv.weight"] == (576, 192)


def test_without_the_cache_the_error_says_how_to_get_the_weights(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    from sfp_ray.errors import ModelError

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("SFP_CACHE_DIR", str(tmp_path / "sfp-cache"))
    with pytest.raises(ModelError, match="could not obtain timm weights.*pre-populate the Hugging Face cache"):
        resolve_checkpoint(load_config(overrides=RUN))
    assert not list((tmp_path / "sfp-cache").glob("*.safetensors"))
