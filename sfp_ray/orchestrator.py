"""The round loop: cohort sampling, client phases, aggregation, evaluation, records.

The orchestrator knows only the :class:`~sfp_ray.executors.base.Executor` interface and
emits typed records to sinks (:mod:`sfp_ray.reports`). Randomness is derived from the
configuration seed: the cohort of round ``r`` from ``(seed, r)``, each client's training
seed from ``(seed, r, client_id)``, so a run is reproducible whatever executes it.

A round is ``begin_round`` -> ``run_clients`` -> ``aggregate`` -> ``finish_round`` (the
last two: FedAvg of the client states, and of the server's body copies when the method
trains the body). A sequential method (``Method.sequential``, vanilla split learning) runs
the cohort one client at a time in ascending id order instead, each as its own
``begin_round`` -> ``run_clients`` -> ``finish_round`` with the previous client's output
state as its global state; the last client's state becomes the new global state
(``Executor.adopt``; its ``aggregate`` row has 0 FLOPs).
"""

from __future__ import annotations

import dataclasses
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
from sfp_ray.costs import CostRecord, MessageRecord
from sfp_ray.data import load_dataset, partition
from sfp_ray.devices import assign_devices, get_device, load_catalog
from sfp_ray.errors import ConfigError
from sfp_ray.executors.base import AggregateResult, ClientSpec, Executor, RunSpec
from sfp_ray.methods import Method, get_method
from sfp_ray.roles.server import BodyAggregate

log = logging.getLogger(__name__)


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


@dataclass
class RoundRecord:
    """One row of ``rounds.csv``."""

    run_id: str
    method: str
    round: int
    participants: int
    test_accuracy: float
    test_loss: float
    train_loss: float
    wall_s: float
    sim_s: float
    bytes_round: int
    bytes_total: int
    client_flops_round: float
    client_flops_total: float
    server_flops_round: float
    server_flops_total: float
    cum_wall_s: float
    cum_sim_s: float
    server_queue_s: float = 0.0


@dataclass
class RunMeta:
    """Static facts of a run, attached to every row it emits."""

    run_id: str
    method: str
    executor: str
    config: Config
    devices: list[str]
    num_classes: int
    train_sizes: list[int]
    checkpoint: str | None


