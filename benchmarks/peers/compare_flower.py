"""Peer benchmark: sfp-ray's Ray executor vs Flower's Ray simulation on the same FedAvg work.

Both frameworks run FL full fine-tuning (``fl_full``: FedAvg, every client trains the whole
model) of timm's ``vit_tiny_patch16_224`` built for 28x28 grey images (patch 4, full depth 12,
5 classes, random init) on Fashion-MNIST classes 5-9: 8 clients x 256 training images (``iid``
partition, capped by ``data.samples_per_client``), SGD lr 0.05 momentum 0.9, batch 32, 1 local
epoch, 3 rounds with all clients, 2 trainers of 1 CPU each, one evaluation on the 5,000 test
images after the last round. ``--rounds/--clients/--samples`` shrink it for smoke tests.

Same work: before the timed runs this script builds sfp-ray's configuration from the same
``--set`` list it passes to ``sfp-ray run`` and writes a *work file* (``work.npz``) with sfp-ray's
own code: the settings, each client's sample indices (``prepare_run``), the per-client shuffling
seeds (``derive_seed``) and checks of the data and of the initial weights (see
``flower_fedavg.py``). The Flower script reads the idx files and builds the model itself, and
``flower_fedavg.py --check`` (run once, untimed) verifies that they match.

Timed runs: ``--pairs`` pairs, each one sfp-ray run and one Flower run as separate whole
processes, the order alternating from pair to pair. Wall time is measured around each process
from here (``whole_process_s``). Inside, from the launch time taken here:

* sfp-ray: ``startup_s`` = modification time of the run folder's ``config.yaml`` (written just
  after the executor has started its actors, before round 1) - launch; ``rounds_s`` = the sum of
  ``rounds.csv`` ``wall_s`` minus ``eval_s``; ``eval_s`` = the ``wall_s`` of the ``costs.csv``
  rows of phase ``eval`` (the server actor's evaluation); ``total_s`` = ``startup_s`` + the sum of
  ``rounds.csv`` ``wall_s``;
* Flower: from the JSON line of ``flower_fedavg.py``: ``startup_s`` = end of round 1's
  ``configure_train`` - launch; ``rounds_s`` = the sum over rounds of ``configure_train`` end to
  the central-evaluation hook; ``eval_s`` = the final central evaluation; ``total_s`` = end of
  that evaluation - launch.

Writes ``<out>/peers_flower.csv`` (one row per run) and ``<out>/peers_flower.md`` (medians, the
ratio sfp-ray / Flower of the whole-process medians with the range of per-pair ratios, the
work, the machine and the versions); run folders, logs and the work file stay in ``--work-dir``.

Run with the main venv (``make bench-flower`` does all of it)::

    .venv/bin/python benchmarks/peers/compare_flower.py [--pairs 3] [--out benchmarks/results]
        [--flower-python .venv-flower/bin/python] [--sfp-set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))  # this checkout's sfp_ray, whatever the venv's editable install points at

CATALOG = HERE / "devices_peers.yaml"
COLUMNS = ["framework", "pair", "order", "startup_s", "rounds_s", "eval_s", "total_s", "whole_process_s",
           "final_accuracy"]


# =========================================================================== the sfp-ray command
# sfp-ray sizes its actor pool from the cluster's free CPUs; the peer catalog gives every client
# a 1-CPU ticket (Flower's trainers) and a server that takes no CPU ticket.


def sfp_ray_work(rounds: int, clients: int, samples: int, test_samples: int) -> list[str]:
    """``--set`` items of the work itself; the Flower side gets the same through the work file."""
    return [
        "seed=0",
        "model.name=vit_tiny_patch16_224", "model.img_size=28", "model.patch_size=4", "model.in_chans=1",
        "model.depth=null", "model.checkpoint=none", "model.pretrained=false",
        "data.name=fashion-mnist", "data.classes=[5,6,7,8,9]", "data.partition=iid",
        f"data.samples_per_client={samples}", f"data.test_samples={test_samples}",
        f"federation.num_clients={clients}", f"federation.clients_per_round={clients}",
        f"federation.rounds={rounds}", f"federation.eval_every={rounds}",
        "train.optimizer=sgd", "train.lr=0.05", "train.momentum=0.9", "train.weight_decay=0",
        "train.batch_size=32", "train.local_epochs=1",
    ]


def sfp_ray_runtime(cpus: int) -> list[str]:
    """``--set`` items that give sfp-ray's Ray executor ``cpus`` trainers of 1 CPU and a CPU-less server."""
    return [
        f"ray.num_cpus={cpus}",
        f"devices.catalog={CATALOG}", "devices.mix={peer_cpu1: 1.0}", "devices.server=peer_server",
    ]


