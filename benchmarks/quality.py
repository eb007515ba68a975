"""Quality benchmark: SFPrompt vs full federated fine-tuning on the offline target task.

Runs the methods of ``--methods`` on ``benchmarks/configs/quality.yaml`` (Fashion-MNIST
classes 5-9, the backbone pre-trained offline on classes 0-4, 10 clients, Dirichlet 0.5)
with the same rounds, seeds and device profiles, and writes
``benchmarks/results/quality.csv`` (the summary), ``quality_rounds.csv`` and
``quality.md``. The full report (costs, plots) goes to ``runs/bench-quality``.

Run: ``.venv/bin/python benchmarks/quality.py [--set KEY=VALUE ...]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see sfp_ray/cli.py

import argparse
import sys
import time
from pathlib import Path

from sfp_ray.config import load_config
from sfp_ray.executors.serial import SerialExecutor
from sfp_ray.orchestrator import Orchestrator, prepare_run
from sfp_ray.reports import ReportSink, format_summary

HERE = Path(__file__).parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE / "configs" / "quality.yaml"))
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--methods", default="sfprompt,fl_full")
    ap.add_argument("--out", default="runs/bench-quality")
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--tag", default="quality", help="file name stem of the committed results")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    sink = ReportSink(args.out)
    t0 = time.perf_counter()
    for method in args.methods.split(","):
        spec = prepare_run(cfg, method)
        print(f"{method}: backbone {spec.checkpoint}", file=sys.stderr)

        def show(r, m=method):
            print(f"  {m} round {r.round}: acc {r.test_accuracy:.4f} ({r.cum_wall_s:.0f} s)", file=sys.stderr)

        Orchestrator(spec, SerialExecutor(), [sink], progress=show).run()
    summary = sink.finalize()
    rounds = sink.round_frame()
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    summary.to_csv(res / f"{args.tag}.csv", index=False)
    rounds[["method", "round", "test_accuracy", "test_loss", "train_loss", "bytes_total", "client_flops_total",
            "cum_sim_s", "cum_wall_s"]].to_csv(res / f"{args.tag}_rounds.csv", index=False)
    cmd = "python benchmarks/quality.py " + " ".join(f"--set {o}" for o in args.overrides)
    if args.methods != "sfprompt,fl_full":
        cmd += f" --methods {args.methods}"
    md = [f"# Quality benchmark ({args.tag})", "",
          f"Command: `{cmd.strip()}` ({time.perf_counter() - t0:.0f} s on this machine).",
          f"Config: `{Path(args.config).name}` plus the overrides above; 2 cores, serial executor.", "",
          "```", format_summary(summary), "```", "",
          "Accuracy per round:", "", "| round | " + " | ".join(summary["method"]) + " |",
          "|---:|" + "---:|" * len(summary)]
    for r, g in rounds.groupby("round"):
        accs = {m: a for m, a in zip(g["method"], g["test_accuracy"])}
        md.append(f"| {r} | " + " | ".join(f"{accs.get(m, float('nan')):.4f}" for m in summary["method"]) + " |")
    (res / f"{args.tag}.md").write_text("\n".join(md) + "\n")
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
