"""What a Ray actor can enforce of a device profile, and what it observes of itself.

Ray's ``num_cpus``/``num_gpus`` are scheduling tickets only. An actor emulating a device
therefore enforces what can be enforced in its own process and reports requested vs
enforced vs observed resources (``resources.csv``):

* torch intra-op threads: ``max(1, floor(num_cpus))`` - enforced;
* CPU affinity: pinned to the CPU ids Ray assigned, when Ray assigns any (Ray 2.60 assigns
  ids for GPUs and other accelerators but not for CPUs), otherwise to ``ceil(num_cpus)``
  cores chosen by the actor's index (:func:`pick_cores`);
* GPU memory: ``torch.cuda.set_per_process_memory_fraction(num_gpus)`` when CUDA exists;
* memory: checked, not capped - the resident set size is compared with ``memory_mb``.

Tensors live on torch's device choice, never on Ray's GPU ids: with logical GPUs only,
``torch.cuda.is_available()`` stays False and everything runs on the CPU.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Sequence
from typing import Any

import ray
import torch

from sfp_ray.executors.ray.procmem import process_memory_mb, sampler

_MIB = 2**20


def _assigned_cpu_ids() -> list[int] | None:
    """CPU ids Ray assigned to this worker, or None when Ray assigns none (the usual case)."""
    try:
        ids = ray.get_runtime_context().get_accelerator_ids().get("CPU")
    except Exception:  # noqa: BLE001 - outside a Ray worker, or an API change
        return None
    return [int(i) for i in ids] if ids else None


def _fmt_cpus(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / _MIB


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def pick_cores(available: Sequence[int], num_cpus: float, index: int) -> list[int]:
    """The ``ceil(num_cpus)`` cores (at least 1) an actor with placement ``index`` pins itself to.

    Ray grants fractional CPUs as tickets without CPU ids, so actors spread themselves over
    the node's cores by index: a 0.25-CPU device then really cannot use two cores.

    Example:
        >>> pick_cores([0, 1], 0.25, 0), pick_cores([0, 1], 0.25, 3), pick_cores([0, 1, 2, 3], 2, 1)
        ([0], [1], [2, 3])
    """
    cores = sorted(available)
    k = max(1, math.ceil(num_cpus - 1e-9))
    if not cores or k >= len(cores):
        return cores
    start = (index * k) % len(cores)
    return [cores[(start + j) % len(cores)] for j in range(k)]


def enforce_limits(device: Any, index: int | None = None, *, gpu_fallback: bool = False) -> dict[str, Any]:
    """Apply the enforceable limits of a device profile to this process; return what was done.

    Returns a flat dict with ``requested_*`` (from the profile), ``assigned_*`` (what Ray
    granted) and ``enforced_*`` entries. ``gpu_fallback``: the profile's GPU share was not
    requested from Ray because the cluster has no GPU (the device computes on CPU).
    """
    ctx = ray.get_runtime_context() if ray.is_initialized() else None
    assigned = ctx.get_assigned_resources() if ctx is not None else {}
    out: dict[str, Any] = {
        "device": device.name,
        "requested_num_cpus": float(device.num_cpus),
        "requested_num_gpus": float(device.num_gpus),
        "requested_memory_mb": int(device.memory_mb),
        "assigned_num_cpus": float(assigned.get("CPU", 0.0)),
        "assigned_num_gpus": float(assigned.get("GPU", 0.0)),
        "assigned_gpu_ids": ",".join(str(i) for i in ray.get_gpu_ids()) if ctx is not None else "",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "gpu_fallback": bool(gpu_fallback),
    }
    threads = device.torch_threads
    torch.set_num_threads(threads)
    out["enforced_threads"] = threads
    cpus = _assigned_cpu_ids()
    if not hasattr(os, "sched_setaffinity"):
        out["enforced_affinity"] = "not enforced: os.sched_setaffinity is unavailable on this platform"
    elif cpus:
        os.sched_setaffinity(0, cpus)
        out["enforced_affinity"] = _fmt_cpus(cpus)
    elif index is not None:
        # Ray assigns no CPU ids to actors: pin to ceil(num_cpus) cores chosen by index
        chosen = pick_cores(os.sched_getaffinity(0), device.num_cpus, index)
        os.sched_setaffinity(0, chosen)
        out["enforced_affinity"] = _fmt_cpus(chosen)
    else:
        out["enforced_affinity"] = "not enforced: Ray assigns no CPU ids to actors"
    if torch.cuda.is_available() and device.num_gpus > 0:
        frac = min(1.0, float(device.num_gpus))
        torch.cuda.set_per_process_memory_fraction(frac)
        out["enforced_gpu_fraction"] = frac
        out["enforced_gpu_note"] = "torch.cuda.set_per_process_memory_fraction"
    else:
        out["enforced_gpu_fraction"] = float("nan")
        if device.num_gpus <= 0:
            out["enforced_gpu_note"] = "not enforced: no GPU requested"
        elif gpu_fallback:
            out["enforced_gpu_note"] = "not enforced: the cluster has no GPU; runs on CPU"
        else:
            out["enforced_gpu_note"] = "not enforced: torch sees no CUDA device (logical GPU share)"
    out["enforced_memory"] = "checked, not capped"
    sampler()  # the private-memory peak, set beside the estimate in resources.csv
    return out


def observe(device: Any, tensor_device: str | None = None, *, full: bool = False) -> dict[str, Any]:
    """What this process actually uses now: threads, affinity, memory, GPU, node and pid.

    ``full`` adds the proportional and unique set sizes (``observed_pss_mb``,
    ``observed_uss_mb``; :mod:`.procmem`), which cost a read of ``/proc/self/smaps``.
    """
    ctx = ray.get_runtime_context() if ray.is_initialized() else None
    rss = _rss_mb()
    peak = max(_peak_rss_mb(), rss)
    out: dict[str, Any] = {
        "observed_threads": torch.get_num_threads(),
        "observed_affinity": _fmt_cpus(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "",
        "observed_rss_mb": round(rss, 1),
        "observed_peak_rss_mb": round(peak, 1),
        "observed_nice": os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else float("nan"),
        "memory_cap_exceeded": bool(device.memory_mb > 0 and peak > device.memory_mb),
        "cuda_available": torch.cuda.is_available(),
        "observed_gpu_mem_mb": (torch.cuda.max_memory_allocated() / _MIB) if torch.cuda.is_available()
        else float("nan"),
        **sampler().figures(),
        "node_id": ctx.get_node_id() if ctx is not None else "",
        "actor_id": (ctx.get_actor_id() or "") if ctx is not None else "",
        "pid": os.getpid(),
    }
    if full:
        mem = process_memory_mb()
        out["observed_pss_mb"], out["observed_uss_mb"] = mem["observed_pss_mb"], mem["observed_uss_mb"]
    if tensor_device is not None:
        out["tensor_device"] = tensor_device
    return out


