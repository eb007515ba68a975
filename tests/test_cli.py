"""The command line and the report contract, end to end on synthetic data."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from conftest import as_sets, tiny

from sfp_ray.cli import main
from sfp_ray.config import load_config
from sfp_ray.executors.serial import SerialExecutor
from sfp_ray.orchestrator import Orchestrator
from sfp_ray.preparation import prepare_run
from sfp_ray.reports import COST_COLUMNS, ROUND_COLUMNS, ReportSink

TINY = tiny("model.depth=3", "data.samples_per_client=24", "data.test_samples=64", "federation.num_clients=3",
            "federation.rounds=2", "train.batch_size=8")



@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory, ray_session):
    """The default path: ``sfp-ray compare`` with no executor flag runs on Ray actors."""
    out = tmp_path_factory.mktemp("cmp")
    rc = main(["--quiet", "compare", "--methods", "sfprompt,fl_full", *as_sets(TINY), "--out", str(out)])
    assert rc == 0
    return out


def test_compare_writes_the_report_contract(compare_dir):
    for name in ("costs.csv", "costs.parquet", "rounds.csv", "summary.csv", "config.yaml", "messages.csv",
                 "clients.csv", "resources.csv", "accuracy_vs_bytes.png", "accuracy_vs_sim_time.png",
                 "client_flops_by_method.png"):
        assert (compare_dir / name).is_file(), name
    costs = pd.read_parquet(compare_dir / "costs.parquet")
    assert list(costs.columns[: len(COST_COLUMNS)]) == COST_COLUMNS
    rounds = pd.read_csv(compare_dir / "rounds.csv")
    assert set(ROUND_COLUMNS) <= set(rounds.columns)
    assert sorted(rounds["method"].unique()) == ["fl_full", "sfprompt"]
    assert set(costs[costs.method == "sfprompt"]["phase"]) == {
        "download", "prune", "local_update", "split_train", "upload", "aggregate", "eval"}
    assert set(costs[costs.method == "fl_full"]["phase"]) == {"download", "local_train", "upload", "aggregate", "eval"}
    assert set(costs["part"]) <= {"head", "body", "tail", "prompt", "all"}
    assert set(costs["side"]) == {"client", "server", "link"}
    assert set(pd.read_csv(compare_dir / "resources.csv")["executor"]) == {"ray"}  # the default executor
    # cumulative columns really accumulate
    for _, g in rounds.groupby("method"):
        assert g["bytes_total"].is_monotonic_increasing and g["client_flops_total"].is_monotonic_increasing
    summary = pd.read_csv(compare_dir / "summary.csv")
    ref = summary.set_index("method").loc["fl_full"]
    assert ref["client_flops_ratio"] == pytest.approx(1.0) and ref["bytes_ratio"] == pytest.approx(1.0)
    s = summary.set_index("method").loc["sfprompt"]
    own, fl = s["client_flops_per_client_round"], ref["client_flops_per_client_round"]
    assert s["client_flops_ratio"] == pytest.approx(own / fl)
    assert s["client_flops_ratio"] > 0  # tiny model: head + tail are most of it, so no bound below 1
    cfg = (compare_dir / "config.yaml").read_text()
    assert "versions:" in cfg and "torch:" in cfg and "seed: 0" in cfg


def test_report_rebuilds_summary_and_plots(compare_dir, capsys):
    before = pd.read_csv(compare_dir / "summary.csv")
    (compare_dir / "summary.csv").unlink()
    (compare_dir / "accuracy_vs_bytes.png").unlink()
    assert main(["report", str(compare_dir)]) == 0
    after = pd.read_csv(compare_dir / "summary.csv")
    pd.testing.assert_frame_equal(before, after)
    assert (compare_dir / "accuracy_vs_bytes.png").is_file()
    assert "sfprompt" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, key",
    [
        (["run", "--set", "federation.num_clients=0"], "federation.num_clients"),
        (["run", "--set", "pruning.keep_ratio=1.5"], "pruning.keep_ratio"),
        (["run", "--set", "federation.clients_per_round=20"], "federation.clients_per_round"),
        (["run", "--set", "train.optimizer=lbfgs"], "train.optimizer"),
        (["run", "--set", "no.such_key=1"], "no.such_key"),
        (["run", "--method", "fedprox"], "fedprox"),
        (["run", "--config", "/nonexistent.yaml"], "/nonexistent.yaml"),
        (["report", "/nonexistent-run"], "/nonexistent-run"),
        (["run", *as_sets(TINY), "--set", "split.head_blocks=3"], "split.head_blocks"),
        # the data is read once Ray has started (the default executor): a Ray test
        pytest.param(["run", *as_sets([t for t in TINY if not t.startswith("data.name")]), "--set", "data.name=cifar10",
                      "--set", "data.root=/nonexistent-data"], "cifar", marks=pytest.mark.slow),
    ],
)
def test_bad_input_exits_2_with_one_line(args, key, capsys):
    assert main(["--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sfp-ray: error:") and key in err[0], err


@pytest.mark.slow  # the CLI in a subprocess
def test_python_dash_m_is_the_same_program():
    out = subprocess.run([sys.executable, "-m", "sfp_ray", "methods"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "sfprompt" in out.stdout and "fl_full" in out.stdout


@pytest.mark.slow  # several rounds or runs end to end
def test_rows_are_flushed_every_round_so_a_crash_keeps_finished_rounds(tmp_path):
    class Crashing(SerialExecutor):
        def run_clients(self, specs, state, on_done=None):
            if specs[0].round == 2:
                raise RuntimeError("node lost")
            return super().run_clients(specs, state, on_done)

    cfg = load_config(overrides=TINY + ["federation.rounds=3"])
    sink = ReportSink(tmp_path, plots=False)
    with pytest.raises(RuntimeError):
        Orchestrator(prepare_run(cfg, "sfprompt"), Crashing(), [sink]).run()
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    costs = pd.read_csv(tmp_path / "costs.csv")
    assert list(rounds["round"]) == [1] and set(costs["round"]) == {1}


@pytest.mark.slow  # several rounds or runs end to end
def test_pretrain_then_run_uses_the_cached_backbone(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SFP_CACHE_DIR", str(tmp_path / "cache"))
    small = [t for t in TINY if not t.startswith("model.checkpoint")] + [
        "pretrain.dataset=synthetic", "pretrain.classes=[0,1,2]", "pretrain.max_samples=64", "pretrain.epochs=1",
        "data.classes=[3,4,5]", "federation.rounds=1"]
    assert main(["--quiet", "pretrain", *as_sets(small)]) == 0
    cached = list((tmp_path / "cache").glob("pretrain-*.pt"))
    assert len(cached) == 1
    assert main(["--quiet", "pretrain", *as_sets(small)]) == 0  # second time: cached, nothing redone
    assert "already cached" in capsys.readouterr().out
    assert main(["--quiet", "run", "--executor", "serial", *as_sets(small), "--out", str(tmp_path / "run")]) == 0
    assert str(cached[0]) in (tmp_path / "run" / "config.yaml").read_text()


def test_project_writes_projection_csv(tmp_path):
    out = tmp_path / "proj"
    rc = main(["project", "--model", "vit_tiny_patch16_224", "--methods", "sfprompt,fl_linear",
               "--set", "project.img_size=64", "--set", "project.samples_per_client=10", "--out", str(out)])
    assert rc == 0
    df = pd.read_csv(out / "projection.csv")
    for col in ("method", "model", "samples_per_client", "client_flops", "server_flops", "bytes_up", "bytes_down",
                "client_flops_ratio", "bytes_ratio"):
        assert col in df.columns
    assert set(df["method"]) == {"sfprompt", "fl_linear", "fl_full"}
    assert df.set_index("method").loc["fl_full", "client_flops_ratio"] == pytest.approx(1.0)
