"""Memory of this process, in MiB: resident (RSS), proportional (PSS), unique (USS) and private peak.

RSS counts every page mapped into the process, shared library pages included, so the RSS
of several torch actors adds up to more than the machine holds; PSS splits shared pages
among the processes that map them (the processes' PSS sum to what they use together); USS
counts the pages no other process maps (what ending the process frees). No torch import:
the aggregator actor uses this too.

The resident set of a Ray worker also counts the object store's shared-memory pages it has
touched (states it put there or read from there), so its RSS grows with the traffic, not
with what it holds. The **private** memory (resident anonymous pages: resident minus shared,
from ``/proc/self/statm``) is what the process itself holds: :class:`PeakSampler` samples it
every 50 ms in a thread and keeps the peak, since the process started and since the current
task started; that is what ``resources.csv`` sets beside the memory estimate.
"""

from __future__ import annotations

import os
import threading

_MIB = 2**20
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def private_bytes() -> int:
    """Resident memory of this process that is its own: resident pages minus shared ones (file-backed, shm)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
        return (int(fields[1]) - int(fields[2])) * _PAGE
    except OSError:  # not Linux
        import psutil

        info = psutil.Process().memory_info()
        return int(info.rss - getattr(info, "shared", 0))


class PeakSampler(threading.Thread):
    """Samples :func:`private_bytes` every ``every`` seconds; keeps the peak since start and since :meth:`mark`."""

    def __init__(self, every: float = 0.05) -> None:
        super().__init__(daemon=True, name="sfp-ray-memory")
        self.every = every
        self.peak = self.since_mark = private_bytes()
        self._lock = threading.Lock()

    def run(self) -> None:  # pragma: no cover - a daemon loop; its figures are tested through observe()
        wait = threading.Event()
        while True:
            self.sample()
            wait.wait(self.every)

    def sample(self) -> int:
        now = private_bytes()
        with self._lock:
            self.peak = max(self.peak, now)
            self.since_mark = max(self.since_mark, now)
        return now

    def mark(self) -> None:
        """Start a new task's peak."""
        with self._lock:
            self.since_mark = private_bytes()

    def figures(self) -> dict[str, float]:
        """``observed_peak_private_mb`` (since start) and ``observed_task_private_mb`` (since the last mark)."""
        self.sample()
        with self._lock:
            return {"observed_peak_private_mb": round(self.peak / _MIB, 1),
                    "observed_task_private_mb": round(self.since_mark / _MIB, 1)}


_SAMPLER: PeakSampler | None = None


def sampler() -> PeakSampler:
    """This process's sampler, started on first use."""
    global _SAMPLER
    if _SAMPLER is None:
        _SAMPLER = PeakSampler()
        _SAMPLER.start()
    return _SAMPLER


def process_memory_mb() -> dict[str, float]:
    """``observed_rss_mb``, ``observed_pss_mb``, ``observed_uss_mb`` and ``observed_peak_rss_mb`` (the largest
    resident set so far) of this process (PSS/USS: NaN where unknown).

    Example:
        >>> m = process_memory_mb()
        >>> m["observed_rss_mb"] > 0
        True
    """
    import resource

    import psutil

    p = psutil.Process()
    peak = {"observed_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}
    try:
        full = p.memory_full_info()  # reads /proc/self/smaps: a few ms for a torch process
        return {"observed_rss_mb": round(full.rss / _MIB, 1),
                "observed_pss_mb": round(getattr(full, "pss", float("nan")) / _MIB, 1),
                "observed_uss_mb": round(full.uss / _MIB, 1), **peak}
    except (psutil.AccessDenied, OSError):
        return {"observed_rss_mb": round(p.memory_info().rss / _MIB, 1), "observed_pss_mb": float("nan"),
                "observed_uss_mb": float("nan"), **peak}


__all__ = ["PeakSampler", "private_bytes", "process_memory_mb", "sampler"]
