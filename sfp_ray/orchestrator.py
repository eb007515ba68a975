"""The round loop: cohort sampling, the method's round plan, evaluation, records.

The orchestrator knows only the :class:`~sfp_ray.executors.base.Executor` verbs and the
:class:`~sfp_ray.methods.base.Method` interface, and emits typed records
(:mod:`sfp_ray.records`) to sinks (:mod:`sfp_ray.reports`). Randomness is derived from the
configuration seed: the cohort of round ``r`` from ``(seed, r)``, each client's training
seed from ``(seed, r, client_id)``, so a run is reproducible whatever executes it.

A round: sample the cohort, hand the method its tasks and the global state (its round
plan runs the clients and aggregates), evaluate every ``federation.eval_every`` rounds,
and time the round on the simulated clock (the method's plan plays the clients'
timelines against the server; aggregation follows on the server). After the round's rows
are flushed, the run's checkpoint is replaced (:mod:`sfp_ray.checkpoints`), so an
interrupted run can be resumed from its last finished round.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from sfp_ray.availability import RoundJudge, cohort_size, draw, draw_traced
from sfp_ray.checkpoints import save_run_state
from sfp_ray.config import to_dict
from sfp_ray.costs import ServerLink
from sfp_ray.errors import ConfigError, RoundFailed, RoundLost
from sfp_ray.executors.base import Executor, RunSpec, State
from sfp_ray.faults import Fault, from_env, task_faults
from sfp_ray.methods import RoundOutcome
from sfp_ray.preparation import derive_seed
from sfp_ray.records import (
    EVAL_PHASE,
    FINISHED,
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

def sample_cohort(seed: int, round: int, num_clients: int, clients_per_round: int) -> list[int]:
    """Sorted client ids taking part in ``round`` (seeded by ``(seed, round)``)."""
    rng = np.random.default_rng(derive_seed(seed, round))
    return sorted(int(c) for c in rng.choice(num_clients, size=clients_per_round, replace=False))


#: Sink methods a sink may leave out.
OPTIONAL_SINK_METHODS = ("add_timeline",)


class Sink(Protocol):
    """Receives records as they are produced (``add_timeline`` is optional)."""

    def start_run(self, meta: RunMeta) -> None: ...

    def add_costs(self, meta: RunMeta, records: Sequence[CostRecord]) -> None: ...

    def add_messages(self, meta: RunMeta, records: Sequence[MessageRecord]) -> None: ...

    def add_clients(self, meta: RunMeta, records: Sequence[ClientRecord]) -> None: ...

    def add_round(self, meta: RunMeta, record: RoundRecord) -> None: ...

    def add_timeline(self, meta: RunMeta, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def add_resources(self, meta: RunMeta, rows: Sequence[Mapping[str, Any]]) -> None: ...

    def end_run(self, meta: RunMeta, final_state: Mapping[str, torch.Tensor]) -> None: ...


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


def _client_rows(r: int, outcome_outputs: Sequence[ClientOutput], spec: RunSpec) -> list[ClientRecord]:
    rows = []
    for o in outcome_outputs:
        kept = o.client_state.get("kept")
        head, tail = spec.cut_of(o.client_id)
        dev = spec.devices[o.client_id]
        own = [c for c in o.costs if c.side == "client" and c.phase != EVAL_PHASE]
        rows.append(ClientRecord(
            round=r, client_id=o.client_id, device=dev.name, status=o.status,
            attempts=o.attempts, error=o.error, samples=o.num_samples,
            kept=0 if o.status == "offline" else len(kept) if kept is not None else o.num_samples,
            wall_s=o.wall_s, sim_s=o.sim_s, head_blocks=head,
            tail_blocks=tail, compute_wall_s=sum(c.compute_wall_s for c in own),
            compute_cpu_s=sum(c.compute_cpu_s for c in own),
            compute_sim_s=sum(c.sim_s for c in own), flops_per_s=dev.effective_flops, uplink_mbps=dev.uplink_mbps,
            downlink_mbps=dev.downlink_mbps))
    return rows


def _timeline_rows(r: int, schedule: Mapping[int, Sequence[tuple[str, str, float, float]]],
                   outputs: Sequence[ClientOutput], spec: RunSpec) -> list[dict[str, Any]]:
    """Rows of ``timeline.csv``: each client's simulated round, segment by segment (waits as side ``wait``)."""
    status = {o.client_id: o.status for o in outputs}
    return [{"round": r, "client_id": c, "device": spec.devices[c].name, "status": status.get(c, ""),
             "phase": phase, "side": side, "start_s": start, "end_s": end}
            for c in sorted(schedule) for phase, side, start, end in schedule[c]]


