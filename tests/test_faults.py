"""Client and server faults: retries, failed clients left out of FedAvg, min_success_fraction, server restarts.

Faults are injected with the test-only ``SFP_RAY_FAULT`` hook (:mod:`sfp_ray.faults`). The
serial runs use a tiny 3-client configuration; a retried client must give exactly the
result it would have given without the fault (every attempt starts from the same inputs),
so rounds that recover are compared bit for bit with a clean run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import as_sets, tiny

from sfp_ray.cli import main
from sfp_ray.config import load_config
from sfp_ray.errors import ConfigError
from sfp_ray.executors.serial import SerialExecutor
from sfp_ray.faults import ENV_VAR, check_finite, parse_faults, task_faults
from sfp_ray.orchestrator import Orchestrator, RunResult
from sfp_ray.preparation import prepare_run
from sfp_ray.reports import ReportSink

TINY = tiny("model.depth=3", "federation.num_clients=3", "federation.clients_per_round=3", "federation.rounds=3",
            "train.batch_size=4", "devices.mix={rpi4: 1.0}")
CLIENT_COLUMNS = ["round", "client_id", "device", "status", "attempts", "error", "samples", "kept", "wall_s", "sim_s"]



class RecordingSerial(SerialExecutor):
    """A serial executor that remembers which clients each aggregation averaged."""

    def __init__(self) -> None:
        super().__init__()
        self.averaged: list[list[int]] = []

    def aggregate(self, outputs, state):  # type: ignore[override]
        self.averaged.append([o.client_id for o in outputs])
        return super().aggregate(outputs, state)

    def run_and_aggregate(self, tasks, state, accept):  # type: ignore[override]
        folded: list[int] = []

        def noted(o):
            if accept(o):
                folded.append(o.client_id)
            return accept(o)

        outputs, agg = super().run_and_aggregate(tasks, state, noted)
        if agg is not None:
            self.averaged.append(folded)
        return outputs, agg


def run_serial(method: str, out, extra: Sequence[str] = ()) -> tuple[RunResult, RecordingSerial, list[str]]:
    warnings: list[str] = []
    ex = RecordingSerial()
    spec = prepare_run(load_config(overrides=[*TINY, *extra]), method)
    res = Orchestrator(spec, ex, [ReportSink(out, plots=False)], warn=warnings.append).run()
    return res, ex, warnings


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Fault-free serial runs of sfprompt and sfl (the references)."""
    return {m: run_serial(m, tmp_path_factory.mktemp(f"clean-{m}"), ["prompt.num_tokens=0"] if m == "sfl" else [])[0]
            for m in ("sfprompt", "sfl")}


def accuracies(res: RunResult) -> list[float]:
    return [r.test_accuracy for r in res.rounds]


# --------------------------------------------------------------------------- the hook


def test_fault_spec_grammar_and_attempt_counting():
    faults = parse_faults("client:2:1:raise*3; server:3:exit ;client:1:0:nan")
    assert [(f.target, f.round, f.client_id, f.kind, f.times) for f in faults] == [
        ("client", 2, 1, "raise", 3), ("server", 3, None, "exit", 1), ("client", 1, 0, "nan", 1)]
    # *3: both attempts of the first try, the first attempt of the retried round
    assert task_faults(faults, round=2, client_id=1, round_try=1, first=False) == (("raise",), ("raise",))
    assert task_faults(faults, round=2, client_id=1, round_try=2, first=False) == (("raise",), ())
    assert task_faults(faults, round=2, client_id=0, round_try=1, first=True) == ()
    # a server fault rides on the first client's first attempt, once per round try it hits
    assert task_faults(faults, round=3, client_id=0, round_try=1, first=True) == (("server-exit",), ())
    assert task_faults(faults, round=3, client_id=0, round_try=2, first=True) == ()
    for bad in ("client:2:raise", "client:x:1:raise", "server:1:nan", "client:1:1:raise*0", "disk:1:full"):
        with pytest.raises(ConfigError, match=ENV_VAR):
            parse_faults(bad)


def test_finiteness_check():
    check_finite({"w": torch.ones(2), "idx": np.arange(3)}, float("nan"))  # NaN loss: no training step ran
    with pytest.raises(RuntimeError, match="non-finite state: w"):
        check_finite({"w": torch.tensor([1.0, float("inf")])})
    with pytest.raises(RuntimeError, match="loss inf"):
        check_finite({}, float("inf"))


