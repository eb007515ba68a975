"""Per-client device capacities: a class's spread, a capacity trace, free links.

A device class (:mod:`sfp_ray.devices`) makes all its clients alike. This module gives each
client its own profile (:func:`client_devices`), the class's with:

* ``speed``, a factor on its compute speed, and its own link bandwidths, from one of

  - a **capacity trace** (``devices.capacity_trace``, :func:`load_capacity_trace`) in FedScale's
    ``client_device_capacity`` format (Lai et al., "FedScale: Benchmarking Model and System
    Performance of Federated Learning at Scale", ICML 2022): a mapping of client keys to
    ``{"computation": ms per sample, "communication": kbit/s}``, read as plain data only (a
    pickle as FedScale ships it, or JSON, YAML, CSV). Client ``c`` takes the entry ``c mod n``
    in key order (``devices.capacity_map=id``) or an entry drawn with the run's seed
    (``sample``). Its bandwidth is both its uplink and its downlink (FedScale has one figure);
    its compute speed is relative to the trace's median device, which computes as fast as the
    class (``devices.capacity_sample_flops`` null), or absolute: that many FLOPs per sample;
  - or the class's spreads ``speed_spread`` and ``link_spread``: lognormal factors with median
    1, drawn from ``(seed, client_id)``;

* or links that take no time at all (``devices.free_links``), for a clock of compute only.

Nothing changes (the class profiles themselves are returned) when none of these is set.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from sfp_ray.availability import read_plain
from sfp_ray.devices import DeviceProfile
from sfp_ray.errors import ConfigError

#: Stream of the spread draws within a ``(seed, client_id)`` seed.
_SPREAD_STREAM = 7727
#: Stream of the trace sampling within the run's seed.
_SAMPLE_STREAM = 6007

#: Fields of a trace entry: FedScale's, or the simulator's own units.
FEDSCALE_FIELDS = ("computation", "communication")
OWN_FIELDS = ("flops_per_s", "uplink_mbps", "downlink_mbps")


@dataclass(frozen=True)
class Capacity:
    """One device of a capacity trace: how fast it computes and how fast its link is.

    Compute is ``ms_per_sample`` (FedScale's ``computation``) or ``flops_per_s``; either may be
    None when the other is given.
    """

    ms_per_sample: float | None
    flops_per_s: float | None
    uplink_mbps: float
    downlink_mbps: float


@dataclass(frozen=True)
class CapacityTrace:
    """A capacity trace: its entries in key order."""

    path: str
    entries: tuple[Capacity, ...]

    @property
    def median_ms(self) -> float | None:
        """Median ``ms_per_sample`` over the entries that have one (the device relative speeds refer to)."""
        ms = [e.ms_per_sample for e in self.entries if e.ms_per_sample is not None]
        return float(np.median(ms)) if ms else None


def _number(value: Any, at: str, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{at}: '{name}' must be a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{at}: '{name}' must be a finite number > 0, got {value!r}")
    return v


def _entry(e: Any, at: str) -> Capacity:
    if not isinstance(e, Mapping):
        raise ConfigError(f"{at}: an entry must be a mapping with 'computation' and 'communication' (FedScale) or "
                          f"{', '.join(repr(f) for f in OWN_FIELDS)}, got {type(e).__name__}")
    given = {k: v for k, v in e.items() if v is not None and v != ""}
    if "computation" not in given and "flops_per_s" not in given:
        raise ConfigError(f"{at}: no compute speed: give 'computation' (ms per sample) or 'flops_per_s'")
    ms = _number(given["computation"], at, "computation") if "computation" in given else None
    flops = _number(given["flops_per_s"], at, "flops_per_s") if "flops_per_s" in given else None
    if "uplink_mbps" in given or "downlink_mbps" in given:
        if not {"uplink_mbps", "downlink_mbps"} <= set(given):
            raise ConfigError(f"{at}: give both 'uplink_mbps' and 'downlink_mbps', or FedScale's 'communication'")
        up, down = _number(given["uplink_mbps"], at, "uplink_mbps"), _number(given["downlink_mbps"], at,
                                                                             "downlink_mbps")
    elif "communication" in given:
        up = down = _number(given["communication"], at, "communication") / 1000.0  # kbit/s -> Mbit/s
    else:
        raise ConfigError(f"{at}: no bandwidth: give 'communication' (kbit/s) or 'uplink_mbps' and 'downlink_mbps'")
    return Capacity(ms, flops, up, down)


def _read_csv(p: Path, where: str) -> dict[Any, dict[str, str]]:
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: cannot read it ({type(e).__name__}: {e})") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise ConfigError(f"{where}: no rows (expected a header such as client_id,computation,communication)")
    known = {"client_id", *FEDSCALE_FIELDS, *OWN_FIELDS}
    extra = sorted(str(k) for k in rows[0] if k not in known)
    if extra:
        raise ConfigError(f"{where}: unknown column {extra[0]!r} (known: {', '.join(sorted(known))})")
    if "client_id" not in rows[0]:
        return {i: r for i, r in enumerate(rows)}
    out: dict[Any, dict[str, str]] = {}
    for r in rows:
        key = r.pop("client_id")
        try:
            key = int(key)
        except ValueError:
            pass
        if key in out:
            raise ConfigError(f"{where}: client_id {key!r} appears twice")
        out[key] = r
    return out


def load_capacity_trace(path: str | os.PathLike) -> CapacityTrace:
    """Read a capacity trace (``devices.capacity_trace``); see the module docstring for the formats.

    Formats by suffix: ``.csv`` (a header with ``computation`` and ``communication``, or the own
    fields, and optionally ``client_id``), ``.json``, ``.yaml``/``.yml``, else a pickle as FedScale
    ships it (read with an unpickler that builds plain data only). JSON and YAML may also hold a
    list of entries.

    Raises:
        ConfigError: one line naming the file (and the entry) and what is wrong.
    """
    p = Path(path).expanduser()
    where = f"devices.capacity_trace: {p}"
    if not p.is_file():
        raise ConfigError(f"{where}: no such file")
    st = p.stat()
    return _load(str(p.resolve()), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, size: int) -> CapacityTrace:
    """Parse a trace file once per version (a run over several methods and seeds reads it once)."""
    p = Path(path)
    where = f"devices.capacity_trace: {p}"
    data: Any = _read_csv(p, where) if p.suffix.lower() == ".csv" else read_plain(p, where)
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        data = dict(enumerate(data))
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(f"{where}: expected a non-empty mapping of client -> entry, got {type(data).__name__}")
    try:
        keys = sorted(data)
    except TypeError:
        keys = sorted(data, key=str)
    return CapacityTrace(str(p), tuple(_entry(data[k], f"{where}: client {k!r}") for k in keys))


def _trace_indices(trace: CapacityTrace, num_clients: int, mapping: str, seed: int) -> list[int]:
    n = len(trace.entries)
    if mapping == "id":
        return [c % n for c in range(num_clients)]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SAMPLE_STREAM]))
    if n >= num_clients:  # distinct devices while the trace has enough
        return [int(i) for i in rng.choice(n, size=num_clients, replace=False)]
    return [int(i) for i in rng.integers(0, n, size=num_clients)]


def spread_factors(seed: int, client_id: int, speed_spread: float, link_spread: float) -> tuple[float, float]:
    """A client's lognormal factors (median 1) on its compute speed and on its link bandwidths.

    Example:
        >>> spread_factors(0, 3, 0.0, 0.0)
        (1.0, 1.0)
        >>> a = spread_factors(0, 3, 0.5, 0.5)
        >>> a == spread_factors(0, 3, 0.5, 0.5) != spread_factors(1, 3, 0.5, 0.5)
        True
    """
    z = np.random.default_rng(np.random.SeedSequence([int(seed), int(client_id), _SPREAD_STREAM])).standard_normal(2)
    return float(math.exp(speed_spread * z[0])), float(math.exp(link_spread * z[1]))


def client_devices(devices: Sequence[DeviceProfile], cfg: Any, seed: int) -> tuple[list[DeviceProfile], list[str]]:
    """Every client's own profile from its class's (``devices``, by client id) and one notice line per setting used.

    ``cfg`` is the ``devices`` section (:class:`~sfp_ray.config.DevicesConfig`). A capacity trace
    replaces the classes' spreads.
    """
    out = list(devices)
    notes: list[str] = []
    if cfg.capacity_trace is not None:
        trace = load_capacity_trace(cfg.capacity_trace)
        idx = _trace_indices(trace, len(out), cfg.capacity_map, seed)
        median = trace.median_ms
        for c, i in enumerate(idx):
            e, d = trace.entries[i], out[c]
            if e.flops_per_s is not None:
                flops = e.flops_per_s
            elif cfg.capacity_sample_flops is not None:
                flops = cfg.capacity_sample_flops / (e.ms_per_sample / 1000.0)
            else:
                flops = None
            speed = flops / d.effective_flops if flops is not None else median / e.ms_per_sample
            out[c] = replace(d, speed=speed, uplink_mbps=e.uplink_mbps, downlink_mbps=e.downlink_mbps)
        how = "entry c mod n" if cfg.capacity_map == "id" else "an entry drawn with the seed"
        level = ("FLOP/s from the trace" if cfg.capacity_sample_flops is not None
                 or all(e.flops_per_s is not None for e in trace.entries)
                 else "compute relative to the trace's median device, which computes as fast as its class")
        notes.append(f"devices.capacity_trace: {len(trace.entries)} devices; client c takes {how} ({level}; "
                     "the classes' speed_spread and link_spread are not used)")
    elif any(d.speed_spread or d.link_spread for d in out):
        for c, d in enumerate(out):
            if d.speed_spread or d.link_spread:
                fs, fl = spread_factors(seed, c, d.speed_spread, d.link_spread)
                out[c] = replace(d, speed=fs, uplink_mbps=d.uplink_mbps * fl, downlink_mbps=d.downlink_mbps * fl)
    if cfg.free_links:
        out = [replace(d, uplink_mbps=math.inf, downlink_mbps=math.inf, latency_ms=0.0) for d in out]
        notes.append("devices.free_links: transfers take no simulated time (their bytes are still counted)")
    return out, notes


__all__ = ["Capacity", "CapacityTrace", "client_devices", "load_capacity_trace", "spread_factors"]
