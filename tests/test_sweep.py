"""Sweeps: every cell of a grid x methods x seeds, the tables, resuming, validation, projection, Ray tasks."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from conftest import as_sets, tiny

import sfp_ray
import sfp_ray.sweeps as sweeps
import sfp_ray.sweeps.run as sweep_run  # sweep() calls run_cell from here: tests patch it here
from sfp_ray.cli import main
from sfp_ray.errors import ConfigError
from sfp_ray.stats import spread

TINY = tiny()
GRID = {"split.head_blocks": [0, 1], "pruning.keep_ratio": [0.5, 1.0]}
KEYS = list(GRID)



@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """2 keys x 2 values x 2 methods x 2 seeds, serial, no plots: 16 runs in 4 cells."""
    out = tmp_path_factory.mktemp("sweep")
    res = sfp_ray.sweep(GRID, ["sfprompt", "fl_full"], overrides=TINY, seeds=[0, 1], executor="serial", out=out,
                        plots=False)
    return res


@pytest.mark.slow  # several rounds or runs end to end
def test_sweep_csv_has_a_row_per_cell_method_and_seed_with_the_swept_keys(swept):
    df = pd.read_csv(swept.out / "sweep.csv")
    assert len(df) == 2 * 2 * 2 * 2 == len(swept.sweep)
    assert list(df.columns[:6]) == ["cell_id", "split.head_blocks", "pruning.keep_ratio", "method", "seed", "status"]
    assert set(df["status"]) == {"ok"}
    cells = set(zip(df["split.head_blocks"], df["pruning.keep_ratio"]))
    assert cells == {(0, 0.5), (0, 1.0), (1, 0.5), (1, 1.0)}
    assert df.groupby(["cell_id", "method"]).size().eq(2).all() and set(df["seed"]) == {0, 1}
    for col in ("final_accuracy", "client_flops_per_client_round", "bytes_per_client_round", "sim_s",
                "client_flops_ratio", "bytes_ratio", "accuracy_delta"):
        assert col in df.columns, col
    # ratios are to fl_full in the same cell and seed
    ref = df[df["method"] == "fl_full"]
    assert (ref["client_flops_ratio"] == 1.0).all() and (ref["accuracy_delta"] == 0.0).all()
    sfp = df[df["method"] == "sfprompt"].merge(ref, on=["cell_id", "seed"], suffixes=("", "_ref"))
    pd.testing.assert_series_equal(sfp["client_flops_ratio"], sfp["client_flops_per_client_round"]
                                   / sfp["client_flops_per_client_round_ref"], check_names=False)
    pd.testing.assert_series_equal(sfp["accuracy_delta"], sfp["final_accuracy"] - sfp["final_accuracy_ref"],
                                   check_names=False)
    # the cut really changed between cells: sfprompt's client FLOPs grow with the head blocks
    flops = sfp.groupby("split.head_blocks")["client_flops_per_client_round"].mean()
    assert flops[1] > flops[0]
    # every cell is a regular, finished run folder
    for cid in df["cell_id"].unique():
        cell = swept.out / "cells" / cid
        assert (cell / "summary.csv").is_file() and (cell / "rounds.csv").is_file()
        assert json.loads((cell / sweeps.MARKER).read_text())["cell"] == cid
    print(df[["split.head_blocks", "pruning.keep_ratio", "method", "seed", "final_accuracy", "client_flops_ratio",
              "bytes_ratio"]].to_string())


@pytest.mark.slow  # several rounds or runs end to end
def test_sweep_summary_has_mean_and_ci_per_cell_and_method(swept):
    sm = pd.read_csv(swept.out / "sweep_summary.csv")
    assert len(sm) == 4 * 2
    assert {"final_accuracy_mean", "final_accuracy_std", "final_accuracy_ci95", "client_flops_ratio",
            "bytes_ratio", "accuracy_delta", "accuracy_delta_ci95", *KEYS} <= set(sm.columns)
    assert (sm["seeds"] == 2).all()
    runs = pd.read_csv(swept.out / "sweep.csv")
    for _, row in sm.iterrows():
        accs = runs[(runs["cell_id"] == row["cell_id"]) & (runs["method"] == row["method"])]["final_accuracy"]
        s = spread(accs.tolist())
        assert row["final_accuracy_mean"] == pytest.approx(s.mean)
        assert row["final_accuracy_std"] == pytest.approx(s.std, nan_ok=True)
        assert row["final_accuracy_ci95"] == pytest.approx(s.ci95, nan_ok=True)


@pytest.mark.slow  # several rounds or runs end to end
def test_plots_one_png_per_swept_key(swept, tmp_path):
    paths = sweeps.write_plots(tmp_path, swept.summary, KEYS, ["sfprompt", "fl_full"])
    assert sorted(p.name for p in paths) == ["sweep_pruning.keep_ratio.png", "sweep_split.head_blocks.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


@pytest.mark.slow  # several rounds or runs end to end
def test_restarting_a_finished_sweep_trains_nothing_and_rewrites_the_same_table(swept, monkeypatch, capsys):
    before = (swept.out / "sweep.csv").read_bytes()
    run_cell = sweeps.run_cell

    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell ran again")

    monkeypatch.setattr(sweep_run, "run_cell", no_training)
    # the same sweep through the command line: every cell is found finished
    rc = main(["--quiet", "sweep", "--grid", "split.head_blocks=0,1", "--grid", "pruning.keep_ratio=0.5,1.0",
               "--methods", "sfprompt,fl_full", "--seeds", "0,1", "--executor", "serial", "--no-plots",
               "--out", str(swept.out), *as_sets(TINY)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "4 of 4 cells already finished" in out.err and "0 run now, 4 already finished" in out.out
    assert (swept.out / "sweep.csv").read_bytes() == before

    # an interrupted cell (no marker) runs again, and only that one
    ran = []
    monkeypatch.setattr(sweep_run, "run_cell", lambda job, out: ran.append(job.id) or run_cell(job, out))
    victim = swept.sweep["cell_id"].iloc[-1]
    (swept.out / "cells" / victim / sweeps.MARKER).unlink()
    res = sfp_ray.sweep(GRID, ["sfprompt", "fl_full"], overrides=TINY, seeds=[0, 1], executor="serial",
                        out=swept.out, plots=False)
    assert ran == [victim] and res.ran == [victim] and len(res.skipped) == 3
    after = pd.read_csv(swept.out / "sweep.csv")
    kept = after["cell_id"] != victim
    pd.testing.assert_frame_equal(after[kept], pd.read_csv(io.BytesIO(before))[kept])


def test_invalid_grid_keys_and_values_fail_before_any_run(tmp_path, capsys):
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=r"^--grid split\.head_blockz: unknown configuration key"):
        sfp_ray.sweep({"split.head_blockz": [0, 1]}, ["fl_full"], overrides=TINY, executor="serial", out=out)
    with pytest.raises(ConfigError, match=r"^--grid pruning\.keep_ratio=1\.5: must be in \(0, 1\]"):
        sfp_ray.sweep({"pruning.keep_ratio": [0.5, 1.5]}, ["fl_full"], overrides=TINY, executor="serial", out=out)
    with pytest.raises(ConfigError, match=r"^--grid data\.name=nope: unknown dataset"):
        sfp_ray.sweep({"data.name": ["synthetic", "nope"]}, ["fl_full"], overrides=TINY, executor="serial", out=out)
    with pytest.raises(ConfigError, match=r"^--grid seed: cannot be swept"):
        sfp_ray.sweep({"seed": [0, 1]}, ["fl_full"], overrides=TINY, executor="serial", out=out)
    assert not out.exists()
    rc = main(["sweep", "--grid", "split.head_blockz=0,1", "--executor", "serial", "--out", str(out), *as_sets(TINY)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("sfp-ray: error: --grid split.head_blockz:")
    assert not out.exists()


def test_cells_a_method_cannot_run_are_reported_not_run(tmp_path):
    """A cut deeper than the 2-block model: that cell is invalid (status, error); the other one runs."""
    notes = []
    res = sfp_ray.sweep({"split.head_blocks": [0, 2]}, ["fl_full"], overrides=TINY, seeds=[0], executor="serial",
                        out=tmp_path, plots=False, echo=notes.append)
    df = pd.read_csv(tmp_path / "sweep.csv")
    assert list(df["status"]) == ["ok", "invalid"]
    assert "split.head_blocks + split.tail_blocks" in df["error"].iloc[1]
    assert res.ran == ["split.head_blocks=0"] and not (tmp_path / "cells" / "split.head_blocks=2").exists()
    assert any("split.head_blocks=2: skipping fl_full" in n for n in notes)


@pytest.mark.slow  # several rounds or runs end to end
def test_a_failing_cell_is_recorded_the_others_go_on_and_it_runs_again_next_time(tmp_path, monkeypatch):
    real = sweeps.run_cell

    def flaky(job, out):
        if job.id == "train.batch_size=4":
            raise RuntimeError("out of memory\nmore detail")
        return real(job, out)

    monkeypatch.setattr(sweep_run, "run_cell", flaky)
    grid = {"train.batch_size": [4, 8]}
    res = sfp_ray.sweep(grid, ["fl_full"], overrides=TINY, seeds=[0], executor="serial", out=tmp_path, plots=False)
    assert res.failed == {"train.batch_size=4": "RuntimeError: out of memory"} and res.ran == ["train.batch_size=8"]
    df = pd.read_csv(tmp_path / "sweep.csv")
    assert list(df["status"]) == ["failed", "ok"] and df["error"].iloc[0] == "RuntimeError: out of memory"
    monkeypatch.setattr(sweep_run, "run_cell", real)
    again = sfp_ray.sweep(grid, ["fl_full"], overrides=TINY, seeds=[0], executor="serial", out=tmp_path, plots=False)
    assert again.ran == ["train.batch_size=4"] and again.skipped == ["train.batch_size=8"] and not again.failed
    assert set(pd.read_csv(tmp_path / "sweep.csv")["status"]) == {"ok"}


def test_project_grid_writes_one_row_per_cell_and_method(tmp_path):
    rc = main(["project", *as_sets(TINY), "--grid", "split.head_blocks=0,1", "--grid", "prompt.num_tokens=2,4",
               "--methods", "sfprompt", "--out", str(tmp_path)])
    assert rc == 0
    df = pd.read_csv(tmp_path / "projection.csv")
    assert list(df.columns[:3]) == ["cell_id", "split.head_blocks", "prompt.num_tokens"]
    for _, g in df.groupby("method"):  # fl_full joins as the reference of the ratios
        assert len(g) == 4 and g["cell_id"].is_unique
    assert set(df["method"]) == {"sfprompt", "fl_full"}
    sfp = df[df["method"] == "sfprompt"]  # the projection's own columns show the swept values took effect
    assert (sfp["split.head_blocks"] == sfp["head_blocks"]).all()
    assert (sfp["prompt.num_tokens"] == sfp["num_prompts"]).all()


def test_ray_runs_cells_as_concurrent_tasks_on_one_cluster(tmp_path, ray_session):
    """Two cells on the 4-CPU test cluster: two tasks of 2 CPUs each, placed by Ray at the same time.

    The swept key is one fl_full reads, so that both cells train (see the sharing tests).
    """
    res = sfp_ray.sweep({"train.batch_size": [4, 8]}, ["fl_full"], overrides=TINY, seeds=[0], executor="ray",
                        out=tmp_path, plots=False)
    assert sorted(res.ran) == ["train.batch_size=4", "train.batch_size=8"] and not res.failed
    assert len(pd.read_csv(tmp_path / "sweep.csv")) == 2
    marks = [json.loads((tmp_path / "cells" / c / sweeps.MARKER).read_text()) for c in res.ran]
    assert marks[0]["pid"] != marks[1]["pid"]
    (a0, a1), (b0, b1) = sorted((m["started"], m["finished"]) for m in marks)
    assert b0 < a1, "the two cells did not run at the same time"
    for c in res.ran:
        assert (tmp_path / "cells" / c / "summary.csv").is_file()
