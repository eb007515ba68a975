"""Checkpoints and ``--resume``: an interrupted run continues to exactly the uninterrupted result.

Every interrupted run here is compared with one uninterrupted ``compare`` of sfprompt
(pruning: the kept EL2N indices must survive the interruption) and sfl (the server trains
the body: the body state must survive it), 3 rounds on a tiny model, serial executor, where
the resumed ``rounds.csv`` accuracies and the final states must be equal bit for bit.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import as_sets, tiny

import sfp_ray
from sfp_ray import orchestrator
from sfp_ray.api import resume
from sfp_ray.checkpoints import checkpoint_path, load_run_state
from sfp_ray.cli import main

TINY = tiny("model.depth=3", "federation.num_clients=3", "federation.clients_per_round=3", "federation.rounds=3",
            "train.batch_size=4")
METHODS = ["sfprompt", "sfl"]



class Stop(KeyboardInterrupt):
    """Raised by the progress hook: the driver stops after a round's checkpoint."""


def stop_after(method: str, round: int):
    def hook(rec) -> None:
        if rec.method == method and rec.round == round:
            raise Stop

    return hook


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted compare of sfprompt and sfl."""
    out = tmp_path_factory.mktemp("reference")
    sfp_ray.compare(METHODS, overrides=TINY, executor="serial", out=out, plots=False)
    return out


def rows(out, name: str, method: str) -> pd.DataFrame:
    df = pd.read_csv(out / name, float_precision="round_trip")
    return df[df["method"] == method].drop(columns=["run_id"]).reset_index(drop=True)


def assert_same_run(out, reference, method: str) -> None:
    """Bit-identical accuracies and final state; the same rows, none duplicated."""
    got, ref = rows(out, "rounds.csv", method), rows(reference, "rounds.csv", method)
    assert list(got["round"]) == [1, 2, 3]
    assert list(got["test_accuracy"]) == list(ref["test_accuracy"])
    assert list(got["test_loss"]) == list(ref["test_loss"])
    assert list(got["bytes_total"]) == list(ref["bytes_total"])
    assert list(got["client_flops_total"]) == list(ref["client_flops_total"])
    for name in ("costs.csv", "clients.csv", "messages.csv"):
        g, r = rows(out, name, method), rows(reference, name, method)
        assert len(g) == len(r), name
        assert (g.groupby("round").size() == r.groupby("round").size()).all(), name
    assert rows(out, "rounds.csv", method).shape[0] == 3
    a = torch.load(out / f"final_state_{method}_seed0.pt")
    b = torch.load(reference / f"final_state_{method}_seed0.pt")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    rounds = pd.read_csv(out / "rounds.csv")
    assert rounds[rounds["method"] == method]["run_id"].nunique() == 1  # the resumed run kept its run id


@pytest.mark.slow  # several rounds or runs end to end
def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, reference, capsys):
    out = tmp_path / "run"
    with pytest.raises(Stop):
        sfp_ray.run(TINY, method="sfprompt", executor="serial", out=out, plots=False,
                    progress=stop_after("sfprompt", 2))
    ck = load_run_state(checkpoint_path(out, "sfprompt", 0))
    assert ck["round"] == 2 and not ck["finished"] and ck["server"] is None
    assert sorted(ck["client_states"]) == [0, 1, 2] and all(len(s["kept"]) == 4 for s in ck["client_states"].values())
    assert list(pd.read_csv(out / "rounds.csv")["round"]) == [1, 2]
    # a --set that repeats the saved configuration is no conflict
    assert main(["--quiet", "run", "--resume", str(out), "--set", "federation.rounds=3"]) == 0
    assert "sfprompt seed 0: resuming after round 2 of 3" in capsys.readouterr().err
    assert_same_run(out, reference, "sfprompt")
    assert load_run_state(checkpoint_path(out, "sfprompt", 0))["finished"]
    # resuming a finished run changes nothing
    before = pd.read_csv(out / "clients.csv")
    assert main(["--quiet", "run", "--resume", str(out)]) == 0
    assert "finished before" in capsys.readouterr().err
    pd.testing.assert_frame_equal(pd.read_csv(out / "clients.csv"), before)


@pytest.mark.slow  # several rounds or runs end to end
def test_rows_flushed_after_the_last_checkpoint_are_dropped(tmp_path, reference, monkeypatch):
    """A driver killed between a round's rows and its checkpoint: the round runs again, its rows once."""
    real = orchestrator.save_run_state

    def killed_before_round_2s_checkpoint(path, ckpt):
        if ckpt["round"] == 2:
            raise Stop
        real(path, ckpt)

    out = tmp_path / "run"
    monkeypatch.setattr(orchestrator, "save_run_state", killed_before_round_2s_checkpoint)
    with pytest.raises(Stop):
        sfp_ray.run(TINY, method="sfprompt", executor="serial", out=out, plots=False)
    monkeypatch.undo()
    assert list(pd.read_csv(out / "rounds.csv")["round"]) == [1, 2]
    assert load_run_state(checkpoint_path(out, "sfprompt", 0))["round"] == 1
    resume(out, plots=False)
    assert_same_run(out, reference, "sfprompt")


