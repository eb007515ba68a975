"""The command line's grammar: the ``sfp-ray`` argument parser, its subcommands and flags.

:func:`build_parser` builds it; a command line it refuses raises :class:`UsageError` (one line
on stderr and exit code 2 in :func:`~sfp_ray.cli.commands.main`, which also names the closest
flag: :func:`_did_you_mean`). ``--debug`` and ``--quiet`` go before or after the subcommand.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Sequence

DEFAULT_METHODS = "sfprompt,fl_full"
CONFIG_HELP = "YAML configuration file; its sections are the dotted keys of --set (see docs/configuration.md)"


class UsageError(Exception):
    """A command line argparse refuses (unknown flag, bad choice, missing value)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr and exit code 2, like every other refusal."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override a configuration key, e.g. --set federation.rounds=3 (repeatable)")


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", metavar="S1,S2,...", default=None,
                   help="run every method once per seed (e.g. 0,1,2) and report mean ± 95%% CI; default: the "
                        "config's seed")
    p.add_argument("--executor", choices=["ray", "serial"], default=None,
                   help="ray: clients as Ray actors sized from the cluster, a server actor, an aggregator actor; "
                        "serial: every role in this process (the reference) (default: ray; with --resume, the "
                        "executor the run was started with)")
    p.add_argument("--address", metavar="ADDR", default=None,
                   help="Ray cluster to join: 'auto' or HOST:PORT; default starts a private local Ray "
                        "(ray.address in the config); with --resume, the cluster the run used")
    p.add_argument("--threads", metavar="N", type=int, default=None,
                   help="torch threads of the serial executor; default: those of the client actors (one for the "
                        "built-in device classes), so that serial and Ray runs give the same numbers bit for bit")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="where the serial executor computes: auto (default: where the Ray executor's actors would: "
                        "the GPU when every device class holds a GPU share and torch can use one), cpu or cuda; Ray "
                        "actors always follow their class's GPU share")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (default: runs/<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the interrupted run in RUN_DIR from its checkpoints: methods, seeds and "
                        "configuration as saved there (--set, --config, --method(s) and --seeds may only repeat "
                        "them); finished runs are kept, the others continue after their last finished round")
    p.add_argument("--no-plots", action="store_true", help="skip PNG plots")


GRID_HELP = ("a configuration key and the values to sweep, e.g. --grid split.head_blocks=0,1,2 (repeatable; the "
             "cells are the cartesian product of all --grid keys; values are read as YAML, lists in brackets: "
             "--grid data.classes=[0,1],[2,3])")
