"""End-to-end tests of SFPrompt and the registered baselines ("SFPrompt end to end").

Everything runs in-process (serial executor) on synthetic data with a tiny ViT
(16 px images, 4 px patches, 4 blocks of width 64), no checkpoint, no network.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_METHODS, client_task, tiny

from sfp_ray.config import Config, load_config
from sfp_ray.costs import FlopMeter, Ledger
from sfp_ray.data import load_dataset
from sfp_ray.devices import get_device
from sfp_ray.errors import ConfigError
from sfp_ray.executors.serial import SerialExecutor
from sfp_ray.methods import FEDERATED_PHASES, SFPROMPT_PHASES, get_method, list_methods
from sfp_ray.methods.sfprompt import SFPromptClient, sfprompt_names
from sfp_ray.orchestrator import Orchestrator, RunResult
from sfp_ray.preparation import prepare_run
from sfp_ray.pruning import keep_count, select_hardest
from sfp_ray.records import CostRecord, MessageRecord
from sfp_ray.roles import LocalBodyLink, ServerRole, Workspace
from sfp_ray.roles.optim import make_optimizer

IMG, PATCH, DIM, DEPTH = 16, 4, 64, 4  # as in conftest.TINY_METHODS
NUM_PATCHES = (IMG // PATCH) ** 2
NUM_CLASSES = 10  # synthetic data, all classes


def tiny_config(**overrides: Any) -> Config:
    """The method tests' configuration (:data:`conftest.TINY_METHODS`); ``overrides`` are dotted keys."""
    return load_config(overrides=tiny(*[f"{k}={v}" for k, v in overrides.items()], base=TINY_METHODS))


class CollectSink:
    """A report sink that keeps every record in memory."""

    def __init__(self) -> None:
        self.costs: list[CostRecord] = []
        self.messages: list[MessageRecord] = []
        self.rounds: list[Any] = []
        self.final: Mapping[str, torch.Tensor] | None = None

    def start_run(self, meta: Any) -> None:
        pass

    def add_costs(self, meta: Any, records: Sequence[CostRecord]) -> None:
        self.costs.extend(records)

    def add_messages(self, meta: Any, records: Sequence[MessageRecord]) -> None:
        self.messages.extend(records)

    def add_round(self, meta: Any, record: Any) -> None:
        self.rounds.append(record)

    def add_clients(self, meta: Any, records: Sequence[Any]) -> None:
        pass

    def add_resources(self, meta: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        pass

    def end_run(self, meta: Any, final_state: Mapping[str, torch.Tensor]) -> None:
        self.final = final_state


def workspace(cfg: Config) -> Workspace:
    """The whole split model of ``cfg`` in this process."""
    return Workspace(cfg.model, cfg.split, cfg.prompt, num_classes=NUM_CLASSES, checkpoint=None, seed=cfg.seed)


def run(cfg: Config, method: str) -> tuple[RunResult, CollectSink]:
    sink = CollectSink()
    result = Orchestrator(prepare_run(cfg, method), SerialExecutor(), [sink]).run()
    return result, sink


def batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, IMG, IMG, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)


def client_data(n: int = 32):
    return load_dataset("synthetic", train=True, img_size=IMG, in_chans=1, seed=0).subset(list(range(n)))


# ----------------------------------------------------------------------------- split step


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("cut, prompts", [((1, 1), 3), ((0, 1), 3), ((1, 0), 3), ((0, 0), 3), ((1, 1), 0)],
                         ids=["h1t1", "h0t1", "h1t0", "h0t0", "h1t1-noprompt"])
