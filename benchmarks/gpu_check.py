"""GPU check: client and server actors compute on the GPU shares Ray gives them, and agree with the serial executor.

Two cases, each run by the Ray executor (client actors holding a GPU share each, a server actor
holding one) and by the serial executor on the same device, then compared:

* ``demo``: the demo configuration (the offline backbone, Fashion-MNIST 5-9, 10 clients) on
  four client actors;
* ``vit_b224``: ViT-B/16 at 224 px (random initialisation), ``sfprompt`` and ``fl_full``,
  10 clients x 32 samples x 2 rounds.

For every run it records where each actor computed (``resources.csv``: ``compute_device``), each
actor's peak GPU memory per task against its estimate (``observed_gpu_mem_mb`` vs
``estimated_device_memory_mb``), the wall time, and whether the serial and Ray runs gave the same
accuracy and loss in every round and the same final state. The ViT-B case is also timed on the
CPU (fewer clients: ``--cpu-clients``) and compared per client-sample.

GPU shares: with one GPU, the four (or ten) client actors and the server cannot all hold the
default 0.25 / 0.5 shares (a GPU holds 1.0 of shares); the check writes its own device classes,
``gpu_client`` and ``gpu_server``, each with ``1 / (clients + 1)`` of a GPU (0.2 for four slots)
and the physical model of the built-in ``jetson`` and ``edge_server``. With more GPUs, 0.25 and 0.5.

``--device cpu --quick`` runs the same checks on a machine without a GPU, small: the actors hold
logical GPU shares (``ray.num_gpus=1``) and compute on the CPU, saying why.

Writes ``benchmarks/results/gpu_check.md`` and ``gpu_check.csv``. Exit code 1 when a check fails.
Run on a GPU host: ``.venv/bin/python benchmarks/gpu_check.py`` (under 8 minutes on one H100).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see sfp_ray/cli/commands.py
os.environ.setdefault("TIMM_FUSED_ATTN", "0")

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CATALOG = """devices:
  gpu_client:
    description: "a Jetson-class client holding {client} of a GPU (sfp-ray's GPU check)"
    num_cpus: {cpus}
    num_gpus: {client}
    memory_mb: 8192
    peak_flops: 1.28e+12
    efficiency: 0.3
    uplink_mbps: 100.0
    downlink_mbps: 100.0
    latency_ms: 10.0
  gpu_server:
    description: "an edge server holding {server} of a GPU (sfp-ray's GPU check)"
    num_cpus: {cpus}
    num_gpus: {server}
    memory_mb: 16384
    peak_flops: 8.1e+12
    efficiency: 0.4
    uplink_mbps: 1000.0
    downlink_mbps: 1000.0
    latency_ms: 2.0
