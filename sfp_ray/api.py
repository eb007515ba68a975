"""The Python API: one call runs methods over seeds and returns the report as DataFrames.

The CLI (``sfp-ray run`` / ``compare``) is a thin layer over these functions.

Example (a tiny run on synthetic data, in-process; the Ray executor is the default)::

    >>> import sfp_ray
    >>> r = sfp_ray.compare(["sfprompt", "fl_full"], overrides=[
    ...     "data.name=synthetic", "data.classes=null", "model.checkpoint=none", "model.img_size=16",
    ...     "model.patch_size=4", "model.depth=2", "federation.num_clients=2", "federation.clients_per_round=2",
    ...     "federation.rounds=1", "data.samples_per_client=8", "data.test_samples=16"],
    ...     executor="serial", out=tmp_dir, plots=False)  # doctest: +SKIP
    >>> list(r.summary["method"])  # doctest: +SKIP
    ['sfprompt', 'fl_full']
"""

from __future__ import annotations

import contextlib
import numbers
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sfp_ray.config import Config, build_config, dotted_items, load_config, split_assignment
from sfp_ray.errors import ClusterError, ConfigError
from sfp_ray.preflight import check_out_dir, check_run

if TYPE_CHECKING:
    import pandas as pd

ConfigLike = Config | str | os.PathLike | Mapping[str, Any] | Sequence[str] | None


@dataclass
class Results:
    """The report of a run folder as DataFrames (the same tables as its files), plus the folder.

    ``summary`` has one row per method (mean ± CI over seeds), ``summary_by_seed`` one per
    (method, seed); ``rounds``, ``costs``, ``messages`` and ``clients`` hold every row.
    """

    out: Path
    summary: pd.DataFrame
    summary_by_seed: pd.DataFrame
    rounds: pd.DataFrame
    costs: pd.DataFrame
    messages: pd.DataFrame = field(default_factory=lambda: _frame())
    clients: pd.DataFrame = field(default_factory=lambda: _frame())

    @classmethod
    def load(cls, out: str | os.PathLike) -> Results:
        """Read the report of a finished run folder."""
        from sfp_ray.reports import load_run, summarize, summarize_by_seed

        d = Path(out)
        costs, rounds = load_run(d)
        by_seed = summarize_by_seed(costs, rounds)

        def read(name: str) -> pd.DataFrame:
            import pandas as pd

            p = d / name
            return pd.read_csv(p, dtype={"run_id": str}) if p.is_file() else pd.DataFrame()

        return cls(d, summarize(costs, rounds, by_seed), by_seed, rounds, costs, read("messages.csv"),
                   read("clients.csv"))


def _frame() -> pd.DataFrame:
    import pandas as pd  # imported when needed: checks before a run stay fast

    return pd.DataFrame()


def default_out_dir(base: str | Path = "runs") -> Path:
    """``runs/<timestamp>`` (not created)."""
    return Path(base) / time.strftime("%Y%m%d-%H%M%S")


def to_config(config: ConfigLike = None, overrides: Sequence[str] = ()) -> Config:
    """A :class:`Config` from a Config, a YAML path, a nested mapping or ``key=value`` strings, plus overrides."""
    overrides = string_list(overrides, "overrides", "'KEY=VALUE' strings")
    if isinstance(config, Config):
        return config.replace(**dict(_split(o) for o in overrides)) if overrides else config
    if config is None:
        return load_config(None, overrides, flag="overrides")
    if isinstance(config, (str, os.PathLike)) and not (isinstance(config, str) and "=" in config):
        return load_config(config, overrides, flag="overrides")
    if isinstance(config, Mapping):
        return build_config(config, overrides, flag="overrides")
    if isinstance(config, str):
        return load_config(None, [config, *overrides], flag="config")
    return load_config(None, [*string_list(config, "config", "'KEY=VALUE' strings"), *overrides], flag="config")


