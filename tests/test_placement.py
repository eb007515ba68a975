"""Per-device cuts (split.policy=per_device): the rule on hand numbers, the cost shortcut, and runs."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import assert_same_run, run_ray, run_serial, tiny

from sfp_ray.config import load_config
from sfp_ray.devices import DeviceProfile
from sfp_ray.errors import ConfigError
from sfp_ray.executors.base import fedavg_parts
from sfp_ray.executors.serial import SerialExecutor
from sfp_ray.methods import get_method
from sfp_ray.orchestrator import Orchestrator
from sfp_ray.placement import (
    CutCost,
    _exact_terms,
    candidate_cuts,
    choose_cuts,
    cut_costs,
    round_seconds,
)
from sfp_ray.preparation import prepare_run
from sfp_ray.reports import ReportSink

TINY = tiny("model.depth=5", "federation.num_clients=4", "federation.clients_per_round=4", "federation.rounds=2",
            "train.batch_size=4", "devices.mix={rpi4: 0.5, laptop: 0.5}", "split.policy=per_device")


def device(name: str, flops: float, memory_mb: int = 1024, up: float = 1e3, down: float = 1e3) -> DeviceProfile:
    """A device whose achieved FLOP/s is ``flops`` (efficiency 1) and whose links are ``up``/``down`` Mbit/s."""
    return DeviceProfile(name=name, description=name, num_cpus=0.1, num_gpus=0.0, memory_mb=memory_mb,
                         peak_flops=flops, efficiency=1.0, uplink_mbps=up, downlink_mbps=down, latency_ms=0.0)


def cost(h: int, t: int, client: float, server: float, up: float = 0.0, down: float = 0.0,
         mib: float = 1.0) -> CutCost:
    return CutCost(h, t, client, server, up, down, int(mib * 2**20))


# --------------------------------------------------------------------------- the rule


def test_candidate_cuts_keep_a_block_on_the_server_and_respect_the_bounds():
    assert candidate_cuts(4, 1, None) == [(1, 1), (1, 2), (2, 1)]
    assert candidate_cuts(6, 1, 2) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert candidate_cuts(3, 0, 0) == [(0, 0)]
    with pytest.raises(ConfigError, match="split.min_blocks=2"):
        candidate_cuts(4, 2, None)


def test_round_seconds_on_hand_numbers():
    d = device("d", 1e9, up=8.0, down=16.0)  # 1 MB/s up, 2 MB/s down
    server = device("s", 1e10)
    c = cost(1, 1, client=2e9, server=1e10, up=1e6, down=2e6)
    # 2 s compute + 1 s up + 1 s down + 1 s of server work x a cohort of 3
    assert round_seconds(c, d, server, cohort=3) == pytest.approx(2 + 1 + 1 + 3)


def test_the_slowest_class_gets_its_fastest_cut_and_faster_ones_spend_their_slack():
    server = device("server", 1e10)
    costs = [cost(1, 1, client=1e9, server=4e9), cost(1, 2, client=2e9, server=3e9),
             cost(2, 2, client=3e9, server=2e9)]
    slow, fast = device("slow", 1e9), device("fast", 1e10)
    out = choose_cuts(costs, [slow, fast, slow], server, cohort=1)
    # slow: (1,1) 1.4 s, (1,2) 2.3 s, (2,2) 3.2 s -> fastest (1,1), which sets the round's time 1.4 s
    assert out["slow"].cut == (1, 1) and out["slow"].seconds == pytest.approx(1.4)
    # fast: 0.5, 0.5, 0.5 s -> all within 1.4 s; the most client blocks wins
    assert out["fast"].cut == (2, 2) and out["fast"].fastest_seconds == pytest.approx(0.5)


def test_a_contended_server_moves_blocks_to_the_clients():
    """With the server shared by a cohort of 20, every class's fastest cut is the deepest one."""
    server = device("server", 1e10)
    costs = [cost(1, 1, client=1e9, server=4e9), cost(2, 2, client=4e9, server=2e9)]
    d = device("d", 1e10)
    assert choose_cuts(costs, [d], server, cohort=1)["d"].cut == (1, 1)  # 0.5 s vs 0.6 s
    assert choose_cuts(costs, [d], server, cohort=20)["d"].cut == (2, 2)  # 8.1 s vs 4.4 s


def test_memory_rules_out_cuts_and_a_class_that_holds_none_is_an_error():
    server = device("server", 1e10)
    costs = [cost(1, 1, client=1e9, server=4e9, mib=10), cost(2, 2, client=3e9, server=2e9, mib=30)]
    fast_small = device("small", 1e10, memory_mb=20)
    assert choose_cuts(costs, [device("slow", 1e9), fast_small], server, 1)["small"].cut == (1, 1)
    with pytest.raises(ConfigError, match="'mcu' .*holds no cut.*10.0 MiB"):
        choose_cuts(costs, [device("mcu", 1e9, memory_mb=8)], server, 1)


@pytest.mark.slow  # every cut of a 5-block model evaluated on the meta device
def test_the_affine_shortcut_equals_exact_evaluation_of_every_cut():
    cfg = get_method("sfprompt").resolve(load_config(overrides=TINY))
    m = get_method("sfprompt")
    cuts = candidate_cuts(5, 1, None)
    assert len(cuts) > 3
    fast = cut_costs(cfg, m, 3, 8, cuts)
    for c in fast:
        exact = _exact_terms(cfg, m, 3, 8, c.cut)
        assert [c.client_flops, c.server_flops, c.bytes_up, c.bytes_down] == pytest.approx(exact[:4], rel=1e-9), c.cut
        assert c.memory_bytes == pytest.approx(exact[4], abs=1), c.cut
    # more client blocks: more client FLOPs and memory, less server FLOPs
    by = {c.cut: c for c in fast}
    assert by[(1, 3)].client_flops > by[(1, 1)].client_flops and by[(1, 3)].server_flops < by[(1, 1)].server_flops
    assert by[(1, 3)].memory_bytes > by[(1, 1)].memory_bytes


