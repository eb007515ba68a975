"""Validation of the simulated clock: simulated compute seconds against measured wall seconds.

Calibrates this machine as a device class (``sfp-ray devices calibrate``, one thread, the
default cut 1/1, batch sizes 8 and 16), then runs every registered method at cuts 0/0, 1/1
and 2/2 and both batch sizes on that class (clients and server), with the serial executor at
one thread (one client at a time: nothing else of the run competes for the CPU) and free
links (``devices.free_links``: compute only). Round 1 is a warm-up (the FLOP meter counts
each pass shape once, under the counter); the later rounds are compared:

* per client and round: its simulated compute seconds (``compute_sim_s`` of ``clients.csv``)
  against the measured wall seconds of the same compute (``compute_wall_s``: its passes and
  optimizer steps, timed as they ran);
* per client and round, for methods with a server: the body's simulated seconds against the
  body requests' measured compute (the ``server`` rows of ``costs.csv``);
* the whole client round as ``clients.csv`` has it (``sim_s`` against ``wall_s``: compute,
  the server's work for it and the in-process bookkeeping in between).

A cell's figure is the median over its clients and rounds. Targets: the median over cells of
|simulated / measured - 1| at most 10 %, the worst cell within 25 %.

Timings depend on what else the machine does. Each cell records how busy other processes kept
the machine's CPUs while it ran (from ``/proc/stat``, Linux), so a cell that missed because the
machine was busy can be told from one the model misses. ``--timer cpu`` compares (and
calibrates) with the CPU time of the computing thread instead of wall time, which leaves out
the time the system gave other processes (the Ledger records both); ``--quiet-wait S`` waits
up to S seconds before each cell for other processes to quieten.

Writes ``benchmarks/results/clock.csv`` (one row per client, round and cell), ``clock.md``
(one row per method x cut x batch, the per-part diagnosis and the figures against the
targets), ``clock_host.yaml`` (the calibrated class) and the table into ``docs/clock.md``
(between its ``clock.py`` markers). Before each cell four calibration probes are timed again: their
modelled / measured ratio (*drift*) says how much faster or slower the machine runs than when it
was calibrated; the figures divided by it are reported beside the raw ones. Run:
``.venv/bin/python benchmarks/clock.py [--methods all] [--cuts 0,1,2] [--batch-sizes 8,16] [--rounds 3]
[--clients 3] [--samples 32] [--repeats 7] [--timer wall|cpu] [--catalog FILE] [--quiet-wait S]
[--out benchmarks/results]``
(about 8 minutes on a quiet 2-core machine).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported (see sfp_ray/cli/commands.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import sfp_ray  # noqa: E402
from sfp_ray.calibration import calibrate, cpu_name, summary_line, write_catalog  # noqa: E402
from sfp_ray.config import load_config  # noqa: E402
from sfp_ray.devices import load_catalog  # noqa: E402
from sfp_ray.methods import list_methods  # noqa: E402

HERE = Path(__file__).parent
ROOT = HERE.parent
DOCS = ROOT / "docs" / "clock.md"
BEGIN, END = "<!-- clock.py table: begin -->", "<!-- clock.py table: end -->"
NAME = "host"


def say(msg: str) -> None:
    print(f"clock: {msg}", file=sys.stderr, flush=True)


def cpu_jiffies() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs so far (Linux), or None."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


class Busy:
    """How many CPUs others kept busy while a block ran: all CPUs' busy time minus this process's, per second."""

    def __enter__(self) -> Busy:
        self.j0, self.p0, self.t0 = cpu_jiffies(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        j1, p1, t1 = cpu_jiffies(), time.process_time(), time.perf_counter()
        if self.j0 is None or j1 is None or t1 <= self.t0:
            self.others = float("nan")
            return
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        busy = (j1[0] - self.j0[0]) / hz
        self.others = max(0.0, (busy - (p1 - self.p0)) / (t1 - self.t0))


def wait_quiet(limit_s: float, threshold: float = 0.3) -> float:
    """Wait (at most ``limit_s``) for a 2-second spell in which other processes keep under ``threshold`` CPUs busy.

    Returns the seconds waited. Nothing is waited for when ``limit_s`` is 0 or ``/proc/stat`` is missing.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        with Busy() as b:
            time.sleep(2.0)
        if math.isnan(b.others) or b.others < threshold:
            break
    return time.perf_counter() - t0


#: Calibration probes re-timed before every cell to tell how the machine's speed drifted since the calibration.
REFERENCE = ("model fwd+bwd (fl_full) b16", "body fwd b16", "tail fwd+bwd b16", "adam step, prompts + tail")