def string_list(value: Any, name: str, what: str) -> list[str]:
    """``value`` as a list of strings; a bare string (which Python would iterate character by character),
    or anything else that is not a sequence of strings, is a :class:`ConfigError` in Python terms.

    Example:
        >>> string_list(("a=1",), "overrides", "'KEY=VALUE' strings")
        ['a=1']
        >>> string_list("a=1", "overrides", "'KEY=VALUE' strings")
        Traceback (most recent call last):
        ...
        sfp_ray.errors.ConfigError: overrides: expected a list of 'KEY=VALUE' strings, got the string 'a=1'; \
write overrides=['a=1']
    """
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")] if "=" not in value else [value]
        raise ConfigError(f"{name}: expected a list of {what}, got the string {value!r}; write {name}={items!r}")
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise ConfigError(f"{name}: expected a list of {what}, got {type(value).__name__} {value!r}")
    out = list(value)
    bad = [v for v in out if not isinstance(v, str)]
    if bad:
        raise ConfigError(f"{name}: expected a list of {what}, got {bad[0]!r} ({type(bad[0]).__name__}) in it")
    return out


def seed_list(value: Any, name: str = "seeds") -> list[int]:
    """``value`` as a list of distinct integer seeds; a string, a bare number or a repeated seed is a
    :class:`ConfigError` in Python terms.

    Example:
        >>> seed_list(range(3))
        [0, 1, 2]
    """
    if isinstance(value, str):
        raise ConfigError(f"{name}: expected a list of integers, got the string {value!r}; write "
                          f"{name}=[{', '.join(v.strip() for v in value.split(',') if v.strip())}]")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ConfigError(f"{name}: expected a list of integers, got the number {value!r}; write {name}=[{value!r}]")
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise ConfigError(f"{name}: expected a list of integers, got {type(value).__name__} {value!r}")
    out = list(value)
    bad = [v for v in out if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
    if bad:
        raise ConfigError(f"{name}: expected a list of integers, got {bad[0]!r} ({type(bad[0]).__name__}) in it")
    seeds = [int(v) for v in out]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{name}: give distinct seeds, got {seeds}")
    return seeds


def _split(item: str) -> tuple[str, Any]:
    import yaml

    key, raw = split_assignment(item, "overrides", "KEY=VALUE, e.g. federation.rounds=3")
    return key, yaml.safe_load(raw) if raw.strip() else None


def run_methods(methods: Sequence[str], config: ConfigLike = None, *, overrides: Sequence[str] = (),
                seeds: Sequence[int] | None = None, executor: str = "ray", address: str | None = None,
                out: str | os.PathLike | None = None, plots: bool = True,
                progress: Callable[[Any], None] | None = None, echo: Callable[[str], None] | None = None,
                threads: int | None = None, device: str = "auto") -> Results:
    """Run every method once per seed on the same data and devices; write the report to ``out``.

    The folder also receives ``checkpoint/``: the plan of this call and, after every round,
    each run's checkpoint, so that :func:`resume` can continue an interrupted call.

    Args:
        methods: registered method names.
        config: the configuration (see :func:`to_config`).
        overrides: ``key=value`` settings applied on top of ``config``.
        seeds: run seeds (default: the configuration's ``seed``).
        executor: ``ray`` (client actors) or ``serial`` (in-process reference).
        address: the Ray cluster to join (``auto`` or ``HOST:PORT``); default: a private
            local Ray (``ray.address``). The folder's ``checkpoint/run.yaml`` records the
            cluster's ``HOST:PORT``, which :func:`resume` joins again. While the Ray executor
            runs, what Ray prints (worker output, its warnings and tracebacks) goes to
            ``out/ray.log``; a lost node is survived (``ray.on_node_loss``), but when the
            cluster's head is lost this process exits with code 2 after one line on stderr
            saying how to resume (Ray itself would end it a minute later).
        out: the report folder (default ``runs/<timestamp>``).
        plots: write the PNG plots.
        progress: called with every round record.
        echo: called with one-line notices (caps applied, fallbacks taken, where the report
            goes) and warnings (clients that failed, rounds started over).
        threads: torch threads of the serial executor (default: the counts the Ray
            executor's actors use, so that the two executors compute the same floats).
        device: where the serial executor computes: ``auto`` (where the Ray executor's actors
            would), ``cpu`` or ``cuda`` (:func:`sfp_ray.executors.serial.mirrored_device`).
    """
    cfg = to_config(config, overrides)
    _check_executor(executor)
    methods = string_list(methods, "methods", "method names")
    if not methods:
        raise ConfigError("methods: give at least one method, e.g. sfprompt,fl_full")
    seeds = seed_list(seeds) if seeds is not None else [cfg.seed]
    folder = Path(out) if out is not None else default_out_dir()
    # every check that needs no data: before Ray starts and before the folder exists
    check_run(methods, cfg, seeds, executor=executor, address=address, out=folder)
    return _execute(methods, cfg, seeds, executor, address, folder, plots, progress, echo, resuming=False,
                    threads=threads, device=device)


def resume(run_dir: str | os.PathLike, config: ConfigLike = None, *, overrides: Sequence[str] = (),
           methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None, executor: str | None = None,
           address: str | None = None, plots: bool = True, progress: Callable[[Any], None] | None = None,
           echo: Callable[[str], None] | None = None, threads: int | None = None, device: str = "auto") -> Results:
    """Continue an interrupted :func:`run_methods` call in its folder ``run_dir``.

    The methods, seeds and configuration are the ones saved in ``run_dir/checkpoint/run.yaml``.
    Runs that finished are kept as they are; a run with a checkpoint continues after its
    last finished round (its rows of later rounds are dropped first); a run that never
    finished a round starts over. With the serial executor the result is the same, bit for
    bit, as that of an uninterrupted call.

    ``config``, ``overrides``, ``methods`` and ``seeds``, when given, must agree with the
    saved run: anything that differs raises :class:`~sfp_ray.errors.ConfigError`.
    ``executor`` defaults to the one the run was started with; ``threads`` is the serial
    executor's torch thread count (see :func:`run_methods`). ``address`` defaults to the Ray
    cluster the run last used (``address`` in ``run.yaml``): a run started on a cluster
    rejoins that cluster, and :class:`~sfp_ray.errors.ClusterError` says so when it cannot
    be reached (no private local Ray is started instead).
    """
    from sfp_ray.checkpoints import read_plan

    folder = Path(run_dir)
    plan = read_plan(folder)
    saved = plan.config
    where = f"{folder}/checkpoint/run.yaml"
    if config is not None or overrides:
        asked = to_config(config if config is not None else saved, overrides)
        a, b = dotted_items(saved), dotted_items(asked)
        differ = [k for k in a if a[k] != b.get(k)]
        if differ:
            k = differ[0]
            raise ConfigError(f"--resume: {k}={b.get(k)!r} conflicts with the run being resumed ({k}={a[k]!r} in "
                              f"{where}); a resumed run keeps its configuration: drop the setting or start a new run")
    if methods is not None and string_list(methods, "methods", "method names") != plan.methods:
        raise ConfigError(f"--resume: methods {','.join(methods)} conflict with the run being resumed "
                          f"({','.join(plan.methods)} in {where})")
    if seeds is not None and seed_list(seeds) != plan.seeds:
        raise ConfigError(f"--resume: seeds {','.join(map(str, seeds))} conflict with the run being resumed "
                          f"({','.join(map(str, plan.seeds))} in {where})")
    kind = executor if executor is not None else plan.executor
    _check_executor(kind)
    check_out_dir(folder)
    saved_address = address is None and plan.address is not None
    if saved_address:
        address = plan.address
    try:
        check_run(plan.methods, saved, plan.seeds, executor=kind, address=address)
    except ClusterError as e:
        if not saved_address:
            raise
        raise _saved_cluster_unreachable(address, e) from None
    return _execute(plan.methods, saved, plan.seeds, kind, address, folder, plots, progress, echo, resuming=True,
                    threads=threads, device=device, address_saved=saved_address)


def _saved_cluster_unreachable(address: str | None, e: ClusterError) -> ClusterError:
    """The one line of a resume whose saved Ray cluster (``run.yaml``) does not answer."""
    return ClusterError(f"--resume: the run's Ray cluster at {address} (checkpoint/run.yaml) cannot be reached: {e}; "
                        "start it again, or pass --address (HOST:PORT, auto, or local for a private Ray)")


def _check_executor(executor: str) -> None:
    if executor not in ("ray", "serial"):
        raise ConfigError(f"executor: got {executor!r}, allowed: 'ray', 'serial'")


def _execute(methods: Sequence[str], cfg: Config, seeds: Sequence[int], executor: str, address: str | None,
             folder: Path, plots: bool, progress: Callable[[Any], None] | None,
             echo: Callable[[str], None] | None, *, resuming: bool, threads: int | None = None,
             device: str = "auto", address_saved: bool = False) -> Results:
    """Prepare every (seed, method) run, then execute those not finished yet, writing into ``folder``."""
    from sfp_ray import checkpoints
    from sfp_ray.methods import get_method
    from sfp_ray.orchestrator import Orchestrator, check_resumable, run_meta
    from sfp_ray.preparation import prepare_run
    from sfp_ray.pretrain import resolve_checkpoint
    from sfp_ray.reports import ReportSink

    say = echo or (lambda _msg: None)
    warn = (lambda msg: say(f"warning: {msg}")) if echo is not None else None
    ck_cache: dict[str, str | None] = {}

    def resolve(c: Config) -> str | None:
        key = repr((c.model, c.pretrain, c.data.root))
        if key not in ck_cache:
            ck_cache[key] = resolve_checkpoint(c, log_fn=say)
        return ck_cache[key]

    pairs = [(int(s), get_method(m).name) for s in seeds for m in methods]
    ckpts: list[dict[str, Any] | None] = [
        checkpoints.load_run_state(checkpoints.checkpoint_path(folder, m, s)) if resuming else None for s, m in pairs]
    pending = [p for p, ck in zip(pairs, ckpts) if ck is None or not ck["finished"]]
    with _executors(executor, cfg, address, say, threads, device, folder=folder, warn=warn,
                    address_saved=address_saved) as pool:
        # the Ray executor's actors start now and import torch while the data loads here
        pool.start(pending)
        # everything is validated (and data loaded, the backbone pre-trained) before any run starts
        specs = share_datasets([prepare_run(cfg.replace(seed=s), m, resolve_checkpoint=resolve) for s, m in pairs])
        for note in dict.fromkeys(n for s in specs for n in s.notices):
            say(f"notice: {note}")
        sink = ReportSink(folder, plots=plots)
        if resuming:
            for spec, ck in zip(specs, ckpts):
                if ck is not None:
                    check_resumable(ck, spec)
            sink.resume({(s.method.name, s.cfg.seed): int(ck["round"]) if ck is not None else 0
                         for s, ck in zip(specs, ckpts) if ck is None or not ck["finished"]})
            if pool.address is not None:  # a later resume joins the cluster this one runs on
                checkpoints.write_plan(folder, methods, seeds, executor, cfg, address=pool.address)
            say(f"resuming the run in {folder}" + (f" on the Ray cluster at {pool.address}"
                                                   if pool.address not in (None, "local") else ""))
        else:
            checkpoints.clear(folder)
            checkpoints.write_plan(folder, methods, seeds, executor, cfg, address=pool.address)
            say(f"writing the report to {folder}")
        for spec, ck in zip(specs, ckpts):
            f, name, seed = spec.cfg.federation, spec.method.name, spec.cfg.seed
            if ck is not None and ck["finished"]:
                say(f"{name} seed {seed}: finished before; kept as it is")
                meta = run_meta(spec, str(ck["executor"]), str(ck["run_id"]))
                sink.start_run(meta)
                if not sink.final_state_path(meta).is_file():  # stopped between its last checkpoint and the end
                    sink.save_final_state(meta, {**ck["client"], **(ck["server"] or {})})
                continue
            if ck is not None:
                say(f"{name} seed {seed}: resuming after round {ck['round']} of {f.rounds}")
            say(f"{name} seed {seed}: {f.num_clients} clients ({f.clients_per_round}/round), "
                f"{f.rounds} rounds, {executor} executor, data {spec.cfg.data.name} "
                f"({len(spec.train)} train held by the clients / {len(spec.test)} test), "
                f"backbone {spec.checkpoint or 'none'}")
            path = checkpoints.checkpoint_path(folder, name, seed)
            with pool.executor() as ex:
                Orchestrator(spec, ex, [sink], progress=progress, checkpoint=path, resume=ck, warn=warn).run()
    sink.finalize()
    return Results.load(folder)


def share_datasets(specs: Sequence[Any]) -> list[Any]:
    """The specs, with equal datasets replaced by one object (runs over seeds load the same data).

    The Ray pool puts each dataset object into the object store once, so this puts the
    training set there once for a whole ``compare`` instead of once per run.
    """
    import torch

    seen: list[Any] = []

    def same(a: Any, b: Any) -> bool:
        return (a is b or (a.name, a.num_classes, tuple(a.class_names)) == (b.name, b.num_classes, tuple(b.class_names))
                and a.images.shape == b.images.shape and a.labels.shape == b.labels.shape
                and torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images))

    for spec in specs:
        for attr in ("train", "test"):
            ds = getattr(spec, attr)
            match = next((d for d in seen if same(d, ds)), None)
            if match is None:
                seen.append(ds)
            else:
                setattr(spec, attr, match)
    return list(specs)