@pytest.mark.slow  # several rounds or runs end to end
def test_compare_resumes_method_by_method(tmp_path, reference, capsys):
    out = tmp_path / "cmp"
    with pytest.raises(Stop):
        sfp_ray.compare(METHODS, overrides=TINY, executor="serial", out=out, plots=False,
                        progress=stop_after("sfl", 2))
    first_id = pd.read_csv(out / "rounds.csv").query("method == 'sfprompt'")["run_id"].iloc[0]
    ck = load_run_state(checkpoint_path(out, "sfl", 0))
    assert ck["round"] == 2 and ck["server"] and all(k.startswith("body.") for k in ck["server"])
    assert main(["--quiet", "compare", "--resume", str(out), "--methods", ",".join(METHODS), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "sfprompt seed 0: finished before; kept as it is" in err and "sfl seed 0: resuming after round 2" in err
    for m in METHODS:
        assert_same_run(out, reference, m)
    assert pd.read_csv(out / "rounds.csv").query("method == 'sfprompt'")["run_id"].iloc[0] == first_id
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["method"]) == METHODS
    assert list(summary["final_accuracy"]) == list(pd.read_csv(reference / "summary.csv")["final_accuracy"])
    assert (out / "config.yaml").read_text().count("run_id:") == 2


@pytest.mark.parametrize("args, expected", [
    (["run", "--resume", "{missing}"], "--resume: not a folder"),
    (["run", "--resume", "{empty}"], "is not a resumable sfp-ray run folder"),
    (["run", "--resume", "{run}", "--set", "federation.rounds=5"],
     "--resume: federation.rounds=5 conflicts with the run being resumed (federation.rounds=3 in"),
    (["compare", "--resume", "{run}", "--methods", "fl_full"], "--resume: methods fl_full conflict"),
    (["run", "--resume", "{run}", "--seeds", "0,1"], "--resume: seeds 0,1 conflict"),
    (["run", "--resume", "{run}", "--out", "{empty}"], "a resumed run writes into its own folder"),
], ids=["missing", "not-a-run", "conflicting-set", "conflicting-methods", "conflicting-seeds", "out-elsewhere"])
def test_resume_errors_are_one_line(tmp_path_factory, capsys, args, expected):
    base = tmp_path_factory.getbasetemp() / "resume-errors"
    run = base / "run"
    if not (run / "checkpoint" / "run.yaml").is_file():
        with pytest.raises(Stop):
            sfp_ray.run(TINY, method="fl_linear", executor="serial", out=run, plots=False,
                        progress=stop_after("fl_linear", 1))
    (base / "empty").mkdir(exist_ok=True)
    paths = {"missing": base / "missing", "empty": base / "empty", "run": run}
    assert main(["--quiet", *[a.format(**paths) for a in args]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sfp-ray: error: ") and expected in err[0], err


@pytest.mark.slow  # a driver in a subprocess, killed mid-run
def test_sigkill_of_the_driver_loses_at_most_the_round_in_progress(tmp_path, reference):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "sfp_ray", "--quiet", "run", "--executor", "serial", "--no-plots", *as_sets(TINY),
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            p = out / "rounds.csv"
            if p.is_file() and len(pd.read_csv(p)) >= 2:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ck = load_run_state(checkpoint_path(out, "sfprompt", 0))
    assert ck is not None and ck["round"] in (1, 2)  # round 2's rows were out; its checkpoint may have been
    assert main(["--quiet", "run", "--resume", str(out), "--no-plots"]) == 0
    assert_same_run(out, reference, "sfprompt")


def test_ray_resume_gives_the_same_accuracies(ray_session, tmp_path):
    """On Ray: an uninterrupted run, and one stopped after round 2 and resumed, on one actor pool."""
    from sfp_ray.config import load_config
    from sfp_ray.executors.ray import ActorPool, RayExecutor
    from sfp_ray.orchestrator import Orchestrator
    from sfp_ray.preparation import prepare_run

    spec = prepare_run(load_config(overrides=[*TINY, "federation.num_clients=2", "federation.clients_per_round=2",
                                              "devices.mix={rpi4: 1.0}"]), "sfprompt")
    pool = ActorPool.for_specs([spec])
    path = tmp_path / "sfprompt.pt"
    try:
        with RayExecutor(pool) as ex:
            whole = Orchestrator(spec, ex).run()
        with RayExecutor(pool) as ex, pytest.raises(Stop):
            Orchestrator(spec, ex, checkpoint=path, progress=stop_after("sfprompt", 2)).run()
        ck = load_run_state(path)
        assert ck["round"] == 2 and ck["executor"] == "ray"
        with RayExecutor(pool) as ex:
            rest = Orchestrator(spec, ex, resume=ck).run()
    finally:
        pool.close()
    assert [r.round for r in rest.rounds] == [3] and rest.meta.run_id == ck["run_id"]
    assert rest.rounds[0].test_accuracy == whole.rounds[-1].test_accuracy
    assert rest.rounds[0].bytes_total == whole.rounds[-1].bytes_total
    assert max(float((whole.final_state[k] - rest.final_state[k]).abs().max()) for k in whole.final_state) <= 1e-6
    for c, st in whole.client_states.items():
        np.testing.assert_array_equal(rest.client_states[c]["kept"], st["kept"])
