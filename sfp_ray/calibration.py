"""``sfp-ray devices calibrate``: measure this machine running the configured model's parts.

The clock turns a compute call's :class:`~sfp_ray.costs.Work` into seconds with a device's
:class:`~sfp_ray.devices.Throughput`::

    seconds = call_s + kernels x kernel_s + ops x op_s + FLOPs / flops_per_s + moved bytes / bytes_per_s

FLOPs alone miss what a small model spends most of its time on at small batches: the
operations the FLOP counter does not count (layer norms, softmax, GELU, residual additions,
the optimizer's element-wise updates), which are bound by memory traffic, and fixed costs per
pass (Python, autograd), per matrix product or convolution (the kernel's set-up, which
dominates the patch embedding and the classifier of a thin cut) and per other operation (the
framework's dispatch). :func:`calibrate` times
the passes the methods run, with the same pass functions their clients run
(:mod:`sfp_ray.roles.client`): head, body and tail forward and backward, the body-bypassed
local-loss pass, EL2N scoring, the whole model's training pass (the ``fl_*`` baselines), a
trained body's backward with weight gradients (``sfl``, ``sl``) and the optimizer step, at
the configured batch sizes and thread count (the client's passes also at the thinnest cut,
0/0, whose small passes pin down the fixed costs). Every probe runs ``warmup`` times, then
``repeats`` times interleaved with the others (so that a busy spell of the machine hits all
of them alike; probes under 2 ms five times per run), and its median counts. The five
coefficients are fitted to the medians by non-negative least squares on relative errors, and
the class is written in the catalogue layout of ``devices.yaml`` (:func:`entry_yaml`).
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from sfp_ray.config import Config
from sfp_ray.costs import Work, count_work
from sfp_ray.devices import Throughput
from sfp_ray.errors import ConfigError
from sfp_ray.pruning import el2n_scores
from sfp_ray.roles.client import bypass_loss, forward_pass, model_loss, optimizer_step, tail_loss
from sfp_ray.roles.optim import make_optimizer
from sfp_ray.roles.workspace import PARTS, Workspace

#: Calibration's own learning rate: the step's cost does not depend on it.
_LR = 1e-3
#: A probe faster than this (seconds) is timed ``CHEAP_SAMPLES`` times per run.
CHEAP_S = 2e-3
CHEAP_SAMPLES = 5


@dataclass
class Probe:
    """One timed pass: ``setup`` (not timed) then ``run`` (timed)."""

    label: str
    run: Callable[[], Any]
    setup: Callable[[], Any] = lambda: None
    work: Work = Work()
    times: list[float] = dataclasses.field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)


@dataclass
class Calibration:
    """What :func:`calibrate` measured and fitted."""

    name: str
    throughput: Throughput
    probes: list[Probe]
    memory_mb: int
    description: str
    batch_sizes: tuple[int, ...]

    def predicted(self, p: Probe) -> float:
        w = p.work
        return self.throughput.seconds(flops=w.flops, moved_bytes=w.moved_bytes, ops=w.ops, kernels=w.kernels,
                                       calls=1)

    def errors(self) -> list[float]:
        """``predicted / measured - 1`` per probe."""
        return [self.predicted(p) / p.seconds - 1.0 for p in self.probes]

    def table(self) -> str:
        """One line per probe: work, measured and predicted milliseconds."""
        lines = [f"{'probe':40} {'GFLOP':>8} {'kernels':>7} {'MB moved':>9} {'ops':>6} {'measured ms':>12} "
                 f"{'model ms':>9} "
                 f"{'ratio':>6}"]
        for p in self.probes:
            pred = self.predicted(p)
            lines.append(f"{p.label:40} {p.work.flops / 1e9:8.3f} {p.work.kernels:7d} {p.work.moved_bytes / 1e6:9.2f} "
                         f"{p.work.ops:6d} "
                         f"{p.seconds * 1e3:12.3f} {pred * 1e3:9.3f} {pred / p.seconds:6.3f}")
        return "\n".join(lines)


def machine_memory_mb() -> int:
    """Physical memory of this machine in MiB (0 when the platform does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)
    except (ValueError, OSError, AttributeError):
        return 0


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _workspace(cfg: Config, num_classes: int, split: Any = None) -> Workspace:
    # random initial values: the time of a pass does not depend on the weights (no checkpoint to read or pre-train)
    return Workspace(cfg.model, split or cfg.split, cfg.prompt, num_classes=num_classes, checkpoint=None,
                     seed=cfg.seed, parts=PARTS)


