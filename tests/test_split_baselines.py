"""The split-learning baselines ``sfl`` (SplitFed-V1) and ``sl`` (vanilla split learning).

Tiny synthetic runs (16 px images, 4 px patches, 3 blocks of width 32, no checkpoint):
the server trains the body only for these methods, one ``sl`` split step equals one step of
the unsplit model, the server's FedAvg of body copies is sample-weighted, ``sl`` relays the
client state from client to client, costs follow DESIGN.md §4, and the Ray executor ends
with the same state as the serial one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from sfp_ray.config import Config, load_config
from sfp_ray.costs import CostRecord, FlopMeter, Ledger, count_flops
from sfp_ray.devices import get_device
from sfp_ray.executors.ray_executor import RayExecutor
from sfp_ray.executors.serial import SerialExecutor
from sfp_ray.methods import SPLIT_PHASES, get_method
from sfp_ray.orchestrator import Orchestrator, RunResult, prepare_run
from sfp_ray.projection import project
from sfp_ray.roles import LocalBodyLink, ServerRole, SplitLearningClient, Workspace
from sfp_ray.roles.client import ClientOutput, make_optimizer

IMG, PATCH, DIM, DEPTH = 16, 4, 32, 3
SEQ = 1 + (IMG // PATCH) ** 2  # class token + patches (no prompts)
NUM_CLASSES = 10

TINY = [
    "data.name=synthetic", "data.classes=null", "model.checkpoint=none", f"model.img_size={IMG}",
    f"model.patch_size={PATCH}", f"model.depth={DEPTH}", f"model.embed_dim={DIM}", "model.num_heads=2",
    "data.samples_per_client=16", "data.test_samples=32", "train.batch_size=8", "split.head_blocks=1",
    "split.tail_blocks=1", "federation.num_clients=3", "federation.clients_per_round=2", "federation.rounds=1",
    "devices.mix={rpi4: 1.0}",
]


def tiny(method: str, *extra: str) -> Config:
    """The tiny configuration resolved for ``method`` (its forced settings applied)."""
    return get_method(method).resolve(load_config(overrides=TINY + list(extra)))


def body_names(state: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in state if k.startswith("body."))


def max_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


class Costs:
    """A sink keeping the cost rows."""

    def __init__(self) -> None:
        self.costs: list[CostRecord] = []

    def start_run(self, meta: Any) -> None: ...

    def add_costs(self, meta: Any, records: Sequence[CostRecord]) -> None:
        self.costs.extend(records)

    def add_messages(self, meta: Any, records: Sequence[Any]) -> None: ...

    def add_round(self, meta: Any, record: Any) -> None: ...

    def add_resources(self, meta: Any, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def end_run(self, meta: Any, final_state: Any) -> None: ...


def run_serial(spec: Any, executor: SerialExecutor | None = None, sink: Costs | None = None) -> RunResult:
    old = torch.get_num_threads()
    try:
        return Orchestrator(spec, executor or SerialExecutor(num_threads=1), [sink] if sink else []).run()
    finally:
        torch.set_num_threads(old)


# ----------------------------------------------------------------------------- registry


def test_registry_entries_and_phase_names():
    assert SPLIT_PHASES == ("download", "split_train", "upload", "aggregate", "eval")
    sfl, sl = get_method("sfl"), get_method("sl")
    assert sfl.trains_body and sl.trains_body and sfl.uses_server and sl.uses_server
    assert not sfl.sequential and sl.sequential
    assert sfl.phases == sl.phases == SPLIT_PHASES
    assert not get_method("sfprompt").trains_body and not get_method("sfprompt").sequential
    cfg = tiny("sfl")
    assert (cfg.prompt.num_tokens, cfg.pruning.keep_ratio, cfg.train.local_update) == (0, 1.0, False)
    with pytest.raises(ValueError, match="trains_body needs family 'split'"):
        type(sfl)("x", "x", "federated", sfl.make_client, trains_body=True)


# ----------------------------------------------------------------------------- the split step


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("cut", [(1, 1), (0, 0)], ids=["h1t1", "h0t0"])
def test_sl_split_step_equals_unsplit_step(cut: tuple[int, int], optimizer: str) -> None:
    """Two split steps of one client train head, body and tail exactly like the whole model."""
    cfg = tiny("sl", f"split.head_blocks={cut[0]}", f"split.tail_blocks={cut[1]}", f"train.optimizer={optimizer}",
               "train.lr=0.01")
    assert not cfg.model.fused_attn  # one attention kernel for counted and uncounted passes
    ws = Workspace(cfg, NUM_CLASSES, None)
    ref = copy.deepcopy(ws)
    client = SplitLearningClient(ws)
    server = ServerRole(ws.split.body, train=cfg.train)
    server.begin_round(1, [0])
    link = LocalBodyLink(server, client_id=0, round=1)
    ledger = Ledger(1, 0, get_device("rpi4"), get_device("edge_server"))
    opt = make_optimizer(client.params, cfg.train)
    ref_params = ref.set_trainable(ref.names())  # head, body and tail
    ref_opt = make_optimizer(ref_params, cfg.train)
    before = ws.get_state(ws.names())
    bodies = body_names(before)
    assert bodies and set(client.names) == set(ws.names()) - set(bodies)

    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # the second step also checks the optimizer states (momentum, Adam moments) on both sides
        x, y = torch.randn(4, 1, IMG, IMG, generator=g), torch.randint(0, NUM_CLASSES, (4,), generator=g)
        with ledger.phase("split_train"):
            loss = client.split_step(x, y, link, ledger, opt)
        ref_loss = F.cross_entropy(ref.split(x), y)
        ref_loss.backward()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
        assert loss == pytest.approx(ref_loss.item(), abs=1e-5)
        want = ref.get_state(ref.names())
        assert max_diff(ws.get_state(client.names), {n: want[n] for n in client.names}) <= 1e-5
        assert max_diff(server.client_body_state(0), {n: want[n] for n in bodies}) <= 1e-5
    assert server.pending() == 0

    # the global body moves only when the round closes; one client's copy is adopted as it is
    assert all(torch.equal(ws.get_state(bodies)[n], before[n]) for n in bodies)
    copy0 = server.client_body_state(0)
    agg = server.finish_round({0: 8})
    assert (agg.clients, agg.flops) == (1, 0.0)
    assert all(torch.equal(server.body_state()[n], copy0[n]) for n in bodies)
    after = ws.get_state(ws.names())
    assert all(not torch.equal(after[n], before[n]) for n in ws.names()), "every parameter trains"
    # the full gradient w.r.t. the head output came down (every head parameter trains)
    grads_down = [m for m in ledger.messages if m.direction == "down" and m.kind == "gradient"]
    assert [m.payload_bytes for m in grads_down] == [4 * SEQ * DIM * 4] * 2


# ----------------------------------------------------------------------------- the server


def test_sfl_server_averages_body_copies_by_sample_count() -> None:
    cfg = tiny("sfl", "train.lr=0.05")
    ws = Workspace(cfg, NUM_CLASSES, None)
    server = ServerRole(ws.split.body, train=cfg.train)
    start = server.body_state()
    server.begin_round(3, [5, 2])
    g = torch.Generator().manual_seed(1)
    for cid, steps in ((2, 1), (5, 2)):  # different clients, different amounts of training
        for step in range(steps):
            acts = torch.randn(2, SEQ, DIM, generator=g)
            out = server.forward((cid, 3, step), acts, need_grad=True)
            back = server.backward((cid, 3, step), torch.randn(out.tensor.shape, generator=g))
            assert back.tensor.shape == acts.shape and back.flops > out.flops > 0
    copies = {c: server.client_body_state(c) for c in (2, 5)}
    for c in (2, 5):
        assert max_diff(copies[c], start) > 0, f"client {c}'s copy did not train"
    assert max_diff(copies[2], copies[5]) > 0
    assert server.body_state().keys() == start.keys() and max_diff(server.body_state(), start) == 0

    with pytest.raises(ValueError, match=r"weights for clients \[2\] but round 3 was opened for \[2, 5\]"):
        server.finish_round({2: 1})
    agg = server.finish_round({5: 3, 2: 1})
    numel = sum(v.numel() for v in start.values())
    assert (agg.round, agg.clients, agg.flops) == (3, 2, 2 * 2 * numel)
    new = server.body_state()
    want = {n: (1 * copies[2][n].double() + 3 * copies[5][n].double()) / 4 for n in start}
    assert max_diff(new, want) <= 1e-6
    assert max_diff(dict(ws.split.body.named_parameters(prefix="body")), new) == 0  # written into the global body

    # a new round starts every client from the new global body
    server.begin_round(4, [0])
    assert max_diff(server.client_body_state(0), new) == 0
    with pytest.raises(KeyError, match="no body copy for client 1 in round 4"):
        server.forward((1, 4, 1), torch.zeros(1, SEQ, DIM), need_grad=True)
    with pytest.raises(RuntimeError, match="round 4 is still open"):
        server.begin_round(5, [0])


def test_frozen_server_refuses_rounds() -> None:
    ws = Workspace(tiny("sfprompt"), NUM_CLASSES, None)
    server = ServerRole(ws.split.body)
    with pytest.raises(RuntimeError, match="begin_round needs a trained body"):
        server.begin_round(1, [0])


# ----------------------------------------------------------------------------- whole runs


@pytest.mark.parametrize("method", ["sfprompt", "sfl", "sl"])
def test_body_trains_only_for_split_learning(method: str) -> None:
    spec = prepare_run(tiny(method))
    initial = Workspace(spec.cfg, spec.num_classes, None)
    bodies = initial.names(lambda n: n.startswith("body."))
    ex = SerialExecutor(num_threads=1)
    sink = Costs()
    res = run_serial(spec, ex, sink)
    body = ex.body_state()
    assert sorted(body) == sorted(bodies)
    moved = max_diff(body, initial.get_state(bodies))
    if method == "sfprompt":
        assert moved == 0
        assert not body_names(res.final_state)
        return
    assert moved > 0
    assert body_names(res.final_state) == sorted(bodies)  # the final state carries the trained body
    assert max_diff({n: res.final_state[n] for n in bodies}, body) == 0

    phases = {c.phase for c in sink.costs}
    assert phases == set(SPLIT_PHASES)
    clients = sorted({c.client_id for c in sink.costs if c.client_id >= 0})
    assert len(clients) == 2
    token = DIM * 4
    ws = Workspace(spec.cfg, spec.num_classes, None)
    params = [p.requires_grad_(True) for p in ws.split.body.parameters()]
    x = torch.randn(8, SEQ, DIM, requires_grad=True)
    out, f_fwd = count_flops(lambda: ws.split.body(x))
    _, f_bwd = count_flops(lambda: torch.autograd.grad(out, [x, *params], torch.ones_like(out)))
    for q in params:
        q.requires_grad_(False)
    out_frozen = ws.split.body(x)
    _, f_bwd_input = count_flops(lambda: torch.autograd.grad(out_frozen, x, torch.ones_like(out)))
    assert f_bwd > f_bwd_input
    state_bytes = initial.parameters_bytes(initial.names(lambda n: n.startswith(("head.", "tail."))))
    for cid in clients:
        rows = [c for c in sink.costs if c.client_id == cid]
        assert {c.part for c in rows} == {"head", "body", "tail"}
        split = [c for c in rows if c.phase == "split_train"]
        samples = sum(c.samples for c in split)
        assert samples == 16
        # activations up and down, the body output's gradient up, the head output's full gradient down
        assert sum(c.bytes_up + c.bytes_down for c in split) == samples * 4 * SEQ * token
        # body forward + backward with weight gradients, 2 batches of 8, charged to the server
        body_rows = [c for c in split if c.part == "body"]
        assert sum(c.flops for c in body_rows) == 2 * (f_fwd + f_bwd)
        assert all(c.device == "edge_server" for c in body_rows)
        assert sum(c.bytes_down for c in rows if c.phase == "download") == state_bytes
        assert sum(c.bytes_up for c in rows if c.phase == "upload") == state_bytes
    agg = {c.part: c for c in sink.costs if c.phase == "aggregate"}
    assert set(agg) == {"all", "body"}
    numel = sum(v.numel() for v in body.values())
    client_sim = [sum(c.sim_s for c in sink.costs if c.client_id == cid) for cid in clients]
    agg_sim = sum(c.sim_s for c in agg.values())
    if method == "sl":  # no averaging anywhere; clients take turns, so the round lasts the sum of their times
        assert agg["all"].flops == 0 and agg["body"].flops == 0
        assert res.rounds[0].sim_s == pytest.approx(sum(client_sim) + agg_sim)
    else:
        assert agg["all"].flops > 0 and agg["body"].flops == 2 * 2 * numel
        assert res.rounds[0].sim_s == pytest.approx(max(client_sim) + agg_sim)


class RecordingSerialExecutor(SerialExecutor):
    """Remembers the calls a sequential round makes and the body after each ``finish_round``."""

    def __init__(self) -> None:
        super().__init__(num_threads=1)
        self.calls: list[tuple[list[int], Mapping[str, torch.Tensor], list[Any]]] = []
        self.bodies: list[dict[str, torch.Tensor]] = []
        self.begun: list[tuple[int, list[int], dict[str, torch.Tensor]]] = []

    def begin_round(self, round, client_ids):  # type: ignore[override]
        self.begun.append((round, list(client_ids), self.body_state()))
        super().begin_round(round, client_ids)

    def run_clients(self, specs, global_state):  # type: ignore[override]
        outs = super().run_clients(specs, global_state)
        self.calls.append(([s.client_id for s in specs], global_state, outs))
        return outs

    def finish_round(self, outputs):  # type: ignore[override]
        res = super().finish_round(outputs)
        self.bodies.append(self.body_state())
        return res


def test_sl_relays_state_from_client_to_client() -> None:
    spec = prepare_run(tiny("sl", "federation.rounds=2"))
    ex = RecordingSerialExecutor()
    res = run_serial(spec, ex)
    assert len(ex.calls) == 4 and all(len(ids) == 1 for ids, _, _ in ex.calls)
    for r in range(2):
        (a, _, outs_a), (b, global_b, _) = ex.calls[2 * r], ex.calls[2 * r + 1]
        assert a[0] < b[0]  # ascending client id
        assert global_b is outs_a[0].state  # client k+1 starts from client k's head and tail
        # ... and from the body client k left
        assert max_diff(ex.begun[2 * r + 1][2], ex.bodies[2 * r]) == 0
        assert ex.begun[2 * r + 1][:2] == (r + 1, b)
    assert max_diff(ex.calls[2][1], ex.calls[1][2][0].state) == 0  # round 2 starts from round 1's last client
    last = ex.calls[-1][2][0].state
    assert max_diff({k: res.final_state[k] for k in last}, last) == 0
    assert max_diff({k: res.final_state[k] for k in body_names(res.final_state)}, ex.bodies[-1]) == 0


def test_projection_covers_split_learning() -> None:
    cfg = load_config(overrides=["project.img_size=32", "project.samples_per_client=10"])
    df = project(cfg, "vit_tiny_patch16_224", ["sfprompt_no_prompt", "sfl", "sl"]).set_index("method")
    sfl, sl, frozen = df.loc["sfl"], df.loc["sl"], df.loc["sfprompt_no_prompt"]
    cols = ["client_flops", "server_flops", "bytes_up", "bytes_down"]
    assert (sfl[cols] == sl[cols]).all()
    seq, dim = 1 + (32 // 16) ** 2, 192
    assert sfl["split_bytes_per_sample"] == 4 * seq * dim * 4  # two activations, two full gradients
    # the same body, with weight gradients: more server work than SFPrompt's input gradients only
    assert sfl["server_flops"] > frozen["server_flops"] > 0
    assert sfl["state_bytes"] > frozen["state_bytes"]  # head and tail vs. tail only
    assert sfl["client_flops"] > frozen["client_flops"]


# ----------------------------------------------------------------------------- Ray


def test_sfl_ray_matches_serial(ray_session) -> None:
    """Same final head, tail and body, same costs, under the serial and the Ray executor.

    Two client actors whose requests the threaded server serves concurrently, each on its
    own body copy.
    """
    spec = prepare_run(tiny("sfl", "federation.num_clients=2", "data.samples_per_client=8"))
    serial = run_serial(spec)
    ex = RayExecutor()
    try:
        ray_res = Orchestrator(spec, ex).run()
        assert ex.body_state() is not None and ex.num_client_actors == 2
    finally:
        ex.close()
    assert ray_res.meta.executor == "ray"
    assert body_names(ray_res.final_state) and set(ray_res.final_state) == set(serial.final_state)
    for k, v in serial.final_state.items():
        assert torch.equal(ray_res.final_state[k], v), k
    for rs, rr in zip(serial.rounds, ray_res.rounds, strict=True):
        assert (rr.bytes_round, rr.client_flops_round, rr.server_flops_round) == (
            rs.bytes_round, rs.client_flops_round, rs.server_flops_round)
        assert rr.test_accuracy == rs.test_accuracy and rr.test_loss == pytest.approx(rs.test_loss, rel=1e-6)


def test_ray_executor_relays_object_refs_for_sequential_methods(ray_session) -> None:
    """``sl`` on Ray hands a client's state ref to the next client and fetches only the last (no actors here)."""
    ex = RayExecutor()
    state = {"tail.head.bias": torch.arange(3.0)}
    ref = ray_session.put({k: v.numpy() for k, v in state.items()})
    assert ex._state_ref(ref) is ref  # passed on to the next client as it is
    out = ClientOutput(client_id=1, state=ref, num_samples=4, client_state={}, costs=[], messages=[], sim_s=0.0,
                       train_loss=0.0)
    agg = ex.adopt(out)
    assert agg.flops == 0 and torch.equal(agg.state["tail.head.bias"], state["tail.head.bias"])
    assert ex._state_ref(agg.state) is ref  # the adopted state is not put into the object store again


def test_meter_keys_of_trained_and_frozen_backward_differ() -> None:
    """A meter shared by a frozen and a trained server never reuses one's count for the other."""
    cfg = tiny("sfl")
    ws = Workspace(cfg, NUM_CLASSES, None)
    meter = FlopMeter()
    frozen = ServerRole(copy.deepcopy(ws.split.body), meter=meter)
    trained = ServerRole(ws.split.body, meter=meter, train=cfg.train)
    trained.begin_round(1, [0])
    acts, grad = torch.randn(2, SEQ, DIM), torch.ones(2, SEQ, DIM)
    f = []
    for role in (frozen, trained):
        role.forward((0, 1, 1), acts, need_grad=True)
        f.append(role.backward((0, 1, 1), grad).flops)
    assert f[1] > f[0] > 0
