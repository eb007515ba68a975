"""Paper-scale models on a small machine: memory, spilling and wall time against clients per round.

Runs ``sfp-ray run`` (the Ray executor, its automatic pool) as a separate process for each
case and watches it from outside:

* **memory**: every second, the proportional set size (PSS) of the run's whole process tree
  (the driver, Ray's GCS and raylet, every worker and actor: all descendants of the driver),
  summed, and its peak; also the machine's used memory (total − available) above what it was
  just before the run (``above idle``);
* **spilling**: the peak size of the run's own object-spilling folder (Ray is pointed at a
  fresh one per run with ``RAY_object_spilling_config``);
* **wall time** of the whole process, start-up and report included.

A watchdog kills a run's process tree when the machine's available memory falls below
``--min-available-gib`` (before the kernel's OOM killer picks a victim) and records it as
``stopped: memory``; a run longer than ``--timeout`` is ``stopped: time``.

Cases: ``fl_full`` and ``sfprompt`` × ``vit_base_patch16_224`` and ``vit_large_patch16_224`` at
timm's depth with 32 px images (16 px patches: 4 patches, so compute stays small) × 10, 25, 50
and 100 clients per round, 2 samples each, one round; plus the issue's command (ViT-B
``fl_full``, 40 clients); ``--smoke-224`` adds ViT-B/16 at the paper's 224 px (random init),
``sfprompt`` and ``fl_full``, 4 clients of 2 samples, one round. ``--baseline REV`` runs the
same cases on the code of git revision REV (a worktree under ``.cache/``) in the same sitting,
one case after the other, new code first.

Each run's folder is kept under ``--runs`` without its saved states (``*.pt``: 1.2 GB each at
ViT-L). ``--append`` keeps the rows of an earlier invocation (a case run again replaces its row).

Writes ``benchmarks/results/scale_models.csv`` and ``scale_models_table.md`` (the reading is
``scale_models.md``). Run: ``.venv/bin/python benchmarks/scale_models.py --baseline b64a615``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GIB = 1024**3

MODELS = {"vit_base_patch16_224": "ViT-B/16", "vit_large_patch16_224": "ViT-L/16"}
SMALL = ["model.img_size=32", "model.patch_size=16", "model.depth=null", "model.checkpoint=none",
         "data.samples_per_client=2", "data.min_samples=2", "data.test_samples=50", "federation.rounds=1"]
#: the command of the issue (ViT-B fl_full, 40 clients per round), as a user typed it
COMMAND = ["--method", "fl_full", "--set", "model.name=vit_base_patch16_224", "--set", "model.img_size=32",
           "--set", "model.patch_size=16", "--set", "model.depth=null", "--set", "model.checkpoint=none",
           "--set", "data.samples_per_client=2", "--set", "data.min_samples=2", "--set", "data.test_samples=50",
           "--set", "federation.num_clients=40", "--set", "federation.clients_per_round=40",
           "--set", "federation.rounds=1"]


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def used_bytes() -> int:
    vm = psutil.virtual_memory()
    return vm.total - vm.available


def folder_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total


class Watch(threading.Thread):
    """Samples a process tree's summed PSS, the machine's used memory and a folder's size; kills on low memory."""

    def __init__(self, pid: int, spill: Path, min_available: float, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.spill, self.min_available, self.every = pid, spill, min_available, every
        self.stop = threading.Event()
        self.peak_pss = self.peak_used = self.peak_spill = 0
        self.peak_procs = 0
        self.killed = False
        self.at_peak: dict[str, int] = {}  # PSS by kind of process at the peak

    def run(self) -> None:
        while not self.stop.is_set():
            procs = tree(self.pid)
            total = 0
            kinds: dict[str, int] = {}
            for p in procs:
                try:
                    pss = p.memory_full_info().pss
                    kind = kind_of(p)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += pss
                kinds[kind] = kinds.get(kind, 0) + pss
            if total > self.peak_pss:
                self.peak_pss, self.peak_procs, self.at_peak = total, len(procs), kinds
            self.peak_used = max(self.peak_used, used_bytes())
            self.peak_spill = max(self.peak_spill, folder_bytes(self.spill))
            if psutil.virtual_memory().available < self.min_available and not self.killed:
                self.killed = True
                kill_tree(self.pid)
            self.stop.wait(self.every)


def kind_of(p: psutil.Process) -> str:
    """``driver``, ``clients``, ``server``, ``aggregator``, ``idle workers`` or ``ray daemons``."""
    cmd = " ".join(p.cmdline())
    if "-m sfp_ray" in cmd:
        return "driver"
    for actor, kind in (("ClientActor", "clients"), ("ServerActor", "server"), ("AggregatorActor", "aggregator")):
        if actor in cmd:
            return kind
    return "idle workers" if "ray::IDLE" in cmd else "ray daemons"


def kill_tree(pid: int) -> None:
    for p in reversed(tree(pid)):
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def baseline_tree(rev: str) -> Path:
    """A git worktree of ``rev`` under ``.cache/`` (made once)."""
    path = ROOT / ".cache" / f"bench-base-{rev}"
    if not (path / "sfp_ray").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    return path


def run_case(code: Path, label: str, args: list[str], out: Path, min_available: float, timeout: float) -> dict:
    """One ``sfp-ray run`` of the code in ``code``, watched; its row."""
    spill = Path(tempfile.mkdtemp(prefix="sfp-spill-"))
    env = dict(os.environ, PYTHONPATH=str(code), HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE",
               RAY_object_spilling_config=json.dumps({"type": "filesystem", "params": {"directory_path": str(spill)}}))
    time.sleep(2.0)  # let the previous run's memory go back
    idle = used_bytes()
    cmd = [sys.executable, "-m", "sfp_ray", "--quiet", "run", *args, "--out", str(out), "--no-plots"]
    t0 = time.perf_counter()
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        watch = Watch(proc.pid, spill, min_available)
        watch.start()
        try:
            rc = proc.wait(timeout=timeout)
            status = "ok" if rc == 0 else f"exit {rc}"
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait()
            status = "stopped: time"
    wall = time.perf_counter() - t0
    watch.stop.set()
    watch.join()
    if watch.killed:
        status = "stopped: memory"
    row = {"code": label, "status": status, "wall_s": round(wall, 1), "peak_pss_gib": round(watch.peak_pss / GIB, 2),
           "peak_above_idle_gib": round((watch.peak_used - idle) / GIB, 2),
           "peak_spilled_gib": round(watch.peak_spill / GIB, 2), "processes_at_peak": watch.peak_procs,
           "idle_used_gib": round(idle / GIB, 2),
           **{f"pss_{k.replace(' ', '_')}_gib": round(v / GIB, 2) for k, v in sorted(watch.at_peak.items())}}
    row.update(pool_facts(out))
    if status != "ok":
        tail = log.read_text().strip().splitlines()[-1:] if log.is_file() else []
        row["note"] = tail[0][:200] if tail else ""
    subprocess.run(["rm", "-rf", str(spill)], check=False)
    # the run's saved states (final state, checkpoint): 1.2 GB each at ViT-L, and a full disk stops Ray's spilling
    for state in [*out.glob("*.pt"), *out.glob("checkpoint/*.pt")]:
        state.unlink(missing_ok=True)
    return row


def pool_facts(out: Path) -> dict:
    """Client actors the pool started and the largest estimated vs observed peak per role (resources.csv)."""
    p = out / "resources.csv"
    if not p.is_file():
        return {}
    df = pd.read_csv(p)
    stage = df["stage"] if "stage" in df else df["label"].notna().map({True: "start", False: "task"})
    start = df[stage == "start"]
    facts = {"client_actors": int((start["role"] == "client").sum()) if "role" in start else 0}
    for role in ("client", "server", "aggregator"):
        rows = df[df["role"] == role] if "role" in df else df.iloc[0:0]
        if rows.empty:
            continue
        for col, name in (("estimated_memory_mb", "estimated"), ("observed_peak_private_mb", "peak_private"),
                          ("observed_peak_rss_mb", "peak_rss")):
            if col in rows and rows[col].notna().any():
                facts[f"{role}_{name}_mib"] = round(float(rows[col].max()), 0)
    return facts


def table(df: pd.DataFrame) -> list[str]:
    cols = ["case", "code", "status", "client_actors", "wall_s", "peak_pss_gib", "peak_above_idle_gib",
            "peak_spilled_gib", "pss_clients_gib", "pss_server_gib", "pss_aggregator_gib", "pss_driver_gib",
            "pss_ray_daemons_gib", "pss_idle_workers_gib", "client_estimated_mib", "client_peak_private_mib",
            "server_estimated_mib", "server_peak_private_mib", "aggregator_estimated_mib",
            "aggregator_peak_private_mib"]
    cols = [c for c in cols if c in df]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join("" if pd.isna(r.get(c)) else str(r.get(c)) for c in cols) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--methods", default="fl_full,sfprompt")
    ap.add_argument("--clients", default="10,25,50,100", help="clients per round (all of them take part)")
    ap.add_argument("--baseline", default=None, metavar="REV", help="also run the cases on the code of git REV")
    ap.add_argument("--no-grid", action="store_true", help="only the issue's command (and --smoke-224)")
    ap.add_argument("--smoke-224", action="store_true",
                    help="also the smoke run at the paper's resolution: ViT-B/16 at 224 px (random init), sfprompt "
                         "and fl_full, 4 clients x 2 samples, one round")
    ap.add_argument("--no-command", action="store_true", help="leave the issue's command out")
    ap.add_argument("--min-available-gib", type=float, default=1.5)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-scale-models"))
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--append", action="store_true",
                    help="keep the rows already in scale_models.csv (a case run again replaces its row)")
    args = ap.parse_args(argv)

    cases: list[tuple[str, list[str]]] = []
    if not args.no_command:
        cases.append(("command: ViT-B fl_full 40 clients", COMMAND))
    if not args.no_grid:
        for model in args.models.split(","):
            for method in args.methods.split(","):
                for n in (int(c) for c in args.clients.split(",")):
                    sets = [f"model.name={model}", *SMALL, f"federation.num_clients={n}",
                            f"federation.clients_per_round={n}"]
                    cases.append((f"{MODELS.get(model, model)} {method} {n}",
                                  ["--method", method, *[x for s in sets for x in ("--set", s)]]))
    if args.smoke_224:
        for method in ("sfprompt", "fl_full"):
            sets = ["model.name=vit_base_patch16_224", "model.img_size=224", "model.patch_size=16", "model.depth=null",
                    "model.checkpoint=none", "data.samples_per_client=2", "data.min_samples=2", "data.test_samples=16",
                    "train.eval_batch_size=16", "federation.num_clients=4", "federation.clients_per_round=4",
                    "federation.rounds=1"]
            cases.append((f"smoke 224 px: ViT-B/16 {method} 4 clients",
                          ["--method", method, *[x for s in sets for x in ("--set", s)]]))
    trees = [("new", ROOT)] + ([(f"base {args.baseline}", baseline_tree(args.baseline))] if args.baseline else [])
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    prior = pd.read_csv(res / "scale_models.csv") if args.append and (res / "scale_models.csv").is_file() else None
    rows = []
    for i, (case, cargs) in enumerate(cases):
        for label, code in trees:
            out = Path(args.runs) / f"{i:02d}-{label.split()[0]}"
            print(f"[{i + 1}/{len(cases)}] {case} ({label}) ...", file=sys.stderr, flush=True)
            row = {"case": case, **run_case(code, label, cargs, out, args.min_available_gib * GIB, args.timeout)}
            print(f"    {row['status']}: {row['wall_s']} s, peak PSS {row['peak_pss_gib']} GiB, above idle "
                  f"{row['peak_above_idle_gib']} GiB, spilled {row['peak_spilled_gib']} GiB, "
                  f"{row.get('client_actors', '?')} client actors", file=sys.stderr, flush=True)
            rows.append(row)
            df = merged(prior, pd.DataFrame(rows))
            df.to_csv(res / "scale_models.csv", index=False)
            (res / "scale_models_table.md").write_text(
                "# Paper-scale models: measured table\n\n"
                f"`python benchmarks/scale_models.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
                f"{' (the rows of earlier invocations kept)' if prior is not None else ''} on a "
                f"{psutil.cpu_count()}-core machine with {psutil.virtual_memory().total / GIB:.0f} GiB, "
                f"{time.strftime('%Y-%m-%d')}. PSS: summed over the run's process tree, sampled every second; "
                "above idle: the machine's used memory above its level just before the run.\n\n"
                + "\n".join(table(df)) + "\n")
    print("\n".join(table(merged(prior, pd.DataFrame(rows)))))
    return 0


def merged(prior: pd.DataFrame | None, new: pd.DataFrame) -> pd.DataFrame:
    """``prior``'s rows with those of ``new`` in place of the same (case, code); the rest of ``new`` after them."""
    if prior is None or prior.empty:
        return new
    fresh = {(r["case"], r["code"]): r for _, r in new.iterrows()}
    rows = [fresh.pop((r["case"], r["code"]), r) for _, r in prior.iterrows()]
    return pd.DataFrame([*rows, *fresh.values()]).reset_index(drop=True)


if __name__ == "__main__":
    sys.exit(main())