#: Labels of the probes also timed at the thinnest cut (0/0): small passes, which pin down the fixed costs.
_THIN = ("head fwd", "head bwd", "tail fwd+bwd", "bypass tail fwd+bwd", "EL2N scoring")


def _probes(ws: Workspace, cfg: Config, batch: int, num_classes: int, in_shape: tuple[int, ...]) -> list[Probe]:
    """The passes of every method at one batch size (see the module docstring)."""
    split = ws.split
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn((batch, *in_shape), generator=gen)
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    prompt_tail = [n for n in ws.names() if n.startswith("head.prompt") or n.startswith("tail.")]
    has_p = split.num_prompts > 0
    everything = ws.names()
    body_names = [n for n in everything if n.startswith("body.")]
    state: dict[str, Any] = {}
    out: list[Probe] = []

    def train(names: Sequence[str]) -> Callable[[], None]:
        def setup() -> None:
            ws.set_trainable(names)
            split.zero_grad(set_to_none=True)
        return setup

    def head_graph() -> None:
        train(prompt_tail)()
        state["h"] = forward_pass(split.head, x, True)
        state["gh"] = torch.randn_like(state["h"])

    def body_in(grad: bool, names: Sequence[str] = prompt_tail) -> Callable[[], None]:
        def setup() -> None:
            train(names)()
            with torch.no_grad():
                state["a"] = split.head(x)
            state["a"].requires_grad_(grad)
        return setup

    def body_graph(weights: bool) -> Callable[[], None]:
        def setup() -> None:
            body_in(True, body_names if weights else prompt_tail)()
            state["o"] = split.body(state["a"])
            state["go"] = torch.randn_like(state["o"])
        return setup

    def body_bwd(weights: bool) -> Callable[[], Any]:
        if not weights:
            return lambda: torch.autograd.grad(state["o"], state["a"], state["go"])[0]
        params = [p for n, p in split.named_parameters() if n.startswith("body.")]
        return lambda: torch.autograd.grad(state["o"], [state["a"], *params], state["go"])

    def tail_in() -> None:
        train(prompt_tail)()
        with torch.no_grad():
            state["t"] = split.body(split.head(x))
        state["t"].requires_grad_(True)

    def bypass_in() -> None:
        train(prompt_tail)()
        with torch.no_grad():
            state["b"] = split.head(x)
        state["b"].requires_grad_(has_p)

    def scoring() -> Any:
        with torch.no_grad():
            return el2n_scores(split.bypass_tail(split.head(x)), y)

    b = f"b{batch}"
    out.append(Probe(f"head fwd {b}", lambda: forward_pass(split.head, x, False), train(prompt_tail)))
    if has_p:  # the prompts train: the head keeps its graph and takes a backward
        out += [
            Probe(f"head fwd (prompts train) {b}", lambda: forward_pass(split.head, x, True), train(prompt_tail)),
            Probe(f"head bwd {b}", lambda: state["h"].backward(state["gh"]), head_graph),
        ]
    if body_names:  # a cut that leaves the server no block has no body to time
        out += [
            Probe(f"body fwd {b}", lambda: forward_pass(split.body, state["a"], False), body_in(False)),
            Probe(f"body fwd (input grad) {b}", lambda: split.body(state["a"]), body_in(True)),
            Probe(f"body bwd (input grad) {b}", body_bwd(False), body_graph(False)),
            Probe(f"body bwd (weights, sfl) {b}", body_bwd(True), body_graph(True)),
        ]
    out += [
        Probe(f"tail fwd+bwd {b}", lambda: tail_loss(split, state["t"], y), tail_in),
        Probe(f"bypass tail fwd+bwd {b}", lambda: bypass_loss(split, state["b"], y), bypass_in),
        Probe(f"EL2N scoring (head+tail) {b}", scoring, train(prompt_tail)),
        Probe(f"model fwd+bwd (fl_full) {b}", lambda: model_loss(split, x, y), train(everything)),
    ]
    prompt_cls = [n for n in everything
                  if ".prompt" in n or n.startswith("tail.head.") or n.startswith("tail.fc_norm.")]
    if prompt_cls:
        out.append(Probe(f"model fwd+bwd (fl_prompt) {b}", lambda: model_loss(split, x, y), train(prompt_cls)))
    return out


