"""The round loop: cohort sampling, the method's round plan, evaluation, records.

The orchestrator knows only the :class:`~sfp_ray.executors.base.Executor` verbs and the
:class:`~sfp_ray.methods.base.Method` interface, and emits typed records
(:mod:`sfp_ray.records`) to sinks (:mod:`sfp_ray.reports`). Randomness is derived from the
configuration seed: the cohort of round ``r`` from ``(seed, r)``, each client's training
seed from ``(seed, r, client_id)``, so a run is reproducible whatever executes it.

A round: sample the cohort, hand the method its tasks and the global state (its round
plan runs the clients and aggregates), evaluate every ``federation.eval_every`` rounds,
and time the round on the simulated clock (the method's plan plays the clients'
timelines against the server; aggregation follows on the server).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from sfp_ray.config import Config
from sfp_ray.data import load_dataset, partition
from sfp_ray.devices import assign_devices, get_device, load_catalog
from sfp_ray.errors import ConfigError
from sfp_ray.executors.base import Executor, RunSpec, State
from sfp_ray.methods import Method, get_method
from sfp_ray.models import check_checkpoint, input_shape, read_checkpoint
from sfp_ray.records import (
    EVAL_PHASE,
    NO_CLIENT,
    ClientRecord,
    CostRecord,
    MessageRecord,
    RoundRecord,
    RunMeta,
    tally,
)
from sfp_ray.roles.client import ClientOutput, ClientTask

log = logging.getLogger(__name__)

#: Seed of the test set's sub-sampling (``data.test_samples``), the same for every run seed.
TEST_SEED = 0


def derive_seed(*parts: int) -> int:
    """A 31-bit seed derived from integers, e.g. ``(seed, round, client_id)``.

    Example:
        >>> derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
        True
    """
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def sample_cohort(seed: int, round: int, num_clients: int, clients_per_round: int) -> list[int]:
    """Sorted client ids taking part in ``round`` (seeded by ``(seed, round)``)."""
    rng = np.random.default_rng(derive_seed(seed, round))
    return sorted(int(c) for c in rng.choice(num_clients, size=clients_per_round, replace=False))


class Sink(Protocol):
    """Receives records as they are produced."""

    def start_run(self, meta: RunMeta) -> None: ...

    def add_costs(self, meta: RunMeta, records: Sequence[CostRecord]) -> None: ...

    def add_messages(self, meta: RunMeta, records: Sequence[MessageRecord]) -> None: ...

    def add_clients(self, meta: RunMeta, records: Sequence[ClientRecord]) -> None: ...

    def add_round(self, meta: RunMeta, record: RoundRecord) -> None: ...

    def add_resources(self, meta: RunMeta, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def end_run(self, meta: RunMeta, final_state: Mapping[str, torch.Tensor]) -> None: ...


# --------------------------------------------------------------------------- preparation


def prepare_run(cfg: Config, method: Method | str | None = None, *,
                resolve_checkpoint: Callable[[Config], str | None] | None = None) -> RunSpec:
    """Validate ``cfg`` for ``method`` and load what the run needs: data, partition, devices, checkpoint.

    This is the boundary: the configuration and the model are checked here once (the model
    and cut on the ``meta`` device, the checkpoint against it), before any training.
    Settings that cap user input say so in the spec's ``notices`` (one line each) instead
    of applying silently.
    """
    method = get_method(method or cfg.method) if not isinstance(method, Method) else method
    cfg = method.resolve(cfg)
    notes: list[str] = []
    d, f = cfg.data, cfg.federation
    img_size, in_chans = input_shape(cfg.model)
    train = load_dataset(d.name, train=True, root=d.root, classes=d.classes, img_size=img_size, in_chans=in_chans,
                         seed=cfg.seed)
    # the test set does not depend on the run's seed: runs over seeds are measured on the same samples
    test = load_dataset(d.name, train=False, root=d.root, classes=d.classes, img_size=img_size, in_chans=in_chans,
                        seed=TEST_SEED, max_samples=d.test_samples)
    if d.test_samples is not None and len(test) < d.test_samples:
        notes.append(f"data.test_samples={d.test_samples}: the test set has only {len(test)} samples; using all")
    parts = partition(train.labels.numpy(), f.num_clients, d.partition, alpha=d.alpha,
                      shards_per_client=d.shards_per_client, seed=cfg.seed, min_samples=d.min_samples)
    if d.samples_per_client is not None:
        rng = np.random.default_rng(derive_seed(cfg.seed, 7919))
        largest = max(len(p) for p in parts)
        if d.samples_per_client > largest:
            notes.append(f"data.samples_per_client={d.samples_per_client}: no client has that many samples "
                         f"(largest: {largest}); every client keeps all it was given")
        parts = [np.sort(rng.choice(p, size=d.samples_per_client, replace=False)) if len(p) > d.samples_per_client
                 else p for p in parts]
    catalog = load_catalog(cfg.devices.catalog)
    names = assign_devices(f.num_clients, cfg.devices.mix, cfg.seed, catalog)
    devices = [get_device(n, catalog) for n in names]
    try:
        server_device = get_device(cfg.devices.server, catalog)
    except ConfigError:
        raise ConfigError(f"devices.server: unknown device class {cfg.devices.server!r}; known: "
                          f"{', '.join(catalog)}") from None
    checkpoint_of = resolve_checkpoint if resolve_checkpoint is not None else _default_checkpoint
    spec = RunSpec(cfg, method, train.num_classes, None, train, test, parts, devices, server_device, notes)
    validate_model(spec)  # before any weights are touched (a pre-training run may follow)
    spec.checkpoint = checkpoint_of(cfg)
    if spec.checkpoint is not None:
        ws = spec.workspace(("head", "body", "tail"), meta=True)
        check_checkpoint(ws.vit, read_checkpoint(spec.checkpoint), spec.checkpoint)
    return spec


def validate_model(spec: RunSpec) -> None:
    """Build the configured model on the meta device, cut it, and build the method's client on it.

    Catches an unknown model, a cut deeper than the model, or a method that cannot run on
    this configuration, before any data or weights are touched.
    """
    ws = spec.workspace(("head", "body", "tail"), meta=True)
    spec.method.client_role(ws, spec.cfg)


def _default_checkpoint(cfg: Config) -> str | None:
    from sfp_ray.pretrain import resolve_checkpoint

    return resolve_checkpoint(cfg)


# --------------------------------------------------------------------------- loop


@dataclass
class RunResult:
    """What a run produced.

    ``final_state`` is the global state after the last round (for a method whose server
    trains the body it includes the body, names ``body.*``).
    """

    meta: RunMeta
    rounds: list[RoundRecord]
    final_state: Mapping[str, torch.Tensor]
    client_states: dict[int, dict[str, Any]] = field(default_factory=dict)


def _client_rows(r: int, outcome_outputs: Sequence[ClientOutput], devices: Sequence[Any],
                 cfg: Config) -> list[ClientRecord]:
    rows = []
    for o in outcome_outputs:
        kept = o.client_state.get("kept")
        rows.append(ClientRecord(
            round=r, client_id=o.client_id, device=devices[o.client_id].name, status=o.status, attempts=o.attempts,
            error=o.error, samples=o.num_samples, kept=len(kept) if kept is not None else o.num_samples,
            wall_s=o.wall_s, sim_s=o.sim_s, head_blocks=cfg.split.head_blocks, tail_blocks=cfg.split.tail_blocks))
    return rows


class Orchestrator:
    """Runs ``federation.rounds`` rounds of a method on an executor and emits records.

    Args:
        spec: the prepared run.
        executor: where client work runs.
        sinks: receivers of records (reports).
        progress: called after every round with the round record (live display).
        run_id: identifier written into every row (default: a short random id).
    """

    def __init__(self, spec: RunSpec, executor: Executor, sinks: Sequence[Sink] = (),
                 progress: Callable[[RoundRecord], None] | None = None, run_id: str | None = None) -> None:
        self.spec = spec
        self.executor = executor
        self.sinks = list(sinks)
        self.progress = progress
        self.meta = RunMeta(
            run_id=run_id or uuid.uuid4().hex[:8],
            method=spec.method.name,
            executor=executor.name,
            config=spec.cfg,
            devices=[d.name for d in spec.devices],
            num_classes=spec.num_classes,
            train_sizes=[len(p) for p in spec.client_indices],
            checkpoint=spec.checkpoint,
            seed=spec.cfg.seed,
        )

    def _emit(self, what: str, *args: Any) -> None:
        for s in self.sinks:
            getattr(s, what)(self.meta, *args)

    def run(self) -> RunResult:
        spec, ex, meta = self.spec, self.executor, self.meta
        cfg, f = spec.cfg, spec.cfg.federation
        started = ex.start(spec)
        meta.notices.extend(spec.notices + started.notices)
        self._emit("start_run")
        if started.resources:
            self._emit("add_resources", started.resources)
        state: State = started.state
        client_states: dict[int, dict[str, Any]] = {}
        rounds: list[RoundRecord] = []
        totals = {"bytes": 0, "client": 0.0, "server": 0.0, "wall": 0.0, "sim": 0.0}
        server_dev = spec.server_device
        for r in range(1, f.rounds + 1):
            t0 = time.perf_counter()
            cohort = sample_cohort(cfg.seed, r, f.num_clients, f.clients_per_round)
            tasks = [ClientTask(round=r, client_id=c, seed=derive_seed(cfg.seed, r, c), device=spec.devices[c],
                                server_device=server_dev, indices=np.asarray(spec.client_indices[c]),
                                client_state=client_states.get(c, {})) for c in cohort]
            outcome = spec.method.run_round(ex, tasks, state)
            state = outcome.state
            finished = [o for o in outcome.outputs if o.status in ("ok", "retried")]
            for o in finished:
                client_states[o.client_id] = o.client_state
            costs: list[CostRecord] = [c for o in outcome.outputs for c in o.costs]
            agg_sim = 0.0
            for part, flops in outcome.aggregate_flops.items():
                sim = server_dev.compute_seconds(flops) if flops else 0.0
                agg_sim += sim
                costs.append(CostRecord(r, NO_CLIENT, server_dev.name, "aggregate", part, "server", flops=flops,
                                        wall_s=outcome.aggregate_wall_s if part == "all" else 0.0, sim_s=sim))
            if r % f.eval_every == 0 or r == f.rounds:
                ev = ex.evaluate(state)
                costs.append(CostRecord(r, NO_CLIENT, server_dev.name, EVAL_PHASE, "all", "server", flops=ev.flops,
                                        wall_s=ev.wall_s, samples=len(spec.test)))
                acc, loss = ev.accuracy, ev.loss
            else:
                acc, loss = float("nan"), float("nan")
            clock = spec.method.round_clock({o.client_id: o.timeline for o in finished})
            sim = clock.seconds + agg_sim
            t = tally(costs)
            wall = time.perf_counter() - t0
            totals["bytes"] += t.bytes
            totals["client"] += t.client_flops
            totals["server"] += t.server_flops
            totals["wall"] += wall
            totals["sim"] += sim
            status = [o.status for o in outcome.outputs]
            rec = RoundRecord(
                run_id=meta.run_id, method=meta.method, round=r, participants=len(finished),
                test_accuracy=acc, test_loss=loss,
                train_loss=float(np.nanmean([o.train_loss for o in finished])) if finished else float("nan"),
                wall_s=wall, sim_s=sim, bytes_round=t.bytes, bytes_total=int(totals["bytes"]),
                client_flops_round=t.client_flops, client_flops_total=totals["client"],
                server_flops_round=t.server_flops, server_flops_total=totals["server"],
                cum_wall_s=totals["wall"], cum_sim_s=totals["sim"],
                server_queue_s=sum(o.server_queue_s for o in outcome.outputs), seed=cfg.seed,
                selected=len(tasks), finished=len(finished), failed=status.count("failed"),
            )
            rounds.append(rec)
            self._emit("add_costs", costs)
            self._emit("add_messages", [m for o in outcome.outputs for m in o.messages])
            self._emit("add_clients", _client_rows(r, outcome.outputs, spec.devices, cfg))
            self._emit("add_resources", [dict(o.resources, round=r, client_id=o.client_id)
                                         for o in outcome.outputs if o.resources])
            self._emit("add_round", rec)
            if self.progress is not None:
                self.progress(rec)
        final = state.tensors()
        self._emit("end_run", final)
        return RunResult(meta, rounds, final, client_states)


def default_out_dir(base: str | Path = "runs") -> Path:
    """``runs/<timestamp>`` (not created)."""
    return Path(base) / time.strftime("%Y%m%d-%H%M%S")
