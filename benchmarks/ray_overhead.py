"""Ray executor overhead: wall time of the Ray executor / the serial executor on the same run.

The same SFPrompt run (default model and offline backbone, Fashion-MNIST target task,
8 clients all taking part in every round, Raspberry Pi 4 profiles at 0.25 CPU each, the
server on a ``laptop`` profile so no GPU is needed) runs under both executors, alternating
``--repeats`` times so that both see the same machine load; the ratio is taken per pair.
Memory per client actor is the peak RSS each actor reports (``resources.csv`` rows).

Writes ``benchmarks/results/ray_overhead.csv`` and ``ray_overhead.md``.
Run: ``.venv/bin/python benchmarks/ray_overhead.py [--repeats 2] [--set KEY=VALUE ...]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see sfp_ray/cli.py

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

from sfp_ray.config import load_config
from sfp_ray.executors.ray import RayExecutor, start_ray
from sfp_ray.executors.serial import SerialExecutor
from sfp_ray.orchestrator import Orchestrator, prepare_run

HERE = Path(__file__).parent
BASE = [
    "federation.num_clients=8", "federation.clients_per_round=8", "federation.rounds=3",
    "data.samples_per_client=400", "devices.mix={rpi4: 1.0}", "devices.server=laptop", "ray.num_cpus=4",
]


def one(spec, executor) -> tuple[float, float, object]:
    t0 = time.perf_counter()
    with executor:
        res = Orchestrator(spec, executor).run()
        rows = executor.resources() if isinstance(executor, RayExecutor) else []
    total = time.perf_counter() - t0
    loop = sum(r.wall_s for r in res.rounds)
    return total, loop, (res, rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    cfg = load_config(overrides=BASE + args.overrides)
    spec = prepare_run(cfg, "sfprompt")
    started = start_ray(spec.cfg.ray, "local")
    rows, mem = [], []
    try:
        for rep in range(args.repeats):
            s_total, s_loop, (s_res, _) = one(spec, SerialExecutor(num_threads=2))
            r_total, r_loop, (r_res, res_rows) = one(spec, RayExecutor())
            for rr in res_rows:
                if str(rr.get("label", "")).startswith("client"):
                    mem.append(rr.get("observed_peak_rss_mb", float("nan")))
            rows.append({
                "repeat": rep, "clients": cfg.federation.num_clients, "rounds": cfg.federation.rounds,
                "serial_total_s": s_total, "ray_total_s": r_total, "serial_rounds_s": s_loop, "ray_rounds_s": r_loop,
                "ratio_total": r_total / s_total, "ratio_rounds": r_loop / s_loop,
                "serial_final_acc": s_res.rounds[-1].test_accuracy, "ray_final_acc": r_res.rounds[-1].test_accuracy,
            })
            print(f"repeat {rep}: serial {s_total:.1f} s (rounds {s_loop:.1f}), ray {r_total:.1f} s (rounds "
                  f"{r_loop:.1f}) -> ratio {r_total / s_total:.2f} total, {r_loop / s_loop:.2f} rounds",
                  file=sys.stderr)
    finally:
        if started:
            import ray

            ray.shutdown()
    df = pd.DataFrame(rows)
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    df.to_csv(res / "ray_overhead.csv", index=False)
    mem = [m for m in mem if m == m]
    cmd = "python benchmarks/ray_overhead.py " + f"--repeats {args.repeats} " + " ".join(
        f"--set {o}" for o in args.overrides)
    md = [
        "# Ray executor overhead", "",
        f"Command: `{cmd.strip()}` on this project's 2-core machine (shared; noisy).",
        f"Run: SFPrompt, {cfg.federation.num_clients} clients per round, {cfg.federation.rounds} rounds, "
        f"{cfg.data.samples_per_client} samples per client, rpi4 profiles (0.25 CPU ticket, 1 torch thread per actor), "
        "server on a laptop profile; serial executor with 2 torch threads.", "",
        "| repeat | serial s | ray s | ratio (incl. actor start) | serial rounds s | ray rounds s | ratio (rounds) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for _, r in df.iterrows():
        md.append(f"| {int(r['repeat'])} | {r['serial_total_s']:.1f} | {r['ray_total_s']:.1f} | "
                  f"{r['ratio_total']:.2f} | {r['serial_rounds_s']:.1f} | {r['ray_rounds_s']:.1f} | "
                  f"{r['ratio_rounds']:.2f} |")
    start = statistics.median(df["ray_total_s"] - df["ray_rounds_s"])
    md += ["", f"Median ratio: {statistics.median(df['ratio_total']):.2f}x including Ray actor start-up (target "
           f"<= 1.3x), {statistics.median(df['ratio_rounds']):.2f}x for the round loop alone (target <= 1.1x); "
           f"outside the rounds the Ray run spends {start:.1f} s (median: starting Ray and the actors, setting "
           "the run up on them) against the serial run's "
           f"{statistics.median(df['serial_total_s'] - df['serial_rounds_s']):.1f} s.",
           f"Peak RSS per client actor: median {statistics.median(mem):.0f} MB, max {max(mem):.0f} MB "
           f"({len(mem)} actor reports; includes shared library pages)." if mem else "No actor memory reports.",
           f"Final accuracy: serial {df['serial_final_acc'].iloc[-1]:.4f}, ray {df['ray_final_acc'].iloc[-1]:.4f}."]
    (res / "ray_overhead.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