def offline_output(task: ClientTask) -> ClientOutput:
    """The output of a selected client that was offline this round: no work, no costs."""
    return ClientOutput(client_id=task.client_id, state=None, num_samples=len(task.indices),
                        client_state=dict(task.client_state), costs=[], messages=[], timeline=[],
                        train_loss=float("nan"), status="offline", attempts=0, error="offline (simulated)")


def run_meta(spec: RunSpec, executor: str, run_id: str) -> RunMeta:
    """The static facts of a run (attached to every row it emits)."""
    return RunMeta(
        run_id=run_id,
        method=spec.method.name,
        executor=executor,
        config=spec.cfg,
        devices=[d.name for d in spec.devices],
        num_classes=spec.num_classes,
        train_sizes=[len(p) for p in spec.client_indices],
        checkpoint=spec.checkpoint,
        seed=spec.cfg.seed,
    )


def required_successes(fraction: float, selected: int) -> int:
    """Clients of a cohort of ``selected`` that must succeed: ``ceil(fraction * selected)``.

    Example:
        >>> required_successes(0.5, 3), required_successes(0.5, 2), required_successes(0.0, 4)
        (2, 1, 0)
    """
    return max(0, math.ceil(fraction * selected - 1e-9))


def check_resumable(ckpt: Mapping[str, Any], spec: RunSpec) -> None:
    """Raise ConfigError unless ``ckpt`` is a checkpoint of the run ``spec`` describes."""
    name, seed = spec.method.name, spec.cfg.seed
    if ckpt.get("method") != name or ckpt.get("seed") != seed:
        raise ConfigError(f"--resume: the checkpoint is of {ckpt.get('method')} seed {ckpt.get('seed')}, "
                          f"not of {name} seed {seed}")
    if ckpt.get("config") != to_dict(spec.cfg):
        raise ConfigError(f"--resume: the checkpoint of {name} seed {seed} was written with another configuration "
                          "than the one saved in the run folder")
    if not 0 <= int(ckpt.get("round", -1)) <= spec.cfg.federation.rounds:
        raise ConfigError(f"--resume: the checkpoint of {name} seed {seed} is at round {ckpt.get('round')}, "
                          f"outside 0..federation.rounds={spec.cfg.federation.rounds}")


