"""Tests for the pure-computation core: FedAvg, EL2N pruning and cost accounting."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import timm
import torch

from sfp_ray.aggregation import fedavg
from sfp_ray.costs import FlopMeter, Ledger, count_flops, payload_bytes, serialized_bytes, state_bytes
from sfp_ray.devices import get_device
from sfp_ray.pruning import el2n_scores, keep_count, select_hardest

# ----------------------------------------------------------------------------- fedavg


def test_fedavg_hand_computed() -> None:
    a = {"w": torch.tensor([1.0, 2.0])}
    b = {"w": torch.tensor([4.0, 8.0])}
    c = {"w": torch.tensor([10.0, -1.0])}
    out = fedavg([a, b, c], [1, 2, 3])
    # total weight 1 + 2 + 3 = 6
    # w[0] = (1*1 + 2*4 + 3*10) / 6 = (1 + 8 + 30) / 6 = 39 / 6 = 6.5
    # w[1] = (1*2 + 2*8 + 3*(-1)) / 6 = (2 + 16 - 3) / 6 = 15 / 6 = 2.5
    assert torch.equal(out["w"], torch.tensor([6.5, 2.5]))
    assert out["w"].dtype == torch.float32
    # two clients, weights 1 and 2: (1*[1,2] + 2*[4,8]) / 3 = [9, 18] / 3 = [3, 6]
    assert torch.equal(fedavg([a, b], [1, 2])["w"], torch.tensor([3.0, 6.0]))


def test_fedavg_key_averaged_over_holders_only() -> None:
    # "t" is held by clients a (weight 1) and c (weight 3) only, e.g. a tail block that the
    # client with a thinner cut does not have
    a = {"w": torch.tensor([1.0]), "t": torch.tensor([3.0])}
    b = {"w": torch.tensor([4.0])}
    c = {"w": torch.tensor([10.0]), "t": torch.tensor([7.0])}
    out = fedavg([a, b, c], [1, 2, 3])
    # w = (1*1 + 2*4 + 3*10) / 6 = 39 / 6 = 6.5
    assert torch.equal(out["w"], torch.tensor([6.5]))
    # t = (1*3 + 3*7) / (1 + 3) = 24 / 4 = 6  (client b's weight is not in the denominator)
    assert torch.equal(out["t"], torch.tensor([6.0]))
    assert set(out) == {"w", "t"}


def test_fedavg_accepts_numpy_and_non_float() -> None:
    a = {"w": np.array([2.0, 4.0], dtype=np.float32), "n": torch.tensor([1, 3])}
    b = {"w": np.array([4.0, 8.0], dtype=np.float32), "n": torch.tensor([3, 5])}
    out = fedavg([a, b], [1, 1])
    assert isinstance(out["w"], torch.Tensor) and torch.equal(out["w"], torch.tensor([3.0, 6.0]))
    assert out["n"].dtype == torch.float32 and torch.equal(out["n"], torch.tensor([2.0, 4.0]))


def test_fedavg_order_independent_with_client_ids() -> None:
    # float64 values chosen so that the summation order matters:
    # (1e16 + 1) - 1e16 == 0 in float64, but (1e16 - 1e16) + 1 == 1
    states = [{"w": torch.tensor([1e16], dtype=torch.float64)},
              {"w": torch.tensor([1.0], dtype=torch.float64)},
              {"w": torch.tensor([-1e16], dtype=torch.float64)}]
    weights = [1.0, 1.0, 1.0]
    ids = [5, 9, 2]
    ref = fedavg(states, weights, ids)
    for perm in ([1, 2, 0], [2, 0, 1], [0, 2, 1], [2, 1, 0]):
        out = fedavg([states[i] for i in perm], [weights[i] for i in perm], [ids[i] for i in perm])
        assert torch.equal(out["w"], ref["w"])
    # without ids the order changes the float sum (so the ids really matter)
    no_ids = {float(fedavg([states[i] for i in perm], weights)["w"]) for perm in ([0, 1, 2], [0, 2, 1])}
    assert len(no_ids) == 2
    # and a realistic float32 case: many clients, random weights
    g = torch.Generator().manual_seed(0)
    states = [{"a": torch.randn(50, generator=g), "b": torch.randn(3, 3, generator=g)} for _ in range(6)]
    weights = [float(w) for w in torch.randint(1, 100, (6,), generator=g)]
    ids = list(range(6))
    ref = fedavg(states, weights, ids)
    perm = [3, 0, 5, 1, 4, 2]
    out = fedavg([states[i] for i in perm], [weights[i] for i in perm], [ids[i] for i in perm])
    for k in ref:
        assert torch.equal(out[k], ref[k])


def test_fedavg_errors() -> None:
    s = {"w": torch.tensor([1.0])}
    with pytest.raises(ValueError, match=">= 0"):
        fedavg([s, s], [1, -1])
    with pytest.raises(ValueError, match="zero total weight"):
        fedavg([s, s], [0, 0])
    with pytest.raises(ValueError, match="zero total weight"):
        # "t" is held only by the client of weight 0
        fedavg([{"w": torch.tensor([1.0]), "t": torch.tensor([2.0])}, s], [0, 1])
    with pytest.raises(ValueError):
        fedavg([s, s], [1])
    with pytest.raises(ValueError):
        fedavg([], [])
    # a zero weight next to positive ones is fine: that client does not count
    assert torch.equal(fedavg([{"w": torch.tensor([100.0])}, s], [0, 2])["w"], torch.tensor([1.0]))


# ----------------------------------------------------------------------------- EL2N


def test_el2n_scores_hand_example() -> None:
    # logits [ln 1, ln 3] -> softmax = [1/4, 3/4]
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)], [0.0, 0.0]])
    labels = torch.tensor([1, 0, 0])
    s = el2n_scores(logits, labels)
    # label 1: error [1/4, 3/4 - 1] = [.25, -.25] -> .25 * sqrt(2)
    # label 0: error [1/4 - 1, 3/4] = [-.75, .75] -> .75 * sqrt(2)
    # logits [0, 0], label 0: error [-.5, .5] -> .5 * sqrt(2)
    expected = torch.tensor([0.25, 0.75, 0.5]) * math.sqrt(2.0)
    assert torch.allclose(s, expected, atol=1e-6)
    # three classes, uniform: error [1/3, 1/3, -2/3] -> sqrt(6) / 3
    s3 = el2n_scores(torch.zeros(1, 3), torch.tensor([2]))
    assert float(s3) == pytest.approx(math.sqrt(6.0) / 3.0, abs=1e-6)


def test_el2n_scores_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        el2n_scores(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        el2n_scores(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("n, ratio, expected", [(10, 0.25, 3), (10, 0.3, 3), (10, 0.31, 4), (7, 1.0, 7),
                                                (25, 0.28, 7), (50, 0.56, 28),
                                                (3, 0.01, 1), (0, 0.5, 0), (32, 0.5, 16)])
def test_keep_count_is_ceil(n: int, ratio: float, expected: int) -> None:
    # 0.28 * 25 == 7.000000000000001 in floating point: ceil(keep_ratio * n) must still be 7
    assert keep_count(n, ratio) == expected


def test_select_hardest_keeps_highest_scores() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(37, generator=g)
    for ratio in (0.1, 0.25, 0.5, 0.9, 1.0):
        idx = select_hardest(scores, ratio)
        k = math.ceil(ratio * 37)
        assert idx.numel() == k
        assert torch.equal(idx, torch.sort(idx).values)  # ascending
        assert set(idx.tolist()) == set(torch.topk(scores, k).indices.tolist())
        rest = torch.ones(37, dtype=torch.bool)
        rest[idx] = False
        if rest.any():
            assert scores[idx].min() >= scores[rest].max()
    # ties keep the lower indices
    assert select_hardest(torch.tensor([0.5, 0.9, 0.5, 0.5]), 0.5).tolist() == [0, 1]
    with pytest.raises(ValueError, match="keep_ratio"):
        select_hardest(scores, 0.0)


# ----------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("bias", [False, True])
def test_count_flops_linear(bias: bool) -> None:
    lin = torch.nn.Linear(5, 7, bias=bias)
    out, flops = count_flops(lambda: lin(torch.ones(3, 5)))
    assert out.shape == (3, 7)
    assert flops == 2 * 3 * 5 * 7  # 2 * B * in * out


def test_count_flops_sees_attention() -> None:
    """Fused attention is counted (MATH backend): QK^T and AV, 2 * L * L * d each."""
    q = k = v = torch.randn(1, 1, 4, 8)
    _, flops = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    assert flops == 2 * (2 * 4 * 4 * 8)


def test_count_flops_vit_base_reference_on_meta() -> None:
    """Reference value: vit_base_patch16_224 forward = 35.13 GFLOPs per image (2 FLOPs per MAC)."""
    model = timm.create_model("vit_base_patch16_224", device="meta")
    _, flops = count_flops(lambda: model(torch.empty(1, 3, 224, 224, device="meta")))
    assert flops / 1e9 == pytest.approx(35.13, rel=2e-3)


def test_flop_meter_counts_once_per_key() -> None:
    lin = torch.nn.Linear(4, 3, bias=False)
    calls = []

    def fn() -> torch.Tensor:
        calls.append(1)
        return lin(torch.ones(2, 4))

    meter = FlopMeter()
    results = [meter.run(("fwd", (2, 4)), fn) for _ in range(3)]
    assert meter.counted_runs == 1
    assert [f for _, f in results] == [48, 48, 48]
    assert len(calls) == 3  # the function still runs every time
    assert all(out.shape == (2, 3) for out, _ in results)
    meter.run(("fwd", (5, 4)), lambda: lin(torch.ones(5, 4)))
    assert meter.counted_runs == 2 and len(meter) == 2
    off = FlopMeter(enabled=False)
    assert off.run("k", fn)[1] == 0 and off.counted_runs == 0


# ----------------------------------------------------------------------------- bytes


def test_payload_and_serialized_bytes() -> None:
    t = torch.randn(2, 3)
    assert payload_bytes(t) == 24
    assert payload_bytes(t.half()) == 12
    assert payload_bytes(np.zeros(5, dtype=np.int64)) == 40
    for x in (torch.randn(4, 17, 192), torch.randn(1), torch.randn(3, 3).double(), np.ones((6, 2), np.float32)):
        ser = serialized_bytes(x)
        assert ser >= payload_bytes(x)
        assert ser - payload_bytes(x) < 1024
        arr = x.numpy() if isinstance(x, torch.Tensor) else x
        # the cached header estimate equals a real pickle of the (non-zero) data
        assert ser == len(pickle.dumps(arr, protocol=5))
    payload, ser = state_bytes({"a": torch.zeros(10), "bb": torch.zeros(2, 2)})
    assert payload == 40 + 16
    assert payload <= ser < payload + 2048


# ----------------------------------------------------------------------------- ledger


def test_ledger_messages_bytes_and_sim_time() -> None:
    dev = get_device("rpi4")
    server = get_device("edge_server")
    ledger = Ledger(round=2, client_id=7, device=dev, server_device=server)
    with ledger.phase("split_train"):
        ledger.message(part="head", direction="up", kind="activation", payload=1_000_000, serialized=1_000_100)
        ledger.message(part="head", direction="up", kind="activation", payload=500_000, serialized=500_100)
        ledger.message(part="body", direction="down", kind="activation", payload=250_000, serialized=250_050)
    head = ledger.cells[("split_train", "head", "link")]
    body = ledger.cells[("split_train", "body", "link")]
    assert (head.bytes_up, head.serialized_up, head.bytes_down, head.messages) == (1_500_000, 1_500_200, 0, 2)
    assert (body.bytes_down, body.serialized_down, body.bytes_up) == (250_000, 250_050, 0)

    def link(nbytes: int, mbps: float) -> float:
        return nbytes * 8 / (mbps * 1e6) + dev.latency_ms / 1000.0

    assert head.sim_s == pytest.approx(link(1_000_000, dev.uplink_mbps) + link(500_000, dev.uplink_mbps))
    # the downlink is the client's too, also for messages the server sends
    assert body.sim_s == pytest.approx(link(250_000, dev.downlink_mbps))
    assert [m.direction for m in ledger.messages] == ["up", "up", "down"]
    m = ledger.messages[-1]
    assert (m.sender, m.receiver, m.kind, m.phase, m.round, m.client_id) == (
        "server", "client7", "activation", "split_train", 2, 7)
    assert ledger.messages[0].sender == "client7"
    assert ledger.sim_seconds() == pytest.approx(head.sim_s + body.sim_s)
    assert head.device == body.device == dev.name  # a transfer is paid by the client's link


def test_ledger_compute_charges_the_right_device() -> None:
    dev, server = get_device("rpi4"), get_device("edge_server")
    ledger = Ledger(round=1, client_id=0, device=dev, server_device=server)
    lin = torch.nn.Linear(8, 4, bias=False)
    with ledger.phase("prune"):
        ledger.compute("head", ("fwd", (2, 8)), lambda: lin(torch.ones(2, 8)))
        ledger.compute("head", ("fwd", (2, 8)), lambda: lin(torch.ones(2, 8)))
    with ledger.phase("split_train"):
        ledger.server_compute("body", 1e9)
    head = ledger.cells[("prune", "head", "client")]
    assert head.flops == 2 * (2 * 2 * 8 * 4)
    assert head.sim_s == pytest.approx(head.flops / (dev.peak_flops * dev.efficiency))
    body = ledger.cells[("split_train", "body", "server")]
    assert body.sim_s == pytest.approx(1e9 / (server.peak_flops * server.efficiency)) and body.device == server.name
    assert ledger.meter.counted_runs == 1


def test_ledger_records_spread_phase_wall_by_flops() -> None:
    ledger = Ledger(round=1, client_id=0, device=None)
    lin = torch.nn.Linear(8, 4, bias=False)
    with ledger.phase("local_update"):
        ledger.compute("head", "fwd", lambda: lin(torch.ones(1, 8)))  # 64 FLOPs
        ledger.compute("tail", "fwd", lambda: lin(torch.ones(3, 8)))  # 192 FLOPs
    with ledger.phase("split_train"):
        ledger.server_compute("body", 5.0, wall_s=0.5)
        ledger.compute("tail", "fwd", lambda: lin(torch.ones(1, 8)))
    ledger.phase_wall["local_update"] = 4.0
    ledger.phase_wall["split_train"] = 2.0
    rec = {(r.phase, r.part, r.side): r for r in ledger.records()}
    assert rec[("local_update", "head", "client")].wall_s == pytest.approx(1.0)
    assert rec[("local_update", "tail", "client")].wall_s == pytest.approx(3.0)
    # measured cells keep their wall time, the rest of the phase goes to the others
    assert rec[("split_train", "body", "server")].wall_s == pytest.approx(0.5)
    assert rec[("split_train", "tail", "client")].wall_s == pytest.approx(1.5)
    # no device: no simulated time
    assert all(r.sim_s == 0.0 for r in rec.values())
