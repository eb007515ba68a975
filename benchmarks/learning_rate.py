"""Learning rate per method: is the comparison fair, and how much of the gap is tuning?

Every method is compared at one shared ``train.lr`` by default configurations of many
simulators; a method that trains a few new parameters (prompts, a tail block) and one that
fine-tunes the whole network want different rates. This script runs ``sfprompt``,
``sfprompt_no_prune`` and ``fl_full`` on the default configuration over a grid of Adam
learning rates, seeds 0, 1, 2, for 12 rounds (the default is 8: the table gives both), with
the serial executor (which gives the Ray executor's numbers bit for bit).

Each learning rate is one ``sfp_ray.compare`` call into ``--runs/lr-<value>`` (skipped when
its report is complete, so an interrupted benchmark resumes). Writes
``benchmarks/results/learning_rate.csv`` (one row per method, rate and seed: accuracy at
rounds 8 and 12 and the mean of rounds 9-12), ``learning_rate.md`` and
``learning_rate.png`` (accuracy at round 12 against the rate, mean with the 95 % interval).

Run: ``.venv/bin/python benchmarks/learning_rate.py [--runs runs/bench-lr] [--jobs 3]``
(``--jobs``: rates run side by side as processes, one torch thread each).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
ROOT = HERE.parent
SEEDS = (0, 1, 2)
ROUNDS = 12
#: which methods run at which rate: fl_full around its best (it diverges above 1e-3),
#: the prompt methods around theirs
GRID: dict[float, tuple[str, ...]] = {
    1e-4: ("fl_full",),
    3e-4: ("fl_full",),
    1e-3: ("sfprompt", "sfprompt_no_prune", "fl_full"),
    2e-3: ("sfprompt", "sfprompt_no_prune"),
    3e-3: ("sfprompt", "sfprompt_no_prune", "fl_full"),
    5e-3: ("sfprompt", "sfprompt_no_prune"),
    1e-2: ("sfprompt", "sfprompt_no_prune", "fl_full"),
}


def folder(runs: Path, lr: float) -> Path:
    return runs / f"lr-{lr:g}"


def complete(out: Path, methods: tuple[str, ...]) -> bool:
    p = out / "rounds.csv"
    if not (out / "summary.csv").is_file() or not p.is_file():
        return False
    r = pd.read_csv(p)
    have = {(m, int(s)) for m, s, rd in zip(r["method"], r["seed"], r["round"]) if rd == ROUNDS}
    return have >= {(m, s) for m in methods for s in SEEDS}


def command(lr: float, methods: tuple[str, ...], out: Path) -> list[str]:
    return [sys.executable, "-m", "sfp_ray", "--quiet", "compare", "--executor", "serial", "--no-plots",
            "--methods", ",".join(methods), "--seeds", ",".join(map(str, SEEDS)), "--set", f"train.lr={lr:g}",
            "--set", f"federation.rounds={ROUNDS}", "--out", str(out)]


def run_all(runs: Path, jobs: int) -> None:
    todo = [(lr, ms) for lr, ms in GRID.items() if not complete(folder(runs, lr), ms)]
    print(f"learning rates to run: {len(todo)} of {len(GRID)}", file=sys.stderr)
    running: list[tuple[float, subprocess.Popen]] = []
    while todo or running:
        while todo and len(running) < jobs:
            lr, ms = todo.pop(0)
            out = folder(runs, lr)
            if out.exists():  # an interrupted call: start it again from scratch
                import shutil

                shutil.rmtree(out)
            running.append((lr, subprocess.Popen(command(lr, ms, out), cwd=ROOT)))
        lr, proc = running.pop(0)
        if proc.wait() != 0:
            raise SystemExit(f"lr {lr:g}: sfp-ray exited with code {proc.returncode}")
        print(f"lr {lr:g}: done", file=sys.stderr)


def collect(runs: Path) -> pd.DataFrame:
    rows = []
    for lr, ms in GRID.items():
        r = pd.read_csv(folder(runs, lr) / "rounds.csv")
        for (m, seed), g in r[r["method"].isin(ms)].groupby(["method", "seed"]):
            acc = g.set_index("round")["test_accuracy"]
            rows.append({"method": m, "lr": lr, "seed": int(seed), "acc_round8": float(acc[8]),
                         "acc_round12": float(acc[ROUNDS]), "acc_rounds9_12": float(acc.loc[9:ROUNDS].mean())})
    return pd.DataFrame(rows).sort_values(["method", "lr", "seed"]).reset_index(drop=True)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    from sfp_ray.stats import spread

    out = []
    for (m, lr), g in df.groupby(["method", "lr"], sort=False):
        row = {"method": m, "lr": lr, "seeds": len(g)}
        for col in ("acc_round8", "acc_round12", "acc_rounds9_12"):
            st = spread(g[col].tolist())
            row[f"{col}_mean"], row[f"{col}_ci95"] = st.mean, st.ci95
        out.append(row)
    return pd.DataFrame(out)


def plot(summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, g in summary.groupby("method"):
        ax.errorbar(g["lr"], g["acc_round12_mean"], yerr=g["acc_round12_ci95"], marker="o", capsize=3, label=m)
    ax.set_xscale("log")
    ax.set_xlabel("Adam learning rate (train.lr)")
    ax.set_ylabel(f"test accuracy after round {ROUNDS}")
    ax.set_title("Accuracy vs learning rate (mean, 95% CI over 3 seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-lr"), help="folder of the run reports")
    ap.add_argument("--jobs", type=int, default=3, help="learning rates run side by side")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    runs, res = Path(args.runs), Path(args.results)
    runs.mkdir(parents=True, exist_ok=True)
    res.mkdir(parents=True, exist_ok=True)
    run_all(runs, args.jobs)
    df = collect(runs)
    summary = summarize(df)
    df.to_csv(res / "learning_rate.csv", index=False)
    plot(summary, res / "learning_rate.png")
    md = ["| method | lr | accuracy round 8 | accuracy round 12 | mean of rounds 9-12 |", "|---|---:|---:|---:|---:|"]
    for _, r in summary.iterrows():
        md.append(f"| {r['method']} | {r['lr']:g} | {r['acc_round8_mean']:.3f} ± {r['acc_round8_ci95']:.3f} | "
                  f"{r['acc_round12_mean']:.3f} ± {r['acc_round12_ci95']:.3f} | "
                  f"{r['acc_rounds9_12_mean']:.3f} ± {r['acc_rounds9_12_ci95']:.3f} |")
    (res / "learning_rate_table.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