class Orchestrator:
    """Runs ``federation.rounds`` rounds of a method on an executor and emits records.

    Args:
        spec: the prepared run.
        executor: where client work runs.
        sinks: receivers of records (reports).
        progress: called after every round with the round record (live display).
        run_id: identifier written into every row (default: a short random id).
        checkpoint: a file to write the run's checkpoint to after every round
            (:mod:`sfp_ray.checkpoints`); None writes none.
        resume: a checkpoint of this run (:func:`sfp_ray.checkpoints.load_run_state`) to
            continue from: the run starts after its round, from its states, with its run id.
        warn: called with one line per client that failed an attempt (clients of a round with
            the same fate and error share one), per round that is started over, per server
            restart (default: the ``sfp_ray`` logger).

    Faults: executors retry a failed client once and report it ``retried`` or ``failed``;
    failed clients are left out of the round (never averaged). When fewer than
    ``federation.min_success_fraction`` of the cohort succeed, or work of the round is lost
    (:class:`~sfp_ray.errors.RoundLost`: the server died mid-round, or client results were
    held on a node that left), the round starts over once from the global state of the last
    finished round (which includes the body for methods whose server trains it); failing
    that, the run stops with :class:`~sfp_ray.errors.RoundFailed` (or the second RoundLost).
    The test-only ``SFP_RAY_FAULT`` hook (:mod:`sfp_ray.faults`) is read here and handed to
    the clients with their tasks.
    """

    def __init__(self, spec: RunSpec, executor: Executor, sinks: Sequence[Sink] = (),
                 progress: Callable[[RoundRecord], None] | None = None, run_id: str | None = None, *,
                 checkpoint: str | Path | None = None, resume: Mapping[str, Any] | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        self.executor = executor
        self.sinks = list(sinks)
        self.progress = progress
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.resume = dict(resume) if resume is not None else None
        self.warn = warn if warn is not None else (lambda msg: log.warning("%s", msg))
        if self.resume is not None:
            check_resumable(self.resume, spec)
            run_id = str(self.resume["run_id"])
        self.meta = run_meta(spec, executor.name, run_id or uuid.uuid4().hex[:8])

    def _emit(self, what: str, *args: Any) -> None:
        for s in self.sinks:
            if what in OPTIONAL_SINK_METHODS and not hasattr(s, what):
                continue
            getattr(s, what)(self.meta, *args)

    @property
    def _who(self) -> str:
        return f"{self.meta.method} seed {self.meta.seed}"

    def run(self) -> RunResult:
        spec, ex, meta, ck = self.spec, self.executor, self.meta, self.resume
        cfg, f = spec.cfg, spec.cfg.federation
        if ck is not None:  # the executor starts from the checkpoint's global state
            spec = dataclasses.replace(spec, start_state=(ck["client"], ck["server"]))
        started = ex.start(spec)
        meta.notices.extend(spec.notices + started.notices)
        self._emit("start_run")
        if started.resources:
            self._emit("add_resources", started.resources)
        state: State = started.state
        client_states: dict[int, dict[str, Any]] = dict(ck["client_states"]) if ck is not None else {}
        rounds: list[RoundRecord] = []
        totals = dict(ck["totals"]) if ck is not None else {"bytes": 0, "client": 0.0, "server": 0.0, "wall": 0.0,
                                                             "sim": 0.0}
        faults = from_env()
        server_dev = spec.server_device
        for r in range(int(ck["round"]) + 1 if ck is not None else 1, f.rounds + 1):
            t0 = time.perf_counter()
            outcome, selected, judge = self._play_round(r, state, client_states, faults, float(totals["sim"]))
            state = outcome.state
            finished = [o for o in outcome.outputs if o.status in FINISHED]
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
            sim = judge.round_seconds(outcome.outputs) + agg_sim
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
                selected=selected, finished=len(finished), failed=status.count("failed"),
                offline=status.count("offline"), dropped=status.count("dropped"), late=status.count("late"),
                precision=cfg.train.precision,
            )
            if not finished:
                self.warn(f"{self._who} round {r}: no client's state was averaged ({len(outcome.outputs)} selected: "
                          f"{status.count('offline')} offline, {status.count('dropped')} dropped, "
                          f"{status.count('late')} late, {status.count('failed')} failed); the global state is kept")
            rounds.append(rec)
            self._emit("add_costs", costs)
            self._emit("add_messages", [m for o in outcome.outputs for m in o.messages])
            self._emit("add_clients", _client_rows(r, outcome.outputs, spec))
            self._emit("add_timeline", _timeline_rows(r, judge.schedule, outcome.outputs, spec))
            self._emit("add_resources", [dict(o.resources, round=r, client_id=o.client_id, stage="task")
                                         for o in outcome.outputs if o.resources])
            self._emit("add_round", rec)  # the rows are flushed here, before the checkpoint
            self._save(r, state, client_states, totals)
            if self.progress is not None:
                self.progress(rec)
        end = ex.resources()  # each actor's memory after the run: its peaks over every task and fold
        if end:
            self._emit("add_resources", [dict(row, round=f.rounds) for row in end])
        final = state.tensors()
        self._emit("end_run", final)
        return RunResult(meta, rounds, final, client_states)

    def _play_round(self, r: int, state: State, client_states: Mapping[int, Mapping[str, Any]],
                    faults: Sequence[Fault], start_s: float = 0.0) -> tuple[RoundOutcome, int, RoundJudge]:
        """Run round ``r`` (started over once when too few clients succeed or the server is lost).

        ``start_s`` is the simulated time at which the round starts (an availability trace is
        read there).

        Returns the outcome (offline clients included), the number of clients selected, and
        the round's judge (dropouts, deadline, over-selection; :mod:`sfp_ray.availability`).
        """
        spec = self.spec
        cfg, f = spec.cfg, spec.cfg.federation
        cohort = sample_cohort(cfg.seed, r, f.num_clients, cohort_size(f.clients_per_round, f.over_select,
                                                                        f.num_clients))
        if spec.trace is not None:
            draws = {c: draw_traced(cfg.seed, r, c, spec.trace.online(c, start_s), spec.devices[c].dropout)
                     for c in cohort}
        else:
            draws = {c: draw(cfg.seed, r, c, spec.devices[c].availability, spec.devices[c].dropout) for c in cohort}
        online = [c for c in cohort if draws[c].online]
        for round_try in (1, 2):
            tasks = [ClientTask(round=r, client_id=c, seed=derive_seed(cfg.seed, r, c), device=spec.devices[c],
                                server_device=spec.server_device, indices=np.asarray(spec.client_indices[c]),
                                client_state=client_states.get(c, {}),
                                faults=task_faults(faults, round=r, client_id=c, round_try=round_try,
                                                   first=c == cohort[0]),
                                cut=spec.cut_of(c) if spec.cut_plan is not None else None) for c in cohort]
            judge = RoundJudge({c: draws[c] for c in online}, f.clients_per_round, f.deadline_s, self._clock,
                               sequential=spec.method.sequential)
            try:
                outcome = spec.method.run_round(self.executor, [t for t in tasks if draws[t.client_id].online], state,
                                                judge)
            except RoundLost as e:
                if round_try == 2:
                    raise type(e)(f"{self._who}: {e}, again in the retried round; the run stops (continue it "
                                  "with --resume)") from e
                self.warn(f"{self._who}: {e}; round {r} starts over")
                continue
            outcome.outputs = sorted(outcome.outputs + [offline_output(t) for t in tasks
                                                        if not draws[t.client_id].online], key=lambda o: o.client_id)
            self._warn_clients(r, outcome.outputs)
            status = [o.status for o in outcome.outputs]
            ok = sum(st in FINISHED or st == "late" for st in status)  # late clients did succeed
            need = required_successes(f.min_success_fraction, ok + status.count("failed"))
            if ok >= need:
                return outcome, len(tasks), judge
            short = (f"round {r}: {ok} of {ok + status.count('failed')} clients succeeded, "
                     f"federation.min_success_fraction={f.min_success_fraction:g} needs {need}")
            if round_try == 2:
                first = next((o.error for o in outcome.outputs if o.status == "failed"), "")
                raise RoundFailed(f"{self._who}: {short}, also when the round was retried; the run stops "
                                  f"(first error: {first})")
            self.warn(f"{self._who}: {short}; the round starts over")
        raise AssertionError("unreachable")

    def _clock(self, timelines: Mapping[int, Sequence[Any]]) -> Any:
        """The method's round clock, with the server's link shared when ``devices.server_link`` says so."""
        dv = self.spec.cfg.devices
        link = None if dv.free_links else ServerLink.of(dv.server_link, self.spec.server_device)
        return self.spec.method.round_clock(timelines, link)

    def _warn_clients(self, r: int, outputs: Sequence[ClientOutput]) -> None:
        """One line per retried or failed client; clients of a round with the same fate and error share it."""
        groups: dict[tuple[str, int, str], list[int]] = {}
        for o in outputs:
            if o.status in ("retried", "failed"):
                groups.setdefault((o.status, o.attempts, o.error), []).append(o.client_id)
        for (status, attempts, error), ids in groups.items():
            who = ", ".join(f"{c} ({self.spec.devices[c].name})" for c in ids)
            who = f"client {who}" if len(ids) == 1 else f"clients {who}"
            if status == "retried":
                self.warn(f"{self._who} round {r}: {who} succeeded on attempt {attempts} after a failure: {error}")
            else:
                tried = f"failed {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else "could not run"
                left = "is" if len(ids) == 1 else "are"
                self.warn(f"{self._who} round {r}: {who} {tried} and {left} left out of the round: {error}")

    def _save(self, r: int, state: State, client_states: Mapping[int, Any], totals: Mapping[str, float]) -> None:
        """Write the checkpoint of round ``r`` (when the run has a checkpoint file)."""
        if self.checkpoint is None:
            return
        client, server = state.parts()
        f = self.spec.cfg.federation
        save_run_state(self.checkpoint, {
            "method": self.meta.method, "seed": self.meta.seed, "run_id": self.meta.run_id,
            "executor": self.meta.executor, "round": r, "rounds": f.rounds, "finished": r == f.rounds,
            "client": client, "server": server, "client_states": dict(client_states), "totals": dict(totals),
            "config": to_dict(self.spec.cfg),
        })
