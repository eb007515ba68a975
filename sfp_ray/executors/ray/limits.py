"""What a Ray actor can enforce of a device profile, and what it observes of itself.

Ray's ``num_cpus``/``num_gpus`` are scheduling tickets only. An actor emulating a device
therefore enforces what can be enforced in its own process and reports requested vs
enforced vs observed resources (``resources.csv``):

* torch intra-op threads: ``max(1, floor(num_cpus))`` - enforced;
* CPU affinity: pinned to the CPU ids Ray assigned, when Ray assigns any (Ray 2.60 assigns
  ids for GPUs and other accelerators but not for CPUs), otherwise to ``ceil(num_cpus)``
  cores chosen by the actor's index (:func:`pick_cores`);
* the compute device: the GPU Ray assigned when the profile holds a GPU share and torch can
  use it (:func:`sfp_ray.compute.choose_device`), else the CPU, with the reason recorded
  (``gpu_fallback``, ``gpu_fallback_reason``);
* GPU memory: ``torch.cuda.set_per_process_memory_fraction(num_gpus)``, only in an actor that
  computes on a GPU; the share must hold the actor's estimate (:mod:`sfp_ray.sizing`), or
  the actor refuses to start with one line (:func:`check_gpu_share`). The peak GPU memory of
  each task is recorded (reset when the task starts);
* memory: checked, not capped - the resident set size is compared with ``memory_mb``.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Mapping, Sequence
from typing import Any

import ray
import torch

from sfp_ray.compute import ComputeDevice, choose_device
from sfp_ray.executors.ray.procmem import process_memory_mb, sampler

_MIB = 2**20


def _worker_context() -> Any:
    """Ray's runtime context in a Ray worker (an actor), None elsewhere (a driver, no Ray)."""
    if not ray.is_initialized():
        return None
    ctx = ray.get_runtime_context()
    return ctx if ctx.worker.mode == ray.WORKER_MODE else None


def _assigned_cpu_ids() -> list[int] | None:
    """CPU ids Ray assigned to this worker, or None when Ray assigns none (the usual case) or is not running."""
    if not ray.is_initialized():  # asking the runtime context would start a Ray instance
        return None
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


def enforce_limits(device: Any, index: int | None = None, *, gpu_fallback: bool = False,
                   estimate: Mapping[str, float] | None = None) -> tuple[dict[str, Any], ComputeDevice]:
    """Apply the enforceable limits of a device profile to this process; return what was done and the compute device.

    The dict is flat: ``requested_*`` (from the profile), ``assigned_*`` (what Ray granted),
    ``enforced_*``, ``compute_device`` and the GPU fallback. ``gpu_fallback``: the profile's GPU
    share was not requested from Ray because the cluster has no GPU (the device computes on
    CPU). ``estimate``: the actor's memory estimate (:meth:`~sfp_ray.sizing.MemoryEstimate.row`),
    checked against its GPU share (``gpu_share_error`` when the share cannot hold it).
    """
    ctx = _worker_context()
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
    if device.num_gpus > 0 and not gpu_fallback and ctx is not None:
        compute = choose_device("auto", ray.get_gpu_ids())
    elif gpu_fallback:
        compute = ComputeDevice(torch.device("cpu"), "the Ray cluster has no GPU", fallback=True)
    else:
        compute = ComputeDevice(torch.device("cpu"), "no GPU share")
    out["compute_device"] = str(compute.device)
    out["gpu_fallback"] = bool(compute.fallback)
    out["gpu_fallback_reason"] = compute.reason if compute.fallback else ""
    out["gpu_total_mb"] = float("nan")
    out["gpu_share_error"] = ""
    if compute.is_cuda:
        frac = min(1.0, float(device.num_gpus))
        torch.cuda.set_per_process_memory_fraction(frac)
        out["enforced_gpu_fraction"] = frac
        out["enforced_gpu_note"] = "torch.cuda.set_per_process_memory_fraction"
        total = torch.cuda.get_device_properties(0).total_memory
        out["gpu_total_mb"] = round(total / _MIB, 1)
        out["gpu_share_error"] = check_gpu_share(device.name, frac, total,
                                                 (estimate or {}).get("estimated_device_memory_mb")) or ""
    else:
        out["enforced_gpu_fraction"] = float("nan")
        out["enforced_gpu_note"] = ("not enforced: no GPU requested" if device.num_gpus <= 0
                                    else f"not enforced: computes on the CPU ({compute.reason})")
    out["enforced_memory"] = "checked, not capped"
    sampler()  # the private-memory peak, set beside the estimate in resources.csv
    return out, compute


def check_gpu_share(name: str, share: float, total_bytes: float, estimate_mb: float | None) -> str | None:
    """One line when a GPU share cannot hold an actor's estimate (None when it can, or without an estimate).

    Example:
        >>> check_gpu_share("jetson", 0.25, 16 * 2**30, 5000.0)
        "device class 'jetson' needs 4.9 GiB of GPU memory but its 0.25 share of a 16.0 GiB GPU holds 4.0 GiB; give \
the class a larger num_gpus share, a smaller model or batch, or train.precision=bf16"
        >>> check_gpu_share("jetson", 0.5, 16 * 2**30, 5000.0) is None
        True
    """
    if estimate_mb is None or estimate_mb != estimate_mb:
        return None
    holds = share * total_bytes
    if estimate_mb * _MIB <= holds:
        return None
    gib = 2**30
    return (f"device class {name!r} needs {estimate_mb * _MIB / gib:.1f} GiB of GPU memory but its {share:g} share "
            f"of a {total_bytes / gib:.1f} GiB GPU holds {holds / gib:.1f} GiB; give the class a larger num_gpus "
            "share, a smaller model or batch, or train.precision=bf16")


def mark_task(compute: ComputeDevice) -> None:
    """A client task starts: its private-memory and GPU-memory peaks start here."""
    sampler().mark()
    if compute.is_cuda:
        torch.cuda.reset_peak_memory_stats()


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
        # torch's peak on this actor's GPU since the task started (mark_task); never touches CUDA otherwise
        "observed_gpu_mem_mb": (round(torch.cuda.max_memory_allocated() / _MIB, 1)
                                if torch.cuda.is_available() and torch.cuda.is_initialized() else float("nan")),
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


