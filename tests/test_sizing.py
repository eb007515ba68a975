"""Memory estimates of the actors (sfp_ray.sizing): hand-checkable pieces, then the terms of a real model."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_MODEL, tiny

from sfp_ray.config import load_config
from sfp_ray.methods import get_method
from sfp_ray.sizing import (
    TORCH_FLOOR_MB,
    LiveBytes,
    MemoryEstimate,
    aggregator_estimate,
    client_estimate,
    peak_bytes,
    pool_memory,
    server_estimate,
    state_bytes,
    trained_bytes,
    with_concurrency,
)

TINY = tiny("model.depth=4", base=TINY_MODEL)
MIB = 2**20


def test_live_bytes_counts_new_tensors_while_alive_and_keeps_the_peak():
    x = torch.empty(1000, device="meta")  # exists before: not counted
    with LiveBytes() as live:
        a = x * 2  # 4000 bytes
        b = a + 1  # 8000 alive
        del a  # 4000
        c = b.view(10, 100)  # a view: no new bytes
        b.add_(1)  # in place: no new bytes
    assert live.peak == 8000 and live.live == 4000 and c.shape == (10, 100)
    # y * w saves only its inputs, which existed before: the product is freed once summed; backward then makes
    # both gradients, alive together (plus a few scalars)
    w = torch.empty(1000, device="meta", requires_grad=True)
    y = torch.empty(1000, device="meta", requires_grad=True)

    def step() -> None:
        (y * w).sum().backward()

    assert 2 * 4000 <= peak_bytes(step) < 3 * 4000
    with torch.no_grad():
        assert peak_bytes(lambda: y * w) == 4000


def test_trained_bytes_are_gradients_optimizer_slots_and_scratch():
    cfg = load_config(overrides=TINY + ["train.optimizer=adam"])
    m = get_method("fl_full")
    from sfp_ray.roles.workspace import PARTS, Workspace

    c = m.resolve(cfg)
    ws = Workspace(c.model, c.split, c.prompt, num_classes=3, checkpoint=None, seed=0, parts=PARTS, meta=True)
    names = m.client_names(ws)
    sizes = [dict(ws.split.named_parameters())[n].numel() * 4 for n in names]
    assert trained_bytes(ws, names, c) == 3 * sum(sizes) + 2 * max(sizes)  # gradient + Adam's two moments
    sgd = c.replace(**{"train.optimizer": "sgd", "train.momentum": 0.0})
    assert trained_bytes(ws, names, sgd) == sum(sizes) + 2 * max(sizes)


def test_estimates_of_a_run_have_the_terms_of_its_model_and_method():
    cfg = load_config(overrides=TINY)
    sfp, full = get_method("sfprompt"), get_method("fl_full")
    a = client_estimate(sfp.resolve(cfg), sfp, 5)
    b = client_estimate(full.resolve(cfg), full, 5)
    assert a.floor == b.floor == TORCH_FLOOR_MB * MIB
    assert a.params - b.params == 2 * 192 * 4  # both hold the whole model to evaluate it; SFPrompt's 2 prompts more
    assert b.trained > 3 * a.trained  # full fine-tuning trains all 4 blocks, SFPrompt prompts + a 1-block tail
    assert a.activations > 0 and b.activations > 0 and a.device_bytes == a.total - a.floor
    srv = server_estimate(sfp.resolve(cfg), sfp, 5, 1)
    assert srv.states == 0 and srv.activations > 0 and srv.params > 0  # a frozen body: no copies
    assert with_concurrency(srv, 4).activations == 4 * srv.activations
    sfl = get_method("sfl")
    trained = server_estimate(sfl.resolve(cfg), sfl, 5, 3)
    assert trained.states > 3 * trained.params  # a body copy with its gradients and optimizer per request
    client, server, largest = state_bytes(sfl.resolve(cfg), sfl, 5)
    assert server == srv.params and client > largest > 0
    agg = aggregator_estimate([state_bytes(full.resolve(cfg), full, 5)])
    assert agg.states == 2 * b.params  # float64 sums of the whole model
    assert agg.activations == 2 * 4 * 192 * 4 * 192  # a float64 copy of the largest array (an MLP weight)
    mem = pool_memory([(sfp.resolve(cfg), sfp), (full.resolve(cfg), full), (sfp.resolve(cfg.replace(seed=3)), sfp)], 5)
    assert mem.client.total == b.total and mem.server.total == srv.total and mem.aggregator.total == agg.total


def test_a_larger_batch_needs_more_activation_memory():
    m = get_method("fl_full")
    small = client_estimate(m.resolve(load_config(overrides=TINY + ["train.batch_size=4",
                                                                    "train.eval_batch_size=4"])), m, 5)
    large = client_estimate(m.resolve(load_config(overrides=TINY + ["train.batch_size=64",
                                                                    "train.eval_batch_size=64"])), m, 5)
    assert large.activations > 8 * small.activations and large.params == small.params


def test_describe_names_each_term():
    e = MemoryEstimate("client", floor=430 * MIB, params=330 * MIB, trained=990 * MIB, activations=55 * MIB)
    assert e.describe() == ("1.8 GiB (params 330 MiB, gradients + optimizer 990 MiB, activations 55 MiB, "
                            "process 430 MiB)")
    assert e.row() == {"estimated_memory_mb": 1805.0, "estimated_device_memory_mb": 1375.0}


@pytest.mark.parametrize("method", ["sfprompt", "fl_full"])
def test_the_estimate_bounds_what_one_client_step_really_allocates(method):
    """On the CPU, torch's allocations of one training step stay below the estimate's activations + training."""
    import tracemalloc

    from sfp_ray.roles.workspace import PARTS, Workspace

    m = get_method(method)
    cfg = m.resolve(load_config(overrides=TINY + ["train.batch_size=16"]))
    est = client_estimate(cfg, m, 5)
    ws = Workspace(cfg.model, cfg.split, cfg.prompt, num_classes=5, checkpoint=None, seed=0, parts=PARTS)
    role = m.client_role(ws, cfg)
    x, y = torch.randn(16, 1, 16, 16), torch.zeros(16, dtype=torch.long)
    passes = m.client_passes(role, x, y)
    tracemalloc.start()  # torch's CPU allocator reports to tracemalloc
    try:
        for fn in passes:
            fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= est.activations + est.trained