class Sink(Protocol):
    """Receives records as they are produced."""

    def start_run(self, meta: RunMeta) -> None: ...

    def add_costs(self, meta: RunMeta, records: Sequence[CostRecord]) -> None: ...

    def add_messages(self, meta: RunMeta, records: Sequence[MessageRecord]) -> None: ...

    def add_round(self, meta: RunMeta, record: RoundRecord) -> None: ...

    def add_resources(self, meta: RunMeta, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def end_run(self, meta: RunMeta, final_state: Mapping[str, torch.Tensor]) -> None: ...


# --------------------------------------------------------------------------- preparation


def prepare_run(cfg: Config, method: Method | str | None = None, *,
                resolve_checkpoint: Callable[[Config], str | None] | None = None) -> RunSpec:
    """Load data, partition it, assign devices and resolve the checkpoint for ``cfg``."""
    method = get_method(method or cfg.method) if not isinstance(method, Method) else method
    cfg = method.resolve(cfg)
    d, f = cfg.data, cfg.federation
    train = load_dataset(d.name, train=True, root=d.root, classes=d.classes, img_size=cfg.model.img_size,
                         in_chans=cfg.model.in_chans, seed=cfg.seed)
    test = load_dataset(d.name, train=False, root=d.root, classes=d.classes, img_size=cfg.model.img_size,
                        in_chans=cfg.model.in_chans, seed=cfg.seed, max_samples=d.test_samples)
    parts = partition(train.labels.numpy(), f.num_clients, d.partition, alpha=d.alpha,
                      shards_per_client=d.shards_per_client, seed=cfg.seed, min_samples=d.min_samples)
    if d.samples_per_client is not None:
        rng = np.random.default_rng(derive_seed(cfg.seed, 7919))
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
    validate_model(cfg)
    checkpoint = resolve_checkpoint(cfg) if resolve_checkpoint is not None else _default_checkpoint(cfg)
    return RunSpec(cfg, method, train.num_classes, checkpoint, train, test, parts, devices, server_device)


def validate_model(cfg: Config) -> None:
    """Build the configured model on the meta device and cut it: catches an unknown model
    or a cut deeper than the model before any data or weights are touched.
    """
    import torch

    from sfp_ray.models import build_from_config, split_vit

    m = cfg.model
    with torch.device("meta"):
        vit = build_from_config(dataclasses.replace(cfg, model=dataclasses.replace(m, pretrained=False)), 2)
    split_vit(vit, cfg.split.head_blocks, cfg.split.tail_blocks, cfg.prompt.num_tokens, deep=cfg.prompt.deep,
              bypass_pool=cfg.split.bypass_pool)


def _default_checkpoint(cfg: Config) -> str | None:
    from sfp_ray.pretrain import resolve_checkpoint

    return resolve_checkpoint(cfg)


# --------------------------------------------------------------------------- loop


@dataclass
class RunResult:
    """What a run produced.

    ``final_state`` is the global trainable state after the last round; for a method whose
    server trains the body it includes the server's final global body (names ``body.*``).
    """

    meta: RunMeta
    rounds: list[RoundRecord]
    final_state: Mapping[str, torch.Tensor]
    client_states: dict[int, dict[str, Any]] = field(default_factory=dict)


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
        )

    def run(self) -> RunResult:
        cfg, f = self.spec.cfg, self.spec.cfg.federation
        ex, meta = self.executor, self.meta
        ex.start(self.spec)
        for s in self.sinks:
            s.start_run(meta)
        state = ex.initial_state()
        client_states: dict[int, dict[str, Any]] = {}
        rounds: list[RoundRecord] = []
        bytes_total = 0
        cflops_total = 0.0
        sflops_total = 0.0
        cum_wall = 0.0
        cum_sim = 0.0
        for r in range(1, f.rounds + 1):
            t0 = time.perf_counter()
            cohort = sample_cohort(cfg.seed, r, f.num_clients, f.clients_per_round)
            specs = [ClientSpec(r, c, derive_seed(cfg.seed, r, c), client_states.get(c, {})) for c in cohort]
            if self.spec.method.sequential:
                outputs, agg, bodies = self._sequential_round(r, specs, state)
            else:
                ex.begin_round(r, cohort)
                outputs = sorted(ex.run_clients(specs, state), key=lambda o: o.client_id)
                agg = ex.aggregate(outputs)
                bodies = [b for b in [ex.finish_round(outputs)] if b is not None]
            for o in outputs:
                client_states[o.client_id] = o.client_state
            state = agg.state
            costs: list[CostRecord] = [c for o in outputs for c in o.costs]
            server_dev = self.spec.server_device
            costs.append(CostRecord(r, -1, server_dev.name, "aggregate", "all", flops=agg.flops, wall_s=agg.wall_s,
                                    sim_s=server_dev.compute_seconds(agg.flops) if agg.flops else 0.0))
            if bodies:  # the server's FedAvg of its body copies (0 FLOPs when single copies are adopted)
                bflops = sum(b.flops for b in bodies)
                costs.append(CostRecord(r, -1, server_dev.name, "aggregate", "body", flops=bflops,
                                        wall_s=sum(b.wall_s for b in bodies),
                                        sim_s=server_dev.compute_seconds(bflops) if bflops else 0.0))
            if r % f.eval_every == 0 or r == f.rounds:
                ev = ex.evaluate(state)
                costs.append(CostRecord(r, -1, server_dev.name, "eval", "all", flops=ev.flops, wall_s=ev.wall_s,
                                        samples=len(self.spec.test)))
                acc, loss = ev.accuracy, ev.loss
            else:
                acc, loss = float("nan"), float("nan")
            stats = ex.server_stats()
            queue = sum(getattr(s, "queue_s", 0.0) for s in stats)
            wall = time.perf_counter() - t0
            sim = round_sim_seconds(outputs, costs, sequential=self.spec.method.sequential)
            b = sum(c.bytes_up + c.bytes_down for c in costs)
            cfl = sum(c.flops for c in costs if c.client_id >= 0 and c.part != "body")
            sfl = sum(c.flops for c in costs if c.part == "body" or (c.client_id < 0 and c.phase != "eval"))
            bytes_total += b
            cflops_total += cfl
            sflops_total += sfl
            cum_wall += wall
            cum_sim += sim
            rec = RoundRecord(
                run_id=meta.run_id, method=meta.method, round=r, participants=len(outputs),
                test_accuracy=acc, test_loss=loss,
                train_loss=float(np.nanmean([o.train_loss for o in outputs])) if outputs else float("nan"),
                wall_s=wall, sim_s=sim, bytes_round=b, bytes_total=bytes_total,
                client_flops_round=cfl, client_flops_total=cflops_total,
                server_flops_round=sfl, server_flops_total=sflops_total,
                cum_wall_s=cum_wall, cum_sim_s=cum_sim, server_queue_s=queue,
            )
            rounds.append(rec)
            for s in self.sinks:
                s.add_costs(meta, costs)
                s.add_messages(meta, [m for o in outputs for m in o.messages])
                s.add_resources(meta, [dict(o.resources, round=r, client_id=o.client_id) for o in outputs
                                       if o.resources])
                s.add_round(meta, rec)
            if self.progress is not None:
                self.progress(rec)
        final = dict(state)
        if self.spec.method.trains_body:
            final.update(ex.body_state() or {})
        for s in self.sinks:
            s.end_run(meta, final)
        return RunResult(meta, rounds, final, client_states)

    def _sequential_round(self, r: int, specs: Sequence[ClientSpec], state: Mapping[str, torch.Tensor]
                          ) -> tuple[list[Any], AggregateResult, list[BodyAggregate]]:
        """One round of a sequential method: clients one after another, state relayed, no averaging."""
        ex = self.executor
        outputs, bodies = [], []
        current: Any = state
        for spec in sorted(specs, key=lambda s: s.client_id):
            ex.begin_round(r, [spec.client_id])
            (out,) = ex.run_clients([spec], current)
            body = ex.finish_round([out])
            if body is not None:
                bodies.append(body)
            outputs.append(out)
            current = out.state  # may be an executor handle (a Ray ObjectRef): passed on as it is
        return outputs, ex.adopt(outputs[-1]), bodies


def round_sim_seconds(outputs: Sequence[Any], costs: Sequence[CostRecord], *, sequential: bool = False) -> float:
    """Simulated duration of a synchronous round.

    Clients run in parallel on their own devices; each one's time is the sum of its cells
    (its compute, its messages, and the server compute it waits for). The round lasts as
    long as the slowest client, or as long as the server needs for all body requests if
    that is longer (one server device processing requests one at a time: the difference
    is server queueing), followed by aggregation. With ``sequential`` clients (split
    learning) take turns, so the round lasts the sum of their times.
    """
    per_client: dict[int, float] = {}
    server_busy = 0.0
    agg = 0.0
    for c in costs:
        if c.client_id >= 0:
            per_client[c.client_id] = per_client.get(c.client_id, 0.0) + c.sim_s
            if c.part == "body":
                server_busy += c.sim_s
        elif c.phase == "aggregate":
            agg += c.sim_s
    if sequential:
        return sum(per_client.values()) + agg
    slowest = max(per_client.values(), default=0.0)
    return max(slowest, server_busy) + agg


def default_out_dir(base: str | Path = "runs") -> Path:
    """``runs/<timestamp>`` (not created)."""
    return Path(base) / time.strftime("%Y%m%d-%H%M%S")