def test_min_success_fraction_is_validated():
    assert load_config().federation.min_success_fraction == 0.5
    for bad in ("1.5", "-0.1", "nan"):
        with pytest.raises(ConfigError, match="federation.min_success_fraction"):
            load_config(overrides=[f"federation.min_success_fraction={bad}"])


# --------------------------------------------------------------------------- client faults (serial)


@pytest.mark.slow  # several rounds or runs end to end
def test_clients_are_retried_or_left_out_and_the_run_finishes(tmp_path, monkeypatch, clean):
    monkeypatch.setenv(ENV_VAR, "client:2:1:raise; client:3:0:nan*2; client:3:2:exit")
    res, ex, warnings = run_serial("sfprompt", tmp_path)
    clients = pd.read_csv(tmp_path / "clients.csv")
    assert CLIENT_COLUMNS == [c for c in clients.columns if c in CLIENT_COLUMNS]
    assert len(clients) == 9 and set(clients["device"]) == {"rpi4"}
    status = {(r.round, r.client_id): (r.status, r.attempts) for r in clients.itertuples()}
    assert status[(2, 1)] == ("retried", 2) and status[(3, 0)] == ("failed", 2) and status[(3, 2)] == ("retried", 2)
    assert sum(s == ("ok", 1) for s in status.values()) == 6
    errors = clients.set_index(["round", "client_id"])["error"]
    assert errors[(2, 1)].startswith("InjectedFault: injected fault (SFP_RAY_FAULT): client 1 in round 2")
    assert errors[(3, 0)].startswith("NonFiniteError: non-finite state")
    assert "lost its process" in errors[(3, 2)]
    assert clients[clients["status"] == "ok"]["error"].isna().all()
    failed = clients[clients["status"] == "failed"].iloc[0]
    assert failed["samples"] == 8 and failed["kept"] == 4 and failed["sim_s"] == 0  # kept: its selection of round 1
    # the failed client never reached FedAvg; the others did
    assert ex.averaged == [[0, 1, 2], [0, 1, 2], [1, 2]]
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    assert list(rounds["failed"]) == [0, 0, 1] and list(rounds["finished"]) == [3, 3, 2]
    assert list(rounds["participants"]) == [3, 3, 2] and list(rounds["selected"]) == [3, 3, 3]
    assert all(torch.isfinite(v).all() for v in res.final_state.values())
    # a retried client gives exactly what it would have: rounds 1-2 are the clean run's
    assert accuracies(res)[:2] == accuracies(clean["sfprompt"])[:2]
    # one warning line per failure
    assert len(warnings) == 3 and all("\n" not in w for w in warnings)
    assert "round 3: client 0 (rpi4) failed 2 attempts and is left out of the round: NonFiniteError" in warnings[1]


@pytest.mark.slow  # several rounds or runs end to end
def test_a_round_with_too_few_successes_starts_over_once(tmp_path, monkeypatch, clean):
    # both attempts of clients 0 and 1 fail in the first try of round 2 (1 of 3 < 0.5): the round
    # starts over from the state of round 1, and then every client succeeds
    monkeypatch.setenv(ENV_VAR, "client:2:0:raise*2; client:2:1:raise*2")
    res, ex, warnings = run_serial("sfprompt", tmp_path)
    assert accuracies(res) == accuracies(clean["sfprompt"])
    assert all(torch.equal(res.final_state[k], v) for k, v in clean["sfprompt"].final_state.items())
    assert any("round 2: 1 of 3 clients succeeded, federation.min_success_fraction=0.5 needs 2; the round starts over"
               in w for w in warnings)
    clients = pd.read_csv(tmp_path / "clients.csv")
    assert len(clients) == 9 and set(clients["status"]) == {"ok"}  # only the try that counted is reported