FAULTS_HELP = """\
faults and resume:
  A client whose task raises, whose actor dies, or whose loss or state is not finite
  is tried once more; clients.csv says ok, retried or failed for every client and
  round, and a failed client is left out of the round's average (one warning line
  per round and error; the run still exits 0). A round in which fewer than
  federation.min_success_fraction (default 0.5) of the cohort succeed, or whose server
  actor dies, starts over once from the last finished round; then the run stops
  (exit 2). After every round RUN_DIR/checkpoint/ holds the run's checkpoint: after an
  interruption, `sfp-ray run --resume RUN_DIR` (or `compare --resume RUN_DIR`) goes on
  from the last finished round with the configuration saved there, on the Ray cluster
  the run used (unless --address names another; one line and exit 2 when it cannot be
  reached).
  On a cluster, the client slots of a node that is lost start again on a node of their
  class, else on any node with room (ray.on_node_loss=replace) or not at all (fail: their
  clients fail until a node of the class joins); a lost head ends the run (exit 2). One
  line per event; what Ray itself prints goes to RUN_DIR/ray.log.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sfp-ray",
        description="Ray actor-based simulator of split federated prompt fine-tuning (SFPrompt, arXiv 2407.17533).",
    )
    _add_global_args(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run one method and write a report", epilog=FAULTS_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(p)
    p.add_argument("--method", default=None, help="registered method (default: config 'method', sfprompt)")
    _add_runtime_args(p)

    p = sub.add_parser("compare", help="run several methods on the same data, seeds and devices", epilog=FAULTS_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(p)
    p.add_argument("--methods", default=None,
                   help=f"comma-separated registered methods (default: {DEFAULT_METHODS})")
    _add_runtime_args(p)

    p = sub.add_parser(
        "sweep", help="run methods x seeds on every cell of a grid of configuration values (resumable)",
        description="Run every cell of a grid (the cartesian product of the --grid values) once per method and "
                    "seed, each cell into its own run folder OUT/cells/<cell-id>/, and gather them into "
                    "OUT/sweep.csv (one row per cell x method x seed, the swept keys as columns, ratios to fl_full "
                    "in the same cell and seed), OUT/sweep_summary.csv (mean, std and 95% CI over seeds per cell "
                    "x method) and one plot per swept key (OUT/sweep_<key>.png: accuracy, client FLOPs, bytes). "
                    "Every cell's configuration is validated before anything runs. A method runs once per distinct "
                    "setting of the keys it reads (fl_full reads no split.*, prompt.* or pruning.*): cells that "
                    "differ only in other keys share that run, and the sweep says how many runs it saved. "
                    "Running the same command again skips the finished cells "
                    "(a cell is finished when OUT/cells/<cell-id>/sweep-cell.json exists), so an interrupted sweep "
                    "resumes and a finished one only rewrites its tables.")
    p.add_argument("--grid", metavar="KEY=V1,V2,...", action="append", default=[], required=True, help=GRID_HELP)
    _add_config_args(p)
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated registered methods run in every cell (default: %(default)s)")
    p.add_argument("--seeds", metavar="S1,S2,...", default=None,
                   help="run every method of every cell once per seed (default: the config's seed)")
    p.add_argument("--executor", choices=["ray", "serial"], default="ray",
                   help="ray: one Ray cluster for the whole grid, every cell a Ray task (running the serial "
                        "executor inside), as many at once as the cluster has CPUs for; serial: the cells one after "
                        "another in this process (default: %(default)s)")
    p.add_argument("--address", metavar="ADDR", default=None,
                   help="Ray cluster to join: 'auto' or HOST:PORT; default starts a private local Ray")
    p.add_argument("--cell-cpus", metavar="N", type=int, default=None,
                   help="CPUs (and torch threads) per cell task with the Ray executor; default: the cluster's CPUs "
                        "shared out among the cells, at least 1")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="sweep folder (default: runs/sweep); the same folder again resumes the sweep")
    p.add_argument("--no-plots", action="store_true", help="skip PNG plots (the sweep's and the cells')")
    p.add_argument("--no-share", action="store_true",
                   help="train every cell's runs; by default a method runs once per distinct setting of the keys it "
                        "reads (fl_full reads no split.*, prompt.* or pruning.*) and cells that differ only in other "
                        "keys share that run")

    p = sub.add_parser("pretrain", help="pre-train the configured ViT on the source task (offline backbone)")
    _add_config_args(p)
    p.add_argument("--out", metavar="FILE", default=None,
                   help="checkpoint file (default: the cache path the 'pretrain' checkpoint setting uses)")
    p.add_argument("--force", action="store_true", help="pre-train even when the cached backbone exists")

    p = sub.add_parser("project", help="cost projection of a run's configuration on the meta device (no training)")
    p.add_argument("--model", default=None,
                   help="timm model, e.g. vit_base_patch16_224, at its own image size, patch and channels (--set "
                        "model.* still applies); default: the configured model")
    _add_config_args(p)
    p.add_argument("--grid", metavar="KEY=V1,V2,...", action="append", default=[],
                   help=GRID_HELP + "; projection.csv then has one row per cell x method, the swept keys as columns")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: all registered)")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (default: runs/project-<model>)")

    p = sub.add_parser("report", help="rebuild summary.csv and plots of a run folder")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--no-plots", action="store_true", help="skip PNG plots")

    p = sub.add_parser("timeline", help="plot one round's simulated schedule per client from a run folder",
                       description="Plot one round of RUN_DIR/timeline.csv: a row per selected client, labelled "
                                   "with its device class (colour) and cut, a segment per phase (download, prune, "
                                   "local update, split training, upload; dark, hatched: computed on the server; "
                                   "grey: waiting for it; both drawn at a visible width and summed after the bar), "
                                   "offline, dropped and late clients marked, the server's busy time on the top "
                                   "row and federation.deadline_s as a line.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--round", type=int, default=None, help="round to plot (default: the last)")
    p.add_argument("--method", default=None, help="method (default: the folder's first)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the method's first)")
    p.add_argument("--out", metavar="PNG", default=None, help="output file (default: RUN_DIR/timeline.png)")

    sub.add_parser("methods", help="list registered methods")
    _add_devices_parser(sub)
    sub.add_parser("datasets", help="list registered datasets, one line of description each")
    for p in sub.choices.values():  # global flags work after the subcommand too
        _add_global_args(p, default=argparse.SUPPRESS)
    return parser


def _add_global_args(p: argparse.ArgumentParser, default: object) -> None:
    """``--debug`` and ``--quiet``; a subcommand's copy defaults to SUPPRESS so it never undoes the global one."""
    p.add_argument("--debug", action="store_true", default=default,
                   help="show tracebacks and debug logs (before or after the subcommand)")
    p.add_argument("--quiet", action="store_true", default=default,
                   help="no per-round progress lines (before or after the subcommand)")