def _step_probes(ws: Workspace, cfg: Config) -> list[Probe]:
    """Optimizer steps over the trainable sets of SFPrompt, the split baselines' body and ``fl_full``."""
    split = ws.split
    sets = {"prompts + tail": [n for n in ws.names() if n.startswith("head.prompt") or n.startswith("tail.")],
            "body": [n for n in ws.names() if n.startswith("body.")],
            "whole model": ws.names()}
    train = dataclasses.replace(cfg.train, lr=cfg.train.lr or _LR)
    out = []
    for label, names in sets.items():
        if not names:
            continue
        params = dict(split.named_parameters())
        chosen = [params[n] for n in names]
        opt = make_optimizer(chosen, train)

        def setup(chosen: list[torch.nn.Parameter] = chosen, names: list[str] = names) -> None:
            ws.set_trainable(names)
            for p in chosen:
                p.grad = torch.full_like(p, 1e-3)

        out.append(Probe(f"{cfg.train.optimizer} step, {label}", lambda opt=opt: optimizer_step(opt), setup))
    return out


def fit_throughput(probes: Sequence[Probe], threads: int) -> Throughput:
    """The :class:`~sfp_ray.devices.Throughput` whose predictions best match the probes' medians.

    Non-negative least squares on relative errors, over the subsets of the five coefficients
    (per FLOP; per call, per kernel, per operation, per byte) that keep the FLOP term: the best
    subset whose unconstrained solution is non-negative.
    """
    rows = np.array([[p.work.flops, 1.0, p.work.kernels, p.work.ops, p.work.moved_bytes] for p in probes],
                    dtype=float)
    t = np.array([p.seconds for p in probes], dtype=float)
    if not (t > 0).all() or rows[:, 0].max() <= 0:
        raise ConfigError("devices calibrate: the probes measured no time or no FLOPs (is the model empty?)")
    a = rows / t[:, None]
    scale = np.maximum(a.max(axis=0), 1e-300)
    best: tuple[float, np.ndarray] | None = None
    for k in range(0, 5):
        for extra in itertools.combinations((1, 2, 3, 4), k):
            cols = [0, *extra]
            coef, *_ = np.linalg.lstsq(a[:, cols] / scale[cols], np.ones(len(t)), rcond=None)
            coef = coef / scale[cols]
            if (coef < 0).any():
                continue
            full = np.zeros(5)
            full[cols] = coef
            err = float(np.sum((a @ full - 1.0) ** 2))
            if best is None or err < best[0] - 1e-12:
                best = (err, full)
    assert best is not None  # the FLOP column alone always solves with a positive coefficient
    per_flop, per_call, per_kernel, per_op, per_byte = best[1]
    if per_flop <= 0:
        raise ConfigError("devices calibrate: could not fit a FLOP rate (the timings are dominated by noise); "
                          "run again with more --repeats on a quieter machine")
    return Throughput(flops_per_s=float(1.0 / per_flop), bytes_per_s=float(1.0 / per_byte) if per_byte > 0 else None,
                      op_s=float(per_op), call_s=float(per_call), threads=int(threads), kernel_s=float(per_kernel))


def check_options(*, threads: int, repeats: int, timer: str, batch_sizes: Sequence[int] | None) -> None:
    """Refuse calibration options that cannot work, naming the flag (before anything is timed)."""
    if threads < 1:
        raise ConfigError(f"--threads: give a whole number >= 1, got {threads}")
    if repeats < 1:
        raise ConfigError(f"--repeats: give a whole number >= 1, got {repeats}")
    if timer not in ("wall", "cpu"):
        raise ConfigError(f"--timer: 'wall' or 'cpu', got {timer!r}")
    if timer == "cpu" and threads != 1:
        raise ConfigError(f"--timer cpu measures the CPU time of one thread; it needs --threads 1, got {threads}")
    if batch_sizes is not None and (not batch_sizes or min(batch_sizes) < 1):
        raise ConfigError(f"--batch-sizes: give whole numbers >= 1, e.g. 8,16, got {list(batch_sizes)}")


