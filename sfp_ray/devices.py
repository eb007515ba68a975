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
import yaml

from sfp_ray.errors import ConfigError

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


def _parse_entry(src: str, key: Any, entry: Any) -> DeviceProfile:
    if not isinstance(key, str) or not _NAME_RE.match(key):
        raise ConfigError(
            f"devices.catalog: {src}: device name {key!r} is invalid "
            "(use letters, digits, '_', '-', '.', starting with a letter)"
        )
    where = f"devices.catalog: {src}: device '{key}'"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: entry must be a mapping of fields, got {type(entry).__name__}")
    unknown = sorted(str(k) for k in entry if k not in _ALLOWED)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field {unknown[0]!r} (allowed: {', '.join(sorted(_ALLOWED))})"
        )
    for fname in _REQUIRED:
        if fname not in entry:
            raise ConfigError(f"{where}: missing field '{fname}'")
    if "name" in entry and entry["name"] != key:
        raise ConfigError(f"{where}: name must match the entry key '{key}', got {entry['name']!r}")

    description = entry["description"]
    if not isinstance(description, str):
        raise ConfigError(f"{where}: description must be a string, got {type(description).__name__}")

    values: dict[str, float] = {}
    for fname in _REQUIRED[1:]:
        v = _coerce_number(entry[fname])
        if not _is_number(v) or not math.isfinite(v):
            raise ConfigError(f"{where}: {fname} must be a finite number, got {v!r}")
        values[fname] = v

    def _check(cond: bool, fname: str, rule: str) -> None:
        if not cond:
            raise ConfigError(f"{where}: {fname} {rule}, got {values[fname]!r}")

    for fname in ("num_cpus", "num_gpus", "latency_ms", "memory_mb"):
        _check(values[fname] >= 0, fname, "must be >= 0")
    _check(float(values["memory_mb"]).is_integer(), "memory_mb", "must be a whole number of MiB")
    for fname in ("peak_flops", "uplink_mbps", "downlink_mbps"):
        _check(values[fname] > 0, fname, "must be > 0")
    _check(0 < values["efficiency"] <= 1, "efficiency", "must be in (0, 1]")
    _check(
        values["num_gpus"] <= 1 or float(values["num_gpus"]).is_integer(),
        "num_gpus",
        "must be <= 1 or a whole number (Ray accepts fractional GPUs only up to 1)",
    )

    chances: dict[str, float] = {}
    for fname, default in (("availability", 1.0), ("dropout", 0.0)):
        v = _coerce_number(entry.get(fname, default))
        if not _is_number(v) or not math.isfinite(v) or not 0 <= v <= 1:
            raise ConfigError(f"{where}: {fname} must be a probability in [0, 1], got {v!r}")
        chances[fname] = float(v)

    raw_res = entry.get("resources") or {}
    if not isinstance(raw_res, Mapping):
        raise ConfigError(
            f"{where}: resources must be a mapping of resource name to amount, got {type(raw_res).__name__}"
        )
    res: dict[str, float] = {}
    for rk, rv in raw_res.items():
        rv = _coerce_number(rv)
        if not isinstance(rk, str) or not rk:
            raise ConfigError(f"{where}: resources keys must be non-empty strings, got {rk!r}")
        if rk in ("CPU", "GPU", "memory", "object_store_memory"):
            raise ConfigError(
                f"{where}: resources: {rk!r} is a built-in Ray resource; use num_cpus/num_gpus/memory_mb"
            )
        if not _is_number(rv) or not math.isfinite(rv) or rv < 0:
            raise ConfigError(f"{where}: resources['{rk}'] must be a finite number >= 0, got {rv!r}")
        res[rk] = float(rv)

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
        **_clock_fields(where, entry),
    )


_THROUGHPUT_KEYS = ("flops_per_s", "bytes_per_s", "op_s", "kernel_s", "call_s", "threads")


def _clock_fields(where: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The optional fields of the simulated clock: ``throughput`` (measured), ``speed_spread``, ``link_spread``."""
    out: dict[str, Any] = {}
    for fname in ("speed_spread", "link_spread"):
        v = _coerce_number(entry.get(fname, 0.0))
        if not _is_number(v) or not math.isfinite(v) or not 0 <= v <= 3:
            raise ConfigError(f"{where}: {fname} must be a lognormal sigma in [0, 3], got {v!r}")
        out[fname] = float(v)
    raw = entry.get("throughput")
    if raw is None:
        return out
    at = f"{where}: throughput"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{at} must be a mapping of {', '.join(_THROUGHPUT_KEYS)} (sfp-ray devices calibrate "
                          f"writes it), got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _THROUGHPUT_KEYS)
    if unknown:
        raise ConfigError(f"{at}: unknown field {unknown[0]!r} (allowed: {', '.join(_THROUGHPUT_KEYS)})")
    if "flops_per_s" not in raw:
        raise ConfigError(f"{at}: missing field 'flops_per_s'")
    vals = {k: _coerce_number(raw[k]) for k in raw}
    for k, v in vals.items():
        if k == "bytes_per_s" and v is None:
            continue
        if not _is_number(v) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"{at}: {k} must be a finite number >= 0, got {v!r}")
    if vals["flops_per_s"] <= 0:
        raise ConfigError(f"{at}: flops_per_s must be > 0, got {vals['flops_per_s']!r}")
    threads = vals.get("threads", 1)
    if not float(threads).is_integer() or threads < 1:
        raise ConfigError(f"{at}: threads must be a whole number >= 1, got {threads!r}")
    bps = vals.get("bytes_per_s")
    out["throughput"] = Throughput(flops_per_s=float(vals["flops_per_s"]),
                                   bytes_per_s=float(bps) if bps else None, op_s=float(vals.get("op_s", 0.0)),
                                   call_s=float(vals.get("call_s", 0.0)), threads=int(threads),
                                   kernel_s=float(vals.get("kernel_s", 0.0)))
    return out


def _read_catalog_file(path: str | os.PathLike) -> dict[str, DeviceProfile]:
    src = os.fspath(path)
    p = Path(src)
    if p.is_dir():
        raise ConfigError(f"devices.catalog: {src} is a folder, not a YAML file")
    if not p.is_file():
        raise ConfigError(f"devices.catalog: file not found: {src}")
    try:
        with p.open("r", encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"devices.catalog: {src}: invalid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"devices.catalog: {src}: not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except OSError as exc:
        raise ConfigError(f"devices.catalog: {src}: cannot read: {exc.strerror or exc}") from exc
    if not isinstance(doc, Mapping) or "devices" not in doc:
        raise ConfigError(
            f"devices.catalog: {src}: expected a top-level mapping with a 'devices' key "
            "(devices: {<class>: {description: ..., num_cpus: ..., ...}})"
        )
    extra_keys = sorted(str(k) for k in doc if k != "devices")
    if extra_keys:
        raise ConfigError(f"devices.catalog: {src}: unknown top-level key {extra_keys[0]!r} (only 'devices')")
    devices = doc["devices"]
    if devices is None:
        devices = {}
    if not isinstance(devices, Mapping):
        raise ConfigError(f"devices.catalog: {src}: 'devices' must be a mapping of class name to fields")
    return {str(k): _parse_entry(src, k, v) for k, v in devices.items()}


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
            f"devices.mix: unknown device class {name!r}; known classes: {', '.join(cat)}"
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
                f"devices.mix: unknown device class {name!r}; known classes: {', '.join(cat)}"
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