def test_split_step_equals_unsplit_step(cut: tuple[int, int], prompts: int, optimizer: str) -> None:
    """Split training over the link updates (p, W_t) exactly like training the whole model."""
    cfg = tiny_config(**{"split.head_blocks": cut[0], "split.tail_blocks": cut[1],
                         "prompt.num_tokens": prompts, "train.optimizer": optimizer, "train.lr": 0.01})
    ws = workspace(cfg)
    # One attention kernel on both sides. Otherwise the first (FLOP-counted) split step runs
    # PyTorch's MATH kernel and the reference the fused one; their rounding differs by ~1e-7,
    # and Adam, which divides by sqrt(v), turns gradients that are zero up to rounding (the
    # key bias of every attention) into steps of size ~lr in random directions.
    for blk in ws.vit.blocks:
        blk.attn.fused_attn = False
    ref = copy.deepcopy(ws)
    client = SFPromptClient(ws, cfg)
    server = ServerRole(ws.split.body)
    link = LocalBodyLink(server, client_id=0, round=1)
    ledger = Ledger(1, 0, get_device("rpi4"), get_device("edge_server"))
    opt = make_optimizer(client.params, cfg.train)

    names = sfprompt_names(ref)
    assert names == client.names
    assert any(n.startswith("head.prompt") for n in names) == (prompts > 0)
    ref_params = ref.set_trainable(names)
    ref_opt = make_optimizer(ref_params, cfg.train)
    before = ws.get_state(ws.names())

    for step in range(2):  # the second step also checks the optimizer state (momentum, Adam moments)
        x, y = batch(4, seed=step)
        with ledger.phase("split_train"):
            loss = client.split_step(x, y, link, ledger, opt)
        ref_loss = F.cross_entropy(ref.split(x), y)
        ref_loss.backward()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
        assert loss == pytest.approx(ref_loss.item(), abs=1e-5)
        got, want = ws.get_state(names), ref.get_state(names)
        for n in names:
            assert float((got[n] - want[n]).abs().max()) <= 1e-5, n

    after = ws.get_state(ws.names())
    for n in ws.names():
        changed = not torch.equal(after[n], before[n])
        if n in names:
            assert changed, f"trainable {n} did not move"
        else:
            assert not changed, f"frozen {n} moved"
    assert server.pending() == 0  # every stored forward graph was consumed by its backward


# ----------------------------------------------------------------------------- bytes per message


@pytest.mark.parametrize("prompts", [0, 2, 5])
@pytest.mark.parametrize("cut", [(1, 1), (0, 1), (1, 0), (0, 0)], ids=lambda c: f"h{c[0]}t{c[1]}")
def test_split_step_sends_exactly_the_needed_tokens(cut: tuple[int, int], prompts: int) -> None:
    cfg = tiny_config(**{"split.head_blocks": cut[0], "split.tail_blocks": cut[1], "prompt.num_tokens": prompts})
    ws = workspace(cfg)
    client = SFPromptClient(ws, cfg)
    link = LocalBodyLink(ServerRole(ws.split.body), 0, 1)
    ledger = Ledger(1, 0, get_device("rpi4"), get_device("edge_server"))
    B = 4
    x, y = batch(B)
    with ledger.phase("split_train"):
        client.split_step(x, y, link, ledger, make_optimizer(client.params, cfg.train))

    token = DIM * 4  # float32 bytes of one token
    seq = 1 + prompts + NUM_PATCHES  # class token + prompts + patches
    down_tokens = seq if cut[1] > 0 else 1  # tail without blocks reads the class token only
    expected = [("up", "activation", "head", B * seq * token),
                ("down", "activation", "body", B * down_tokens * token)]
    if prompts:
        grad_down = prompts if cut[0] == 0 else seq  # no head block: only the prompt tokens' gradient
        expected += [("up", "gradient", "tail", B * down_tokens * token),
                     ("down", "gradient", "body", B * grad_down * token)]
    got = [(m.direction, m.kind, m.part, m.payload_bytes) for m in ledger.messages]
    assert got == expected
    assert all(m.serialized_bytes >= m.payload_bytes for m in ledger.messages)


@pytest.mark.parametrize("cut, prompts", [((1, 1), 3), ((0, 0), 3), ((1, 0), 0)], ids=["h1t1", "h0t0", "h1t0-np"])
def test_sfprompt_round_split_bytes_per_sample(cut: tuple[int, int], prompts: int) -> None:
    """Across a whole round, split-phase bytes = trained samples x per-sample token bytes."""
    cfg = tiny_config(**{"split.head_blocks": cut[0], "split.tail_blocks": cut[1], "prompt.num_tokens": prompts})
    _, sink = run(cfg, "sfprompt")
    token = DIM * 4
    seq = 1 + prompts + NUM_PATCHES
    down = seq if cut[1] > 0 else 1
    per_sample = seq + down  # activations up and down
    if prompts:
        per_sample += down + (prompts if cut[0] == 0 else seq)  # gradients up and down
    per_sample *= token
    clients = {c.client_id for c in sink.costs if c.client_id >= 0}
    assert len(clients) == 2
    for cid in clients:
        cells = [c for c in sink.costs if c.client_id == cid and c.phase == "split_train"]
        samples = sum(c.samples for c in cells)
        assert samples == keep_count(32, cfg.pruning.keep_ratio) * cfg.train.split_epochs
        assert sum(c.bytes_up + c.bytes_down for c in cells) == samples * per_sample


