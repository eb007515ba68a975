"""The commands: what each ``sfp-ray`` subcommand does, and :func:`main`, which parses and dispatches.

Everything that needs no data is checked before Ray starts and before ``--out`` is created
(:mod:`sfp_ray.preflight`). Exit code 0 on success (also when some clients failed: one warning
line each); a bad configuration or input, a ``--resume`` that does not fit, or a round that too
few clients survive (``federation.min_success_fraction``) exits with code 2 and one line on
stderr (``--debug`` shows the traceback), and so does a run whose Ray head is lost; an
interrupted run exits with 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sfp_ray.cli.parser import DEFAULT_METHODS, UsageError, _did_you_mean, build_parser
from sfp_ray.errors import ConfigError, DataError, SfpRayError, first_line

log = logging.getLogger("sfp_ray")


def _load(args: argparse.Namespace, extra: Sequence[str] = ()):
    from sfp_ray.config import load_config

    return load_config(args.config, [*extra, *args.overrides])


def _say(msg: str) -> None:
    print(f"sfp-ray: {msg}", file=sys.stderr, flush=True)


def parse_seeds(text: str | None, default: int) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; None -> ``[default]``.

    Example:
        >>> parse_seeds("0, 1,2", 5), parse_seeds(None, 5)
        ([0, 1, 2], [5])
    """
    if text is None:
        return [default]
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise ConfigError("--seeds: give at least one seed, e.g. 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: a seed is repeated")
    return seeds


def _progress(total_rounds: int, quiet: bool, with_seed: bool):
    from rich.console import Console

    console = Console(stderr=True, highlight=False)

    def show(rec) -> None:
        if quiet:
            return
        acc = "   -  " if rec.test_accuracy != rec.test_accuracy else f"{rec.test_accuracy:.3f}"
        seed = f" seed {rec.seed}" if with_seed else ""
        failed = f"  [yellow]{rec.failed} failed[/yellow]" if rec.failed else ""
        console.print(
            f"[bold]{rec.method}[/bold]{seed} round {rec.round}/{total_rounds}  acc {acc}  "
            f"loss {rec.train_loss:.3f}  {rec.bytes_total / 1e6:.1f} MB  "
            f"client {rec.client_flops_total / 1e9:.1f} GFLOP  sim {rec.cum_sim_s:.1f} s  "
            f"wall {rec.cum_wall_s:.1f} s{failed}",
            soft_wrap=True,
        )

    return show


# --------------------------------------------------------------------------- run / compare


def _threads(args: argparse.Namespace) -> int | None:
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads: give a whole number >= 1, got {args.threads}")
    if args.threads is not None and (args.executor or "ray") == "ray" and args.resume is None:
        raise ConfigError("--threads sets the serial executor's torch threads; with the Ray executor each actor takes "
                          "its device class's (add --executor serial)")
    return args.threads


def _device(args: argparse.Namespace) -> str:
    if args.device is not None and (args.executor or "ray") == "ray" and args.resume is None:
        raise ConfigError("--device sets where the serial executor computes; Ray actors follow their device class's "
                          "GPU share (add --executor serial)")
    return args.device or "auto"


def _run_methods(args: argparse.Namespace, methods: list[str], cfg) -> int:
    from sfp_ray.api import default_out_dir, run_methods

    seeds = parse_seeds(args.seeds, cfg.seed)
    args.run_dir = Path(args.out) if args.out else default_out_dir()
    res = run_methods(methods, cfg, seeds=seeds, executor=args.executor or "ray", address=args.address,
                      out=args.run_dir, plots=not args.no_plots, threads=_threads(args), device=_device(args),
                      progress=_progress(cfg.federation.rounds, args.quiet, len(seeds) > 1), echo=_say)
    return _print_results(res, len(seeds))


def _resume(args: argparse.Namespace, methods: list[str] | None) -> int:
    from sfp_ray.api import resume
    from sfp_ray.checkpoints import read_plan

    folder = Path(args.resume)
    if args.out is not None and Path(args.out).resolve() != folder.resolve():
        raise ConfigError(f"--out {args.out}: a resumed run writes into its own folder ({folder}); drop --out")
    args.run_dir = folder
    plan = read_plan(folder)
    seeds = parse_seeds(args.seeds, 0) if args.seeds is not None else None
    res = resume(folder, args.config, overrides=args.overrides, methods=methods, seeds=seeds, executor=args.executor,
                 address=args.address, plots=not args.no_plots, threads=_threads(args), device=_device(args),
                 progress=_progress(plan.config.federation.rounds, args.quiet, len(plan.seeds) > 1), echo=_say)
    return _print_results(res, len(plan.seeds))


def _print_results(res, n_seeds: int) -> int:
    from sfp_ray.reports import format_summary

    print(format_summary(res.summary))
    extra = ", summary_by_seed.csv" if n_seeds > 1 else ""
    print(f"\nreport: {res.out}/ (summary.csv{extra}, rounds.csv, clients.csv, costs.csv, costs.parquet, "
          "messages.csv, config.yaml, *.png; checkpoint/ for --resume)")
    return 0


