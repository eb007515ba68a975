"""An actor's life seen from the driver: waiting until it is placed and started, asking whether it answers, killing it.

Functions of actor handles only (each answers ``ready`` and ``setup``, as
:mod:`~sfp_ray.executors.ray.actors` and :mod:`~sfp_ray.executors.ray.aggregator` define);
:class:`~sfp_ray.executors.ray.pool.ActorPool` keeps which actor is which and calls them
when it starts, replaces an actor or closes.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

import ray

from sfp_ray.errors import ClusterError, first_line
from sfp_ray.executors.ray.actors import RunSetup

log = logging.getLogger(__name__)

__all__ = ["answers", "await_started", "kill", "wait_started"]

K = TypeVar("K", bound=Hashable)


def wait_started(labelled: Sequence[tuple[str, Any]], timeout_s: float,
                 give_up: Callable[[], None]) -> list[dict[str, Any]]:
    """Wait until every actor of ``(label, actor)`` is placed and started; their start-up rows, in order.

    The wait goes on as long as actors keep coming up: it stops when none does within
    ``timeout_s``. Then, or when an actor refuses to start (a
    :class:`~sfp_ray.errors.ClusterError` raised in it, e.g. its GPU share is too small),
    ``give_up`` is called before :class:`~sfp_ray.errors.ClusterError` is raised; it is called
    before any other error of the start-up is raised again, too.
    """
    refs = [a.ready.remote() for _, a in labelled]
    pending = list(refs)
    while pending:  # as long as actors keep coming up, wait for the others
        done, pending = ray.wait(pending, num_returns=1, timeout=timeout_s)
        if not done:
            break
    if pending:
        waiting = Counter(labelled[refs.index(r)][0] for r in pending)
        give_up()
        raise ClusterError(
            f"{len(pending)} of {len(refs)} actors were not placed/started within {timeout_s:g} s "
            f"({', '.join(f'{n} x {lb}' for lb, n in waiting.items())}); other jobs may hold the "
            "resources (see `ray status`)")
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:  # an actor refused to start (e.g. its GPU share is too small)
        give_up()
        cause = getattr(e, "cause", None)
        if isinstance(cause, ClusterError):
            raise ClusterError(str(cause)) from None
        raise
    except BaseException:
        give_up()
        raise


def await_started(actors: Mapping[K, Any], timeout_s: float,
                  runs: Callable[[K], Sequence[RunSetup]]) -> tuple[dict[K, dict[str, Any]], dict[K, str]]:
    """Wait for new actors to be placed and started, and set the runs ``runs(key)`` up on each.

    Returns the start-up rows of those that came up and, for the others, why not (an actor
    still pending after ``timeout_s``, ``ray.placement_timeout_s``; one that died starting; one
    whose setup failed).
    """
    rows: dict[K, dict[str, Any]] = {}
    failed: dict[K, str] = {}
    if not actors:
        return rows, failed
    refs = {a.ready.remote(): k for k, a in actors.items()}
    done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for r in pending:
        failed[refs[r]] = f"not placed within {timeout_s:g} s (ray.placement_timeout_s)"
    for r in done:
        try:
            rows[refs[r]] = ray.get(r)
        except ray.exceptions.RayError as e:
            failed[refs[r]] = first_line(e)
    setups = {k: runs(k) for k in rows}
    for k, todo in setups.items():
        if not todo:
            continue
        try:
            ray.get([actors[k].setup.remote(s) for s in todo])
        except ray.exceptions.RayError as e:
            failed[k] = first_line(e)
            del rows[k]
    return rows, failed


def answers(actor: Any, timeout_s: float = 60.0) -> bool:
    """Whether ``actor`` answers (False when it died; a busy actor that does not answer in time counts as alive).

    An actor Ray cannot reach for now (``ActorUnavailableError``: its node may be dying,
    not yet declared dead) is asked again until ``timeout_s``, and counts as dead then.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(actor.ready.remote(), timeout=max(0.1, deadline - time.monotonic()))
            return True
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)
        except ray.exceptions.RayActorError:
            return False
        except ray.exceptions.GetTimeoutError:
            return True


def kill(actor: Any) -> None:
    """Kill ``actor`` (nothing for None); one that is gone already is not an error."""
    if actor is None:
        return
    try:
        ray.kill(actor)
    except Exception as e:  # noqa: BLE001 - it is gone already
        log.debug("ray.kill failed: %s", e)