"""


def shares(gpus: int, slots: int) -> tuple[float, float]:
    """``(client share, server share)`` that fit ``slots`` client actors and the server on ``gpus`` GPUs."""
    if gpus >= 2:
        return 0.25, 0.5
    s = round(1.0 / (slots + 1), 4)
    return s, s


def cases(quick: bool, cpu_clients: int) -> list[dict]:
    if quick:
        small = ["model.img_size=16", "model.patch_size=4", "model.depth=3", "model.checkpoint=none",
                 "data.name=synthetic", "data.classes=null", "data.test_samples=32", "federation.rounds=1"]
        return [
            {"case": "demo", "methods": ["sfprompt"], "slots": 4,
             "sets": small + ["federation.num_clients=4", "federation.clients_per_round=4",
                              "data.samples_per_client=8"]},
            {"case": "vit_b224", "methods": ["sfprompt", "fl_full"], "slots": 2,
             "sets": small + ["federation.num_clients=2", "federation.clients_per_round=2",
                              "data.samples_per_client=4"]},
        ]
    vitb = ["model.name=vit_base_patch16_224", "model.img_size=224", "model.patch_size=16", "model.depth=null",
            "model.checkpoint=none", "data.samples_per_client=32", "data.min_samples=32", "data.test_samples=256",
            "train.eval_batch_size=64", "federation.rounds=2"]
    return [
        {"case": "demo", "methods": ["sfprompt"], "slots": 4, "sets": ["ray.max_actors=4"]},
        {"case": "vit_b224", "methods": ["sfprompt", "fl_full"], "slots": 10,
         "sets": vitb + ["federation.num_clients=10", "federation.clients_per_round=10"],
         "cpu_sets": vitb + [f"federation.num_clients={cpu_clients}", f"federation.clients_per_round={cpu_clients}",
                             "federation.rounds=1"]},
    ]


def run_once(sets: list[str], method: str, executor: str, out: Path, device: str) -> tuple[float, Path]:
    import sfp_ray

    t0 = time.perf_counter()
    kwargs = {"device": device} if executor == "serial" else {}
    sfp_ray.run(sets, method=method, executor=executor, out=out, plots=False, **kwargs)
    return time.perf_counter() - t0, out


def compare(a: Path, b: Path, method: str) -> dict:
    """Round-by-round accuracy and loss, and the final state, of two run folders."""
    ra, rb = (pd.read_csv(d / "rounds.csv") for d in (a, b))
    same_acc = list(ra["test_accuracy"]) == list(rb["test_accuracy"])
    loss = float((ra["test_loss"] - rb["test_loss"]).abs().max())
    sa = torch.load(a / f"final_state_{method}_seed0.pt", weights_only=True)
    sb = torch.load(b / f"final_state_{method}_seed0.pt", weights_only=True)
    diff = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
    return {"same_accuracy_every_round": same_acc, "max_loss_diff": loss, "max_state_diff": diff,
            "final_accuracy_ray": float(rb["test_accuracy"].dropna().iloc[-1]),
            "final_accuracy_serial": float(ra["test_accuracy"].dropna().iloc[-1])}


def actors(run: Path) -> dict:
    """Where the actors computed and their GPU memory against the estimates (resources.csv)."""
    df = pd.read_csv(run / "resources.csv")
    tasks = df[df["stage"] == "task"]
    start = df[df["stage"] == "start"]
    gpu = tasks["observed_gpu_mem_mb"].dropna()
    est = tasks["estimated_device_memory_mb"].dropna()
    out = {"client_devices": ",".join(sorted(set(tasks["compute_device"].astype(str)))),
           "server_device": ",".join(sorted(set(start[start["role"] == "server"]["compute_device"].astype(str)))),
           "fallback_reasons": ";".join(sorted(set(df["gpu_fallback_reason"].dropna().astype(str)) - {""})),
           "client_gpu_peak_mib": round(float(gpu.max()), 0) if len(gpu) else float("nan"),
           "client_estimate_mib": round(float(est.max()), 0) if len(est) else float("nan")}
    end = df[df["stage"] == "end"]
    server = end[end["role"] == "server"]
    if len(server):
        out["server_estimate_mib"] = round(float(server["estimated_device_memory_mb"].max()), 0)
        out["server_gpu_peak_mib"] = round(float(server["observed_gpu_mem_mb"].max()), 0)
    return out


def main(argv: list[str] | None = None) -> int:
    from sfp_ray.config import load_config
    from sfp_ray.methods import get_method

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cuda: the real check (needs a GPU); cpu: the same checks with logical GPU shares")
    ap.add_argument("--quick", action="store_true", help="tiny models and runs (CI-sized)")
    ap.add_argument("--cpu-clients", type=int, default=2, help="clients of the ViT-B CPU timing run")
    ap.add_argument("--out", default=str(ROOT / "runs" / "gpu-check"))
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        from sfp_ray.compute import cuda_unusable

        print(f"gpu_check: --device cuda, but torch cannot use a GPU here ({cuda_unusable()}); "
              "run with --device cpu --quick on a machine without one", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count() if args.device == "cuda" else 1
    rows, failures = [], []
    t_start = time.perf_counter()
    for case in cases(args.quick, args.cpu_clients):
        client, server = shares(gpus, case["slots"])
        catalog = out / f"devices-{case['case']}.yaml"
        catalog.write_text(CATALOG.format(client=client, server=server, cpus=0.5 if args.device == "cuda" else 0.25))
        dev = [f"devices.catalog={catalog}", "devices.mix={gpu_client: 1.0}", "devices.server=gpu_server"]
        if args.device == "cpu":
            dev.append("ray.num_gpus=1")  # logical GPU shares: the actors schedule on them and compute on the CPU
        for method in case["methods"]:
            sets = case["sets"] + dev
            name = f"{case['case']}-{method}"
            print(f"gpu_check: {name}: Ray ...", file=sys.stderr, flush=True)
            wall_ray, ray_dir = run_once(sets, method, "ray", out / f"{name}-ray", args.device)
            print(f"gpu_check: {name}: serial ...", file=sys.stderr, flush=True)
            wall_serial, serial_dir = run_once(sets, method, "serial", out / f"{name}-serial", args.device)
            row = {"case": case["case"], "method": method, "device": args.device, "client_share": client,
                   "server_share": server, "wall_ray_s": round(wall_ray, 1), "wall_serial_s": round(wall_serial, 1),
                   **actors(ray_dir), **compare(serial_dir, ray_dir, method)}
            if case.get("cpu_sets") and args.device == "cuda":
                print(f"gpu_check: {name}: CPU timing ...", file=sys.stderr, flush=True)
                cpu_sets = case["cpu_sets"] + [f"devices.catalog={catalog}", "devices.mix={rpi4: 1.0}",
                                               "devices.server=laptop"]
                wall_cpu, _ = run_once(cpu_sets, method, "ray", out / f"{name}-cpu", "cpu")
                n_gpu = 10 * 32 * 2
                n_cpu = args.cpu_clients * 32
                row.update({"wall_cpu_s": round(wall_cpu, 1), "cpu_client_samples": n_cpu,
                            "gpu_s_per_client_sample": round(wall_ray / n_gpu, 4),
                            "cpu_s_per_client_sample": round(wall_cpu / n_cpu, 4)})
                row["cpu_over_gpu"] = round(row["cpu_s_per_client_sample"] / row["gpu_s_per_client_sample"], 1)
            want = "cuda:0" if args.device == "cuda" else "cpu"
            with_server = get_method(method).server(load_config(overrides=sets)) is not None
            checks = {
                "actors compute on the expected device": (row["client_devices"] == want
                                                          and row["server_device"] == (want if with_server else "")),
                "serial and Ray give the same accuracy every round": row["same_accuracy_every_round"],
                "serial and Ray give the same final state (1e-5)": row["max_state_diff"] <= 1e-5,
            }
            if args.device == "cuda":
                checks["each actor's GPU peak within its estimate"] = (
                    row["client_gpu_peak_mib"] <= row["client_estimate_mib"]
                    and row.get("server_gpu_peak_mib", 0) <= row.get("server_estimate_mib", float("inf")))
            else:
                checks["the fallback says why"] = "logical GPU" in row["fallback_reasons"]
            row["checks_failed"] = "; ".join(k for k, ok in checks.items() if not ok)
            failures += [f"{name}: {k}" for k, ok in checks.items() if not ok]
            rows.append(row)
            print(f"gpu_check: {name}: {'ok' if not row['checks_failed'] else 'FAILED ' + row['checks_failed']}",
                  file=sys.stderr, flush=True)
    df = pd.DataFrame(rows)
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.device == "cuda" and not args.quick else "_quick_cpu" if args.device == "cpu" else "_quick"
    df.to_csv(res / f"gpu_check{suffix}.csv", index=False)
    machine = (torch.cuda.get_device_name(0) + f" x{gpus}") if args.device == "cuda" else "no GPU (logical shares)"
    lines = [f"# GPU check{' (quick, CPU)' if suffix else ''}", "",
             f"`python benchmarks/gpu_check.py {' '.join(argv if argv is not None else sys.argv[1:])}` on {machine}, "
             f"{time.strftime('%Y-%m-%d')}, {time.perf_counter() - t_start:.0f} s in all.", "",
             "| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in df.itertuples(index=False)]
    lines += ["", "All checks passed." if not failures else "Failed: " + "; ".join(failures)]
    (res / f"gpu_check{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
