"""Command-line interface: the only place that wires everything and starts/joins Ray.

::

    sfp-ray run      [--config FILE] [--set KEY=VALUE ...] [--method NAME] [--executor serial|ray]
                     [--address ADDR] [--out DIR]
    sfp-ray compare  [--config FILE] [--set KEY=VALUE ...] --methods sfprompt,fl_full[,...] [--out DIR]
    sfp-ray pretrain [--config FILE] [--set KEY=VALUE ...] [--out FILE]
    sfp-ray project  --model NAME [--set KEY=VALUE ...] [--methods ...] [--out DIR]
    sfp-ray report   RUN_DIR
    sfp-ray methods | devices | datasets

Exit code 0 on success; a bad configuration or input exits with code 2 and one line on
stderr naming the offending key or file (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sfp_ray.errors import ClusterError, ConfigError, DataError, ModelError, SfpRayError

log = logging.getLogger("sfp_ray")

DEFAULT_METHODS = "sfprompt,fl_full"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML configuration file (sections as in DESIGN.md §7)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override a configuration key, e.g. --set federation.rounds=3 (repeatable)")


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=["serial", "ray"], default="serial",
                   help="serial: every role in this process (reference); ray: one actor per client, "
                        "a server actor and an aggregator actor (default: %(default)s)")
    p.add_argument("--address", metavar="ADDR", default=None,
                   help="Ray cluster to join: 'auto' or HOST:PORT; default starts a private local Ray "
                        "(ray.address in the config)")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (default: runs/<timestamp>)")
    p.add_argument("--no-plots", action="store_true", help="skip PNG plots")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sfp-ray",
        description="Ray actor-based simulator of split federated prompt fine-tuning (SFPrompt, arXiv 2407.17533).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run one method and write a report")
    _add_config_args(p)
    p.add_argument("--method", default=None, help="registered method (default: config 'method', sfprompt)")
    _add_runtime_args(p)

    p = sub.add_parser("compare", help="run several methods on the same data, seeds and devices")
    _add_config_args(p)
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated registered methods (default: %(default)s)")
    _add_runtime_args(p)

    p = sub.add_parser("pretrain", help="pre-train the configured ViT on the source task (offline backbone)")
    _add_config_args(p)
    p.add_argument("--out", metavar="FILE", default=None,
                   help="checkpoint file (default: the cache path the 'pretrain' checkpoint setting uses)")
    p.add_argument("--force", action="store_true", help="pre-train even when the cached backbone exists")

    p = sub.add_parser("project", help="paper-scale cost projection on the meta device (no training)")
    p.add_argument("--model", required=True, help="timm model, e.g. vit_base_patch16_224")
    _add_config_args(p)
    p.add_argument("--methods", default=None, help="comma-separated methods (default: all registered)")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (default: runs/project-<model>)")

    p = sub.add_parser("report", help="rebuild summary.csv and plots of a run folder")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--no-plots", action="store_true", help="skip PNG plots")

    sub.add_parser("methods", help="list registered methods")
    sub.add_parser("devices", help="list device profiles")
    sub.add_parser("datasets", help="list registered datasets")
    return parser


# --------------------------------------------------------------------------- commands


def _load(args: argparse.Namespace):
    from sfp_ray.config import load_config

    return load_config(args.config, args.overrides)


def _progress(total_rounds: int, quiet: bool):
    from rich.console import Console

    console = Console(stderr=True, highlight=False)

    def show(rec) -> None:
        if quiet:
            return
        acc = "   -  " if rec.test_accuracy != rec.test_accuracy else f"{rec.test_accuracy:.3f}"
        console.print(
            f"[bold]{rec.method}[/bold] round {rec.round}/{total_rounds}  acc {acc}  "
            f"loss {rec.train_loss:.3f}  {rec.bytes_total / 1e6:.1f} MB  "
            f"client {rec.client_flops_total / 1e9:.1f} GFLOP  sim {rec.cum_sim_s:.1f} s  wall {rec.cum_wall_s:.1f} s",
            soft_wrap=True,
        )

    return show


def _make_executor(kind: str, cfg, address: str | None):
    if kind == "serial":
        from sfp_ray.executors.serial import SerialExecutor

        return SerialExecutor(num_threads=None), False
    from sfp_ray.executors.ray_executor import RayExecutor
    from sfp_ray.runtime import start_ray

    started = start_ray(cfg.ray, address if address is not None else cfg.ray.address)
    return RayExecutor(), started


def _run_methods(args: argparse.Namespace, methods: list[str]) -> int:
    import ray  # noqa: F401  (fail early if the install is broken)

    from sfp_ray.methods import get_method
    from sfp_ray.orchestrator import Orchestrator, default_out_dir, prepare_run
    from sfp_ray.pretrain import resolve_checkpoint
    from sfp_ray.reports import ReportSink, format_summary

    cfg = _load(args)
    for m in methods:
        get_method(m)  # validate all names before any work
    out = Path(args.out) if args.out else default_out_dir()
    err = sys.stderr
    ck_cache: dict[str, str | None] = {}

    def resolve(c):
        key = repr((c.model, c.pretrain, c.seed))
        if key not in ck_cache:
            ck_cache[key] = resolve_checkpoint(c, log_fn=lambda s: print(f"sfp-ray: {s}", file=err))
        return ck_cache[key]

    specs = [prepare_run(cfg, m, resolve_checkpoint=resolve) for m in methods]  # validates everything first
    sink = ReportSink(out, plots=not args.no_plots)
    print(f"sfp-ray: writing the report to {out}", file=err)
    started = False
    try:
        for m, spec in zip(methods, specs):
            executor, st = _make_executor(args.executor, spec.cfg, args.address)
            started = started or st
            print(f"sfp-ray: {m}: {spec.cfg.federation.num_clients} clients "
                  f"({spec.cfg.federation.clients_per_round}/round), {spec.cfg.federation.rounds} rounds, "
                  f"{args.executor} executor, data {spec.cfg.data.name} "
                  f"({len(spec.train)} train / {len(spec.test)} test), backbone {spec.checkpoint or 'none'}",
                  file=err)
            with executor:
                Orchestrator(spec, executor, [sink], progress=_progress(spec.cfg.federation.rounds, args.quiet)).run()
    finally:
        if started:
            import ray

            ray.shutdown()
    summary = sink.finalize()
    print(format_summary(summary))
    print(f"\nreport: {out}/ (summary.csv, rounds.csv, costs.csv, costs.parquet, config.yaml, *.png)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from sfp_ray.config import load_config

    method = args.method or load_config(args.config, args.overrides).method
    return _run_methods(args, [method])


def cmd_compare(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ConfigError("--methods: give at least one method, e.g. sfprompt,fl_full")
    return _run_methods(args, methods)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from sfp_ray.pretrain import pretrain, pretrain_path

    cfg = _load(args)
    out = Path(args.out) if args.out else pretrain_path(cfg)
    if out.is_file() and not args.force:
        print(f"sfp-ray: pre-trained backbone already cached: {out} (use --force to redo)")
        return 0
    meta = pretrain(cfg, out, progress=not args.quiet)
    print(f"pre-trained {cfg.model.name} on {meta['source_dataset']} classes {meta['source_classes']}: "
          f"source test accuracy {meta['source_test_accuracy']:.3f} in {meta['seconds']:.0f} s -> {out}")
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    from sfp_ray.projection import format_projection, project

    cfg = _load(args)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else None
    out = Path(args.out) if args.out else Path("runs") / f"project-{args.model}"
    df = project(cfg, args.model, methods=methods)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "projection.csv", index=False)
    print(format_projection(df))
    print(f"\nprojection: {out}/projection.csv")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sfp_ray.reports import format_summary, rebuild

    summary = rebuild(args.run_dir, plots=not args.no_plots)
    print(format_summary(summary))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.command == "methods":
        from sfp_ray.methods import get_method, list_methods

        for m in list_methods():
            print(f"{m:20} {get_method(m).description}")
    elif args.command == "devices":
        from sfp_ray.devices import load_catalog

        for name, d in load_catalog().items():
            print(f"{name:12} cpus={d.num_cpus:<5} gpus={d.num_gpus:<5} mem={d.memory_mb:>6} MB  "
                  f"{d.peak_flops / 1e9:8.1f} GFLOP/s x{d.efficiency:<4}  up {d.uplink_mbps:>7} / down "
                  f"{d.downlink_mbps:>7} Mbit/s  {d.latency_ms} ms")
    else:
        from sfp_ray.data import list_datasets

        print("\n".join(list_datasets()))
    return 0


COMMANDS = {
    "run": cmd_run,
    "compare": cmd_compare,
    "pretrain": cmd_pretrain,
    "project": cmd_project,
    "report": cmd_report,
    "methods": cmd_list,
    "devices": cmd_list,
    "datasets": cmd_list,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # Idle OpenMP threads that spin-wait for a core slow torch down 20x and more when
    # anything else runs on the machine (Ray workers, other jobs); sleep instead.
    # Must be set before torch is imported; export OMP_WAIT_POLICY=ACTIVE to override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    t0 = time.perf_counter()
    try:
        return COMMANDS[args.command](args)
    except (SfpRayError, FileNotFoundError) as e:
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"sfp-ray: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sfp-ray: interrupted after {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        return 130


__all__ = ["main", "build_parser", "ClusterError", "ConfigError", "DataError", "ModelError"]


if __name__ == "__main__":
    sys.exit(main())