def sfp_ray_command(python: str, run_dir: Path, sets: list[str]) -> list[str]:
    return ([python, "-m", "sfp_ray", "run", "--method", "fl_full", "--executor", "ray", "--no-plots",
             "--out", str(run_dir)] + [a for s in sets for a in ("--set", s)])


# =========================================================================== the work file


def find_data_dir(root: str | None) -> Path:
    """The folder sfp-ray reads Fashion-MNIST from (its own search order)."""
    from sfp_ray.data import dataset_search_path

    for d in dataset_search_path("fashion-mnist", root):
        if any((d / f"train-images-idx3-ubyte{s}").is_file() for s in (".gz", "")):
            return d.resolve()
    raise SystemExit("compare_flower: Fashion-MNIST not found; run `make data`")


def dump_work(sets: list[str], path: Path) -> dict[str, Any]:
    """Write the work file for ``sfp-ray run --method fl_full`` with ``sets``; return its spec."""
    import numpy as np
    import torch

    from sfp_ray.config import load_config
    from sfp_ray.preparation import derive_seed, prepare_run
    from sfp_ray.roles.workspace import PARTS

    spec_run = prepare_run(load_config(overrides=sets), "fl_full", resolve_checkpoint=lambda c: None)
    cfg = spec_run.cfg
    m, t, f = cfg.model, cfg.train, cfg.federation
    if t.optimizer != "sgd" or f.clients_per_round != f.num_clients or cfg.model.checkpoint or m.pretrained:
        raise SystemExit("compare_flower: the Flower script implements SGD, all clients every round and "
                         "random init only")
    ws = spec_run.workspace(PARTS)
    params = [p.detach().double() for p in ws.split.parameters()]
    init = {f"init/{k}": v.detach().numpy() for k, v in ws.vit.state_dict().items()}
    parts = spec_run.client_indices
    train_x, train_y = spec_run.train.images, spec_run.train.labels
    spec = {
        "model": m.name, "img_size": m.img_size, "patch_size": m.patch_size, "in_chans": m.in_chans,
        "depth": m.depth, "embed_dim": m.embed_dim, "num_heads": m.num_heads, "global_pool": m.global_pool,
        "fused_attn": m.fused_attn, "num_classes": spec_run.num_classes, "seed": cfg.seed,
        "lr": t.lr, "momentum": t.momentum, "weight_decay": t.weight_decay, "batch_size": t.batch_size,
        "local_epochs": t.local_epochs, "eval_batch_size": t.eval_batch_size,
        "rounds": f.rounds, "num_clients": f.num_clients, "classes": list(cfg.data.classes),
        "samples_per_client": [len(p) for p in parts], "test_samples": len(spec_run.test),
    }
    np.savez(
        path,
        spec=np.array(json.dumps(spec)),
        indices=np.concatenate(parts).astype(np.int64),
        offsets=np.cumsum([0] + [len(p) for p in parts]).astype(np.int64),
        labels=np.concatenate([train_y[torch.from_numpy(p)].numpy() for p in parts]),
        image_sums=np.array([float(train_x[torch.from_numpy(p)].double().sum()) for p in parts]),
        test_labels=spec_run.test.labels.numpy(),
        test_image_sum=np.array(float(spec_run.test.images.double().sum())),
        seeds=np.array([[derive_seed(cfg.seed, r, c) for c in range(f.num_clients)] for r in range(1, f.rounds + 1)],
                       dtype=np.int64),
        init_checks=np.array([sum(p.numel() for p in params), float(sum(p.sum() for p in params)),
                              float(sum((p * p).sum() for p in params))]),
        **init,
    )
    return spec


# =========================================================================== runs