def _methods_arg(text: str | None) -> list[str] | None:
    if text is None:
        return None
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise ConfigError("--methods: give at least one method, e.g. sfprompt,fl_full")
    return methods


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        return _resume(args, [args.method] if args.method else None)
    cfg = _load(args)
    return _run_methods(args, [args.method or cfg.method], cfg)


def cmd_compare(args: argparse.Namespace) -> int:
    methods = _methods_arg(args.methods)
    if args.resume is not None:
        return _resume(args, methods)
    return _run_methods(args, methods or _methods_arg(DEFAULT_METHODS), _load(args))


def cmd_pretrain(args: argparse.Namespace) -> int:
    from sfp_ray.pretrain import pretrain, pretrain_path

    cfg = _load(args)
    out = Path(args.out) if args.out else pretrain_path(cfg)
    if out.is_file() and not args.force:
        print(f"sfp-ray: pre-trained backbone already cached: {out} (use --force to redo)")
        return 0
    if out.is_dir():
        raise ConfigError(f"--out: {out} is a folder; give the checkpoint file to write")
    from sfp_ray.api import check_out_dir

    check_out_dir(out.parent, create=False)  # refuse an unwritable destination before training, not after
    meta = pretrain(cfg, out, progress=not args.quiet)
    cap = cfg.pretrain.max_samples
    if cap is not None and meta["train_samples"] < cap:
        _say(f"notice: pretrain.max_samples={cap}: the source task has only {meta['train_samples']} training "
             "samples; used them all")
    print(f"pre-trained {cfg.model.name} on {meta['source_dataset']} classes {meta['source_classes']}: "
          f"source test accuracy {meta['source_test_accuracy']:.3f} in {meta['seconds']:.0f} s -> {out}")
    return 0


#: ``--model NAME`` takes the timm model as timm defines it: these overrides are reset first.
MODEL_RESET = ("model.img_size=null", "model.patch_size=null", "model.in_chans=null", "model.depth=null",
               "model.embed_dim=null", "model.num_heads=null", "model.global_pool=null")