def drift(cal: object, timer: str) -> float:
    """Modelled / measured seconds of the reference probes now (1.00: the machine runs as when calibrated)."""
    clock = time.perf_counter if timer == "wall" else time.thread_time
    probes = [p for p in cal.probes if p.label in REFERENCE] if cal is not None else []
    if not probes:
        return float("nan")
    model = measured = 0.0
    for p in probes:
        times = []
        for _ in range(3):
            p.setup()
            t0 = clock()
            p.run()
            times.append(clock() - t0)
        measured += statistics.median(times)
        model += cal.predicted(p)
    return model / measured


def base_overrides(args: argparse.Namespace) -> list[str]:
    return ["data.name=synthetic", "model.checkpoint=none", "data.partition=iid",
            f"federation.num_clients={args.clients}", f"federation.clients_per_round={args.clients}",
            f"federation.rounds={args.rounds}", f"federation.eval_every={args.rounds}",
            f"data.samples_per_client={args.samples}", "data.test_samples=16", "pruning.every_round=true"]


def run_cell(method: str, cut: int, batch: int, catalog: Path, args: argparse.Namespace,
             tmp: Path, cal: object) -> tuple[list[dict], dict[str, float]]:
    """One method x cut x batch: its measured rows (rounds after the first) and the machine's state."""
    over = [*base_overrides(args), f"split.head_blocks={cut}", f"split.tail_blocks={cut}", f"train.batch_size={batch}",
            f"devices.catalog={catalog}", f"devices.mix={{{NAME}: 1.0}}", f"devices.server={NAME}",
            "devices.free_links=true"]
    out = tmp / f"{method}-{cut}-{batch}"
    waited = wait_quiet(args.quiet_wait)
    now = drift(cal, args.timer)
    with Busy() as busy:
        r = sfp_ray.run(overrides=over, method=method, executor="serial", threads=1, out=out, plots=False)
    c = r.clients[r.clients["round"] > 1]
    costs = r.costs[(r.costs["round"] > 1) & (r.costs["side"] == "server") & (r.costs["phase"] != "eval")
                    & (r.costs["client_id"] >= 0)]
    server = costs.groupby(["round", "client_id"])[["sim_s", "compute_wall_s", "compute_cpu_s"]].sum()
    parts = r.costs[(r.costs["round"] > 1) & (r.costs["side"].isin(["client", "server"]))
                    & (r.costs["client_id"] >= 0)]
    rows = []
    for _, row in c.iterrows():
        key = (row["round"], row["client_id"])
        srv = server.loc[key] if key in server.index else None
        rows.append({"method": method, "cut": f"{cut}/{cut}", "batch": batch, "round": int(row["round"]),
                     "client_id": int(row["client_id"]), "compute_sim_s": row["compute_sim_s"],
                     "compute_wall_s": row["compute_wall_s"], "compute_cpu_s": row["compute_cpu_s"],
                     "server_sim_s": float(srv["sim_s"]) if srv is not None else float("nan"),
                     "server_wall_s": float(srv["compute_wall_s"]) if srv is not None else float("nan"),
                     "server_cpu_s": float(srv["compute_cpu_s"]) if srv is not None else float("nan"),
                     "sim_s": row["sim_s"], "wall_s": row["wall_s"]})
    part_rows = (parts.groupby(["phase", "part", "side"])[["sim_s", "compute_wall_s", "compute_cpu_s"]].sum()
                 .reset_index()
                 .assign(method=method, cut=f"{cut}/{cut}", batch=batch))
    return rows, {"others_busy": busy.others, "drift": now, "waited_s": waited, "parts": part_rows}


def ratio(sim: pd.Series, wall: pd.Series) -> float:
    ok = wall > 0
    return float((sim[ok] / wall[ok]).median()) if ok.any() else float("nan")


def fmt(x: float) -> str:
    return "" if x != x else f"{x:.3f}"


def dev_stats(ratios: list[float]) -> tuple[float, float]:
    errs = [abs(r - 1.0) for r in ratios if r == r]
    return (statistics.median(errs), max(errs)) if errs else (float("nan"), float("nan"))