def calibrate(cfg: Config, *, name: str = "host", threads: int = 1, repeats: int = 7, warmup: int = 2,
              batch_sizes: Sequence[int] | None = None, num_classes: int | None = None, timer: str = "wall",
              progress: Callable[[str], None] | None = None) -> Calibration:
    """Time the configured model's passes on this machine and fit a measured device class.

    Args:
        cfg: the configuration (model, cut, prompts, ``train.batch_size``, ``train.optimizer``).
        name: the class's name in the catalogue.
        threads: torch threads to measure with (the class's ``num_cpus``).
        repeats: timed runs of every probe (the median counts).
        warmup: untimed runs of every probe before them.
        batch_sizes: batch sizes to time (default: ``train.batch_size`` and half of it).
        num_classes: classifier width (default: the number of ``data.classes``, else 10).
        timer: ``wall`` (``time.perf_counter``) or ``cpu``: the CPU time of the measuring thread
            (``time.thread_time``), which leaves out the time the operating system gave other processes;
            for a shared, busy machine, at one thread only (torch's other threads are not in it).
        progress: called with one line per stage (stderr in the CLI).
    """
    check_options(threads=threads, repeats=repeats, timer=timer, batch_sizes=batch_sizes)
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    clock = time.perf_counter if timer == "wall" else time.thread_time
    say = progress or (lambda _msg: None)
    bs = tuple(dict.fromkeys(batch_sizes or (cfg.train.batch_size, max(1, cfg.train.batch_size // 2))))
    k = num_classes or (len(cfg.data.classes) if cfg.data.classes is not None else 10)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ws = _workspace(cfg, k)
        from sfp_ray.models import input_shape

        img, chans = input_shape(cfg.model)
        probes = [p for b in bs for p in _probes(ws, cfg, b, k, (chans, img, img))] + _step_probes(ws, cfg)
        if (cfg.split.head_blocks, cfg.split.tail_blocks) != (0, 0):
            # the embedding alone and the classifier alone: passes of little work, as a thin cut runs them
            models_log = logging.getLogger("sfp_ray.models")
            level = models_log.level
            models_log.setLevel(logging.ERROR)  # its warning about the 0/0 cut concerns runs, not these probes
            try:
                thin = _workspace(cfg, k, dataclasses.replace(cfg.split, head_blocks=0, tail_blocks=0,
                                                              bypass_pool="avg"))
            finally:
                models_log.setLevel(level)
            for b in bs:
                for p in _probes(thin, cfg, b, k, (chans, img, img)):
                    if p.label.startswith(_THIN):
                        p.label = f"{p.label} (cut 0/0)"
                        probes.append(p)
        say(f"devices calibrate: {len(probes)} probes of {cfg.model.name} (cut {cfg.split.head_blocks}/"
            f"{cfg.split.tail_blocks}, batch sizes {', '.join(map(str, bs))}) at {threads} thread(s), "
            f"{warmup} warm-up + {repeats} timed runs each")
        samples: dict[int, int] = {}
        for i, p in enumerate(probes):  # a warm run before counting: optimizers then have their state, as later
            p.setup()
            t0 = clock()
            p.run()
            # sub-millisecond probes (the fixed costs) are noisy and cost nothing: sample them more often
            samples[i] = CHEAP_SAMPLES if clock() - t0 < CHEAP_S else 1
            p.setup()
            _, p.work = count_work(p.run)
        t_start = time.perf_counter()
        for r in range(warmup + repeats):
            for i, p in enumerate(probes):
                for _ in range(samples[i]):
                    p.setup()
                    t0 = clock()
                    p.run()
                    dt = clock() - t0
                    if r >= warmup:
                        p.times.append(dt)
            say(f"devices calibrate: run {r + 1}/{warmup + repeats} ({time.perf_counter() - t_start:.0f} s)")
        throughput = fit_throughput(probes, threads)
    finally:
        torch.set_num_threads(previous)
    when = datetime.date.today().isoformat()
    desc = (f"{cpu_name()} on {platform.node() or 'this machine'}, measured with sfp-ray devices calibrate on {when} "
            f"({cfg.model.name}, {threads} thread(s), {timer} time, torch {torch.__version__})")
    return Calibration(name, throughput, probes, machine_memory_mb(), desc, bs)


def catalog_entry(cal: Calibration) -> dict[str, Any]:
    """The class's fields in the catalogue layout (``devices.yaml``)."""
    t = cal.throughput
    return {
        "description": cal.description,
        "num_cpus": t.threads,
        "num_gpus": 0.0,
        "memory_mb": cal.memory_mb,
        "peak_flops": float(f"{t.flops_per_s:.4g}"),
        "efficiency": 1.0,
        "uplink_mbps": 100.0,
        "downlink_mbps": 100.0,
        "latency_ms": 10.0,
        "resources": {},
        "throughput": {"flops_per_s": float(f"{t.flops_per_s:.6g}"),
                       "bytes_per_s": float(f"{t.bytes_per_s:.6g}") if t.bytes_per_s else None,
                       "op_s": float(f"{t.op_s:.6g}"), "kernel_s": float(f"{t.kernel_s:.6g}"),
                       "call_s": float(f"{t.call_s:.6g}"), "threads": t.threads},
    }


def entry_yaml(cal: Calibration, existing: str | None = None) -> str:
    """A catalogue file holding the calibrated class (added to, or replacing its name in, ``existing``).

    The file starts with comments: how it was made, what was not measured (the links), and the
    probe table (measured vs modelled milliseconds).
    """
    doc: dict[str, Any] = {"devices": {}}
    if existing is not None:
        loaded = yaml.safe_load(existing)
        if loaded is not None:
            if (not isinstance(loaded, dict) or set(loaded) != {"devices"}
                    or not isinstance(loaded["devices"] or {}, dict)):
                raise ConfigError("--out: the file exists and is not a device catalogue (a top-level 'devices:' "
                                  "mapping); give another file")
            doc = {"devices": dict(loaded.get("devices") or {})}
    doc["devices"][cal.name] = catalog_entry(cal)
    errs = [abs(e) for e in cal.errors()]
    head = [
        f"# Device class '{cal.name}': {cal.description}.",
        "# Use it with: --set devices.catalog=THIS_FILE --set 'devices.mix={" + cal.name + ": 1.0}' "
        f"[--set devices.server={cal.name}]",
        "# throughput: seconds of a pass = call_s + kernels x kernel_s + ops x op_s + FLOPs / flops_per_s",
        "#   + moved bytes / bytes_per_s",
        "# (docs/clock.md); peak_flops x efficiency repeats flops_per_s for what reads only those two.",
        "# Not measured: uplink_mbps, downlink_mbps and latency_ms are placeholders; set the device's own link.",
        f"# Fit over {len(cal.probes)} probes: median |model/measured - 1| = {statistics.median(errs):.1%}, "
        f"worst {max(errs):.1%}.",
        "#",
        *("# " + line for line in cal.table().splitlines()),
    ]
    return "\n".join(head) + "\n" + yaml.safe_dump(doc, sort_keys=False)


def write_catalog(cal: Calibration, out: str | os.PathLike) -> Path:
    """Write (or update) the catalogue file ``out`` with the calibrated class; check that it loads."""
    from sfp_ray.devices import load_catalog

    p = Path(out)
    if p.is_dir():
        raise ConfigError(f"--out: {p} is a folder; give the YAML file to write")
    existing = None
    if p.is_file():
        try:
            existing = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--out: cannot read the existing {p} ({e})") from None
    text = entry_yaml(cal, existing)
    tmp = p.with_name(p.name + ".tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        load_catalog(tmp)  # a file a run cannot use is never written
        os.replace(tmp, p)
    except OSError as e:
        raise ConfigError(f"--out: cannot write {p} ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def summary_line(cal: Calibration) -> str:
    """One line: the fitted coefficients and how well they fit."""
    t = cal.throughput
    errs = [abs(e) for e in cal.errors()]
    mem = f"{t.bytes_per_s / 1e9:.1f} GB/s" if t.bytes_per_s else "not modelled"
    return (f"{cal.name}: {t.flops_per_s / 1e9:.1f} GFLOP/s, memory traffic {mem}, {t.kernel_s * 1e6:.1f} us per "
            f"kernel, {t.op_s * 1e6:.1f} us per other operation, {t.call_s * 1e6:.0f} us per pass at {t.threads} "
            f"thread(s); fit: median {statistics.median(errs):.1%}, worst {max(errs):.1%} over {len(cal.probes)} "
            "probes")


__all__ = ["Calibration", "Probe", "calibrate", "catalog_entry", "check_options", "entry_yaml", "fit_throughput",
           "summary_line", "write_catalog"]
