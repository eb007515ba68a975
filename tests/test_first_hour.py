"""A researcher's first hour (issue 25): mistakes caught before anything starts, fast listings, plots, sharing.

The command-line cases run in a fresh interpreter, as a user would type them, and are timed
from the interpreter's start: one line (exit 2) within 3 s, no ``--out`` folder, and neither
Ray nor torch imported. Listings must answer within 1 s without torch.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import as_sets, tiny

import sfp_ray
import sfp_ray.sweeps as sweeps
import sfp_ray.sweeps.run as sweep_run  # sweep() calls run_cell from here: tests patch it here
from sfp_ray.cli import build_parser, main
from sfp_ray.errors import ClusterError, ConfigError

#: Runs a command line in a fresh interpreter and prints which heavy modules it imported.
HARNESS = ("import sys; from sfp_ray.cli import main; rc = main(sys.argv[1:]); "
           "print('imported:', ' '.join(m for m in ('ray', 'torch', 'timm', 'pandas') if m in sys.modules)); "
           "sys.exit(rc)")

TINY = tiny("model.depth=3")



def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    """``sfp-ray ARGS`` in a fresh interpreter: exit code, stdout, stderr, wall seconds from its start."""
    full = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    full.update(env or {})
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", HARNESS, *args], cwd=cwd, env=full, capture_output=True, text=True,
                         timeout=120)
    return out.returncode, out.stdout, out.stderr, time.perf_counter() - t0


def stale_cluster_file(tmp: Path) -> tuple[dict[str, str], str, Path]:
    """A Ray temp folder whose ``ray_current_cluster`` names a cluster that is gone."""
    address = f"127.0.0.1:{closed_port()}"
    path = tmp / "raytmp" / "ray" / "ray_current_cluster"
    path.parent.mkdir(parents=True)
    path.write_text(address + "\n")
    return {"RAY_TMPDIR": str(tmp / "raytmp")}, address, path


# --------------------------------------------------------------------------- before anything starts

MISTAKES = {
    "unknown-dataset": (["--set", "data.name=mnist"], "data.name: unknown dataset 'mnist'"),
    "cut-beyond-a-3-block-model": (["--set", "model.depth=3", "--set", "split.head_blocks=5"],
                                   "split.head_blocks: 5 is beyond the model's depth (3 blocks)"),
    "device-class-without-catalogue": (["--set", "devices.mix={tablet: 1.0}"], "unknown device class 'tablet'"),
    "address-not-answering": (["--address", "127.0.0.1:{port}"], "cannot reach Ray at 127.0.0.1:{port}"),
    "address-malformed": (["--address", "headnode"], "--address 'headnode'"),
}


@pytest.mark.slow  # the CLI in a subprocess
@pytest.mark.parametrize("case", list(MISTAKES))
def test_a_mistake_is_one_line_within_3_s_with_no_ray_and_no_out_folder(case, tmp_path):
    args, expected = MISTAKES[case]
    port = str(closed_port())
    args = [a.replace("{port}", port) for a in args]
    rc, out, err, seconds = cli(["run", *args, "--out", str(tmp_path / "out")], cwd=tmp_path)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("sfp-ray: error: "), err
    assert expected.replace("{port}", port) in lines[0]
    assert seconds < 3.0, f"{seconds:.1f} s"
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
    imported = out.strip().splitlines()[-1].split()[1:]
    assert "ray" not in imported and "torch" not in imported, out  # Ray never started


@pytest.mark.slow  # the CLI in a subprocess
def test_a_stale_ray_current_cluster_fails_in_seconds_naming_the_address_and_the_file(tmp_path):
    env, address, path = stale_cluster_file(tmp_path)
    rc, out, err, seconds = cli(["run", "--address", "auto", "--out", str(tmp_path / "out")], tmp_path, env)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert address in lines[0] and str(path) in lines[0] and "--address auto" in lines[0]
    assert seconds < 3.0 and not (tmp_path / "out").exists()
    assert "ray" not in out.strip().splitlines()[-1].split()[1:]


def test_auto_resolves_like_ray_and_checks_what_it_found(tmp_path, monkeypatch):
    from sfp_ray.executors.ray.runtime import ray_address_file, resolve_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert ray_address_file() == tmp_path / "ray" / "ray_current_cluster"
    with pytest.raises(ClusterError, match="ray_current_cluster does not exist and RAY_ADDRESS is not set"):
        resolve_address("auto")
    ray_address_file().parent.mkdir()
    ray_address_file().write_text("not an address")
    with pytest.raises(ClusterError, match="holds 'not an address', not a HOST:PORT"):
        resolve_address("auto")
    with socket.socket() as live:  # a listening socket stands for a head that answers
        live.bind(("127.0.0.1", 0))
        live.listen()
        here = f"127.0.0.1:{live.getsockname()[1]}"
        ray_address_file().write_text(here + "\n")
        assert resolve_address("auto") == here
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{closed_port()}")  # RAY_ADDRESS comes first, as in Ray
        with pytest.raises(ClusterError, match="from RAY_ADDRESS"):
            resolve_address("auto")
    assert resolve_address("local") == "local"


def test_the_python_api_refuses_a_string_for_a_list_in_python_terms(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as e:
        sfp_ray.compare(["sfprompt"], overrides="federation.rounds=2", executor="serial", out=out)
    assert str(e.value).startswith("overrides: expected a list of 'KEY=VALUE' strings, got the string")
    assert "write overrides=['federation.rounds=2']" in str(e.value) and "--set" not in str(e.value)
    with pytest.raises(ConfigError, match=r"^methods: .*write methods=\['sfprompt', 'fl_full'\]"):
        sfp_ray.compare("sfprompt,fl_full", overrides=TINY, executor="serial", out=out)
    with pytest.raises(ConfigError, match=r"^seeds: .*write seeds=\[0, 1\]"):
        sfp_ray.run(overrides=TINY, seeds="0,1", executor="serial", out=out)
    with pytest.raises(ConfigError, match=r"^seeds: .*got the number 3; write seeds=\[3\]"):
        sfp_ray.run(overrides=TINY, seeds=3, executor="serial", out=out)
    with pytest.raises(ConfigError, match=r"^overrides 'federation\.rounds': expected KEY=VALUE"):
        sfp_ray.run(overrides=["federation.rounds"], executor="serial", out=out)
    with pytest.raises(ConfigError, match=r"^grid: .*write grid=\['split\.head_blocks=0,1'\]"):
        sfp_ray.sweep("split.head_blocks=0,1", ["fl_full"], overrides=TINY, executor="serial", out=out)
    assert not out.exists()


def test_global_flags_work_after_the_subcommand_too(tmp_path):
    parser = build_parser()
    assert parser.parse_args(["run", "--debug", "--quiet"]).debug is True
    assert parser.parse_args(["--debug", "run"]).debug is True  # the subcommand's copy does not undo it
    assert parser.parse_args(["run"]).debug is False and parser.parse_args(["methods", "--quiet"]).quiet is True
    with pytest.raises(ConfigError, match="federation.rounds"):  # --debug after the subcommand: the traceback
        main(["run", "--executor", "serial", "--set", "federation.rounds=0", "--debug"])


@pytest.mark.parametrize("args,hint", [
    (["run", "--methods", "sfprompt"], "run takes one --method NAME (several methods: sfp-ray compare --methods"),
    (["compare", "--mehtods", "sfprompt"], "did you mean --methods?"),
    (["sweep", "--grid", "a=1", "--seds", "0"], "did you mean --seeds?"),
])
def test_a_mistyped_flag_names_the_one_meant(args, hint, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and hint in err[0], err


def test_a_catalogue_reports_all_its_problems_at_once(tmp_path):
    from sfp_ray.devices import load_catalog

    path = tmp_path / "devices.yaml"
    path.write_text("devices:\n  tablet:\n    num_cpus: 0.5\n    memory_mb: 64\n    peak_flops: 1.0e9\n"
                    "    efficiency: 0\n    uplink_mbps: 10\n    downlink_mbps: 10\n    latency_ms: 5\n"
                    "  watch:\n    description: w\n    num_cpus: -1\n    num_gpus: 0\n    memory_mb: 8\n"
                    "    peak_flops: 1.0e8\n    efficiency: 0.5\n    uplink_mbps: 1\n    downlink_mbps: 1\n"
                    "    latency_ms: 5\n    colour: red\n")
    with pytest.raises(ConfigError) as e:
        load_catalog(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"devices.catalog: {path}: 4 problems: ")
    for part in ("device 'tablet': missing fields 'description', 'num_gpus'", "device 'tablet': efficiency must be",
                 "device 'watch': unknown field 'colour'", "device 'watch': num_cpus must be >= 0"):
        assert part in msg, part


@pytest.mark.parametrize("text,where", [
    ("federation:\n\trounds: 3\n", "line 2, column 1: a tab character"),
    ("federation:\n  rounds: 3\n  model: [1\n", "line 4, column 1"),
])
def test_a_yaml_error_gives_line_and_column_and_says_tab(text, where, tmp_path):
    from sfp_ray.config import load_config
    from sfp_ray.devices import load_catalog

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^--config: {path} is not valid YAML: {where}"):
        load_config(path)
    path.write_text("devices:\n" + text.replace("federation:", "  tiny:"))
    with pytest.raises(ConfigError, match=r"^devices\.catalog: .* is not valid YAML: line \d+, column \d+"):
        load_catalog(path)


# --------------------------------------------------------------------------- listings


@pytest.mark.slow  # the CLI in a subprocess
@pytest.mark.parametrize("command", ["methods", "devices", "datasets"])
def test_listings_answer_within_1_s_without_torch(command, tmp_path):
    rc, out, err, seconds = cli([command], tmp_path)
    assert rc == 0, err
    assert seconds < 1.0, f"sfp-ray {command} took {seconds:.2f} s"
    lines = out.strip().splitlines()
    assert lines[-1].split()[1:] == [], f"imported {lines[-1]}"
    if command == "methods":
        assert [ln.split()[0] for ln in lines[:-1]] == sfp_ray.list_methods()
        assert "fl_full              lr 0.0003  FedAvg" in out
    if command == "datasets":
        from sfp_ray.data.sources import list_datasets

        assert [ln.split()[0] for ln in lines[:-1]] == list_datasets()
        assert all(len(ln.split("  ")[-1]) > 40 for ln in lines[:-1]), out  # a description on every line


def test_the_catalogues_agree_with_the_objects_they_describe():
    from sfp_ray.data import dataset_num_classes, list_datasets
    from sfp_ray.methods import get_method
    from sfp_ray.methods.catalog import method_info

    for name in sfp_ray.list_methods():
        m, info = get_method(name), method_info(name)
        assert (m.description, m.default_lr, m.overrides, m.ignores) == (info.description, info.default_lr,
                                                                         dict(info.overrides), info.ignores)
    assert all(dataset_num_classes(d) for d in list_datasets())


# --------------------------------------------------------------------------- smart sweeps


def test_each_method_declares_the_keys_it_reads():
    from sfp_ray.config import Config
    from sfp_ray.methods import get_method

    full, sfp = get_method("fl_full").reads(), get_method("sfprompt").reads()
    assert not [k for k in full if k.split(".")[0] in ("split", "prompt", "pruning")]
    assert {"train.lr", "model.depth", "federation.rounds", "devices.mix", "seed"} <= set(full)
    assert {"split.head_blocks", "prompt.num_tokens", "pruning.keep_ratio"} <= set(sfp)
    base, cut = Config(), Config().replace(**{"split.head_blocks": 0})
    assert get_method("fl_full").effective_config(base) == get_method("fl_full").effective_config(cut)
    assert get_method("sfprompt").effective_config(base) != get_method("sfprompt").effective_config(cut)
    # a method's forced setting makes the swept value irrelevant too
    keep = Config().replace(**{"pruning.keep_ratio": 0.25})
    assert get_method("sfprompt_no_prune").effective_config(keep) == get_method("sfprompt_no_prune").effective_config(
        base)


@pytest.mark.slow  # several rounds or runs end to end
def test_a_sweep_over_the_cut_trains_fl_full_once_per_seed(tmp_path, monkeypatch, capsys):
    """The issue's case: split.head_blocks=0,1,2 x sfprompt,fl_full x seeds 0,1 trains fl_full twice, not six times."""
    trained: list[tuple[str, str, int]] = []
    real = sweeps.run_cell

    def counting(job, out):
        trained.extend((job.id, m, s) for m in job.methods for s in job.seeds)
        return real(job, out)

    monkeypatch.setattr(sweep_run, "run_cell", counting)
    rc = main(["--quiet", "sweep", "--grid", "split.head_blocks=0,1,2", "--methods", "sfprompt,fl_full",
               "--seeds", "0,1", "--executor", "serial", "--no-plots", "--out", str(tmp_path / "shared"),
               *as_sets(TINY)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert sorted((m, s) for _, m, s in trained if m == "fl_full") == [("fl_full", 0), ("fl_full", 1)]
    assert sum(1 for _, m, _ in trained if m == "sfprompt") == 6
    assert "12 runs in the grid (3 cells x 2 methods x 2 seeds), 8 distinct to train: 4 runs saved by sharing " \
           "(fl_full does not read split.head_blocks)" in captured.err
    assert "4 runs saved by sharing" in captured.out
    shared = pd.read_csv(tmp_path / "shared" / "sweep.csv")
    assert len(shared) == 12 and set(shared["status"]) == {"ok"}
    ref = shared[shared["method"] == "fl_full"]
    assert ref.groupby("seed")["final_accuracy"].nunique().eq(1).all()  # one run per seed, in every cell
    assert (ref["client_flops_ratio"] == 1.0).all()
    sfp = shared[shared["method"] == "sfprompt"].merge(ref, on=["cell_id", "seed"], suffixes=("", "_ref"))
    pd.testing.assert_series_equal(sfp["client_flops_ratio"], sfp["client_flops_per_client_round"]
                                   / sfp["client_flops_per_client_round_ref"], check_names=False)

    # without sharing every cell trains fl_full, and gets what the shared rows say: the declaration holds
    monkeypatch.setattr(sweep_run, "run_cell", real)
    full = sfp_ray.sweep({"split.head_blocks": [0, 2]}, ["sfprompt", "fl_full"], overrides=TINY, seeds=[0],
                         executor="serial", out=tmp_path / "unshared", plots=False, share=False)
    assert full.runs_saved == 0 and list(full.sweep.columns) == list(shared.columns)
    own = full.sweep[full.sweep["method"] == "fl_full"].drop(columns=["cell_id", "split.head_blocks"])
    first = ref[ref["seed"] == 0].drop(columns=["cell_id", "split.head_blocks"]).iloc[0]
    for _, row in own.iterrows():
        for col in ("final_accuracy", "client_flops_per_client_round", "bytes_per_client_round", "sim_s"):
            assert row[col] == first[col], col


# --------------------------------------------------------------------------- plots and tables


class Calls:
    """Records calls of matplotlib Axes methods (the plots are written to files; their content is checked here)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
        from matplotlib.axes import Axes

        self.calls: dict[str, list[tuple[tuple, dict]]] = {n: [] for n in names}
        for name in names:
            real = getattr(Axes, name)

            def record(ax, *args, _name=name, _real=real, **kwargs):
                self.calls[_name].append((args, kwargs))
                return _real(ax, *args, **kwargs)

            monkeypatch.setattr(Axes, name, record)


def _rounds(spread_out: bool) -> pd.DataFrame:
    """Two methods, two seeds, two rounds; fl_prompt sends 1000x fewer bytes; accuracies far apart per seed."""
    rows = []
    for method, mb in (("sfprompt", 50.0), ("fl_prompt", 0.05)):
        for seed, acc in ((0, 0.05), (1, 0.95 if spread_out else 0.1)):
            for rnd in (1, 2):
                rows.append({"run_id": f"{method}{seed}", "method": method, "seed": seed, "round": rnd,
                             "participants": 2, "test_accuracy": acc, "test_loss": 1.0, "wall_s": 1.0, "sim_s": 1.0,
                             "cum_sim_s": float(rnd), "bytes_total": int(mb * 1e6 * rnd), "client_flops_total": 1.0})
    return pd.DataFrame(rows)


def test_accuracy_bands_stay_in_0_1_and_bytes_go_log_past_10x(tmp_path, monkeypatch):
    from sfp_ray.reports import write_plots

    calls = Calls(monkeypatch, "fill_between", "set_xscale")
    costs = pd.DataFrame(columns=["method", "round", "client_id", "phase", "side", "flops"])
    write_plots(tmp_path, costs, _rounds(spread_out=True), pd.DataFrame())
    bands = calls.calls["fill_between"]
    assert len(bands) == 4  # two methods on two plots
    for (_xs, low, high), _ in bands:
        assert min(low) >= 0.0 and max(high) <= 1.0
    assert min(min(low) for (_, low, _), _ in bands) == 0.0  # the interval reached below 0 and was clipped
    assert [a for a, _ in calls.calls["set_xscale"]] == [("log",)]  # bytes span 1000x; simulated time 1x


def test_the_timeline_marks_every_selected_client_its_cut_and_the_server(tmp_path, monkeypatch):
    from sfp_ray.reports import plot_timeline

    seg = [(0, "ok", "download", "link", 0.0, 1.0), (0, "ok", "split_train", "client", 1.0, 2.0),
           (0, "ok", "split_train", "server", 2.0, 2.001), (0, "ok", "split_train", "wait", 2.001, 2.002),
           (0, "ok", "upload", "link", 2.002, 3.0), (1, "dropped", "download", "link", 0.0, 1.5),
           (2, "late", "download", "link", 0.0, 5.0)]
    pd.DataFrame([{"run_id": "r", "method": "sfprompt", "seed": 0, "round": 1, "client_id": c, "device": "rpi4",
                   "status": st, "phase": ph, "side": side, "start_s": a, "end_s": b}
                  for c, st, ph, side, a, b in seg]).to_csv(tmp_path / "timeline.csv", index=False)
    pd.DataFrame([{"run_id": "r", "method": "sfprompt", "seed": 0, "round": 1, "client_id": c, "device": dev,
                   "status": st, "head_blocks": h, "tail_blocks": t}
                  for c, dev, st, h, t in ((0, "rpi4", "ok", 1, 2), (1, "rpi4", "dropped", 1, 1),
                                           (2, "rpi4", "late", 2, 1), (3, "phone", "offline", 1, 1))]
                 ).to_csv(tmp_path / "clients.csv", index=False)
    (tmp_path / "config.yaml").write_text("federation:\n  deadline_s: 4.0\n")
    calls = Calls(monkeypatch, "set_yticklabels", "text", "barh", "axvline")
    assert plot_timeline(tmp_path).is_file()
    labels = calls.calls["set_yticklabels"][0][0][0]
    assert labels[0].startswith("server (busy 1 ms)")
    assert labels[1:] == ["0 rpi4  cut 1/2", "1 rpi4  cut 1/1 (dropped)", "2 rpi4  cut 2/1 (late)",
                          "3 phone  cut 1/1 (offline)"]
    texts = [a[2] for a, _ in calls.calls["text"]]
    assert any(t.startswith("DROPPED") for t in texts) and any(t.startswith("LATE") for t in texts)
    assert any(t.startswith("OFFLINE") for t in texts) and "server 1 ms, wait 1 ms" in texts
    widths = [a[1] for a, kw in calls.calls["barh"] if kw.get("hatch") == "///"]
    assert widths and min(widths) >= 0.004 * 5.0 * 0.999  # the 1 ms server segment is drawn visibly wide
    assert calls.calls["axvline"][0][0] == (4.0,)  # the deadline


def test_the_sweep_plot_has_a_bytes_panel(tmp_path, monkeypatch):
    calls = Calls(monkeypatch, "set_ylabel", "set_yscale")
    summary = pd.DataFrame([{"cell_id": f"c{v}", "k": v, "method": m, "status": "ok", "final_accuracy_mean": 0.5,
                             "final_accuracy_ci95": 0.9, "client_flops_ratio": 1.0, "bytes_ratio": b}
                            for v in (0, 1) for m, b in (("sfprompt", 0.3), ("fl_prompt", 0.002))])
    (path,) = sweeps.write_plots(tmp_path, summary, ["k"], ["sfprompt", "fl_prompt"])
    assert path.is_file()
    ylabels = [a[0] for a, _ in calls.calls["set_ylabel"]]
    assert ylabels == ["final test accuracy", "client FLOPs / fl_full (same cell and seeds)",
                       "bytes / fl_full (same cell and seeds) (log scale)"]


def test_every_ratio_to_fl_full_is_printed_in_one_format(tmp_path, capsys):
    from sfp_ray.projection import format_projection
    from sfp_ray.reports import format_summary

    summary = pd.DataFrame([{"method": m, "seeds": 1, "final_accuracy": 0.5, "client_flops_per_client_round": 1e9,
                             "bytes_per_client_round": 1e6, "sim_s": 1.0, "wall_s": 1.0, "client_flops_ratio": r,
                             "bytes_ratio": r / 10, "accuracy_delta": 0.0} for m, r in (("a", 0.001809), ("b", 1.0))])
    table = format_summary(summary)
    assert "0.00181" in table and "0.000181" in table and "1.00" in table
    proj = summary.assign(client_flops=1e9, server_flops=0.0, bytes_up=1e6, bytes_down=1e6)
    text = format_projection(proj)
    assert "0.00181" in text and "0.000181" in text and "%" not in text
    sweep = summary.assign(status="ok", final_accuracy_mean=0.5, final_accuracy_ci95=float("nan"), k=1)
    assert "0.00181" in sweeps.format_sweep(sweep, ["k"]) and "0.000181" in sweeps.format_sweep(sweep, ["k"])


def test_project_prints_what_it_assumed(tmp_path, capsys):
    assert main(["project", *as_sets(TINY), "--methods", "sfprompt", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ("assumed: 8 samples per client (data.samples_per_client), 10 classes (all of synthetic), 16x16 px images "
            "(model.img_size) with 1 channel, 3 blocks") in out
