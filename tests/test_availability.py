"""Availability, dropouts, deadlines and over-selection: the draws, the rules, and runs."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import tiny

from sfp_ray.availability import RoundJudge, cohort_size, draw, phase_fractions, truncate
from sfp_ray.config import load_config
from sfp_ray.costs import simulate_round
from sfp_ray.devices import load_catalog
from sfp_ray.errors import ConfigError
from sfp_ray.executors.serial import SerialExecutor
from sfp_ray.orchestrator import Orchestrator
from sfp_ray.preparation import prepare_run
from sfp_ray.records import CostRecord, MessageRecord, Segment
from sfp_ray.reports import ReportSink
from sfp_ray.roles.client import ClientOutput

TINY = tiny("model.depth=3", "federation.num_clients=6", "federation.clients_per_round=6", "federation.rounds=3",
            "train.batch_size=4", "devices.mix={rpi4: 0.5, laptop: 0.5}")

RPI4 = """\
devices:
  rpi4:
    description: "an unreliable rpi4"
    num_cpus: 0.25
    num_gpus: 0.0
    memory_mb: 4096
    peak_flops: 4.8e+10
    efficiency: 0.15
    uplink_mbps: 20.0
    downlink_mbps: 50.0
    latency_ms: 15.0
    availability: {availability}
    dropout: {dropout}