def table(cells: pd.DataFrame, timer: str) -> str:
    lines = [f"| method | cut | batch | client compute sim / {timer} | server body sim / {timer} | client compute "
             "sim / wall | whole client sim / wall | client compute s (wall) | other CPUs busy | drift |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for _, c in cells.iterrows():
        lines.append(f"| `{c['method']}` | {c['cut']} | {c['batch']} | {fmt(c['client_ratio'])} | "
                     f"{fmt(c['server_ratio'])} | {fmt(c['client_wall_ratio'])} | {fmt(c['whole_ratio'])} | "
                     f"{c['client_wall_s']:.3f} | {c['others_busy']:.2f} | {fmt(c['drift'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="all", help="comma-separated methods (default: every registered one)")
    ap.add_argument("--cuts", default="0,1,2", help="head = tail blocks of each cut (default: %(default)s)")
    ap.add_argument("--batch-sizes", default="8,16", help="train.batch_size values (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per run; the first is a warm-up (default: 3)")
    ap.add_argument("--clients", type=int, default=3, help="clients per run, all in every round (default: 3)")
    ap.add_argument("--samples", type=int, default=32, help="samples per client (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per calibration probe (default: 7)")
    ap.add_argument("--catalog", default=None,
                    help=f"use the class '{NAME}' of this catalogue instead of calibrating (e.g. a committed "
                         "clock_host.yaml of the same machine)")
    ap.add_argument("--out", default=str(HERE / "results"), help="results folder (default: benchmarks/results)")
    ap.add_argument("--timer", choices=["wall", "cpu"], default="wall",
                    help="what the simulated seconds are compared with, and what the calibration times: wall-clock "
                         "seconds (default), or the CPU seconds of the thread that computed (a busy shared machine: "
                         "the time the system gave other processes is not in them)")
    ap.add_argument("--quiet-wait", type=float, default=0.0, metavar="S",
                    help="before the calibration and each cell, wait up to S seconds for a spell in which other "
                         "processes keep under 0.3 CPUs busy (a shared machine); default: 0, do not wait")
    ap.add_argument("--no-docs", action="store_true", help="do not write the table into docs/clock.md")
    args = ap.parse_args(argv)
    if args.rounds < 2:
        ap.error("--rounds: at least 2 (the first is a warm-up)")
    methods = list_methods() if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    cuts = [int(c) for c in args.cuts.split(",")]
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    wait_quiet(args.quiet_wait)
    if args.catalog is None:
        cfg = load_config(overrides=base_overrides(args))
        with Busy() as busy:
            cal = calibrate(cfg, name=NAME, threads=1, repeats=args.repeats, batch_sizes=sizes, timer=args.timer,
                            progress=say)
        catalog = write_catalog(cal, out / "clock_host.yaml")
        cal_line = summary_line(cal)
        cal_busy = busy.others
        say(cal_line)
    else:
        catalog = Path(args.catalog)
        host = load_catalog(catalog).get(NAME)
        if host is None or host.throughput is None:
            ap.error(f"--catalog {catalog}: no measured class '{NAME}' in it")
        cal_line, cal_busy, cal = f"{NAME}: from {catalog}", float("nan"), None

    rows: list[dict] = []
    cells: list[dict] = []
    parts: list[pd.DataFrame] = []
    todo = [(m, c, b) for m in methods for c in cuts for b in sizes]
    with tempfile.TemporaryDirectory(prefix="sfp-clock-") as tmp:
        for i, (m, c, b) in enumerate(todo, 1):
            got, state = run_cell(m, c, b, catalog, args, Path(tmp), cal)
            rows += got
            parts.append(state.pop("parts"))
            df = pd.DataFrame(got)
            cell = {"method": m, "cut": f"{c}/{c}", "batch": b,
                    "client_ratio": ratio(df["compute_sim_s"], df[f"compute_{args.timer}_s"]),
                    "server_ratio": ratio(df["server_sim_s"].fillna(0), df[f"server_{args.timer}_s"].fillna(0)),
                    "client_wall_ratio": ratio(df["compute_sim_s"], df["compute_wall_s"]),
                    "whole_ratio": ratio(df["sim_s"], df["wall_s"]),
                    "client_wall_s": float(df["compute_wall_s"].median()), **state}
            cells.append(cell)
            say(f"{i}/{len(todo)} {m} cut {c}/{c} batch {b}: client {fmt(cell['client_ratio'])}, server "
                f"{fmt(cell['server_ratio'])}, whole {fmt(cell['whole_ratio'])} (others busy "
                f"{state['others_busy']:.2f} CPUs, drift {fmt(state['drift'])}; {time.perf_counter() - t_start:.0f} s)")
    per_client = pd.DataFrame(rows)
    per_client.to_csv(out / "clock.csv", index=False)
    cells_df = pd.DataFrame(cells)
    cells_df.to_csv(out / "clock_cells.csv", index=False)
    part_df = pd.concat(parts, ignore_index=True)
    by_part = part_df.groupby(["side", "phase", "part"])[["sim_s", "compute_wall_s", "compute_cpu_s"]].sum()
    by_part = by_part.reset_index()
    by_part["ratio"] = by_part["sim_s"] / by_part[f"compute_{args.timer}_s"]

    client_med, client_worst = dev_stats(list(cells_df["client_ratio"]))
    server_med, server_worst = dev_stats(list(cells_df["server_ratio"]))
    all_med, all_worst = dev_stats(list(cells_df["client_ratio"]) + list(cells_df["server_ratio"]))
    whole_med, whole_worst = dev_stats(list(cells_df["whole_ratio"]))
    steady = cells_df.assign(client_ratio=cells_df["client_ratio"] / cells_df["drift"],
                             server_ratio=cells_df["server_ratio"] / cells_df["drift"])
    d_med, d_worst = dev_stats(list(steady["client_ratio"]) + list(steady["server_ratio"]))
    quiet = cells_df[cells_df["others_busy"] < 0.5]
    q_med, q_worst = dev_stats(list(quiet["client_ratio"]) + list(quiet["server_ratio"]))
    done_when = {m: cells_df[(cells_df["method"] == m) & (cells_df["cut"] == "1/1")]
                 for m in ("sfprompt", "fl_full") if m in methods}
    minutes = (time.perf_counter() - t_start) / 60
    table_md = table(cells_df, args.timer)
    verdict = (f"measured as {args.timer} time: client compute: median |sim/measured - 1| = {client_med:.1%}, "
               f"worst cell {client_worst:.1%}; "
               f"server body: median {server_med:.1%}, worst {server_worst:.1%}; both pooled: median {all_med:.1%}, "
               f"worst {all_worst:.1%} (targets: median <= 10 %, worst <= 25 %); whole client round (clients.csv "
               f"sim_s / wall_s): median {whole_med:.1%}, worst {whole_worst:.1%}; the {len(quiet)} cells that ran "
               f"while other processes kept under 0.5 CPUs busy, client and server pooled: median {q_med:.1%}, worst "
               f"{q_worst:.1%}")
    steady_line = (f"divided by each cell's drift (what the machine's change of speed since the calibration explains), "
                   f"client and server pooled: median {d_med:.1%}, worst {d_worst:.1%}")
    md = [
        "# Simulated clock vs measured time",
        "",
        f"Made by `.venv/bin/python benchmarks/clock.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
        .rstrip() + f" on {datetime.date.today().isoformat()}, {cpu_name()} ({os.cpu_count()} CPUs, "
        f"{platform.system()}), torch {torch.__version__}, in {minutes:.1f} min. Reading: "
        "[docs/clock.md](../../docs/clock.md).",
        "",
        f"Calibration (`sfp-ray devices calibrate --timer {args.timer}`, 1 thread, cut 1/1, batch sizes "
        f"{args.batch_sizes}; other CPUs "
        f"busy {cal_busy:.2f}): {cal_line}. The class: `clock_host.yaml`.",
        "",
        f"Runs: serial executor, 1 thread, free links, {args.clients} clients x {args.samples} samples, "
        f"{args.rounds} rounds (round 1 is a warm-up and left out), every client in every round, EL2N scoring every "
        "round; the class is both the clients' and the server's. A cell is the median over its clients and rounds. "
        f"Client and server columns compare with {args.timer} time (the calibration's timer); *client compute sim / "
        "wall* and *whole client* compare with wall-clock time. *Other CPUs busy*: CPUs kept busy by other "
        "processes while the cell ran (0 on a quiet machine).",
        "",
        f"**{verdict}.**",
        "",
        f"*Drift*: the modelled / measured seconds of four calibration probes ({', '.join(REFERENCE)}) re-timed "
        "just before the cell (1.000: the machine runs as fast as when it was calibrated; 0.8: it runs 25 % slower, "
        f"so the cell's ratios come out 0.8x of what the model gives). Secondary figure, {steady_line}.",
        "",
        "Issue-23 figure (cut 1/1, median of both batch sizes; target 0.85-1.15): whole client round sim_s / "
        "wall_s " + ", ".join(f"`{m}` {d['whole_ratio'].median():.3f}" for m, d in done_when.items())
        + f"; client compute sim / {args.timer} "
        + ", ".join(f"`{m}` {d['client_ratio'].median():.3f}" for m, d in done_when.items()) + ".",
        "",
        table_md,
        "",
        "## Per part (all cells pooled)",
        "",
        "Simulated / measured seconds of each (side, phase, part) summed over the cells: where the model misses.",
        "",
        f"| side | phase | part | simulated s | measured s (wall) | measured s (cpu) | sim / {args.timer} |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r.side} | {r.phase} | {r.part} | {r.sim_s:.3f} | {r.compute_wall_s:.3f} | {r.compute_cpu_s:.3f} | "
          f"{r.ratio:.3f} |" for r in by_part.itertuples()),
        "",
        "Files: `clock.csv` (one row per client, round and cell), `clock_cells.csv` (one row per cell).",
        "",
    ]
    (out / "clock.md").write_text("\n".join(md))
    if not args.no_docs and DOCS.is_file():
        text = DOCS.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            _, tail = rest.split(END, 1)
            block = (f"{BEGIN}\n\n_{datetime.date.today().isoformat()}, {cpu_name()}, written by `benchmarks/clock.py`"
                     f"; {verdict}; {steady_line}._\n\n{table_md}\n\n{END}")
            DOCS.write_text(head + block + tail)
    say(f"{verdict}; wrote {out / 'clock.md'} in {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