def test_fedavg_averages_each_name_over_its_holders_and_keeps_the_rest():
    a = {"tail.blocks.4.w": torch.tensor([1.0]), "head.prompt": torch.tensor([0.0])}
    b = {"tail.blocks.4.w": torch.tensor([3.0]), "tail.blocks.3.w": torch.tensor([5.0]),
         "head.prompt": torch.tensor([4.0])}
    previous = {"tail.blocks.4.w": torch.tensor([9.0]), "tail.blocks.3.w": torch.tensor([9.0]),
                "tail.blocks.2.w": torch.tensor([7.0]), "head.prompt": torch.tensor([9.0])}
    client, _, _ = fedavg_parts([1, 3], [0, 1], [a, b], None, previous)
    assert client["tail.blocks.4.w"].item() == pytest.approx(2.5)  # (1*1 + 3*3) / 4
    assert client["tail.blocks.3.w"].item() == pytest.approx(5.0)  # only b holds it
    assert client["tail.blocks.2.w"].item() == pytest.approx(7.0)  # nobody holds it: kept
    assert client["head.prompt"].item() == pytest.approx(3.0)


# --------------------------------------------------------------------------- runs


def _run(tmp_path, extra=(), executor=None):
    spec = prepare_run(load_config(overrides=[*TINY, *extra]), "sfprompt")
    res = Orchestrator(spec, executor or SerialExecutor(), [ReportSink(tmp_path, plots=False)]).run()
    return spec, res


@pytest.mark.slow  # several rounds or runs end to end
def test_per_device_run_gives_classes_their_own_cuts_and_costs(tmp_path):
    spec, res = _run(tmp_path)
    clients = pd.read_csv(tmp_path / "clients.csv")
    cuts = clients.groupby("device")[["head_blocks", "tail_blocks"]].agg(lambda s: tuple(sorted(set(s))))
    assert len({(h, t) for h, t in zip(cuts.head_blocks, cuts.tail_blocks)}) == 2, cuts
    assert cuts.loc["rpi4", "head_blocks"] == (1,) and cuts.loc["rpi4", "tail_blocks"] == (1,)
    deep = spec.cut_plan.choices["laptop"].cut
    assert sum(deep) > 2
    assert any("per_device: laptop -> head" in n for n in res.meta.notices)
    # the global state holds the deepest tail; a block only the laptops train moved from its initial value
    init, _ = spec.initial_state()
    only_deep = f"tail.blocks.{5 - deep[1]}.attn.qkv.weight"
    assert only_deep in init and only_deep in res.final_state
    assert not torch.equal(init[only_deep], res.final_state[only_deep])
    # costs follow each client's cut: per client, a laptop computes more and leaves the server less
    costs = pd.read_csv(tmp_path / "costs.csv")
    device_of = dict(zip(clients.client_id, clients.device))
    r2 = costs[(costs["round"] == 2) & (costs.client_id >= 0)].assign(cls=lambda d: d.client_id.map(device_of))
    per_client = r2.groupby(["cls", "side"]).flops.sum() / r2.groupby(["cls", "side"]).client_id.nunique()
    assert per_client["laptop", "client"] > per_client["rpi4", "client"], per_client
    assert per_client["laptop", "server"] < per_client["rpi4", "server"], per_client
    # the cost model's message count (each message pays the link's latency in the rule) is what a client sent
    cfg = get_method("sfprompt").resolve(load_config(overrides=TINY))
    (thin,) = cut_costs(cfg, get_method("sfprompt"), 3, 8, [(1, 1)])
    sent = r2[r2.cls == "rpi4"].groupby("client_id").messages.sum()
    assert len(sent) and (sent == thin.messages).all(), (sent, thin.messages)


def test_per_device_matches_between_the_serial_and_the_ray_executor(tmp_path, ray_session):
    spec = prepare_run(load_config(overrides=TINY), "sfprompt")
    serial = run_serial(spec)
    ray_res, _ = run_ray(prepare_run(load_config(overrides=TINY), "sfprompt"))
    assert_same_run(serial, ray_res)


def test_per_device_needs_a_frozen_body_and_shallow_prompts(tmp_path):
    with pytest.raises(ConfigError, match="sfl's server trains the body"):
        prepare_run(load_config(overrides=[*TINY, "prompt.num_tokens=0"]), "sfl")
    with pytest.raises(ConfigError, match="deep prompts"):
        prepare_run(load_config(overrides=[*TINY, "prompt.deep=true"]), "sfprompt")
    spec = prepare_run(load_config(overrides=TINY), "fl_full")
    assert spec.cut_plan is None and any("the cut does not apply" in n for n in spec.notices)


def test_split_bounds_are_validated():
    with pytest.raises(ConfigError, match="split.max_blocks"):
        load_config(overrides=["split.min_blocks=2", "split.max_blocks=1"])
    with pytest.raises(ConfigError, match="split.policy"):
        load_config(overrides=["split.policy=dynamic"])