"""


def catalog(tmp_path, availability: float, dropout: float):
    path = tmp_path / "devices.yaml"
    path.write_text(RPI4.format(availability=availability, dropout=dropout))
    return path


# --------------------------------------------------------------------------- draws and rules


def test_draws_are_reproducible_and_follow_the_probabilities():
    assert draw(0, 3, 7, 0.5, 0.3) == draw(0, 3, 7, 0.5, 0.3)
    draws = [draw(1, r, c, 0.5, 0.3) for r in range(1, 41) for c in range(50)]
    online = sum(d.online for d in draws) / len(draws)
    dropped = sum(d.drops for d in draws) / max(1, sum(d.online for d in draws))
    assert 0.45 < online < 0.55 and 0.25 < dropped < 0.35
    assert all(0.0 <= d.point < 1.0 for d in draws if d.drops)
    assert not any(d.drops for d in draws if not d.online)
    assert all(draw(0, r, 1, 1.0, 0.0).online and not draw(0, r, 1, 1.0, 0.0).drops for r in range(20))


def test_cohort_size():
    assert cohort_size(10, 0.0, 10) == 10
    assert cohort_size(10, 0.3, 100) == 13
    assert cohort_size(4, 0.5, 5) == 5


def test_phase_fractions_on_hand_numbers():
    tl = [Segment("download", "link", 1.0), Segment("split_train", "client", 2.0),
          Segment("split_train", "server", 2.0), Segment("upload", "link", 1.0)]
    cut, done = phase_fractions(tl, 4.0)
    assert [s.seconds for s in cut] == [1.0, 2.0, 1.0]
    assert done == {"download": 1.0, "split_train": 0.75, "upload": 0.0}


def _output(cid: int, seconds: float = 4.0) -> ClientOutput:
    tl = [Segment("download", "link", 1.0), Segment("split_train", "client", seconds - 2.0),
          Segment("upload", "link", 1.0)]
    costs = [CostRecord(1, cid, "d", "download", "tail", "link", bytes_down=1000, messages=1, sim_s=1.0),
             CostRecord(1, cid, "d", "split_train", "tail", "client", flops=800.0, sim_s=seconds - 2.0, samples=8),
             CostRecord(1, cid, "d", "upload", "tail", "link", bytes_up=1000, messages=1, sim_s=1.0)]
    msgs = [MessageRecord(1, cid, "download", "tail", "down", "parameters", "server", "client", 1000, 1000),
            MessageRecord(1, cid, "upload", "tail", "up", "parameters", "client", "server", 1000, 1000)]
    return ClientOutput(client_id=cid, state={"w": torch.zeros(1)}, num_samples=8, client_state={}, costs=costs,
                        messages=msgs, timeline=tl, train_loss=0.5)


def test_a_dropout_charges_the_work_done_before_it():
    o = _output(0)  # 1 s download, 2 s training, 1 s upload
    truncate(o, 0.5)  # drops after 2 s: download done, half of the training, no upload
    assert o.status == "dropped" and o.state is None
    by = {c.phase: c for c in o.costs}
    assert by["download"].bytes_down == 1000 and by["split_train"].flops == pytest.approx(400.0)
    assert by["split_train"].samples == 4 and by["upload"].bytes_up == 0 and by["upload"].messages == 0
    assert [m.phase for m in o.messages] == ["download"]
    assert o.sim_s == pytest.approx(2.0)


def test_the_judge_applies_the_deadline_and_over_selection():
    # finishes: client 0 at 3 s, 1 at 4 s, 2 at 6 s (no server segments: no queue)
    outs = [_output(0, 3.0), _output(1, 4.0), _output(2, 6.0)]
    judge = RoundJudge({}, keep=2, deadline_s=None, clock=simulate_round)
    judge(outs)
    assert [o.status for o in outs] == ["ok", "ok", "late"] and outs[2].state is None
    assert judge.round_seconds(outs) == pytest.approx(4.0)  # closes when the second finished

    outs = [_output(0, 3.0), _output(1, 4.0), _output(2, 6.0)]
    judge = RoundJudge({}, keep=3, deadline_s=5.0, clock=simulate_round)
    judge(outs)
    assert [o.status for o in outs] == ["ok", "ok", "late"] and "deadline" in outs[2].error
    assert judge.round_seconds(outs) == pytest.approx(5.0)  # it waited until the deadline


# --------------------------------------------------------------------------- runs


def _run(tmp_path, extra=(), warnings=None):
    spec = prepare_run(load_config(overrides=[*TINY, *extra]), "sfprompt")
    out = tmp_path / "run"
    res = Orchestrator(spec, SerialExecutor(), [ReportSink(out, plots=False)],
                       warn=(warnings.append if warnings is not None else None)).run()
    return spec, res, pd.read_csv(out / "clients.csv"), pd.read_csv(out / "rounds.csv"), pd.read_csv(
        out / "costs.csv")


@pytest.mark.slow  # several rounds or runs end to end
def test_unreliable_rpi4_go_offline_and_drop_out_and_the_run_finishes(tmp_path):
    cat = catalog(tmp_path, 0.5, 0.3)
    _, res, clients, rounds, costs = _run(tmp_path, [f"devices.catalog={cat}", "federation.rounds=6",
                                                     "seed=1"])
    assert len(res.rounds) == 6
    rpi = clients[clients.device == "rpi4"]
    assert {"offline", "dropped"} <= set(rpi.status), rpi.status.value_counts()
    assert set(clients[clients.device == "laptop"].status) == {"ok"}
    for col in ("offline", "dropped", "late"):
        per_round = clients[clients.status == col].groupby("round").size()
        assert rounds.set_index("round")[col].sum() == per_round.sum()
    assert (rounds.finished + rounds.offline + rounds.dropped + rounds.late + rounds.failed == rounds.selected).all()
    # offline clients cost nothing; dropped ones are charged for part of their work
    off = clients[clients.status == "offline"][["round", "client_id"]].itertuples(index=False)
    for r, c in off:
        assert costs[(costs["round"] == r) & (costs.client_id == c)].empty
    drop = clients[clients.status == "dropped"].iloc[0]
    mine = costs[(costs["round"] == drop["round"]) & (costs.client_id == drop.client_id)]
    assert mine.flops.sum() + mine.bytes_up.sum() + mine.bytes_down.sum() > 0
    assert mine[mine.phase == "upload"].bytes_up.sum() == 0  # a dropped client never uploads


@pytest.mark.slow  # several rounds or runs end to end
def test_a_round_nobody_finishes_keeps_the_global_state_and_says_so(tmp_path):
    warnings: list[str] = []
    spec, res, clients, rounds, _ = _run(tmp_path, ["devices.mix={rpi4: 1.0}", "federation.deadline_s=1e-6"],
                                         warnings)
    assert set(clients.status) == {"late"}
    assert (rounds.finished == 0).all() and (rounds.late == 6).all()
    init, _ = spec.initial_state()
    for k, v in init.items():
        torch.testing.assert_close(res.final_state[k], v, msg=k)
    assert sum("no client's state was averaged" in w for w in warnings) == 3


@pytest.mark.slow  # several rounds or runs end to end
def test_over_selection_averages_the_first_to_finish(tmp_path):
    _, _, clients, rounds, _ = _run(tmp_path, ["federation.num_clients=6", "federation.clients_per_round=3",
                                               "federation.over_select=0.5"])
    assert (rounds.selected == 5).all() and (rounds.finished == 3).all() and (rounds.late == 2).all()
    for _, g in clients.groupby("round"):
        fin = g[g.status == "ok"].sim_s
        late = g[g.status == "late"].sim_s
        assert fin.max() <= late.min() + 1e-9  # laptops finish before rpi4s


def test_bad_probabilities_and_settings_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="availability must be a probability"):
        load_catalog(catalog(tmp_path, 1.5, 0.0))
    with pytest.raises(ConfigError, match="dropout must be a probability"):
        load_catalog(catalog(tmp_path, 1.0, -0.1))
    with pytest.raises(ConfigError, match="federation.deadline_s"):
        load_config(overrides=["federation.deadline_s=0"])
    with pytest.raises(ConfigError, match="federation.over_select"):
        load_config(overrides=["federation.over_select=-0.5"])


@pytest.mark.slow  # several rounds or runs end to end
def test_timeline_csv_and_plot_show_each_clients_round(tmp_path, capsys):
    from sfp_ray.cli import main

    _, _, clients, rounds, _ = _run(tmp_path, ["federation.rounds=2", f"devices.catalog={catalog(tmp_path, 0.5, 0.0)}",
                                               "seed=1"])
    tl = pd.read_csv(tmp_path / "run" / "timeline.csv")
    ran = clients[clients.status != "offline"]
    assert set(zip(tl["round"], tl.client_id)) == set(zip(ran["round"], ran.client_id))
    assert not set(zip(tl["round"], tl.client_id)) & set(zip(clients[clients.status == "offline"]["round"],
                                                            clients[clients.status == "offline"].client_id))
    # each client's segments tile its round, and its last one ends when its round ends on the clock
    for (r, c), g in tl.groupby(["round", "client_id"]):
        g = g.sort_values("start_s")
        assert (g.start_s.to_numpy()[1:] >= g.end_s.to_numpy()[:-1] - 1e-9).all()
        busy = (g[g.side != "wait"].end_s - g[g.side != "wait"].start_s).sum()
        own = clients[(clients["round"] == r) & (clients.client_id == c)].sim_s.iloc[0]
        assert busy == pytest.approx(own, rel=1e-6)
    assert tl.groupby("round").end_s.max().to_numpy() == pytest.approx(rounds.sim_s.to_numpy(), rel=0.05)
    png = tmp_path / "r1.png"
    assert main(["timeline", str(tmp_path / "run"), "--round", "1", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
    assert main(["timeline", str(tmp_path), "--round", "1"]) == 2
    assert "has no timeline.csv" in capsys.readouterr().err


# --------------------------------------------------------------------------- FedScale-format traces


def _trace_entries() -> dict[int, dict]:
    # client 0 is never online in the first 1000 s; client 1 always; client 2 online for the first 2 s of every 4
    return {1: {"active": [1000.0], "inactive": [1001.0], "finish_time": 5000.0, "duration": 7, "model": "x"},
            2: {"active": [0], "inactive": [1e9], "finish_time": 1e9},
            3: {"active": [0.0], "inactive": [2.0], "finish_time": 4.0}}


def test_a_trace_window_decides_who_is_online(tmp_path):
    import json
    import pickle

    from sfp_ray.availability import load_trace

    pkl = tmp_path / "client_behave_trace"
    pkl.write_bytes(pickle.dumps(_trace_entries()))
    js = tmp_path / "trace.json"
    js.write_text(json.dumps({str(k): v for k, v in _trace_entries().items()}))
    for path in (pkl, js):
        tr = load_trace(path)
        assert len(tr.entries) == 3
        # entries in key order; client c follows entry c mod 3
        assert [tr.online(0, t) for t in (0, 999, 1000.5, 6000.5)] == [False, False, True, True]
        assert all(tr.online(1, t) for t in (0, 3.5, 1e6)) and tr.online(4, 3.5)
        assert [tr.online(2, t) for t in (0, 1.9, 2.5, 3.9, 4.5, 6.5)] == [True, True, False, False, True, False]


@pytest.mark.parametrize("data, match", [
    ({1: {"active": [0], "finish_time": 1}}, "needs 'active', 'inactive' and 'finish_time'"),
    ({1: {"active": [0, 5], "inactive": [1], "finish_time": 9}}, "equally long"),
    ({1: {"active": [3], "inactive": [1], "finish_time": 9}}, r"active\[i\] must be <= inactive\[i\]"),
    ({1: {"active": [0], "inactive": [1], "finish_time": 0}}, "'finish_time' > 0"),
    ({1: {"active": ["a"], "inactive": [1], "finish_time": 9}}, "lists of seconds"),
    ([1, 2], "expected a non-empty mapping"),
])
def test_a_bad_trace_is_one_line_naming_the_file(tmp_path, data, match):
    import pickle

    from sfp_ray.availability import load_trace

    p = tmp_path / "trace.pkl"
    p.write_bytes(pickle.dumps(data))
    with pytest.raises(ConfigError, match=match) as e:
        load_trace(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_a_trace_that_pickles_an_object_is_refused_unrun(tmp_path):
    import os
    import pickle

    from sfp_ray.availability import load_trace

    marker = tmp_path / "still-here"
    marker.write_text("")

    class Boom:
        def __reduce__(self):
            return (os.remove, (str(marker),))  # what a hostile pickle would run on load

    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({1: Boom()}))
    with pytest.raises(ConfigError, match=r"it refers to \S*remove; a trace holds plain data only"):
        load_trace(p)
    assert marker.exists()  # refused, not run
    with pytest.raises(ConfigError, match="no such file"):
        load_trace(tmp_path / "missing.pkl")


@pytest.mark.slow  # several rounds or runs end to end
def test_a_run_with_a_trace_leaves_its_offline_clients_out(tmp_path):
    import pickle

    p = tmp_path / "client_behave_trace"
    p.write_bytes(pickle.dumps(_trace_entries()))
    spec, res, clients, rounds, _ = _run(tmp_path, [f"federation.availability_trace={p}", "federation.rounds=2"])
    assert spec.trace is not None and any("availability_trace" in n for n in spec.notices)
    status = clients.set_index(["round", "client_id"])["status"]
    # clients 0 and 3 follow entry 0 (offline until 1000 s); 1 and 4 entry 1 (always online)
    assert all(status[(r, c)] == "offline" for r in (1, 2) for c in (0, 3))
    assert all(status[(r, c)] == "ok" for r in (1, 2) for c in (1, 4))
    # round 1 starts at simulated 0 s, when entry 2 is online
    assert status[(1, 2)] == "ok" and status[(1, 5)] == "ok"
    # round 2 starts when round 1 ended on the simulated clock: entry 2's window decides
    start2 = float(rounds.set_index("round").loc[1, "sim_s"])
    online2 = (start2 % 4.0) <= 2.0
    assert status[(2, 2)] == ("ok" if online2 else "offline")
    assert (rounds.offline == [2 + 0, 2 + (0 if online2 else 2)]).all()
