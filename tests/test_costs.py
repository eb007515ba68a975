"""FLOP counts against reference values, executed-cost rules, and simulated round time."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from sfp_ray.costs import CostRecord, count_flops
from sfp_ray.models import split_vit
from sfp_ray.orchestrator import round_sim_seconds


@pytest.fixture(scope="module")
def vit_base_meta():
    return timm.create_model("vit_base_patch16_224", device="meta")


def test_vit_base_forward_is_35_13_gflops(vit_base_meta):
    x = torch.empty(1, 3, 224, 224, device="meta")
    _, flops = count_flops(lambda: vit_base_meta(x))
    assert flops / 1e9 == pytest.approx(35.13, rel=0.01)


def test_vit_base_forward_backward_is_105_15_gflops(vit_base_meta):
    x = torch.empty(1, 3, 224, 224, device="meta")
    for p in vit_base_meta.parameters():
        p.requires_grad_(True)
    _, flops = count_flops(lambda: vit_base_meta(x).sum().backward())
    assert flops / 1e9 == pytest.approx(105.15, rel=0.01)


def test_fused_attention_is_counted_on_cpu():
    """Timm's fused SDPA path must be counted (the MATH backend is forced while counting)."""
    m = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=1)
    m.blocks[0].attn.fused_attn = True
    x = torch.randn(1, 3, 32, 32)
    _, fused = count_flops(lambda: m(x))
    m.blocks[0].attn.fused_attn = False
    _, manual = count_flops(lambda: m(x))
    assert fused == manual > 0


def test_frozen_backbone_prompt_step_costs_what_it_executes():
    """A prompt step with a frozen backbone is neither 1x nor 3x the forward: weight gradients
    of frozen layers are not computed, input gradients are.
    """
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", num_classes=4, img_size=32, patch_size=8, in_chans=3, depth=3)
    s = split_vit(m, 3, 0, num_prompts=4)  # the whole model on the client, prompts at the input
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    for p in s.parameters():
        p.requires_grad_(True)
    _, fwd = count_flops(lambda: s(x))
    _, full = count_flops(lambda: F.cross_entropy(s(x), y).backward())
    for n, p in s.named_parameters():
        p.requires_grad_(".prompt" in n)
    _, prompt_only = count_flops(lambda: F.cross_entropy(s(x), y).backward())
    assert full == pytest.approx(3 * fwd, rel=0.02)
    assert 1.5 * fwd < prompt_only < 2.5 * fwd  # forward + input gradients only
    assert prompt_only < full


def _cell(cid, part, sim, phase="split_train"):
    return CostRecord(1, cid, "dev", phase, part, sim_s=sim)


def test_round_sim_is_slowest_client_plus_aggregation():
    costs = [_cell(0, "head", 1.0), _cell(0, "body", 0.5), _cell(1, "tail", 4.0), _cell(1, "body", 0.5),
             _cell(-1, "all", 0.25, "aggregate")]
    # client 0: 1.5 s, client 1: 4.5 s; server busy 1.0 s -> slowest client wins
    assert round_sim_seconds([], costs) == pytest.approx(4.5 + 0.25)


def test_round_sim_includes_server_queueing_when_server_is_the_bottleneck():
    costs = [_cell(c, "body", 2.0) for c in range(4)] + [_cell(c, "head", 0.1) for c in range(4)]
    # each client alone needs 2.1 s, but one server processes 4 x 2.0 s of body work
    assert round_sim_seconds([], costs) == pytest.approx(8.0)
