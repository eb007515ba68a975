"""Client and server faults: what makes a client attempt fail, and a test-only fault injection hook.

A client's attempt in a round **fails** when its task raises, when the process running it
dies (a Ray actor that exits), or when it returns a non-finite state or loss
(:func:`check_finite`; a non-finite batch loss already stops training where it happens,
:func:`check_loss`). Executors retry a failed attempt once and report the client as
``ok``, ``retried`` or ``failed`` (``clients.csv``); a failed client never reaches FedAvg.

Testing aid (not for experiments): the environment variable ``SFP_RAY_FAULT`` makes chosen
attempts fail on purpose, so the recovery paths can be exercised. It is read by the
orchestrator in the driver and travels with each :class:`~sfp_ray.roles.client.ClientTask`,
so it reaches Ray actors whatever environment they were started with. Items are separated
by ``;``:

* ``client:ROUND:CLIENT:KIND`` with ``KIND`` one of ``raise`` (the client's task raises),
  ``exit`` (the process running the client exits with ``os._exit``; the serial executor,
  which has no process to lose, raises instead) or ``nan`` (the client returns a NaN loss
  and state);
* ``server:ROUND:KIND`` with ``KIND`` one of ``raise`` (the server fails the first body
  request of the round's first client) or ``exit`` (the server process exits on that
  request; in-process, the serial executor drops its server role as if it had died);
* a suffix ``*N`` makes the fault hit the first ``N`` attempts (default 1): client
  attempts are counted over the round's tries (attempts 1-2 in the first try, 3-4 in a
  retried round), server faults count round tries.

Example:
    >>> [(f.target, f.round, f.client_id, f.kind, f.times) for f in parse_faults("client:2:1:raise*2; server:3:exit")]
    [('client', 2, 1, 'raise', 2), ('server', 3, None, 'exit', 1)]
    >>> task_faults(parse_faults("client:2:1:raise*3"), round=2, client_id=1, round_try=1, first=False)
    (('raise',), ('raise',))
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sfp_ray.errors import ConfigError, first_line

#: The environment variable of the fault injection hook (a testing aid).
ENV_VAR = "SFP_RAY_FAULT"

CLIENT_KINDS = ("raise", "exit", "nan")
SERVER_KINDS = ("raise", "exit")
#: Client attempts per round try: the first one and its retry.
ATTEMPTS = 2

__all__ = ["ATTEMPTS", "ENV_VAR", "Fault", "InjectedFault", "InjectedServerLoss", "NonFiniteError", "check_finite",
           "check_loss", "exit_process", "from_env", "one_line", "parse_faults", "server_fault", "task_faults"]


class InjectedFault(RuntimeError):
    """A failure made on purpose by ``SFP_RAY_FAULT``."""


class InjectedServerLoss(InjectedFault):
    """The in-process stand-in for a server process that exited (serial executor)."""


class NonFiniteError(RuntimeError):
    """A client produced a non-finite loss or state."""


@dataclass(frozen=True)
class Fault:
    """One item of ``SFP_RAY_FAULT``."""

    target: str  # "client" | "server"
    round: int
    client_id: int | None
    kind: str
    times: int = 1


def _int(text: str, what: str, item: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{ENV_VAR}: {what} {text!r} in {item!r} is not an integer") from None
    if value < (1 if what in ("round", "N") else 0):
        raise ConfigError(f"{ENV_VAR}: {what} {value} in {item!r} is out of range")
    return value


def parse_faults(text: str | None) -> tuple[Fault, ...]:
    """The faults of a ``SFP_RAY_FAULT`` value (see the module docstring); ConfigError when malformed."""
    out = []
    for raw in (text or "").split(";"):
        item = raw.strip()
        if not item:
            continue
        spec, _, times = item.partition("*")
        n = _int(times, "N", item) if times else 1
        parts = [p.strip() for p in spec.split(":")]
        if parts[0] == "client" and len(parts) == 4 and parts[3] in CLIENT_KINDS:
            out.append(Fault("client", _int(parts[1], "round", item), _int(parts[2], "client", item), parts[3], n))
        elif parts[0] == "server" and len(parts) == 3 and parts[2] in SERVER_KINDS:
            out.append(Fault("server", _int(parts[1], "round", item), None, parts[2], n))
        else:
            raise ConfigError(f"{ENV_VAR}: cannot read {item!r}; expected client:ROUND:CLIENT:raise|exit|nan or "
                              "server:ROUND:raise|exit, optionally followed by *N (a testing aid)")
    return tuple(out)


def from_env(environ: Mapping[str, str] | None = None) -> tuple[Fault, ...]:
    """The faults ``SFP_RAY_FAULT`` asks for (none when unset)."""
    return parse_faults((os.environ if environ is None else environ).get(ENV_VAR))


def task_faults(faults: Sequence[Fault], *, round: int, client_id: int, round_try: int,
                first: bool) -> tuple[tuple[str, ...], ...]:
    """Injected fault kinds of a client's attempts in one round try (attempt 1, attempt 2).

    Server faults are carried by the round's first client (``first``) on its first attempt,
    as ``server-raise`` / ``server-exit``; they fire on that attempt's first body request.
    """
    per_attempt: list[list[str]] = [[] for _ in range(ATTEMPTS)]
    for f in faults:
        if f.round != round:
            continue
        if f.target == "client" and f.client_id == client_id:
            for a in range(ATTEMPTS):
                if (round_try - 1) * ATTEMPTS + a + 1 <= f.times:
                    per_attempt[a].append(f.kind)
        elif f.target == "server" and first and round_try <= f.times:
            per_attempt[0].append(f"server-{f.kind}")
    if not any(per_attempt):
        return ()
    return tuple(tuple(kinds) for kinds in per_attempt)


def server_fault(kinds: Sequence[str]) -> str | None:
    """The server fault (``raise`` / ``exit``) among an attempt's injected kinds, if any."""
    for k in kinds:
        if k.startswith("server-"):
            return k.removeprefix("server-")
    return None


def exit_process(code: int = 70) -> None:
    """End this process at once, as a crash would (no clean-up, no exception)."""
    os._exit(code)


# --------------------------------------------------------------------------- failure checks


def check_loss(loss: float, where: str) -> None:
    """Raise :class:`NonFiniteError` unless a batch loss is finite."""
    if not math.isfinite(loss):
        raise NonFiniteError(f"non-finite training loss {loss} ({where})")


def check_finite(state: Mapping[str, Any] | None, loss: float | None = None, what: str = "state") -> None:
    """Raise :class:`NonFiniteError` when a tensor of ``state`` holds NaN/inf, or ``loss`` is infinite.

    A NaN ``loss`` alone is allowed: roles report NaN when no training step ran (every
    batch loss is checked where it is computed, :func:`check_loss`).
    """
    import torch

    from sfp_ray.tensors import as_view

    if loss is not None and math.isinf(loss):
        raise NonFiniteError(f"non-finite training loss {loss}")
    for name, value in (state or {}).items():
        t = as_view(value)
        if not t.is_floating_point():
            continue
        if t.device.type == "cpu" and t.dtype in (torch.float16, torch.float32, torch.float64):
            # numpy's check is ~25x faster than torch.isfinite(t).all() on CPU (a 10 MB state: 0.2 vs 6 ms)
            finite = bool(np.isfinite(t.detach().numpy()).all())
        else:
            finite = bool(torch.isfinite(t).all())
        if not finite:
            raise NonFiniteError(f"non-finite {what}: {name} holds NaN or inf")


def one_line(e: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, at most ``limit`` characters (the ``error`` of ``clients.csv``)."""
    return first_line(e, typed=True, limit=limit)
