"""Statistics over repeated runs (seeds): mean, sample standard deviation, Student-t interval.

A comparison over a handful of seeds is only as good as its spread; every figure that
averages runs reports the sample standard deviation (``ddof=1``) and the half-width of the
two-sided 95 % Student-t confidence interval of the mean, ``t(0.975, n-1) * s / sqrt(n)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _scipy_stats


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and 95 % t-interval half-width of ``n`` values."""

    n: int
    mean: float
    std: float
    ci95: float

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.ci95:.3f}" if self.n > 1 else f"{self.mean:.3f}"


def ratio_text(x: float) -> str:
    """A ratio (to ``fl_full``) as every table prints it: a plain number, three significant digits.

    The CSV files hold the same quantity unrounded (a ratio, never a percentage), so a
    terminal figure and its CSV cell read alike.

    Example:
        >>> [ratio_text(x) for x in (1.0, 0.69301, 0.2913, 0.001809, 12.34, float("nan"))]
        ['1.00', '0.693', '0.291', '0.00181', '12.3', '-']
    """
    if x != x:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:#.3g}"


def t_quantile(df: int, q: float = 0.975) -> float:
    """Quantile ``q`` of Student's t distribution with ``df`` degrees of freedom.

    Example:
        >>> round(t_quantile(2), 3), round(t_quantile(29), 3)
        (4.303, 2.045)
    """
    return float(_scipy_stats.t.ppf(q, df))


def spread(values: Sequence[float]) -> Spread:
    """Spread of ``values`` (NaNs dropped); std and interval are NaN for fewer than two values.

    Example (three seeds: mean 0.5, s = 0.1, t(0.975, 2) = 4.303, so 4.303 * 0.1 / sqrt(3)):
        >>> s = spread([0.4, 0.5, 0.6])
        >>> round(s.mean, 6), round(s.std, 6), round(s.ci95, 4)
        (0.5, 0.1, 0.2484)
    """
    xs = [float(v) for v in values if not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return Spread(0, math.nan, math.nan, math.nan)
    mean = sum(xs) / n
    if n < 2:
        return Spread(n, mean, math.nan, math.nan)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return Spread(n, mean, std, t_quantile(n - 1) * std / math.sqrt(n))


__all__ = ["Spread", "spread", "t_quantile"]