def run_process(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[float, float, int]:
    """Run ``cmd`` to completion (its own process group, killed on timeout); return launch, end, exit code."""
    with open(log, "w") as fh:
        t0 = time.time()
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)  # the group this call created, nothing else
            p.wait()
            rc = -9
        t1 = time.time()
    return t0, t1, rc


def _tail(log: Path, n: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def run_sfp_ray(args: argparse.Namespace, sets: list[str], work_dir: Path, pair: int) -> dict[str, Any]:
    run_dir = work_dir / f"sfp-ray-{pair}"
    log = work_dir / f"sfp-ray-{pair}.log"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE", FLWR_TELEMETRY_ENABLED="0",
               RAY_worker_niceness="0")
    t0, t1, rc = run_process(sfp_ray_command(sys.executable, run_dir, sets), env, log, args.timeout)
    if rc != 0:
        raise SystemExit(f"compare_flower: sfp-ray run failed (exit {rc}), log {log}:\n{_tail(log)}")
    with open(run_dir / "rounds.csv") as fh:
        rounds = list(csv.DictReader(fh))
    with open(run_dir / "costs.csv") as fh:
        eval_s = sum(float(r["wall_s"]) for r in csv.DictReader(fh) if r["phase"] == "eval")
    round_sum = sum(float(r["wall_s"]) for r in rounds)
    startup = (run_dir / "config.yaml").stat().st_mtime - t0
    return {"framework": "sfp-ray", "pair": pair, "startup_s": startup, "rounds_s": round_sum - eval_s,
            "eval_s": eval_s, "total_s": startup + round_sum, "whole_process_s": t1 - t0,
            "final_accuracy": float(rounds[-1]["test_accuracy"])}


def flower_command(args: argparse.Namespace, work: Path, data_dir: Path, out: Path, check: bool = False) -> list[str]:
    cmd = [args.flower_python, str(HERE / "flower_fedavg.py"), "--work", str(work), "--data-dir", str(data_dir),
           "--out", str(out), "--cpus", str(args.cpus), "--client-cpus", "1"]
    return cmd + (["--check"] if check else [])


def flower_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Ray starts workers at nice 15 unless told otherwise; sfp-ray's local Ray starts them at 0.
    # Both frameworks get 0 here, so that neither's actors lose the CPU to the other's leftovers.
    return dict(env, OMP_WAIT_POLICY="PASSIVE", FLWR_TELEMETRY_ENABLED="0", RAY_worker_niceness="0")


def run_flower(args: argparse.Namespace, work: Path, data_dir: Path, work_dir: Path, pair: int) -> dict[str, Any]:
    out = work_dir / f"flower-{pair}.json"
    log = work_dir / f"flower-{pair}.log"
    out.unlink(missing_ok=True)
    t0, t1, rc = run_process(flower_command(args, work, data_dir, out), flower_env(), log, args.timeout)
    if rc != 0 or not out.is_file():
        raise SystemExit(f"compare_flower: Flower run failed (exit {rc}), log {log}:\n{_tail(log)}")
    j = json.loads(out.read_text().splitlines()[-1])
    return {"framework": "flower", "pair": pair, "startup_s": j["startup_done"] - t0, "rounds_s": sum(j["rounds_s"]),
            "eval_s": j["eval_s"], "total_s": j["eval_end"] - t0, "whole_process_s": t1 - t0,
            "final_accuracy": j["final_accuracy"], "_versions": j["versions"]}


