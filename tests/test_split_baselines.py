"""The split-learning baselines ``sfl`` (SplitFed-V1) and ``sl`` (vanilla split learning).

Tiny synthetic runs (16 px images, 4 px patches, 3 blocks of width 32, no checkpoint):
the server trains the body only for these methods, one ``sl`` split step equals one step of
the unsplit model, the FedAvg of the body copies is sample-weighted, ``sl`` relays the
client state (head, tail and body) from client to client, the costs are those executed,
and the Ray executor ends with the same state as the serial one.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL, tiny

from sfp_ray.config import Config, load_config
from sfp_ray.costs import FlopMeter, Ledger, count_flops
from sfp_ray.devices import get_device
from sfp_ray.executors.ray import RayExecutor
from sfp_ray.executors.serial import SerialExecutor
from sfp_ray.methods import SPLIT_PHASES, get_method
from sfp_ray.methods.base import ParallelFedAvg, SequentialRelay
from sfp_ray.methods.split_learning import SplitLearningClient
from sfp_ray.orchestrator import Orchestrator, RunResult
from sfp_ray.preparation import prepare_run
from sfp_ray.projection import project
from sfp_ray.records import CostRecord
from sfp_ray.roles import LocalBodyLink, ServerRole, Workspace
from sfp_ray.roles.optim import make_optimizer

IMG, PATCH, DIM, DEPTH = 16, 4, 32, 3
SEQ = 1 + (IMG // PATCH) ** 2  # class token + patches (no prompts)
NUM_CLASSES = 10

TINY = tiny(f"model.img_size={IMG}", f"model.patch_size={PATCH}", f"model.depth={DEPTH}", f"model.embed_dim={DIM}",
            "model.num_heads=2", "data.samples_per_client=16", "data.test_samples=32", "train.batch_size=8",
            "split.head_blocks=1", "split.tail_blocks=1", "federation.num_clients=3", "federation.clients_per_round=2",
            "federation.rounds=1", "devices.mix={rpi4: 1.0}", base=TINY_MODEL)


def tiny_for(method: str, *extra: str) -> Config:
    """The tiny configuration resolved for ``method`` (its forced settings applied)."""
    return get_method(method).resolve(load_config(overrides=TINY + list(extra)))


def workspace(cfg: Config) -> Workspace:
    return Workspace(cfg.model, cfg.split, cfg.prompt, num_classes=NUM_CLASSES, checkpoint=None, seed=cfg.seed)


def body_names(state: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in state if k.startswith("body."))


def max_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((torch.as_tensor(a[k]).double() - torch.as_tensor(b[k]).double()).abs().max()) for k in a)


class Costs:
    """A sink keeping the cost rows."""

    def __init__(self) -> None:
        self.costs: list[CostRecord] = []

    def start_run(self, meta: Any) -> None: ...

    def add_costs(self, meta: Any, records: Sequence[CostRecord]) -> None:
        self.costs.extend(records)

    def add_messages(self, meta: Any, records: Sequence[Any]) -> None: ...

    def add_clients(self, meta: Any, records: Sequence[Any]) -> None: ...

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
    sfl, sl, sfp = get_method("sfl"), get_method("sl"), get_method("sfprompt")
    cfg = tiny_for("sfl")
    assert sfl.server(cfg).train is not None and sl.server(cfg).train is not None  # the server trains the body
    assert sfp.server(cfg).train is None  # SFPrompt's body is frozen
    assert isinstance(sfl.plan, ParallelFedAvg) and isinstance(sl.plan, SequentialRelay)
    assert sfl.phases == sl.phases == SPLIT_PHASES
    assert (cfg.prompt.num_tokens, cfg.pruning.keep_ratio, cfg.train.local_update) == (0, 1.0, False)
    ws = workspace(cfg)
    assert sfl.server_names(ws) == ws.names(lambda n: n.startswith("body.")) and not sfp.server_names(ws)


# ----------------------------------------------------------------------------- the split step


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("cut", [(1, 1), (0, 0)], ids=["h1t1", "h0t0"])
def test_sl_split_step_equals_unsplit_step(cut: tuple[int, int], optimizer: str) -> None:
    """Two split steps of one client train head, body and tail exactly like the whole model."""
    cfg = tiny_for("sl", f"split.head_blocks={cut[0]}", f"split.tail_blocks={cut[1]}", f"train.optimizer={optimizer}",
               "train.lr=0.01")
    assert not cfg.model.fused_attn  # one attention kernel for counted and uncounted passes
    ws = workspace(cfg)
    ref = copy.deepcopy(ws)
    client = SplitLearningClient(ws, cfg)
    server = ServerRole(ws.split.body, train=cfg.train)
    before = ws.get_state(ws.names())
    bodies = body_names(before)
    link = LocalBodyLink(server, client_id=0, round=1, body_state={n: before[n] for n in bodies})
    ledger = Ledger(1, 0, get_device("rpi4"), get_device("edge_server"))
    opt = make_optimizer(client.params, cfg.train)
    ref_params = ref.set_trainable(ref.names())  # head, body and tail
    ref_opt = make_optimizer(ref_params, cfg.train)
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
    assert server.pending() == 0

    # the server trained its copy of the body; the template body never moved
    assert all(torch.equal(ws.get_state(bodies)[n], before[n]) for n in bodies)
    trained = link.finish()
    assert max_diff(trained, {n: want[n] for n in bodies}) <= 1e-5
    after = ws.get_state(client.names)
    assert all(not torch.equal(after[n], before[n]) for n in client.names), "every client parameter trains"
    assert all(not torch.equal(trained[n], before[n]) for n in bodies), "every body parameter trains"
    # the full gradient w.r.t. the head output came down (every head parameter trains)
    grads_down = [m for m in ledger.messages if m.direction == "down" and m.kind == "gradient"]
    assert [m.payload_bytes for m in grads_down] == [4 * SEQ * DIM * 4] * 2
    assert [m.shapes for m in grads_down] == [f"4x{SEQ}x{DIM}"] * 2


# ----------------------------------------------------------------------------- the server


def test_server_trains_one_body_copy_per_client_and_hands_it_back() -> None:
    cfg = tiny_for("sfl", "train.lr=0.05")
    ws = workspace(cfg)
    server = ServerRole(ws.split.body, train=cfg.train)
    start = {n: v for n, v in ws.get_state(ws.names()).items() if n.startswith("body.")}
    g = torch.Generator().manual_seed(1)
    for cid in (5, 2):
        server.open(cid, 3, start)
    for cid, steps in ((2, 1), (5, 2)):  # different clients, different amounts of training
        for step in range(steps):
            acts = torch.randn(2, SEQ, DIM, generator=g)
            out = server.forward((cid, 3, step), acts, need_grad=True)
            back = server.backward((cid, 3, step), torch.randn(out.tensor.shape, generator=g))
            assert back.tensor.shape == acts.shape and back.flops > out.flops > 0
    copies = {c: server.close(c, 3) for c in (2, 5)}
    for c in (2, 5):
        assert max_diff(copies[c], start) > 0, f"client {c}'s copy did not train"
    assert max_diff(copies[2], copies[5]) > 0
    with pytest.raises(KeyError, match="no body copy for client 2 in round 3"):
        server.close(2, 3)  # handed back once
    with pytest.raises(KeyError, match="no body copy for client 1 in round 4"):
        server.forward((1, 4, 1), torch.zeros(1, SEQ, DIM), need_grad=True)
    with pytest.raises(KeyError, match="does not fit the body"):
        server.open(0, 4, {"body.nope": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="open needs a trained body"):
        ServerRole(copy.deepcopy(ws.split.body)).open(0, 1, start)


class RecordingSerialExecutor(SerialExecutor):
    """Remembers every run_clients call (its tasks, the state it started from, its outputs)."""

    def __init__(self) -> None:
        super().__init__(num_threads=1)
        self.calls: list[tuple[list[int], Any, list[Any]]] = []

    def run_clients(self, tasks, state, on_done=None):  # type: ignore[override]
        seen = {}  # each output as it was made, before a streaming round folds its state away

        def keep(o):
            seen[o.client_id] = dataclasses.replace(o)
            if on_done is not None:
                on_done(o)

        outs = super().run_clients(tasks, state, keep)
        self.calls.append(([t.client_id for t in tasks], state, [seen[o.client_id] for o in outs]))
        return outs


def test_sfl_averages_client_parts_and_body_copies_by_sample_count() -> None:
    spec = prepare_run(tiny_for("sfl", "train.lr=0.05", "data.partition=dirichlet", "data.samples_per_client=null",
                            "data.name=digits"))
    ex = RecordingSerialExecutor()
    res = run_serial(spec, ex)
    (ids, _, outs), = ex.calls
    weights = [o.num_samples for o in outs]
    assert len(set(weights)) > 1, "the Dirichlet partition was chosen so that the clients' sizes differ"
    for part in ("client", "server"):
        states = [getattr(o.state, part) for o in outs]
        want = {k: sum(w * states[i][k].double() for i, w in enumerate(weights)) / sum(weights) for k in states[0]}
        assert max_diff({k: res.final_state[k] for k in want}, want) <= 1e-6, part


# ----------------------------------------------------------------------------- whole runs


@pytest.mark.parametrize("method", ["sfprompt", "sfl", "sl"])
def test_body_trains_only_for_split_learning(method: str) -> None:
    spec = prepare_run(tiny_for(method))
    initial = workspace(spec.cfg)
    bodies = initial.names(lambda n: n.startswith("body."))
    ex = SerialExecutor(num_threads=1)
    sink = Costs()
    res = run_serial(spec, ex, sink)
    if method == "sfprompt":
        assert not body_names(res.final_state)
        assert max_diff(ex.ws.get_state(bodies), initial.get_state(bodies)) == 0  # the frozen body never moved
        return
    assert body_names(res.final_state) == sorted(bodies)  # the global state carries the trained body
    assert max_diff({n: res.final_state[n] for n in bodies}, initial.get_state(bodies)) > 0

    phases = {c.phase for c in sink.costs}
    assert phases == set(SPLIT_PHASES)
    clients = sorted({c.client_id for c in sink.costs if c.client_id >= 0})
    assert len(clients) == 2
    token = DIM * 4
    ws = workspace(spec.cfg)
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
        body_rows = [c for c in split if c.part == "body" and c.side == "server"]
        assert sum(c.flops for c in body_rows) == 2 * (f_fwd + f_bwd)
        assert all(c.device == "edge_server" for c in body_rows)
        assert sum(c.bytes_down for c in rows if c.phase == "download") == state_bytes
        assert sum(c.bytes_up for c in rows if c.phase == "upload") == state_bytes
    agg = {c.part: c for c in sink.costs if c.phase == "aggregate"}
    numel = sum(res.final_state[n].numel() for n in bodies)
    client_sim = [sum(c.sim_s for c in sink.costs if c.client_id == cid) for cid in clients]
    agg_sim = sum(c.sim_s for c in agg.values())
    if method == "sl":  # no averaging anywhere; clients take turns, so the round lasts the sum of their times
        assert set(agg) == {"all"} and agg["all"].flops == 0
        assert res.rounds[0].sim_s == pytest.approx(sum(client_sim) + agg_sim)
    else:  # clients in parallel; the one server queues their body requests
        assert set(agg) == {"all", "body"} and agg["all"].flops > 0 and agg["body"].flops == 2 * 2 * numel
        assert max(client_sim) + agg_sim <= res.rounds[0].sim_s + 1e-12
        assert res.rounds[0].sim_s < sum(client_sim) + agg_sim


def test_sl_relays_state_from_client_to_client() -> None:
    spec = prepare_run(tiny_for("sl", "federation.rounds=2"))
    ex = RecordingSerialExecutor()
    res = run_serial(spec, ex)
    assert len(ex.calls) == 4 and all(len(ids) == 1 for ids, _, _ in ex.calls)
    for r in range(2):
        (a, _, outs_a), (b, state_b, _) = ex.calls[2 * r], ex.calls[2 * r + 1]
        assert a[0] < b[0]  # ascending client id
        assert state_b is outs_a[0].state  # client k+1 starts from client k's head, tail and body
        assert body_names(state_b.server)
    assert ex.calls[2][1] is ex.calls[1][2][0].state  # round 2 starts from round 1's last client
    last = ex.calls[-1][2][0].state.tensors()
    assert max_diff({k: res.final_state[k] for k in last}, last) == 0


def test_projection_covers_split_learning() -> None:
    cfg = load_config(overrides=["model.img_size=32", "model.patch_size=16", "model.in_chans=3", "model.depth=null",
                                 "project.samples_per_client=10", "pruning.scope=all"])
    df = project(cfg, ["sfprompt_no_prompt", "sfl", "sl"]).set_index("method")
    sfl, sl, frozen = df.loc["sfl"], df.loc["sl"], df.loc["sfprompt_no_prompt"]
    cols = ["client_flops", "server_flops", "bytes_up", "bytes_down"]
    assert (sfl[cols] == sl[cols]).all()
    seq, dim = 1 + (32 // 16) ** 2, 192
    assert sfl["split_bytes_per_sample"] == 4 * seq * dim * 4  # two activations, two full gradients
    # the same body, with weight gradients: more server work than SFPrompt's input gradients only
    assert sfl["server_flops"] > frozen["server_flops"] > 0
    assert sfl["state_bytes"] > frozen["state_bytes"]  # head and tail vs. tail only
    assert sfl["client_flops"] > frozen["client_flops"]


def test_meter_keys_of_trained_and_frozen_backward_differ() -> None:
    """A meter shared by a frozen and a trained server never reuses one's count for the other."""
    cfg = tiny_for("sfl")
    ws = workspace(cfg)
    meter = FlopMeter()
    frozen = ServerRole(copy.deepcopy(ws.split.body), meter=meter)
    trained = ServerRole(ws.split.body, meter=meter, train=cfg.train)
    trained.open(0, 1, {n: v for n, v in ws.get_state(ws.names()).items() if n.startswith("body.")})
    acts, grad = torch.randn(2, SEQ, DIM), torch.ones(2, SEQ, DIM)
    f = []
    for role in (frozen, trained):
        role.forward((0, 1, 1), acts, need_grad=True)
        f.append(role.backward((0, 1, 1), grad).flops)
    assert f[1] > f[0] > 0


