"""Starting or joining Ray, and checking that the actors of a run fit the cluster.

Only the CLI (or a test fixture) starts Ray: :func:`start_ray` returns whether it did, so
the caller knows to ``ray.shutdown()`` at the end. Executors never start Ray themselves.

:func:`check_fit` is the boundary check of the Ray runtime: before any actor is created,
every requested actor shape must fit on some alive node and the whole set must pack onto
the nodes at once, otherwise a run would sit forever with actors pending. The
packing follows Ray's own rules: CPUs, memory and custom resources are per-node totals;
GPUs are per-GPU *instances* - fractional requests (< 1) share one GPU only up to 1.0, whole
requests take whole free GPUs.

Example:
    >>> check_fit([("client:jetson", {"num_cpus": 0.25, "num_gpus": 0.25})] * 4, {"CPU": 2, "GPU": 1})
    >>> try:
    ...     check_fit([("client:jetson", {"num_cpus": 0.25, "num_gpus": 0.25})] * 5, {"CPU": 2, "GPU": 1})
    ... except ClusterError as e:
    ...     print(str(e).split(":")[0])
    cannot place 5 client actors of class 'jetson' (0.25 GPU each)
"""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfp_ray.config import RayConfig
from sfp_ray.errors import ClusterError, first_line

__all__ = ["ClusterError", "check_fit", "cluster_nodes", "parse_address", "ray_address_file", "resolve_address",
           "start_ray", "stop_ray"]

log = logging.getLogger(__name__)

#: Seconds allowed for the TCP reachability probe of an explicit ``HOST:PORT`` address.
CONNECT_TIMEOUT_S = 3.0

#: Ray keeps resource quantities as fixed-point numbers with 1e-4 resolution.
_SCALE = 10_000

#: Node resources that are bookkeeping, not capacity (``node:<ip>``, object store).
_IGNORED = ("object_store_memory",)


# --------------------------------------------------------------------------- start / join