# =========================================================================== report


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sfp_versions() -> dict[str, str]:
    import ray
    import timm
    import torch

    import sfp_ray

    return {"python": platform.python_version(), "sfp_ray": f"{sfp_ray.__version__} ({Path(sfp_ray.__file__).parent})",
            "ray": ray.__version__, "torch": str(torch.__version__), "timm": timm.__version__}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def report(rows: list[dict[str, Any]], args: argparse.Namespace, spec: dict[str, Any], sets: list[str],
           flower_versions: dict[str, str], load: tuple[tuple[float, ...], tuple[float, ...]], argv: list[str]) -> str:
    def med(fw: str, col: str) -> float:
        return statistics.median(r[col] for r in rows if r["framework"] == fw)

    pairs = sorted({r["pair"] for r in rows})
    by = {(r["framework"], r["pair"]): r for r in rows}
    ratios = [by["sfp-ray", p]["whole_process_s"] / by["flower", p]["whole_process_s"] for p in pairs]
    ratio = med("sfp-ray", "whole_process_s") / med("flower", "whole_process_s")
    samples = spec["samples_per_client"]
    lines = [
        "# Peer benchmark: sfp-ray vs Flower (Ray simulation), FedAvg full fine-tuning", "",
        f"Command: `{' '.join(shlex.quote(a) for a in argv)}` (commit {git_commit()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}).", "",
        f"**Whole process, median of {len(pairs)} pairs: sfp-ray {med('sfp-ray', 'whole_process_s'):.1f} s, "
        f"Flower {med('flower', 'whole_process_s'):.1f} s; ratio sfp-ray / Flower {ratio:.2f} "
        f"(per-pair ratios {min(ratios):.2f}-{max(ratios):.2f}).**", "",
        "## Medians", "",
        "| framework | startup s | rounds s | eval s | total s | whole process s | final accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for fw in ("sfp-ray", "flower"):
        lines.append(f"| {fw} | " + " | ".join(f"{med(fw, c):.2f}" for c in COLUMNS[3:8])
                     + f" | {med(fw, 'final_accuracy'):.4f} |")
    lines += ["", "## Runs", "", "| pair | order | framework | startup s | rounds s | eval s | total s | "
              "whole process s | final accuracy |", "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['pair']} | {r['order']} | {r['framework']} | " + " | ".join(
            f"{r[c]:.2f}" for c in COLUMNS[3:8]) + f" | {r['final_accuracy']:.4f} |")
    lines += [
        "", "## The work (identical in both frameworks)", "",
        f"- FedAvg full fine-tuning (sfp-ray `--method fl_full`; Flower Message-API `FedAvg`, weighted by sample "
        f"count), {spec['rounds']} rounds, all {spec['num_clients']} clients every round.",
        f"- timm `{spec['model']}` with img_size={spec['img_size']}, patch_size={spec['patch_size']}, "
        f"in_chans={spec['in_chans']}, depth={spec['depth'] or 'timm default (12)'}, "
        f"num_classes={spec['num_classes']}, random init (`torch.manual_seed({spec['seed']})`), "
        f"fused attention {'on' if spec['fused_attn'] else 'off'} (sfp-ray's default).",
        f"- Fashion-MNIST classes {spec['classes']} (labels 0-{spec['num_classes'] - 1}), images scaled to [-1, 1]; "
        f"{spec['num_clients']} clients x {samples[0] if len(set(samples)) == 1 else samples} training images "
        f"(sfp-ray's `iid` partition capped by `data.samples_per_client`; the same indices and shuffling seeds in "
        f"Flower, checked); evaluation once after the last round on {spec['test_samples']} test images "
        f"(batch {spec['eval_batch_size']}).",
        f"- SGD lr {spec['lr']}, momentum {spec['momentum']}, weight decay {spec['weight_decay']}, batch "
        f"{spec['batch_size']}, {spec['local_epochs']} local epoch(s); a fresh optimizer per client per round.",
        f"- Resources: a private local Ray instance with {args.cpus} CPUs; trainers of 1 CPU each ({args.cpus} at a "
        "time), one torch thread per trainer; the evaluation uses one torch thread (sfp-ray: its server actor, "
        "no CPU ticket; Flower: the ServerApp in the driver process). `OMP_WAIT_POLICY=PASSIVE`, "
        "`FLWR_TELEMETRY_ENABLED=0` and `RAY_worker_niceness=0` (Ray workers at the driver's priority, sfp-ray's "
        "default; Ray's own is 15) for both.",
        f"- sfp-ray settings: `{' '.join('--set ' + s for s in sets)}` (plus `--no-plots`).",
        "", "## Columns", "",
        "All from the launch of the process, measured by this script. `startup_s`: launch to the start of round 1 "
        "(sfp-ray: its actors are built and ready; Flower: round 1's messages are built and the nodes registered - "
        "Flower's actor pool starts alongside, and each actor imports the app and loads its data on its first "
        "message, during round 1). `rounds_s`: the rounds without the final "
        "evaluation. `eval_s`: the final evaluation. `total_s`: launch to the end of that evaluation. "
        "`whole_process_s`: launch to process exit (includes Ray shut-down and, for sfp-ray, writing its report "
        "files) - the headline comparison, since the two frameworks split start-up and round 1 differently.",
        "", "## Machine and versions", "",
        f"- {os.cpu_count()} CPUs ({cpu_model()}), {platform.platform()}; load average before "
        f"{' / '.join(f'{x:.2f}' for x in load[0])}, after {' / '.join(f'{x:.2f}' for x in load[1])} "
        "(a shared machine: other work may have run at the same time).",
        "- sfp-ray side: " + ", ".join(f"{k} {v}" for k, v in sfp_versions().items()),
        "- Flower side (`.venv-flower`): " + ", ".join(f"{k} {v}" for k, v in flower_versions.items()),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="sfp-ray/Flower run pairs (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--samples", type=int, default=256, help="training images per client (default: %(default)s)")
    ap.add_argument("--test-samples", type=int, default=5000,
                    help="must be all test images of the classes (5000 for classes 5-9)")
    ap.add_argument("--cpus", type=int, default=2, help="Ray CPUs = trainers at a time (default: %(default)s)")
    ap.add_argument("--sfp-set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra sfp-ray --set (after the benchmark's own; also applied to the work file)")
    ap.add_argument("--flower-python", default=str(REPO / ".venv-flower" / "bin" / "python"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"),
                    help="folder for peers_flower.csv and peers_flower.md (default: %(default)s)")
    ap.add_argument("--work-dir", default=None, help="folder for run folders, logs, work file (default: a temp dir)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds allowed per run (default: %(default)s)")
    ap.add_argument("--dump-work", metavar="NPZ", default=None, help="only write the work file and exit")
    args = ap.parse_args(argv)
    cmdline = [Path(sys.argv[0]).as_posix()] + (sys.argv[1:] if argv is None else argv)

    sets = (sfp_ray_work(args.rounds, args.clients, args.samples, args.test_samples)
            + sfp_ray_runtime(args.cpus) + args.sfp_set)
    if args.dump_work:
        spec = dump_work(sets, Path(args.dump_work))
        print(f"work file {args.dump_work}: {spec['num_clients']} clients, {spec['rounds']} rounds")
        return 0
    if not Path(args.flower_python).is_file():
        raise SystemExit(f"compare_flower: no Flower interpreter at {args.flower_python} (`make bench-flower` "
                         "builds .venv-flower)")
    work_dir = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="sfp-peers-flower-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    work = work_dir / "work.npz"
    spec = dump_work(sets, work)
    data_dir = find_data_dir(None)
    log = work_dir / "flower-check.log"
    _, _, rc = run_process(flower_command(args, work, data_dir, work_dir / "unused.json", check=True), flower_env(),
                           log, args.timeout)
    print(_tail(log, 1), file=sys.stderr)
    if rc != 0:
        raise SystemExit(f"compare_flower: the Flower side does not see the same work, log {log}:\n{_tail(log)}")

    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    flower_versions: dict[str, str] = {}
    for pair in range(args.pairs):
        order = ["sfp-ray", "flower"] if pair % 2 == 0 else ["flower", "sfp-ray"]
        for i, fw in enumerate(order):
            if fw == "sfp-ray":
                row = run_sfp_ray(args, sets, work_dir, pair)
            else:
                row = run_flower(args, work, data_dir, work_dir, pair)
                flower_versions = row.pop("_versions")
            row["order"] = "first" if i == 0 else "second"
            rows.append(row)
            print(f"pair {pair} {fw:8}: startup {row['startup_s']:6.1f} s  rounds {row['rounds_s']:6.1f} s  "
                  f"eval {row['eval_s']:5.1f} s  total {row['total_s']:6.1f} s  whole process "
                  f"{row['whole_process_s']:6.1f} s  accuracy {row['final_accuracy']:.4f}", file=sys.stderr)
    load_after = os.getloadavg()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "peers_flower.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k in COLUMNS})
    md = report(rows, args, spec, sets, flower_versions, (load_before, load_after), cmdline)
    (out / "peers_flower.md").write_text(md)
    print(md)
    print(f"results: {out}/peers_flower.csv, {out}/peers_flower.md; runs and logs: {work_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