def test_fl_full_moves_exactly_the_model_parameters() -> None:
    cfg = tiny_config(**{"federation.rounds": 2})
    spec = prepare_run(cfg, "fl_full")
    ws = workspace(spec.cfg)
    model_bytes = sum(p.numel() * p.element_size() for p in ws.vit.parameters())
    assert model_bytes > 0
    sink = CollectSink()
    Orchestrator(spec, SerialExecutor(), [sink]).run()
    client_rows = [c for c in sink.costs if c.client_id >= 0]
    cells = {(c.round, c.client_id) for c in client_rows}
    assert len(cells) == cfg.federation.rounds * cfg.federation.clients_per_round
    for rnd, cid in cells:
        rows = [c for c in client_rows if c.client_id == cid and c.round == rnd]
        down = sum(c.bytes_down for c in rows if c.phase == "download")
        up = sum(c.bytes_up for c in rows if c.phase == "upload")
        assert down == model_bytes and up == model_bytes
        assert sum(c.bytes_up + c.bytes_down for c in rows) == 2 * model_bytes  # nothing else crosses


# ----------------------------------------------------------------------------- client phases


def _raise(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the body must not run in this phase")


class RaisingLink:
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        _raise()

    def backward(self, *args: Any, **kwargs: Any) -> Any:
        _raise()


def test_local_update_and_scoring_never_call_the_body() -> None:
    cfg = tiny_config(**{"split.head_blocks": 1, "split.tail_blocks": 1, "train.lr": 0.05})
    ws = workspace(cfg)
    client = SFPromptClient(ws, cfg)
    ws.split.body.forward = _raise
    for i in ws.split.body.block_ids:
        ws.split.body.blocks[str(i)].forward = _raise
    data = client_data(24)
    ledger = Ledger(1, 0, get_device("rpi4"))
    before = ws.get_state(client.names)
    with ledger.phase("prune"):
        scores = client.score(data, ledger)
    assert scores.shape == (24,) and torch.isfinite(scores).all()
    with ledger.phase("local_update"):
        loss = client.local_update(data, ledger, torch.Generator().manual_seed(0))
    assert math.isfinite(loss)
    after = ws.get_state(client.names)
    assert all(not torch.equal(after[n], before[n]) for n in client.names)  # prompts and tail trained
    assert {p for (_, p, _) in ledger.cells} <= {"head", "tail"}  # no body cost, no messages
    assert {side for (_, _, side) in ledger.cells} == {"client"}
    assert not ledger.messages
    # the patch is effective: split training does reach the body
    with pytest.raises(AssertionError, match="must not run"):
        x, y = batch()
        client.split_step(x, y, LocalBodyLink(ServerRole(ws.split.body), 0, 1), ledger,
                          make_optimizer(client.params, cfg.train))


def test_client_round_without_split_never_uses_the_link() -> None:
    cfg = tiny_config(**{"train.split_epochs": 0})
    ws = workspace(cfg)
    client = SFPromptClient(ws, cfg)
    out = client.run(client_task(0, 1, 1, range(20)), client_data(20), ws.get_state(client.names), RaisingLink(),
                     FlopMeter())
    assert {c.phase for c in out.costs} == {"download", "prune", "local_update", "upload"}


class FailingBackwardLink:
    """A link whose first backward request fails: the client has run the tail's backward, not its step."""

    def __init__(self, link: LocalBodyLink) -> None:
        self.link, self.failed = link, False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.link.forward(*args, **kwargs)

    def backward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise RuntimeError("the server failed this request")
        return self.link.backward(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.link, name)


def test_a_retried_client_round_equals_an_uninterrupted_one() -> None:
    """A failed attempt leaves gradients on the tail; the retry on the same workspace must not add them in."""
    cfg = tiny_config(**{"train.local_update": False})
    results = []
    for fail_first in (False, True):
        ws = workspace(cfg)
        client = SFPromptClient(ws, cfg)
        start = ws.get_state(client.names)
        if fail_first:
            with pytest.raises(RuntimeError, match="failed this request"):
                client.run(client_task(0, 1, 1, range(20)), client_data(20), start,
                           FailingBackwardLink(LocalBodyLink(ServerRole(ws.split.body), 0, 1)), FlopMeter())
            assert any(p.grad is not None for p in client.params)  # what the failed attempt left behind
        out = client.run(client_task(0, 1, 1, range(20)), client_data(20), start,
                         LocalBodyLink(ServerRole(ws.split.body), 0, 1), FlopMeter())
        results.append(out)
    clean, retried = results
    assert retried.train_loss == clean.train_loss
    for n, v in clean.state.items():
        assert torch.equal(retried.state[n], v), n


@pytest.mark.parametrize("keep_ratio", [0.3, 0.5])
def test_el2n_pruning_keeps_documented_count_through_a_round(keep_ratio: float) -> None:
    cfg = tiny_config(**{"pruning.keep_ratio": keep_ratio, "pruning.policy": "hardest", "pruning.per_class": False})
    spec = prepare_run(cfg, "sfprompt")
    ex = SerialExecutor()
    init = ex.start(spec).state
    cid = 0
    n = len(spec.client_indices[cid])
    assert n == 32
    out = ex.run_clients([client_task(cid, 1, 11, spec.client_indices[cid])], init)[0]
    kept = out.client_state["kept"]
    assert len(kept) == keep_count(n, keep_ratio) == math.ceil(keep_ratio * n - 1e-9)
    # the kept samples are the hardest under the downloaded global state
    data = spec.train.subset(spec.client_indices[cid])
    ex.ws.load_state(init.tensors())
    scores = ex.role.score(data, Ledger(1, cid, None))
    assert kept.tolist() == select_hardest(scores, keep_ratio).tolist()
    # and training used only them
    trained = sum(c.samples for c in out.costs if c.phase == "split_train")
    assert trained == len(kept) * cfg.train.split_epochs
    # pruning once (default): round 2 reuses the kept set and does not score again
    out2 = ex.run_clients([client_task(cid, 2, 12, spec.client_indices[cid], out.client_state)], out.state)[0]
    assert "prune" not in {c.phase for c in out2.costs}
    assert out2.client_state["kept"] is kept


def test_pruning_every_round_rescores() -> None:
    cfg = tiny_config(**{"pruning.every_round": True, "pruning.keep_ratio": 0.25})
    spec = prepare_run(cfg, "sfprompt")
    ex = SerialExecutor()
    init = ex.start(spec).state
    out = ex.run_clients([client_task(1, 1, 11, spec.client_indices[1])], init)[0]
    out2 = ex.run_clients([client_task(1, 2, 12, spec.client_indices[1], out.client_state)], out.state)[0]
    assert "prune" in {c.phase for c in out2.costs}
    assert out2.client_state["pruned_at_round"] == 2
    assert len(out2.client_state["kept"]) == keep_count(32, 0.25)


# ----------------------------------------------------------------------------- whole runs


def test_same_seed_same_run_different_seed_different_run() -> None:
    cfg = tiny_config(**{"federation.rounds": 2})
    a, _ = run(cfg, "sfprompt")
    b, _ = run(cfg, "sfprompt")
    assert set(a.final_state) == set(b.final_state)
    for k in a.final_state:
        assert torch.equal(a.final_state[k], b.final_state[k]), k
    acc_a = [r.test_accuracy for r in a.rounds]
    assert acc_a == [r.test_accuracy for r in b.rounds]
    assert [r.test_loss for r in a.rounds] == [r.test_loss for r in b.rounds]
    assert all(math.isfinite(v) for v in acc_a)
    assert {k: v["kept"].tolist() for k, v in a.client_states.items()} == {
        k: v["kept"].tolist() for k, v in b.client_states.items()}

    c, _ = run(cfg.replace(seed=1), "sfprompt")
    assert any(not torch.equal(a.final_state[k], c.final_state[k]) for k in a.final_state)


EXPECTED_PHASES = {
    "sfprompt": set(SFPROMPT_PHASES),
    "sfprompt_no_prune": set(SFPROMPT_PHASES) - {"prune"},
    "sfprompt_no_local": set(SFPROMPT_PHASES) - {"local_update"},
    "sfprompt_no_prompt": set(SFPROMPT_PHASES),
    "fl_full": set(FEDERATED_PHASES),
    "fl_prompt": set(FEDERATED_PHASES),
    "fl_linear": set(FEDERATED_PHASES),
}


def test_phase_names_follow_design() -> None:
    assert SFPROMPT_PHASES == ("download", "prune", "local_update", "split_train", "upload", "aggregate", "eval")
    assert FEDERATED_PHASES == ("download", "local_train", "upload", "aggregate", "eval")
    assert set(EXPECTED_PHASES) <= set(list_methods())


@pytest.mark.parametrize("name", list_methods())
def test_every_method_runs_one_round(name: str) -> None:
    result, sink = run(tiny_config(), name)
    method = get_method(name)
    phases = {c.phase for c in sink.costs}
    if name in EXPECTED_PHASES:
        assert phases == EXPECTED_PHASES[name]
    else:  # a method registered later: its phases come from the shared vocabulary
        assert phases <= set(method.phases) | {"split_train"}
        assert {"aggregate", "eval"} <= phases
    assert {c.part for c in sink.costs} <= {"head", "body", "tail", "prompt", "all"}
    assert all(c.round == 1 for c in sink.costs)
    assert len(result.rounds) == 1
    acc = result.rounds[0].test_accuracy
    assert math.isfinite(acc) and 0.0 <= acc <= 1.0
    assert math.isfinite(result.rounds[0].test_loss)
    client_rows = [c for c in sink.costs if c.client_id >= 0]
    cohort = {c.client_id for c in client_rows}
    assert cohort <= set(range(3)) and len(cohort) == 2  # clients_per_round of num_clients
    assert sum(c.flops for c in client_rows) > 0
    assert all(c.flops >= 0 and c.sim_s >= 0 and c.wall_s >= 0 for c in sink.costs)
    # the trainable state went up and came back
    assert sum(c.bytes_up for c in client_rows if c.phase == "upload") > 0
    assert sum(c.bytes_down for c in client_rows if c.phase == "download") > 0
    if method.server(method.resolve(tiny_config())) is not None:
        assert any(c.part == "body" and c.side == "server" and c.flops > 0 for c in client_rows)
    else:
        assert {c.part for c in client_rows} == {"all"}
        assert {c.side for c in client_rows} == {"client", "link"}


def test_unknown_method_lists_registered_names() -> None:
    with pytest.raises(ConfigError) as ei:
        get_method("sfprompt_turbo")
    msg = str(ei.value)
    assert "sfprompt_turbo" in msg
    for name in list_methods():
        assert name in msg
    with pytest.raises(ConfigError, match="fl_full"):
        prepare_run(tiny_config(), "no_such_method")


def test_each_method_trains_at_its_own_rate_unless_train_lr_is_set():
    from sfp_ray.config import load_config
    from sfp_ray.methods import get_method, list_methods

    cfg = load_config()
    assert cfg.train.lr is None  # the default: every method's own
    rates = {m: get_method(m).resolve(cfg).train.lr for m in list_methods()}
    assert rates["fl_full"] == 3e-4 and rates["fl_linear"] == 1e-3
    assert {rates[m] for m in list_methods() if m.startswith("sfprompt")} == {3e-3}  # ablations share SFPrompt's
    given = load_config(overrides=["train.lr=0.01"])
    assert {get_method(m).resolve(given).train.lr for m in list_methods()} == {0.01}


def test_every_client_phase_of_every_method_has_a_timeline_colour() -> None:
    from sfp_ray.methods.catalog import PHASE_COLOURS

    for name in list_methods():
        client_phases = [p for p in get_method(name).phases if p not in ("aggregate", "eval")]
        assert client_phases and set(client_phases) <= set(PHASE_COLOURS), name