def parse_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``HOST:PORT`` (or ``ray://HOST:PORT``) address; None for local/auto.

    Example:
        >>> parse_address("10.0.0.5:6379"), parse_address("auto"), parse_address("[::1]:6379")
        (('10.0.0.5', 6379), None, ('::1', 6379))
    """
    addr = address.strip()
    if addr in ("", "local", "auto"):
        return None
    if "://" in addr:
        addr = addr.split("://", 1)[1]
    host, sep, port = addr.rpartition(":")
    if not sep or not host:
        raise ClusterError(f"--address {address!r}: expected 'local', 'auto' or HOST:PORT, e.g. 10.0.0.5:6379")
    try:
        port_no = int(port)
    except ValueError:
        raise ClusterError(f"--address {address!r}: port {port!r} is not a number") from None
    if not 0 < port_no < 65536:
        raise ClusterError(f"--address {address!r}: port must be in 1..65535")
    return host.strip("[]"), port_no


def _probe(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ClusterError unless a TCP connection to ``host:port`` opens within ``timeout`` s."""
    why = _unreachable(host, port, timeout)
    if why is not None:
        raise ClusterError(
            f"cannot reach Ray at {host}:{port} within {timeout:g} s ({why}); "
            "is `ray start --head` running there? see cluster/README.md"
        )


def _unreachable(host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to ``host:port`` does not open within ``timeout`` s; None when it does."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return str(e.strerror or e)


def ray_address_file() -> Path:
    """The file in which ``ray start`` records the address of the cluster it made on this machine.

    ``<temp>/ray/ray_current_cluster``, where ``<temp>`` is ``$RAY_TMPDIR``, else ``$TMPDIR``,
    else ``/tmp``: where Ray 2.60 itself looks for it when asked for ``address="auto"``. The
    file outlives the cluster: after ``ray stop`` or a crash it still names the old address.
    """
    temp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(temp) / "ray" / "ray_current_cluster"


def resolve_address(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> str:
    """The address to start Ray with: ``local``, or a cluster address that answered a TCP probe just now.

    * ``local`` (or empty / None): a private instance; nothing to check.
    * ``HOST:PORT`` (or ``ray://HOST:PORT``): checked as it is.
    * ``auto``: the cluster Ray would join, found the way Ray finds it (``$RAY_ADDRESS``, else
      the file :func:`ray_address_file`), and then checked like ``HOST:PORT``; the address
      returned is the one found, so that Ray does not look again. A file that names a
      cluster which no longer answers (the cluster was stopped; Ray would retry it for
      minutes) fails here within ``timeout`` seconds, naming the address and the file.
      Ray's last resort of joining any Ray process found on the machine is not taken: that
      may be another user's private instance.

    Raises:
        ClusterError: one line naming the address, where it came from, and what to do.

    Example:
        >>> resolve_address("local"), resolve_address(None)
        ('local', 'local')
    """
    addr = (address or "local").strip() or "local"
    if addr == "local":
        return addr
    if addr != "auto":
        hostport = parse_address(addr)
        if hostport is not None:
            _probe(*hostport, timeout=timeout)
        return addr
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env not in ("auto", "local"):
        found, source = env, "RAY_ADDRESS"
    else:
        path = ray_address_file()
        try:
            found = path.read_text().strip()
        except FileNotFoundError:
            raise ClusterError(
                f"--address auto: no Ray cluster was started on this machine: {path} does not exist and "
                "RAY_ADDRESS is not set; start one with `ray start --head` (cluster/start-head.sh), give "
                "--address HOST:PORT, or leave --address out for a private local Ray"
            ) from None
        except OSError as e:
            raise ClusterError(f"--address auto: cannot read {path} ({e.strerror or e})") from None
        source = str(path)
    try:
        hostport = parse_address(found)
    except ClusterError:
        hostport = None
    if hostport is None:
        raise ClusterError(f"--address auto: {source} holds {found!r}, not a HOST:PORT address")
    why = _unreachable(*hostport, timeout=timeout)
    if why is not None:
        raise ClusterError(
            f"--address auto: the Ray cluster at {found} (from {source}) does not answer ({why}) - a stale "
            "address of a cluster that was stopped; start one with `ray start --head` (it rewrites the file), "
            "give --address HOST:PORT, or leave --address out for a private local Ray"
        )
    return found


def start_ray(cfg_ray: RayConfig, address: str | None = None) -> bool:
    """Start a private local Ray instance or join a cluster; return True if this call started Ray.

    Args:
        cfg_ray: the ``ray`` section of the configuration (``num_cpus``/``num_gpus`` size a
            local instance; ``address`` is used when ``address`` is None).
        address: ``"local"`` (default) starts a private instance with
            ``ray.init(address="local")`` - a plain ``ray.init()`` would silently join any
            cluster already running on the machine; ``"auto"`` joins the cluster started on
            this machine with ``ray start`` (:func:`resolve_address`); ``HOST:PORT`` joins a
            remote head.

    Returns:
        True when a new local instance was started (the caller owns it and must call
        ``ray.shutdown()``, which stops it); False when Ray was already initialised in this
        process (reused as is) or an existing cluster was joined (``ray.shutdown()`` then
        only disconnects; the cluster keeps running).

    Raises:
        ClusterError: an explicit ``HOST:PORT``, or the address ``"auto"`` finds, does not
            accept a TCP connection within 3 s (checked before anything touches Ray, so it
            fails fast and leaves an already running instance alone), or ``"auto"`` finds no
            cluster (:func:`resolve_address`).

    A local instance starts its workers at niceness 0 instead of Ray's default 15
    (``RAY_worker_niceness``; ``resources.csv`` records each actor's ``observed_nice``); the
    cluster scripts do the same for the nodes they start.

    Token authentication (cluster/README.md §2) is left as Ray sets it: Ray 2.60 enables it
    for instances made by ``ray.init()``; to join a cluster started with ``ray start``
    (whose scripts export ``RAY_AUTH_MODE=token``) from another machine, export
    ``RAY_AUTH_MODE=token`` and provide the head's token via ``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``. Nothing here disables it.
    """
    import ray

    raw = (address or cfg_ray.address or "local").strip()
    if ray.is_initialized() and raw == "auto":  # this process is connected already: that is the cluster
        log.info("Ray is already initialised in this process; reusing it for --address auto")
        return False
    addr = resolve_address(raw)
    if ray.is_initialized():
        log.info("Ray is already initialised in this process; reusing it (address %r not applied)", addr)
        return False
    if addr == "local":
        # Ray starts its workers at nice 15 (its raylet's worker_niceness); next to any other busy
        # process on the machine an actor at nice 15 gets ~1/28 of a core's share and a run crawls
        # (benchmarks/results/ray_overhead.md). The actors emulate devices, not background jobs:
        # start them at the driver's priority. An explicit RAY_worker_niceness is kept.
        os.environ.setdefault("RAY_worker_niceness", "0")
        kwargs: dict[str, Any] = {
            "address": "local",
            "num_cpus": _whole(cfg_ray.num_cpus) if cfg_ray.num_cpus is not None else os.cpu_count(),
            "include_dashboard": False,
            "logging_level": logging.WARNING,
            "log_to_driver": True,
        }
        if cfg_ray.num_gpus is not None:
            kwargs["num_gpus"] = _whole(cfg_ray.num_gpus)
        ray.init(**kwargs)
        return True
    try:
        ray.init(address=addr, logging_level=logging.WARNING, log_to_driver=True)
    except ConnectionError as e:
        first = first_line(e).rstrip(".")
        raise ClusterError(
            f"cannot join Ray at address {addr!r}: {first}; start a cluster with `ray start --head` "
            "(cluster/start-head.sh) or use --address local; see cluster/README.md"
        ) from None
    return False


def _whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


# --------------------------------------------------------------------------- fit check


def cluster_nodes() -> list[dict[str, float]]:
    """Total resources of every alive node of the connected Ray cluster."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive", n.get("alive", False))]


def _q(x: float) -> int:
    """Resource amount in Ray's fixed-point units (1e-4)."""
    return int(round(float(x) * _SCALE))


def _demand(opts: Mapping[str, Any]) -> dict[str, int]:
    """Ray options (``num_cpus``, ``num_gpus``, ``memory``, ``resources``) -> resource demand."""
    d: dict[str, int] = {}
    # Ray's default for actors is 1 CPU to schedule, 0 to run; our actors always say so explicitly.
    d["CPU"] = _q(opts.get("num_cpus", 1) or 0)
    if opts.get("num_gpus"):
        d["GPU"] = _q(opts["num_gpus"])
    if opts.get("memory"):
        d["memory"] = int(opts["memory"])  # bytes, an integer resource
    for k, v in (opts.get("resources") or {}).items():
        if v:
            d[str(k)] = _q(v)
    return {k: v for k, v in d.items() if v > 0}


@dataclass
class _Node:
    """Remaining capacity of a node while packing (GPUs kept per instance)."""

    free: dict[str, int]
    gpus: list[int] = field(default_factory=list)  # free share of each GPU instance

    @classmethod
    def of(cls, resources: Mapping[str, float]) -> _Node:
        free: dict[str, int] = {}
        for k, v in resources.items():
            if k in _IGNORED or k.startswith("node:"):
                continue
            free[k] = int(v) if k == "memory" else _q(v)
        whole, rest = divmod(free.pop("GPU", 0), _SCALE)
        return cls(free, [_SCALE] * whole + ([rest] if rest else []))

    def _gpu_slots(self, need: int) -> list[int] | None:
        """GPU instances that would serve ``need`` (fixed-point), or None."""
        if need <= 0:
            return []
        if need < _SCALE:
            for i, free in enumerate(self.gpus):  # first fit on one instance, like Ray
                if free >= need:
                    return [i]
            return None
        if need % _SCALE:
            return None  # Ray rejects fractional amounts above one GPU
        idle = [i for i, free in enumerate(self.gpus) if free == _SCALE]
        return idle[: need // _SCALE] if len(idle) >= need // _SCALE else None

    def fits(self, demand: Mapping[str, int]) -> bool:
        for k, v in demand.items():
            if k == "GPU":
                if self._gpu_slots(v) is None:
                    return False
            elif self.free.get(k, 0) < v:
                return False
        return True

    def take(self, demand: Mapping[str, int]) -> None:
        for k, v in demand.items():
            if k == "GPU":
                for i in self._gpu_slots(v) or []:
                    self.gpus[i] -= min(v, _SCALE)
            else:
                self.free[k] = self.free.get(k, 0) - v


def _fmt_amount(res: str, units: int) -> str:
    if res == "memory":
        return f"{units / 2**20:.0f} MiB"
    x = units / _SCALE
    return f"{x:g}"


def _res_name(res: str) -> str:
    return {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}.get(res, f"resources[{res!r}]")


def _unit(res: str, units: int) -> str:
    if res == "CPU":
        return f"{_fmt_amount(res, units)} CPU"
    if res == "GPU":
        return f"{_fmt_amount(res, units)} GPU"
    if res == "memory":
        return _fmt_amount(res, units)
    return f"{_fmt_amount(res, units)} {res}"


def _describe(label: str, n: int = 1) -> tuple[str, str | None]:
    """(``client actors of class 'jetson'``, device class) for a shape label.

    Labels are ``client:<class>``, ``server:<class>``, ``aggregator`` or a bare class name.
    """
    kind, sep, cls = label.partition(":")
    plural = "s" if n != 1 else ""
    if sep and kind in ("client", "server"):
        return f"{kind} actor{plural} of class {cls!r}", cls
    if sep:
        return f"{kind} actor{plural} {cls!r}", None
    if label == "aggregator":
        return f"aggregator actor{plural}", None
    return f"actor{plural} of device class {label!r}", label


def _fix_hint(res: str, label: str = "") -> str:
    key = "devices.server" if label.startswith("server:") else "devices.mix"
    if res == "GPU":
        return f"set ray.num_gpus=1 for logical GPUs on a GPU-less machine, or change {key}"
    if res == "CPU":
        return "set ray.num_cpus (logical CPUs may exceed physical cores) or add nodes"
    if res.startswith("device:"):
        return f"start a node that offers {res} (cluster/start-worker.sh) or change {key}"
    return f"add a node that offers it, or change {key} / devices.catalog"


def check_fit(
    shapes: Sequence[tuple[str, Mapping[str, Any]]],
    cluster_resources: Mapping[str, float] | None = None,
    nodes: Sequence[Mapping[str, float]] | None = None,
) -> None:
    """Raise :class:`ClusterError` unless every actor shape fits and all of them pack at once.

    Args:
        shapes: ``(label, ray_options)`` per actor to be created, e.g.
            ``("client:jetson", {"num_cpus": 0.25, "num_gpus": 0.25})``. Labels name the role
            and device class (``client:<class>``, ``server:<class>``, ``aggregator``; a bare
            class name also works) so errors can say what to change.
        cluster_resources: total resources of the cluster (``ray.cluster_resources()``); used
            as a single node when ``nodes`` is not given. Default: the connected cluster.
        nodes: per-node total resources (``ray.nodes()[i]["Resources"]``). Default: the
            alive nodes of the connected cluster (or ``[cluster_resources]``).

    The check is against node *totals*: actors of other jobs holding resources can still
    delay placement (the executor also waits for its actors with a timeout).
    Packing is first-fit decreasing (largest GPU, then CPU demand first) over nodes in
    order; like any heuristic it may reject a set an optimal packing would place.
    """
    if nodes is None:
        nodes = [cluster_resources] if cluster_resources is not None else cluster_nodes()
    if cluster_resources is None:
        totals: Counter[str] = Counter()
        for n in nodes:
            totals.update({k: float(v) for k, v in n.items()})
        cluster_resources = dict(totals)
    if not nodes:
        raise ClusterError("the Ray cluster has no alive nodes")
    demands = [(label, _demand(opts)) for label, opts in shapes]

    # 1. each shape on its own must fit some node
    for label, d in demands:
        if any(_Node.of(n).fits(d) for n in nodes):
            continue
        what, cls = _describe(label)
        who = f"device class {cls!r}" if cls else what
        for res, need in d.items():
            total = float(cluster_resources.get(res, 0.0))
            best = max((float(n.get(res, 0.0)) for n in nodes), default=0.0)
            if res == "GPU" and need < _SCALE:
                enough = best > 0
            else:
                enough = (int(best) if res == "memory" else _q(best)) >= need
            if total <= 0:
                have = "0 GPUs" if res == "GPU" else ("0 CPUs" if res == "CPU" else f"no {res!r} resource")
                raise ClusterError(f"{who} needs {_res_name(res)}={_fmt_amount(res, need)} but the cluster has "
                                   f"{have} ({_fix_hint(res, label)})")
            if not enough:
                raise ClusterError(f"{who} needs {_res_name(res)}={_fmt_amount(res, need)} but the largest node "
                                   f"offers {_fmt_amount(res, int(best) if res == 'memory' else _q(best))} "
                                   f"({_fix_hint(res, label)})")
        raise ClusterError(f"{who} needs {_fmt_opts(d)} but no single node offers all of it at once "
                           f"(nodes: {[_fmt_node(n) for n in nodes]})")

    # 2. the whole set must pack at once (first-fit decreasing)
    packers = [_Node.of(n) for n in nodes]
    order = sorted(range(len(demands)),
                   key=lambda i: (demands[i][1].get("GPU", 0), demands[i][1].get("CPU", 0),
                                  sum(v for k, v in demands[i][1].items() if k not in ("GPU", "CPU"))),
                   reverse=True)
    placed: Counter[str] = Counter()
    failed: dict[str, dict[str, int]] = {}
    for i in order:
        label, d = demands[i]
        node = next((p for p in packers if p.fits(d)), None)
        if node is None:
            failed.setdefault(label, d)
            continue
        node.take(d)
        placed[label] += 1
    if not failed:
        return
    requested = Counter(label for label, _ in demands)
    label, d = next(iter(failed.items()))
    what, cls = _describe(label, requested[label])
    # which resource runs out: the one whose cluster-wide demand exceeds the supply most
    need_tot: Counter[str] = Counter()
    for _, dd in demands:
        need_tot.update(dd)
    supply = {k: (int(v) if k == "memory" else _q(v)) for k, v in cluster_resources.items()}
    res = max(d, key=lambda r: need_tot[r] / max(supply.get(r, 0), 1))
    supply_u = supply.get(res, 0)
    others = Counter(lb for lb, dd in demands if lb != label and dd.get(res))
    together = ""
    if others:
        parts = [f"{n} x {lb} ({_unit(res, dict(demands)[lb][res])})" for lb, n in others.items()]
        together = " together with " + ", ".join(parts)
    is_client = label.startswith("client:") or (":" not in label and label != "aggregator")
    hint = "set ray.max_actors to use pooled mode" if is_client else _fix_hint(res, label)
    raise ClusterError(
        f"cannot place {requested[label]} {what} ({_unit(res, d[res])} each){together}: the cluster has "
        f"{_unit(res, supply_u)}; {placed[label]} fit ({hint})"
    )


def _fmt_opts(d: Mapping[str, int]) -> str:
    return ", ".join(f"{_res_name(k)}={_fmt_amount(k, v)}" for k, v in d.items())


def _fmt_node(n: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in n.items() if k not in _IGNORED and not k.startswith("node:") and k != "memory"}


def stop_ray() -> None:
    """Disconnect from Ray; stops the instance when this process started it (never ``ray stop``)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