def _did_you_mean(parser: argparse.ArgumentParser, command: str | None, extra: Sequence[str]) -> str:
    """The message for arguments no parser took, with the closest flag of the subcommand when one is close."""
    import difflib

    message = f"unrecognized arguments: {' '.join(extra)}"
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    target = sub.choices.get(command) if sub is not None and command else parser
    flags = [o for a in target._actions for o in a.option_strings if o.startswith("--")]
    for arg in extra:
        name = arg.split("=", 1)[0]
        if not name.startswith("--"):
            continue
        if command == "run" and name == "--methods":
            return f"{message}; run takes one --method NAME (several methods: sfp-ray compare --methods A,B)"
        close = difflib.get_close_matches(name, flags, n=1, cutoff=0.75)
        if close:
            return f"{message}; did you mean {close[0]}?"
    return message


CALIBRATE_HELP = """Time this machine running the configured model's parts (head, body and tail forward and
backward, the body-bypassed pass, EL2N scoring, the whole model's training pass, the
optimizer step) at the configured batch sizes and --threads, fit the simulated clock's
measured throughput to the timings (docs/clock.md), and write a device class in the layout
of sfp_ray/devices.yaml. Run it on a Raspberry Pi or a laptop with sfp-ray installed and
bring the file back:
  sfp-ray devices calibrate --name pi4 --threads 4 --out pi4.yaml
  sfp-ray run --set devices.catalog=pi4.yaml --set 'devices.mix={pi4: 1.0}' ...
An --out file that exists must be a catalogue: the class is added to it (or replaces the
class of that name; the file's comments are not kept). Progress goes to stderr.
"""


def _add_devices_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list device profiles; 'devices calibrate' measures this machine",
                       description="List the device classes (the built-in ones, plus those of --catalog), or measure "
                                   "one: sfp-ray devices calibrate --help.")
    p.add_argument("--catalog", metavar="FILE", default=None,
                   help="also list the classes of this catalogue file (as devices.catalog would add them)")
    acts = p.add_subparsers(dest="devices_action", metavar="ACTION")
    c = acts.add_parser("calibrate", help="measure this machine and write a device class (docs/clock.md)",
                        description=CALIBRATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(c)
    c.add_argument("--name", default="host", help="name of the device class to write (default: %(default)s)")
    c.add_argument("--threads", metavar="N", type=int, default=1,
                   help="torch threads to measure with; the class's num_cpus (default: %(default)s)")
    c.add_argument("--out", metavar="FILE", default=None, help="catalogue file to write (default: NAME.yaml)")
    c.add_argument("--repeats", metavar="N", type=int, default=7,
                   help="timed runs of every probe after 2 warm-up runs; the median counts (default: %(default)s)")
    c.add_argument("--batch-sizes", metavar="B1,B2,...", default=None,
                   help="batch sizes to time (default: train.batch_size and half of it)")
    c.add_argument("--timer", choices=["wall", "cpu"], default="wall",
                   help="wall: wall-clock time (default); cpu: the measuring thread's CPU time, which leaves out "
                        "what other processes took on a busy machine (with --threads 1 only)")
    c.add_argument("--address", metavar="ADDR", default=None,
                   help="measure on a node of a Ray cluster ('auto' or HOST:PORT) that offers the custom resource "
                        "device:NAME (cluster/README.md), instead of this machine")

