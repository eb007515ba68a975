"""Ray executor overhead: whole processes, round loops, per-round framework overhead, memory.

The same runs go through ``sfp-ray run`` twice, as whole processes launched from here:
once with the Ray executor (the default: client actors sized from the machine, no
``ray.*`` key) and once with the serial executor at as many torch threads as the machine
has cores (``--executor serial --threads N``: the fastest in-process reference). Pairs
alternate which goes first, ``--pairs`` times, so both see the same machine load; ratios
are taken per pair. The runs are the default configuration (the demo's) for each method
in ``--methods``.

Measured per run:

* ``total_s``: launch to exit of the process (start-up, imports, data, Ray and actors,
  rounds, report files, shut-down);
* ``rounds_s``: the sum of the rounds' wall time (``rounds.csv``);
* per Ray round, the **framework overhead**: round wall minus evaluation wall minus
  aggregation wall minus the busiest client actor's compute (the sum of the wall time of
  the client tasks it ran, measured inside the actor). What is left is what the framework
  adds: scheduling, moving states, the driver's bookkeeping, report rows and the
  checkpoint written every round;
* memory of every actor at start (``resources.csv``: RSS, PSS, USS), the client actors'
  peak RSS over their tasks, and two floors measured in fresh processes: ``import torch``
  plus one Adam step (what any torch trainer costs), and the imports of a client actor.

Writes ``benchmarks/results/ray_overhead.csv`` (per run), ``ray_overhead_rounds.csv`` (per
Ray round) and ``ray_overhead.md``. ``--work peer`` runs the Flower peer benchmark's work
instead (``fl_full``, 8 clients x 256 images, a 12-block ViT, 3 rounds:
``benchmarks/peers``) into ``ray_overhead_peer.*``.
Run: ``.venv/bin/python benchmarks/ray_overhead.py [--pairs 3] [--methods sfprompt,fl_full] [--work default|peer]
[--set KEY=VALUE ...]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
ROOT = HERE.parent
SFP = [sys.executable, "-m", "sfp_ray"]

FLOOR_TORCH = """
import psutil, torch
m = torch.nn.Linear(4, 4); o = torch.optim.Adam(m.parameters())
m(torch.randn(2, 4)).sum().backward(); o.step()
mi = psutil.Process().memory_full_info(); print(mi.rss / 2**20, mi.uss / 2**20)
"""
FLOOR_ACTOR = """
import psutil, sfp_ray.executors.ray.actors
mi = psutil.Process().memory_full_info(); print(mi.rss / 2**20, mi.uss / 2**20)
"""


def floor(code: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    rss, uss = (float(x) for x in out.stdout.split())
    return rss, uss


def one(method: str, executor: str, overrides: list[str], threads: int, out: Path) -> dict:
    cmd = [*SFP, "--quiet", "run", "--method", method, "--no-plots", "--out", str(out), "--executor", executor]
    if executor == "serial":
        cmd += ["--threads", str(threads)]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    rounds = pd.read_csv(out / "rounds.csv")
    return {"method": method, "executor": executor, "total_s": total, "rounds_s": float(rounds["wall_s"].sum()),
            "outside_rounds_s": total - float(rounds["wall_s"].sum()),
            "final_accuracy": float(rounds["test_accuracy"].iloc[-1]),
            "final_loss": float(rounds["test_loss"].iloc[-1])}


def round_overheads(out: Path) -> pd.DataFrame:
    """Per round of a Ray run folder: round wall, eval, aggregation, busiest actor, overhead."""
    rounds = pd.read_csv(out / "rounds.csv")
    costs = pd.read_csv(out / "costs.csv")
    clients = pd.read_csv(out / "clients.csv")
    res = pd.read_csv(out / "resources.csv")
    tasks = res[res["round"].notna()][["round", "client_id", "slot"]].drop_duplicates(["round", "client_id"],
                                                                                   keep="last")
    done = clients.merge(tasks, on=["round", "client_id"], how="left")
    rows = []
    for _, r in rounds.iterrows():
        rd = int(r["round"])
        c = costs[costs["round"] == rd]
        ev = float(c.loc[c["phase"] == "eval", "wall_s"].sum())
        agg = float(c.loc[c["phase"] == "aggregate", "wall_s"].sum())
        busy = done[done["round"] == rd].groupby("slot")["wall_s"].sum()
        busiest = float(busy.max()) if len(busy) else 0.0
        over = float(r["wall_s"]) - ev - agg - busiest
        rows.append({"round": rd, "wall_s": float(r["wall_s"]), "eval_s": ev, "aggregate_s": agg,
                     "busiest_actor_s": busiest, "overhead_s": over, "overhead_pct": 100 * over / float(r["wall_s"])})
    return pd.DataFrame(rows)


def memory_rows(out: Path) -> pd.DataFrame:
    res = pd.read_csv(out / "resources.csv")
    start = res[res["round"].isna()].copy()
    peaks = res[res["round"].notna()].groupby("slot")["observed_peak_rss_mb"].max()
    start["peak_rss_over_tasks_mb"] = start["slot"].map(peaks)
    return start[["label", "role", "observed_rss_mb", "observed_pss_mb", "observed_uss_mb",
                  "peak_rss_over_tasks_mb"]].drop_duplicates("label")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--methods", default="sfprompt,fl_full")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--work", choices=["default", "peer"], default="default",
                    help="default: the default configuration; peer: the Flower peer benchmark's work (fl_full)")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    name = "ray_overhead"
    if args.work == "peer":
        sys.path.insert(0, str(HERE / "peers"))
        from compare_flower import sfp_ray_runtime, sfp_ray_work

        args.overrides = [*sfp_ray_work(3, 8, 256, 5000), *sfp_ray_runtime(2), *args.overrides]
        args.methods, name = "fl_full", "ray_overhead_peer"
    threads = os.cpu_count() or 1
    methods = [m for m in args.methods.split(",") if m]
    work = Path(tempfile.mkdtemp(prefix="sfp-ray-overhead-"))
    torch_floor, actor_floor = floor(FLOOR_TORCH), floor(FLOOR_ACTOR)
    load = os.getloadavg()
    rows, per_round, memory = [], [], []
    try:
        for pair in range(args.pairs):
            for method in methods:
                order = ["ray", "serial"] if pair % 2 == 0 else ["serial", "ray"]
                for pos, ex in enumerate(order):
                    out = work / f"{method}-{ex}-{pair}"
                    r = one(method, ex, args.overrides, threads, out)
                    r.update(pair=pair, position=pos)
                    rows.append(r)
                    print(f"pair {pair} {method} {ex}: {r['total_s']:.1f} s (rounds {r['rounds_s']:.1f} s)",
                          file=sys.stderr)
                    if ex == "ray":
                        ro = round_overheads(out)
                        ro.insert(0, "pair", pair)
                        ro.insert(0, "method", method)
                        per_round.append(ro)
                        if pair == 0:
                            m = memory_rows(out)
                            m.insert(0, "method", method)
                            memory.append(m)
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    df = pd.DataFrame(rows)
    rounds = pd.concat(per_round, ignore_index=True)
    mem = pd.concat(memory, ignore_index=True)
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    df.to_csv(res / f"{name}.csv", index=False)
    rounds.to_csv(res / f"{name}_rounds.csv", index=False)
    write_markdown(res / f"{name}.md", args, df, rounds, mem, torch_floor, actor_floor, threads, load)
    print((res / f"{name}.md").read_text())
    return 0


def write_markdown(path: Path, args: argparse.Namespace, df: pd.DataFrame, rounds: pd.DataFrame, mem: pd.DataFrame,
                   torch_floor: tuple[float, float], actor_floor: tuple[float, float], threads: int,
                   load: tuple[float, float, float]) -> None:
    import ray
    import torch

    cmd = (f"python benchmarks/ray_overhead.py --pairs {args.pairs} --work peer" if args.work == "peer" else
           f"python benchmarks/ray_overhead.py --pairs {args.pairs} --methods {args.methods}" + "".join(
               f" --set {o}" for o in args.overrides))
    md = ["# Ray executor overhead", "",
          f"Command: `{cmd}` ({time.strftime('%Y-%m-%d %H:%M')}), {threads} cores, "
          f"{platform.platform()}, ray {ray.__version__}, torch {torch.__version__}; load average before "
          f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (a shared machine).", "",
          ("Work: the Flower peer benchmark's (`benchmarks/peers`: `fl_full`, 8 clients x 256 Fashion-MNIST "
           "images, a 12-block ViT-Tiny from random weights, SGD, 3 rounds, one evaluation on 5,000 test images "
           "after the last; 2 trainer actors of 1 CPU), as whole processes." if args.work == "peer" else
           "Work: `sfp-ray run --method M` on the default configuration"
           f"{' plus the --set keys' if args.overrides else ''}"
           " (10 clients x 64 Fashion-MNIST images, all of them every round, 8 rounds, evaluation on 1,000 test "
           "images every round), as whole processes.")
          + (" Ray: the peer benchmark's settings (`ray.num_cpus=2`, its device catalogue: two 1-CPU slot actors, "
             "a CPU-less server actor that evaluates, an aggregator actor). " if args.work == "peer" else
             " Ray: the default executor, no `ray.*` key (on this machine: 3 device-slot actors, one per device "
             "class, a server actor for SFPrompt's body, an aggregator actor). ")
          +
          f"Serial: `--executor serial --threads {threads}` (the in-process reference at full speed; its default, "
          "one thread like the actors, gives the Ray run's numbers bit for bit and is slower).", "",
          "## Time (median over pairs; ratio = Ray / serial, per pair)", "",
          "| method | serial total s | Ray total s | ratio total (target <= 1.3) | serial rounds s | Ray rounds s | "
          "ratio rounds (target <= 1.1) | Ray outside rounds s | serial outside rounds s |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, g in df.groupby("method", sort=False):
        s, r = g[g.executor == "serial"].set_index("pair"), g[g.executor == "ray"].set_index("pair")
        rt, rr = (r["total_s"] / s["total_s"]), (r["rounds_s"] / s["rounds_s"])
        md.append(f"| {method} | {s['total_s'].median():.1f} | {r['total_s'].median():.1f} | {rt.median():.2f} "
                  f"({rt.min():.2f}-{rt.max():.2f}) | {s['rounds_s'].median():.1f} | {r['rounds_s'].median():.1f} | "
                  f"{rr.median():.2f} ({rr.min():.2f}-{rr.max():.2f}) | {r['outside_rounds_s'].median():.1f} | "
                  f"{s['outside_rounds_s'].median():.1f} |")
    md += ["", "## Per-round framework overhead (Ray runs)", "",
           "Round wall minus evaluation, aggregation and the busiest client actor's task time "
           f"(`{path.stem}_rounds.csv`; target <= 1 % of the round).", "",
           "| method | rounds | median round s | median overhead s | median overhead % | max overhead % |",
           "|---|---:|---:|---:|---:|---:|"]
    for method, g in rounds.groupby("method", sort=False):
        md.append(f"| {method} | {len(g)} | {g['wall_s'].median():.2f} | {g['overhead_s'].median():.3f} | "
                  f"{g['overhead_pct'].median():.1f} | {g['overhead_pct'].max():.1f} |")
    md += ["", "## Memory (first pair's Ray runs, MiB)", "",
           f"Floors in fresh processes: `import torch` + one Adam step: RSS {torch_floor[0]:.0f}, USS "
           f"{torch_floor[1]:.0f}; the imports of a client actor (torch, timm, Ray, sfp_ray): RSS "
           f"{actor_floor[0]:.0f}, USS {actor_floor[1]:.0f}.", "",
           "| method | actor | RSS at start | PSS at start | USS at start | peak RSS over its tasks |",
           "|---|---|---:|---:|---:|---:|"]
    for _, m in mem.iterrows():
        peak = "" if pd.isna(m["peak_rss_over_tasks_mb"]) else f"{m['peak_rss_over_tasks_mb']:.0f}"
        md.append(f"| {m['method']} | {m['label']} | {m['observed_rss_mb']:.0f} | {m['observed_pss_mb']:.0f} | "
                  f"{m['observed_uss_mb']:.0f} | {peak} |")
    acc = df.pivot_table(index=["method", "pair"], columns="executor", values="final_accuracy")
    parts = []
    for m in dict.fromkeys(df["method"]):
        a = acc.loc[m]
        same = "equal" if bool((a["ray"] == a["serial"]).all()) else "differ in the last digits (other thread counts)"
        parts.append(f"{m} Ray {', '.join(f'{v:.4f}' for v in dict.fromkeys(a['ray']))} vs serial "
                     f"{', '.join(f'{v:.4f}' for v in dict.fromkeys(a['serial']))} ({same})")
    md += ["", f"Final accuracy (every pair): {'; '.join(parts)}. The serial executor's default thread count (one, "
           "like the actors) reproduces the Ray runs bit for bit (`tests/test_ray.py`)."]
    path.write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    sys.exit(main())