# ----------------------------------------------------------------------------- Ray


@pytest.mark.parametrize("method", ["sfl", "sl"])
def test_split_learning_ray_matches_serial(ray_session, method: str) -> None:
    """Same final head, tail and body, same costs, under the serial and the Ray executor.

    ``sfl``: two client actors whose requests the threaded server serves concurrently, each
    on its own body copy; ``sl``: each client's state (a reference in the object store) is
    the next client's starting state.
    """
    spec = prepare_run(tiny_for(method, "federation.num_clients=2", "data.samples_per_client=8"))
    serial = run_serial(spec)
    ex = RayExecutor()
    try:
        ray_res = Orchestrator(spec, ex).run()
        assert len(ex.pool.slots) == 2
    finally:
        ex.close()
    assert ray_res.meta.executor == "ray"
    assert body_names(ray_res.final_state) and set(ray_res.final_state) == set(serial.final_state)
    for k, v in serial.final_state.items():
        assert torch.equal(ray_res.final_state[k], v), k
    for rs, rr in zip(serial.rounds, ray_res.rounds, strict=True):
        assert (rr.bytes_round, rr.client_flops_round, rr.server_flops_round) == (
            rs.bytes_round, rs.client_flops_round, rs.server_flops_round)
        assert rr.sim_s == pytest.approx(rs.sim_s, rel=1e-12)
        assert rr.test_accuracy == rs.test_accuracy and rr.test_loss == pytest.approx(rs.test_loss, rel=1e-6)


@pytest.mark.parametrize("method", ["sfl", "sl"])
def test_a_cut_that_leaves_the_server_no_block_is_a_one_line_error(method: str) -> None:
    from sfp_ray.errors import ConfigError

    cfg = load_config(overrides=[*TINY, "model.depth=2", "split.head_blocks=1", "split.tail_blocks=1"])
    with pytest.raises(ConfigError, match="leaves no block of the 2 to it"):
        prepare_run(cfg, method)
