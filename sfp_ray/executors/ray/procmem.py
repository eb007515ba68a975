"""Memory of this process, in MiB: resident (RSS), proportional (PSS) and unique (USS) set sizes.

RSS counts every page mapped into the process, shared library pages included, so the RSS
of several torch actors adds up to more than the machine holds; PSS splits shared pages
among the processes that map them (the processes' PSS sum to what they use together); USS
counts the pages no other process maps (what ending the process frees). No torch import:
the aggregator actor uses this too.
"""

from __future__ import annotations

_MIB = 2**20


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


__all__ = ["process_memory_mb"]