@pytest.mark.slow  # several rounds or runs end to end
def test_a_round_that_fails_twice_stops_the_run_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV_VAR, "client:2:0:raise*4; client:2:1:exit*4")
    out = tmp_path / "run"
    rc = main(["--quiet", "run", "--executor", "serial", *as_sets(TINY), "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sfp-ray: error: sfprompt seed 0: round 2: 1 of 3 clients succeeded, "
                              "federation.min_success_fraction=0.5 needs 2, also when the round was retried")
    assert "first error: InjectedFault" in err[-1]
    assert sum(line.startswith("sfp-ray: warning:") for line in err) == 2 * 2 + 1  # 2 failed clients per try
    assert list(pd.read_csv(out / "rounds.csv")["round"]) == [1]  # round 1 is kept, and resumable
    # with a lower bar the same faults are survived
    monkeypatch.setenv(ENV_VAR, "client:2:0:raise*4; client:2:1:exit*4")
    rc = main(["--quiet", "run", "--executor", "serial", *as_sets(TINY), "--set", "federation.min_success_fraction=0.3",
               "--out", str(tmp_path / "run2")])
    assert rc == 0
    rounds = pd.read_csv(tmp_path / "run2" / "rounds.csv")
    assert list(rounds["failed"]) == [0, 2, 0]


# --------------------------------------------------------------------------- server faults (serial)


@pytest.mark.slow  # several rounds or runs end to end
def test_a_lost_server_is_restarted_and_the_round_starts_over(tmp_path, monkeypatch, clean, capsys):
    # sfl: the server trains the body; the retried round starts from the last finished round's body
    monkeypatch.setenv(ENV_VAR, "server:2:exit")
    res, ex, warnings = run_serial("sfl", tmp_path / "a", ["prompt.num_tokens=0"])
    assert accuracies(res) == accuracies(clean["sfl"])
    assert all(torch.equal(res.final_state[k], v) for k, v in clean["sfl"].final_state.items())
    assert len(warnings) == 1 and "round 2: the server was lost" in warnings[0] and "starts over" in warnings[0]
    assert set(pd.read_csv(tmp_path / "a" / "clients.csv")["status"]) == {"ok"}
    # lost again in the retried round: the run stops with one line
    monkeypatch.setenv(ENV_VAR, "server:2:exit*2")
    rc = main(["--quiet", "run", "--executor", "serial", "--method", "sfl", *as_sets(TINY), "--set",
               "prompt.num_tokens=0", "--out", str(tmp_path / "b")])
    assert rc == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("sfp-ray: error: sfl seed 0: round 2: the server was lost") and "--resume" in last


@pytest.mark.slow  # several rounds or runs end to end
def test_a_failed_server_request_fails_only_that_client(tmp_path, monkeypatch, clean):
    monkeypatch.setenv(ENV_VAR, "server:3:raise")
    res, _, warnings = run_serial("sfprompt", tmp_path)
    clients = pd.read_csv(tmp_path / "clients.csv").set_index(["round", "client_id"])
    assert clients.loc[(3, 0), "status"] == "retried" and "the server failed a request" in clients.loc[(3, 0), "error"]
    assert accuracies(res) == accuracies(clean["sfprompt"]) and len(warnings) == 1


# --------------------------------------------------------------------------- Ray


def test_ray_recovers_a_killed_client_actor_and_a_killed_server_actor(ray_session, tmp_path, monkeypatch):
    """Pooled slots: client 0's actor exits in round 2, and the server actor exits in round 3.

    Three rpi4 clients on two slots: clients 0 and 2 share slot 0, so client 2, queued behind
    client 0 when its actor dies, fails its first attempt too. Both are retried on the
    restarted actor. In round 3 the server actor dies at its first request; it is restarted
    and the round starts over from round 2's global state (the body included: sfl). Besides,
    client 2's task raises once in round 1 (retried) and client 1 returns NaNs twice in round
    2 (failed, checked inside its actor).
    """
    import sfp_ray

    monkeypatch.setenv(ENV_VAR, "client:1:2:raise; client:2:0:exit; client:2:1:nan*2; server:3:exit")
    lines: list[str] = []
    r = sfp_ray.run([*TINY, "prompt.num_tokens=0", "ray.max_actors=2"], method="sfl", executor="ray",
                    out=tmp_path, plots=False, echo=lines.append)
    assert list(r.rounds["round"]) == [1, 2, 3] and list(r.rounds["finished"]) == [3, 2, 3]
    status = r.clients.set_index(["round", "client_id"])
    assert status.loc[(1, 2), "status"] == "retried" and status.loc[(1, 2), "error"].startswith("InjectedFault")
    assert status.loc[(2, 0), "status"] == "retried" and status.loc[(2, 2), "status"] == "retried"
    assert "died" in status.loc[(2, 0), "error"] and "died" in status.loc[(2, 2), "error"]
    assert status.loc[(2, 1), "status"] == "failed" and status.loc[(2, 1), "error"].startswith("NonFiniteError")
    assert (status.loc[3, "status"] == "ok").all()
    assert any("round 3: the server actor died; it was restarted; round 3 starts over" in ln for ln in lines)
    assert np.isfinite(r.rounds["test_accuracy"]).all()
    assert any("notice" in ln and "pooled mode" in ln for ln in lines)