class _executors:
    """Context manager owning the Ray instance and actor pool it starts; makes an executor per run.

    With the Ray executor and a ``folder``, what Ray prints goes to ``folder/ray.log`` while
    the pool runs (:class:`~sfp_ray.executors.ray.terminal.RayLog`); events of the pool (a
    node lost, slots re-placed) are one ``warn`` line each. ``address`` is then the joined
    cluster's ``HOST:PORT``, or ``local`` for a private instance it started (None when it
    reuses the Ray this process already runs), for the run's plan. When the head of a Ray it
    started or joined is lost, the process ends with one line on stderr and exit code 2: Ray
    would end it a minute later with a C++ message, and the checkpoints are what a resume
    needs.
    """

    def __init__(self, kind: str, cfg: Config, address: str | None, say: Callable[[str], None],
                 threads: int | None = None, device: str = "auto", *, folder: Path | None = None,
                 warn: Callable[[str], None] | None = None, address_saved: bool = False) -> None:
        self.kind, self.cfg, self.requested, self.say, self.threads = kind, cfg, address, say, threads
        self.device, self.folder, self.warn, self.address_saved = device, folder, warn, address_saved
        self.started = False
        self.joined = False
        self.pool: Any = None
        self.address: str | None = None
        self.ray_log: Any = None
        self.watch: Any = None

    def __enter__(self) -> _executors:
        return self

    def start(self, pending: Sequence[tuple[int, str]]) -> None:
        """Start Ray and the actors for the runs ``(seed, method)`` still to do (Ray executor; none: nothing)."""
        if self.kind != "ray" or not pending:  # nothing left to run needs no Ray
            return
        from sfp_ray.devices import run_devices
        from sfp_ray.executors.ray import ActorPool, start_ray
        from sfp_ray.executors.ray.terminal import HeadWatch, RayLog, connected_address, ray_running
        from sfp_ray.methods import get_method
        from sfp_ray.sizing import pool_memory

        resolved = [get_method(m).resolve(self.cfg.replace(seed=s)) for s, m in pending]
        devices, server = run_devices(resolved[0])  # the pool is planned for the first run, as the runs share it
        needs_server = any(get_method(m).server(c) is not None for (_, m), c in zip(pending, resolved))
        caps = [c.ray.max_actors for c in resolved if c.ray.max_actors is not None]
        distinct = {m: c for (_, m), c in zip(pending, resolved)}  # seeds do not change what an actor holds
        memory = pool_memory([(c, get_method(m)) for m, c in distinct.items()])
        if self.folder is not None:
            self.ray_log = RayLog(self.folder / "ray.log")
            self.ray_log.start()
        address = self.requested if self.requested is not None else self.cfg.ray.address
        reused = ray_running()  # a Ray this process already runs is used as is, and left running
        try:
            self.started = start_ray(self.cfg.ray, address)
        except ClusterError as e:
            if not self.address_saved:
                raise
            raise _saved_cluster_unreachable(address, e) from None
        if not reused:
            self.joined = not self.started
            self.address = "local" if self.started else connected_address()
            self.watch = HeadWatch(connected_address(), self._head_lost)
            self.watch.start()
        rc = self.cfg.ray
        self.pool = ActorPool.for_devices(devices, server if needs_server else None,
                                          max_actors=min(caps) if caps else None,
                                          server_max_concurrency=rc.server_max_concurrency, memory=memory,
                                          memory_fraction=rc.memory_fraction, ready_timeout_s=rc.placement_timeout_s,
                                          placement_timeout_s=rc.placement_timeout_s, on_node_loss=rc.on_node_loss,
                                          notify=self.warn)
        for note in self.pool.plan.notices:
            self.say(f"notice: {note}")

    def _head_lost(self) -> None:
        """The head stopped answering: one line, and exit code 2 (the checkpoints hold every finished round)."""
        where = self.watch.host + ":" + str(self.watch.port) if self.watch is not None else "?"
        hint = (f"continue with: sfp-ray run --resume {self.folder} (with --address HOST:PORT if the new cluster's "
                "head is elsewhere)" if self.folder is not None else "start a cluster again")
        terminal = self.ray_log.terminal if self.ray_log is not None else sys.stderr
        if self.ray_log is not None:
            self.ray_log.flush()
        print(f"sfp-ray: error: the Ray head at {where} was lost (the cluster is gone); {hint}", file=terminal,
              flush=True)
        os._exit(2)

    def executor(self) -> Any:
        """A new executor for one run (on the pool's actors with the Ray executor)."""
        if self.pool is not None:
            from sfp_ray.executors.ray import RayExecutor

            return RayExecutor(self.pool)
        if self.kind == "ray":
            raise RuntimeError("start() the Ray executor's pool first")
        from sfp_ray.executors.serial import SerialExecutor

        return SerialExecutor(self.threads, self.device)

    def __exit__(self, *exc: Any) -> None:
        if self.watch is not None:
            self.watch.stop()
        try:
            if self.pool is not None:
                self.pool.close()
            if self.started or self.joined:  # stops a private Ray, or leaves the cluster joined
                from sfp_ray.executors.ray import stop_ray

                with self.ray_log.all_to_file() if self.ray_log is not None else contextlib.nullcontext():
                    stop_ray()
        finally:
            if self.ray_log is not None:
                self.ray_log.stop()


def run(config: ConfigLike = None, *, method: str | None = None, overrides: Sequence[str] = (),
        **kwargs: Any) -> Results:
    """Run one method (default: the configuration's ``method``); see :func:`run_methods` for the options."""
    cfg = to_config(config, overrides)
    return run_methods([method or cfg.method], cfg, **kwargs)


def compare(methods: Sequence[str] = ("sfprompt", "fl_full"), config: ConfigLike = None, *,
            overrides: Sequence[str] = (), **kwargs: Any) -> Results:
    """Run several methods on the same data, seeds and devices; see :func:`run_methods` for the options."""
    return run_methods(methods, config, overrides=overrides, **kwargs)


__all__ = ["Results", "check_out_dir", "compare", "default_out_dir", "resume", "run", "run_methods", "seed_list",
           "share_datasets", "string_list", "to_config"]
