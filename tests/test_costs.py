"""FLOP counts against reference values, executed-cost rules, the ledger's sides and the round clock."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from sfp_ray.costs import Ledger, count_flops, simulate_round
from sfp_ray.devices import get_device
from sfp_ray.models import split_vit
from sfp_ray.records import Segment, tally


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


def _tl(*segs: tuple[str, float]) -> list[Segment]:
    return [Segment("split_train", side, sec) for side, sec in segs]


def test_round_clock_is_the_slowest_client_when_the_server_is_not_busy():
    # client 0: 1 + 0.5 + 0 = 1.5 s; client 1: 4 s on its device, then 0.5 s on the server
    # (starting at 4.0, after client 0's request at 1.0-1.5 is long done)
    clock = simulate_round({0: _tl(("client", 1.0), ("server", 0.5)), 1: _tl(("client", 4.0), ("server", 0.5))})
    assert clock.seconds == pytest.approx(4.5)
    assert clock.finish == {0: pytest.approx(1.5), 1: pytest.approx(4.5)}
    assert clock.wait == {0: 0.0, 1: 0.0}


def test_round_clock_queues_many_fast_clients_at_one_server():
    """Ten clients that each need 0.1 s on their device, 1 s of server work, then 0.1 s again.

    Alone, a client takes 1.2 s. Their links and devices run in parallel, but the one
    server serves their requests one after another (first come, first served; ties by
    client id), so client k starts on the server at 0.1 + k and the last one finishes at
    0.1 + 10 + 0.1 = 10.2 s. Charging every client's own timeline to the server, or adding
    link time to the server's busy time, would give other numbers.
    """
    tl = _tl(("client", 0.1), ("server", 1.0), ("client", 0.1))
    clock = simulate_round({c: tl for c in range(10)})
    assert clock.seconds == pytest.approx(10.2)
    for k in range(10):
        assert clock.finish[k] == pytest.approx(0.1 + (k + 1) * 1.0 + 0.1)
        assert clock.wait[k] == pytest.approx(k * 1.0)
        waits = [(s, e) for ph, side, s, e in clock.schedule[k] if side == "wait"]
        assert (waits == [(pytest.approx(0.1), pytest.approx(0.1 + k))]) if k else (waits == [])


def test_round_clock_links_run_in_parallel_and_are_never_server_time():
    """Two clients with long uploads: their links overlap; the server is busy only for its own work."""
    tl = _tl(("link", 3.0), ("server", 0.5), ("link", 3.0))
    clock = simulate_round({0: tl, 1: tl})
    # both uploads end at 3.0; client 0 is served 3.0-3.5, client 1 waits 0.5 s and is served 3.5-4.0
    assert clock.finish == {0: pytest.approx(6.5), 1: pytest.approx(7.0)}
    assert clock.seconds == pytest.approx(7.0)  # not 2 x 6.5 (serial links) and not 3 + 2 x 3.5 (links on the server)


def test_round_clock_sequential_clients_take_turns():
    tl = _tl(("client", 1.0), ("server", 2.0))
    clock = simulate_round({3: tl, 1: tl}, sequential=True)
    assert clock.seconds == pytest.approx(6.0)
    assert clock.finish == {1: pytest.approx(3.0), 3: pytest.approx(6.0)}  # ascending id


def test_ledger_charges_each_cost_to_the_side_that_paid():
    """Client compute on the client's device, server compute on the server's, transfers on the client's link."""
    rpi, edge = get_device("rpi4"), get_device("edge_server")
    led = Ledger(1, 7, rpi, edge)
    lin = torch.nn.Linear(8, 8, bias=False)
    with led.phase("split_train"):
        led.compute("head", ("fwd",), lambda: lin(torch.ones(4, 8)))  # 2 * 4 * 8 * 8 = 512 FLOPs
        led.send_tensor(torch.zeros(4, 8), part="head", direction="up", kind="activation")
        led.server_compute("body", 10_000_000_000, wall_s=0.01, queue_s=0.002)
        led.message(part="body", direction="down", kind="activation", payload=128, serialized=200, shapes="4x8")
    rows = {(r.part, r.side): r for r in led.records()}
    assert set(rows) == {("head", "client"), ("head", "link"), ("body", "server"), ("body", "link")}
    assert rows["head", "client"].flops == 512 and rows["head", "client"].device == "rpi4"
    assert rows["head", "client"].sim_s == pytest.approx(512 / rpi.effective_flops)
    assert rows["body", "server"].device == "edge_server"
    assert rows["body", "server"].sim_s == pytest.approx(1e10 / edge.effective_flops)  # compute only
    assert rows["head", "link"].bytes_up == 128 and rows["head", "link"].flops == 0
    assert rows["head", "link"].sim_s == pytest.approx(rpi.transfer_seconds(128, "up"))
    assert rows["body", "link"].sim_s == pytest.approx(rpi.transfer_seconds(128, "down"))  # the client's downlink
    assert [s.side for s in led.timeline] == ["client", "link", "server", "link"]
    assert led.server_queue_s == pytest.approx(0.002)
    assert [m.shapes for m in led.messages] == ["4x8", "4x8"]
    t = tally(led.records())
    assert (t.client_flops, t.server_flops, t.bytes_up, t.bytes_down) == (512, 1e10, 128, 128)


def test_a_threaded_meter_counts_while_other_threads_train():
    """A server actor serves several requests at once: one thread's counted run must not break another's backward."""
    import threading

    from sfp_ray.costs import FlopMeter, count_work

    torch.manual_seed(0)
    body = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.GELU()) for _ in range(3)])
    meter, errors, grads = FlopMeter(), [], {}

    def serve(tid: int) -> None:
        for i in range(60):
            x = torch.randn(4 + i % 5, 32).requires_grad_(True)
            try:
                out, _ = meter.measure(("fwd", tid, i % 20), lambda: body(x))
                g = torch.ones_like(out)
                gx, _ = meter.measure(("bwd", tid, i % 20), lambda: torch.autograd.grad(out, x, grad_outputs=g)[0])
                grads[(tid, i)] = gx.shape
            except Exception as exc:  # noqa: BLE001 - the test collects what each thread raised
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=serve, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hangs in the count gate"
    assert errors == []
    assert len(grads) == 4 * 60
    x = torch.randn(4, 32).requires_grad_(True)
    _, alone = count_work(lambda: body(x))
    assert meter.measure(("fwd", 0, 0), lambda: body(x))[1] == alone  # batch 4: the figure counted under contention


def test_the_count_gate_lets_a_thread_nest_its_own_calls():
    import threading

    from sfp_ray.costs import COUNT_GATE, FlopMeter

    meter, lin, done = FlopMeter(), torch.nn.Linear(4, 3, bias=False), []

    def nested() -> None:
        with COUNT_GATE.shared():  # a cached run that counts something new inside
            _, flops = meter.run("inner", lambda: lin(torch.ones(2, 4)))
        with COUNT_GATE.exclusive():
            with COUNT_GATE.shared():
                done.append(flops)

    t = threading.Thread(target=nested)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "nested gate calls deadlocked"
    assert done == [48]