def cmd_project(args: argparse.Namespace) -> int:
    from sfp_ray.projection import assumptions, format_projection, project

    extra = [f"model.name={args.model}", *MODEL_RESET] if args.model else []
    cfg = _load(args, extra)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    from sfp_ray.api import check_out_dir

    out = Path(args.out) if args.out else Path("runs") / f"project-{cfg.model.name}"
    check_out_dir(out, create=False)
    if args.grid:
        from sfp_ray.sweeps import parse_grid, project_grid

        grid = parse_grid(args.grid)
        df = project_grid(grid, cfg, methods=methods)  # every cell is validated before the folder is made
        check_out_dir(out).joinpath("projection.csv").write_text(df.to_csv(index=False))
        for cid, g in df.groupby("cell_id", sort=False):
            print(f"cell {cid}\n{format_projection(g)}\n{assumptions(cfg, g)}\n")
        print(f"projection: {out}/projection.csv ({df['cell_id'].nunique()} cells x {df['method'].nunique()} methods)")
        return 0
    df = project(cfg, methods=methods)
    check_out_dir(out).joinpath("projection.csv").write_text(df.to_csv(index=False))
    print(format_projection(df))
    print(f"\n{assumptions(cfg, df)}\nprojection: {out}/projection.csv")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from sfp_ray.sweeps import format_sweep, parse_grid, sweep

    grid = parse_grid(args.grid)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    cfg = _load(args)
    res = sweep(grid, methods, cfg, seeds=parse_seeds(args.seeds, cfg.seed), executor=args.executor,
                address=args.address, out=args.out, plots=not args.no_plots, cell_cpus=args.cell_cpus,
                share=not args.no_share, echo=_say)
    print(format_sweep(res.summary, list(grid)))
    print(f"\nsweep: {res.out}/ (sweep.csv: {len(res.sweep)} runs, sweep_summary.csv, sweep.yaml"
          + (", " + ", ".join(p.name for p in res.plots) if res.plots else "") + "; cells/<cell-id>/: run reports)")
    print(f"cells: {len(res.ran)} run now, {len(res.skipped)} already finished, {len(res.failed)} failed, "
          f"{len(res.invalid)} (cell, method) pairs invalid; {res.runs_saved} runs saved by sharing a run between "
          "cells whose settings differ only in keys the method does not read")
    if res.failed:
        cid, err = next(iter(res.failed.items()))
        print(f"sfp-ray: error: {len(res.failed)} cell(s) failed, e.g. {cid}: {err}; the same command runs them again",
              file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sfp_ray.reports import format_summary, rebuild

    try:
        summary = rebuild(args.run_dir, plots=not args.no_plots)
    except KeyError as e:  # a table with the key columns but not the cost columns the summary reads
        raise DataError(f"RUN_DIR: {args.run_dir}: the run's tables lack column {e} (a foreign or older "
                        "run folder?)") from e
    print(format_summary(summary))
    return 0


def cmd_timeline(args: argparse.Namespace) -> int:
    from sfp_ray.reports import plot_timeline

    print(plot_timeline(args.run_dir, round=args.round, method=args.method, seed=args.seed, out=args.out))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``methods``, ``devices``, ``datasets``: read from the catalogues, without importing torch (well under 1 s)."""
    if args.command == "methods":
        from sfp_ray.methods.catalog import list_methods, method_info

        for name in list_methods():
            m = method_info(name)
            print(f"{name:20} lr {m.default_lr:<7g} {m.description}")
    elif args.command == "devices":
        if args.devices_action == "calibrate":
            return cmd_calibrate(args)
        from sfp_ray.devices import load_catalog

        for name, d in load_catalog(args.catalog).items():
            chances = (f"  online {d.availability:g}" if d.availability < 1 else "") + (
                f"  dropout {d.dropout:g}" if d.dropout > 0 else "") + (
                f"  spread {d.speed_spread:g}/{d.link_spread:g}" if d.speed_spread or d.link_spread else "")
            speed = (f"{d.effective_flops / 1e9:8.1f} GFLOP/s measured" if d.throughput is not None
                     else f"{d.peak_flops / 1e9:8.1f} GFLOP/s x{d.efficiency:<4}")
            print(f"{name:12} cpus={d.num_cpus:<5} gpus={d.num_gpus:<5} mem={d.memory_mb:>6} MB  "
                  f"{speed}  up {d.uplink_mbps:>7} / down {d.downlink_mbps:>7} Mbit/s  {d.latency_ms} ms{chances}")
    else:
        from sfp_ray.data.catalog import dataset_info, dataset_names

        for name in dataset_names():
            d = dataset_info(name)
            classes = f"{d.num_classes} classes" if d.num_classes else "classes: see its loader"
            print(f"{name:14} {classes:11}  {d.description}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``sfp-ray devices calibrate``: measure this machine (or a cluster node) and write its device class."""
    from sfp_ray.devices import _NAME_RE

    if not _NAME_RE.match(args.name):
        raise ConfigError(f"--name {args.name!r}: use letters, digits, '_', '-', '.', starting with a letter")
    sizes = None
    if args.batch_sizes is not None:
        try:
            sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
        except ValueError:
            raise ConfigError(f"--batch-sizes {args.batch_sizes!r}: expected comma-separated whole numbers, "
                              "e.g. 8,16") from None
    from sfp_ray.calibration import check_options

    check_options(threads=args.threads, repeats=args.repeats, timer=args.timer, batch_sizes=sizes)
    out = Path(args.out) if args.out else Path(f"{args.name}.yaml")
    if out.is_dir():
        raise ConfigError(f"--out: {out} is a folder; give the YAML file to write")
    from sfp_ray.preflight import check_out_dir

    check_out_dir(out.parent, create=False)  # before measuring: its folder is made when the class is written
    cfg = _load(args)
    kwargs = {"name": args.name, "threads": args.threads, "repeats": args.repeats, "batch_sizes": sizes,
              "timer": args.timer}
    if args.address is not None:
        from sfp_ray.executors.ray.calibrate import calibrate_on_cluster

        cal = calibrate_on_cluster(cfg, address=args.address, say=_say, **kwargs)
    else:
        from sfp_ray.calibration import calibrate

        cal = calibrate(cfg, progress=None if args.quiet else _say, **kwargs)
    from sfp_ray.calibration import summary_line, write_catalog

    path = write_catalog(cal, out)
    print(cal.table())
    print(summary_line(cal))
    print(f"device class {args.name!r} -> {path} (use: --set devices.catalog={path} "
          f"--set 'devices.mix={{{args.name}: 1.0}}')")
    return 0


COMMANDS = {
    "run": cmd_run,
    "compare": cmd_compare,
    "sweep": cmd_sweep,
    "pretrain": cmd_pretrain,
    "project": cmd_project,
    "report": cmd_report,
    "timeline": cmd_timeline,
    "methods": cmd_list,
    "devices": cmd_list,
    "datasets": cmd_list,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            prog = f"{parser.prog} {args.command}" if args.command else parser.prog
            raise UsageError(f"{_did_you_mean(parser, args.command, extra)} (see '{prog} --help')")
    except UsageError as e:
        print(f"sfp-ray: error: {e}", file=sys.stderr)
        return 2
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
    except (SfpRayError, OSError) as e:
        if args.debug:
            raise
        msg = first_line(e)
        print(f"sfp-ray: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        run_dir = getattr(args, "run_dir", None)
        resumable = run_dir is not None and (Path(run_dir) / "checkpoint" / "run.yaml").is_file()
        hint = f"; continue with: sfp-ray {args.command} --resume {run_dir}" if resumable else ""
        print(f"sfp-ray: interrupted after {time.perf_counter() - t0:.0f} s{hint}", file=sys.stderr)
        return 130
