"""Device profiles: what a simulated client is, and what it costs the Ray cluster.

A :class:`DeviceProfile` carries two unrelated sets of numbers:

* Ray scheduling tickets (``num_cpus``, ``num_gpus``, ``memory_mb``, ``resources``) that
  size the actor emulating the device. They decide how many clients fit on the machines
  running the simulation; they are not the device's physical core count.
* A physical model (``peak_flops`` x ``efficiency``, link bandwidths and latency) that turns
  FLOP counts and message sizes into *simulated* seconds. A class measured with
  ``sfp-ray devices calibrate`` carries a :class:`Throughput` instead, which also charges
  what FLOP counts do not see: the bytes that memory-bound operations move, and a fixed cost
  per operation and per pass (see ``docs/clock.md``).

Two optional probabilities, ``availability`` (a selected client is online in a round) and
``dropout`` (an online client drops out mid-round), make a class unreliable
(:mod:`sfp_ray.availability`); the built-in classes are always online and never drop out.

Two optional spreads, ``speed_spread`` and ``link_spread`` (sigmas of a lognormal with median 1),
let the clients of one class differ; each client's draw, and a per-client capacity trace
(:mod:`sfp_ray.capacity`), end up in its own profile's ``speed`` and link fields.

The built-in catalogue lives in ``devices.yaml`` next to this module; a user YAML file with
the same layout can add classes or replace built-in ones by name (:func:`load_catalog`).

On a real Ray cluster, nodes that stand for a device class advertise the custom resource
``device:<class>`` (see ``cluster/``); :func:`device_resource` builds that name.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from importlib import resources as _resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sfp_ray.errors import ConfigError, read_yaml_file

__all__ = [
    "DEVICE_RESOURCE_PREFIX",
    "DeviceProfile",
    "Throughput",
    "assign_devices",
    "builtin_catalog_path",
    "device_resource",
    "get_device",
    "list_devices",
    "load_catalog",
    "run_devices",
]

#: Prefix of the Ray custom resource a node offers for each device class it stands for.
DEVICE_RESOURCE_PREFIX = "device:"

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_MIB = 2**20


def device_resource(name: str) -> str:
    """Name of the Ray custom resource marking nodes of device class ``name``: ``device:<name>``."""
    return f"{DEVICE_RESOURCE_PREFIX}{name}"


class _FrozenDict(dict):
    """A read-only, hashable, picklable dict (``MappingProxyType`` does not pickle)."""

    __slots__ = ()

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("DeviceProfile.resources is read-only")

    __setitem__ = __delitem__ = _readonly  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]
    __ior__ = _readonly  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_FrozenDict, (dict(self),))

    def __repr__(self) -> str:
        return repr(dict(self))


@dataclass(frozen=True)
class Throughput:
    """A device's measured speed (``sfp-ray devices calibrate``): what one compute call costs.

    ``seconds = calls * call_s + kernels * kernel_s + ops * op_s + flops / flops_per_s + moved_bytes / bytes_per_s``,
    where ``flops`` are the FLOPs the counter sees, ``kernels`` the operations they come from (matrix
    products, convolutions, attention), ``moved_bytes`` what the other operations read and write (layer
    norms, softmax, GELU, the optimizer step), ``ops`` how many of those there were and ``calls`` the
    passes (see :func:`sfp_ray.costs.count_work`).
    ``bytes_per_s`` None leaves memory traffic out; ``threads`` is the torch thread count it was
    measured at (for the record: the clock does not depend on the machine emulating the device).

    Example:
        >>> Throughput(flops_per_s=1e10, bytes_per_s=1e9, op_s=1e-5, call_s=1e-4, kernel_s=1e-3).seconds(
        ...     flops=2e10, moved_bytes=1e9, ops=100, kernels=2, calls=1)
        3.0031
    """

    flops_per_s: float
    bytes_per_s: float | None = None
    op_s: float = 0.0
    call_s: float = 0.0
    threads: int = 1
    kernel_s: float = 0.0

    def seconds(self, *, flops: float, moved_bytes: float = 0.0, ops: float = 0.0, kernels: float = 0.0,
                calls: float = 0.0) -> float:
        """Seconds of work of this size (before a per-client ``speed``)."""
        t = calls * self.call_s + kernels * self.kernel_s + ops * self.op_s + flops / self.flops_per_s
        if self.bytes_per_s:
            t += moved_bytes / self.bytes_per_s
        return t


@dataclass(frozen=True)
class DeviceProfile:
    """One device class. Construct through :func:`load_catalog` to get validation with file context.

    ``speed`` is not a catalogue field: it is a per-client factor (1 for the class itself) by
    which a client computes faster than its class, from the class's ``speed_spread`` or a
    capacity trace (:func:`sfp_ray.capacity.client_devices`).
    """

    name: str
    description: str
    num_cpus: float
    num_gpus: float
    memory_mb: int
    peak_flops: float
    efficiency: float
    uplink_mbps: float
    downlink_mbps: float
    latency_ms: float
    resources: Mapping[str, float] = field(default_factory=dict)
    #: probability that a selected client of this class is online in a round
    availability: float = 1.0
    #: probability that an online client of this class drops out mid-round
    dropout: float = 0.0
    #: measured speed (``sfp-ray devices calibrate``); None: ``peak_flops * efficiency``
    throughput: Throughput | None = None
    #: sigma of the lognormal (median 1) of its clients' compute speeds; 0: all alike
    speed_spread: float = 0.0
    #: sigma of the lognormal (median 1) of its clients' link bandwidths; 0: all alike
    link_spread: float = 0.0
    #: a client's compute speed relative to its class (see the class docstring)
    speed: float = 1.0

    def __post_init__(self) -> None:
        # Freeze (and copy) the resources mapping so a profile is immutable and hashable.
        object.__setattr__(
            self, "resources", _FrozenDict({str(k): float(v) for k, v in dict(self.resources).items()})
        )

    @property
    def torch_threads(self) -> int:
        """Torch intra-op threads of the actor emulating this device: ``max(1, floor(num_cpus))``.

        The Ray actor enforces it (:mod:`sfp_ray.executors.ray.limits`); the serial executor
        uses the same count so that both compute the same floats.

        Example:
            >>> from sfp_ray.devices import get_device
            >>> get_device("rpi4").torch_threads, get_device("edge_server").torch_threads
            (1, 1)
        """
        return max(1, math.floor(self.num_cpus))

    @property
    def effective_flops(self) -> float:
        """Achieved FLOP/s of the physical device on counted FLOPs: the measured ``throughput.flops_per_s``,
        else ``peak_flops * efficiency``; times the client's ``speed``.
        """
        rate = self.throughput.flops_per_s if self.throughput is not None else self.peak_flops * self.efficiency
        return rate * self.speed

    def compute_seconds(self, flops: float, *, moved_bytes: float = 0.0, ops: float = 0.0, kernels: float = 0.0,
                        calls: float = 0.0) -> float:
        """Simulated seconds this device needs for a compute call of ``flops`` floating-point operations.

        A measured class (``throughput``) also charges the call's ``moved_bytes``, ``ops``, ``kernels`` and ``calls``
        (:meth:`Throughput.seconds`); otherwise only FLOPs count, at ``peak_flops * efficiency``.
        Either is divided by the client's ``speed``.
        """
        if flops < 0 or math.isnan(flops):
            raise ValueError(f"flops must be >= 0, got {flops!r}")
        if self.throughput is not None:
            t = self.throughput.seconds(flops=float(flops), moved_bytes=moved_bytes, ops=ops, kernels=kernels,
                                        calls=calls)
            return t / self.speed
        if flops == 0:
            return 0.0
        return float(flops) / self.effective_flops

    def transfer_seconds(self, nbytes: float, direction: Literal["up", "down"]) -> float:
        """Simulated seconds to send ``nbytes`` over the device's link.

        ``direction`` is ``"up"`` (device -> server) or ``"down"`` (server -> device).
        Time is serialisation at the link rate plus one-way latency; 0 bytes means no
        message at all, hence 0.0 (no latency either).
        """
        if direction == "up":
            mbps = self.uplink_mbps
        elif direction == "down":
            mbps = self.downlink_mbps
        else:
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        if nbytes < 0 or math.isnan(nbytes):
            raise ValueError(f"nbytes must be >= 0, got {nbytes!r}")
        if nbytes == 0:
            return 0.0
        return float(nbytes) * 8.0 / (mbps * 1e6) + self.latency_ms / 1000.0

    def ray_options(self, *, include_memory: bool = True, device_resource_amount: float = 0.0) -> dict:
        """Keyword arguments for ``ActorClass.options(**...)`` of the actor emulating this device.

        Returns ``{"num_cpus", "num_gpus", "memory", "resources"}``; ``num_gpus`` is left out
        when 0, ``resources`` when empty, ``memory`` (bytes, from ``memory_mb``) when 0 or when
        ``include_memory`` is False. Ray's ``memory`` is a scheduling reservation against the
        node's memory resource: realistic device memories (GBs per client) quickly exceed what
        one test machine advertises, so callers packing many clients on one host may pass
        ``include_memory=False``. ``device_resource_amount > 0`` also requests that amount of
        the ``device:<name>`` custom resource, pinning the actor to nodes of this class.
        """
        opts: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            opts["num_gpus"] = self.num_gpus
        if include_memory and self.memory_mb > 0:
            opts["memory"] = int(self.memory_mb) * _MIB
        res = dict(self.resources)
        if device_resource_amount < 0:
            raise ValueError(f"device_resource_amount must be >= 0, got {device_resource_amount!r}")
        if device_resource_amount > 0:
            res[device_resource(self.name)] = float(device_resource_amount)
        if res:
            opts["resources"] = res
        return opts

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (same keys as a catalogue entry plus ``name``), e.g. for run metadata."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["resources"] = dict(self.resources)
        if self.throughput is not None:
            out["throughput"] = {f.name: getattr(self.throughput, f.name) for f in fields(Throughput)}
        return out


# --------------------------------------------------------------------------- loading

_REQUIRED = (
    "description",
    "num_cpus",
    "num_gpus",
    "memory_mb",
    "peak_flops",
    "efficiency",
    "uplink_mbps",
    "downlink_mbps",
    "latency_ms",
)
_OPTIONAL = ("name", "resources", "availability", "dropout", "throughput", "speed_spread", "link_spread")
_ALLOWED = frozenset(_REQUIRED + _OPTIONAL)


def builtin_catalog_path() -> Path:
    """Path of the built-in ``devices.yaml`` shipped with the package."""
    try:
        ref = _resources.files("sfp_ray").joinpath("devices.yaml")
        path = Path(str(ref))
        if path.is_file():
            return path
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - unusual import setups
        pass
    return Path(__file__).with_name("devices.yaml")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_FLOAT_STR_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _coerce_number(v: Any) -> Any:
    """PyYAML (YAML 1.1) reads ``1e9`` or ``2.5e9`` as strings; accept such plain numerals."""
    if isinstance(v, str) and _FLOAT_STR_RE.match(v.strip()):
        f = float(v)
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
    return v


def _parse_entry(key: Any, entry: Any) -> tuple[DeviceProfile | None, list[str]]:
    """A catalogue entry as a profile, and every problem found in it (the profile is None when there is any).

    Each problem is one phrase naming the field (``missing fields 'description', 'num_gpus'``,
    ``efficiency must be in (0, 1], got 0``), so that a file's problems can be reported together.
    """
    if not isinstance(key, str) or not _NAME_RE.match(key):
        return None, [f"device name {key!r} is invalid (use letters, digits, '_', '-', '.', starting with a letter)"]
    if not isinstance(entry, Mapping):
        return None, [f"entry must be a mapping of fields, got {type(entry).__name__}"]
    problems: list[str] = []
    unknown = sorted(str(k) for k in entry if k not in _ALLOWED)
    if unknown:
        problems.append(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(repr(u) for u in unknown)} "
                        f"(allowed: {', '.join(sorted(_ALLOWED))})")
    missing = [f for f in _REQUIRED if f not in entry]
    if missing:
        problems.append(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}")
    if "name" in entry and entry["name"] != key:
        problems.append(f"name must match the entry key '{key}', got {entry['name']!r}")
    description = entry.get("description", "")
    if not isinstance(description, str):
        problems.append(f"description must be a string, got {type(description).__name__}")

    values: dict[str, float] = {}
    for fname in _REQUIRED[1:]:
        if fname not in entry:
            continue
        v = _coerce_number(entry[fname])
        if not _is_number(v) or not math.isfinite(v):
            problems.append(f"{fname} must be a finite number, got {v!r}")
        else:
            values[fname] = v

    def check(fname: str, rule: Any, says: str) -> None:
        if fname in values and not rule(values[fname]):
            problems.append(f"{fname} {says}, got {values[fname]!r}")

    for fname in ("num_cpus", "num_gpus", "latency_ms", "memory_mb"):
        check(fname, lambda v: v >= 0, "must be >= 0")
    check("memory_mb", lambda v: float(v).is_integer(), "must be a whole number of MiB")
    for fname in ("peak_flops", "uplink_mbps", "downlink_mbps"):
        check(fname, lambda v: v > 0, "must be > 0")
    check("efficiency", lambda v: 0 < v <= 1, "must be in (0, 1]")
    check("num_gpus", lambda v: v <= 1 or float(v).is_integer(),
          "must be <= 1 or a whole number (Ray accepts fractional GPUs only up to 1)")

    chances: dict[str, float] = {}
    for fname, default in (("availability", 1.0), ("dropout", 0.0)):
        v = _coerce_number(entry.get(fname, default))
        if not _is_number(v) or not math.isfinite(v) or not 0 <= v <= 1:
            problems.append(f"{fname} must be a probability in [0, 1], got {v!r}")
        else:
            chances[fname] = float(v)

    raw_res = entry.get("resources") or {}
    res: dict[str, float] = {}
    if not isinstance(raw_res, Mapping):
        problems.append(f"resources must be a mapping of resource name to amount, got {type(raw_res).__name__}")
        raw_res = {}
    for rk, rv in raw_res.items():
        rv = _coerce_number(rv)
        if not isinstance(rk, str) or not rk:
            problems.append(f"resources keys must be non-empty strings, got {rk!r}")
        elif rk in ("CPU", "GPU", "memory", "object_store_memory"):
            problems.append(f"resources: {rk!r} is a built-in Ray resource; use num_cpus/num_gpus/memory_mb")
        elif not _is_number(rv) or not math.isfinite(rv) or rv < 0:
            problems.append(f"resources['{rk}'] must be a finite number >= 0, got {rv!r}")
        else:
            res[rk] = float(rv)

    clock = _clock_fields(entry, problems)
    if problems:
        return None, problems
    return DeviceProfile(
        name=key,
        description=description,
        num_cpus=float(values["num_cpus"]),
        num_gpus=float(values["num_gpus"]),
        memory_mb=int(values["memory_mb"]),
        peak_flops=float(values["peak_flops"]),
        efficiency=float(values["efficiency"]),
        uplink_mbps=float(values["uplink_mbps"]),
        downlink_mbps=float(values["downlink_mbps"]),
        latency_ms=float(values["latency_ms"]),
        resources=res,
        **chances,
        **clock,
    ), []


_THROUGHPUT_KEYS = ("flops_per_s", "bytes_per_s", "op_s", "kernel_s", "call_s", "threads")


def _clock_fields(entry: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    """The optional fields of the simulated clock: ``throughput`` (measured), ``speed_spread``, ``link_spread``.

    What is wrong with them is added to ``problems`` (the entry's other problems are reported with them).
    """
    out: dict[str, Any] = {}
    for fname in ("speed_spread", "link_spread"):
        v = _coerce_number(entry.get(fname, 0.0))
        if not _is_number(v) or not math.isfinite(v) or not 0 <= v <= 3:
            problems.append(f"{fname} must be a lognormal sigma in [0, 3], got {v!r}")
        else:
            out[fname] = float(v)
    raw = entry.get("throughput")
    if raw is None:
        return out
    if not isinstance(raw, Mapping):
        problems.append(f"throughput must be a mapping of {', '.join(_THROUGHPUT_KEYS)} (sfp-ray devices calibrate "
                        f"writes it), got {type(raw).__name__}")
        return out
    before = len(problems)
    unknown = sorted(str(k) for k in raw if k not in _THROUGHPUT_KEYS)
    if unknown:
        problems.append(f"throughput: unknown field {unknown[0]!r} (allowed: {', '.join(_THROUGHPUT_KEYS)})")
    if "flops_per_s" not in raw:
        problems.append("throughput: missing field 'flops_per_s'")
    vals = {k: _coerce_number(raw[k]) for k in raw if k in _THROUGHPUT_KEYS}
    for k, v in vals.items():
        if k == "bytes_per_s" and v is None:
            continue
        if not _is_number(v) or not math.isfinite(v) or v < 0:
            problems.append(f"throughput: {k} must be a finite number >= 0, got {v!r}")
    if len(problems) > before:
        return out
    if vals["flops_per_s"] <= 0:
        problems.append(f"throughput: flops_per_s must be > 0, got {vals['flops_per_s']!r}")
    threads = vals.get("threads", 1)
    if not float(threads).is_integer() or threads < 1:
        problems.append(f"throughput: threads must be a whole number >= 1, got {threads!r}")
    if len(problems) > before:
        return out
    bps = vals.get("bytes_per_s")
    out["throughput"] = Throughput(flops_per_s=float(vals["flops_per_s"]),
                                   bytes_per_s=float(bps) if bps else None, op_s=float(vals.get("op_s", 0.0)),
                                   call_s=float(vals.get("call_s", 0.0)), threads=int(threads),
                                   kernel_s=float(vals.get("kernel_s", 0.0)))
    return out


def _read_catalog_file(path: str | os.PathLike) -> dict[str, DeviceProfile]:
    """The profiles of a catalogue file; every problem of every entry is reported at once, in one line."""
    src = os.fspath(path)
    doc = read_yaml_file(src, "devices.catalog")
    if not isinstance(doc, Mapping) or "devices" not in doc:
        raise ConfigError(
            f"devices.catalog: {src}: expected a top-level mapping with a 'devices' key "
            "(devices: {<class>: {description: ..., num_cpus: ..., ...}})"
        )
    problems: list[str] = []
    extra_keys = sorted(str(k) for k in doc if k != "devices")
    if extra_keys:
        problems.append(f"unknown top-level key{'s' if len(extra_keys) > 1 else ''} "
                        f"{', '.join(repr(k) for k in extra_keys)} (only 'devices')")
    devices = doc["devices"]
    if devices is None:
        devices = {}
    if not isinstance(devices, Mapping):
        raise ConfigError(f"devices.catalog: {src}: 'devices' must be a mapping of class name to fields")
    profiles: dict[str, DeviceProfile] = {}
    for key, entry in devices.items():
        profile, found = _parse_entry(key, entry)
        if profile is not None:
            profiles[str(key)] = profile
        problems += [f"device {str(key)!r}: {f}" if isinstance(key, str) and _NAME_RE.match(key) else f
                     for f in found]
    if problems:
        head = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise ConfigError(f"devices.catalog: {src}: {head}{'; '.join(problems)}")
    return profiles


@lru_cache(maxsize=1)
def _builtin() -> tuple[tuple[str, DeviceProfile], ...]:
    return tuple(_read_catalog_file(builtin_catalog_path()).items())


def load_catalog(extra: str | os.PathLike | None = None) -> dict[str, DeviceProfile]:
    """Built-in device classes, plus/overridden by the entries of the YAML file ``extra``.

    A user entry with a built-in name replaces that class as a whole. The returned dict is a
    fresh copy (profiles themselves are immutable); built-in classes keep file order and new
    classes follow in the user file's order.
    """
    catalog = dict(_builtin())
    if extra is not None:
        catalog.update(_read_catalog_file(extra))
    return catalog


def list_devices() -> list[str]:
    """Names of the built-in device classes, in catalogue order (roughly weakest first)."""
    return [name for name, _ in _builtin()]


def get_device(name: str, catalog: Mapping[str, DeviceProfile] | None = None) -> DeviceProfile:
    """Profile of device class ``name`` from ``catalog`` (default: the built-in catalogue)."""
    cat = load_catalog() if catalog is None else catalog
    try:
        return cat[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"devices.mix: unknown device class {name!r}; known classes: {', '.join(cat)} (define more in a "
            "devices.catalog file, see sfp_ray/devices.yaml)"
        ) from None


def assign_devices(
    num_clients: int,
    mix: Mapping[str, float],
    seed: int,
    catalog: Mapping[str, DeviceProfile] | None = None,
) -> list[str]:
    """Device class of each of ``num_clients`` clients, deterministic from ``seed``.

    ``mix`` maps class name to a non-negative weight; weights are normalised. Counts come
    from largest-remainder rounding of ``weight * num_clients`` (ties go to the class listed
    first in ``mix``), then the list is shuffled with ``numpy.random.default_rng(seed)``.
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 0:
        raise ConfigError(f"num_clients must be a non-negative integer, got {num_clients!r}")
    if not isinstance(mix, Mapping) or not mix:
        raise ConfigError(
            f"devices.mix must be a non-empty mapping of device class to fraction, got {mix!r}"
        )
    cat = load_catalog() if catalog is None else catalog
    names: list[str] = []
    weights: list[float] = []
    for name, w in mix.items():
        if name not in cat:
            raise ConfigError(
                f"devices.mix: unknown device class {name!r}; known classes: {', '.join(cat)} (define more in a "
                "devices.catalog file, see sfp_ray/devices.yaml)"
            )
        if not _is_number(w) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"devices.mix: fraction of {name!r} must be a finite number >= 0, got {w!r}")
        names.append(name)
        weights.append(float(w))
    total = math.fsum(weights)
    if total <= 0:
        raise ConfigError(f"devices.mix: fractions must sum to a positive number, got {dict(mix)!r}")

    n = int(num_clients)
    quotas = [w / total * n for w in weights]
    counts = [math.floor(q) for q in quotas]
    left = n - sum(counts)
    # Largest remainder first; stable sort keeps mix order on ties. Zero-weight classes never win.
    order = sorted(range(len(names)), key=lambda i: -(quotas[i] - counts[i]))
    for i in order:
        if left <= 0:
            break
        if weights[i] > 0:
            counts[i] += 1
            left -= 1

    assignment = [name for name, c in zip(names, counts) for _ in range(c)]
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(assignment))
    return [assignment[i] for i in perm]


def run_devices(cfg: Any) -> tuple[list[DeviceProfile], DeviceProfile]:
    """Every client's device profile (drawn from ``devices.mix`` and the seed) and the server's.

    ``cfg`` is a :class:`~sfp_ray.config.Config`. Needs no data and no torch: the checks before
    a run call it, and the Ray executor plans its actors from it while the data loads.
    """
    catalog = load_catalog(cfg.devices.catalog)
    names = assign_devices(cfg.federation.num_clients, cfg.devices.mix, cfg.seed, catalog)
    devices = [get_device(n, catalog) for n in names]
    if cfg.devices.server not in catalog:
        raise ConfigError(f"devices.server: unknown device class {cfg.devices.server!r}; known: "
                          f"{', '.join(catalog)}")
    return devices, catalog[cfg.devices.server]
