"""Paired statistics of the small-scale study: mean paired difference with a 95 % confidence
interval from Student's t over seeds, and the verdict rule that reads an interval.

Pure Python (no SciPy): the t quantile is found by bisection on the t distribution's CDF,
integrated with Simpson's rule; tested against published table values.
"""
import functools
import math
import statistics
from dataclasses import dataclass
from typing import List, Optional, Sequence


def t_pdf(x: float, df: int) -> float:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def t_cdf(x: float, df: int, steps: int = 200) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom (x >= 0 integrated, symmetric)."""
    if x < 0:
        return 1.0 - t_cdf(-x, df, steps)
    # substitute x = tan(u) on [0, atan(x)]: smooth integrand, heavy tails included
    end = math.atan(x)
    h = end / steps
    total = 0.0
    for i in range(steps + 1):
        u = i * h
        weight = 1 if i in (0, steps) else (4 if i % 2 else 2)
        total += weight * t_pdf(math.tan(u), df) / math.cos(u) ** 2
    return 0.5 + total * h / 3


@functools.lru_cache(maxsize=None)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t (p in (0.5, 1)), to about 1e-7."""
    if not 0.5 < p < 1.0 or df < 1:
        raise ValueError(f"need 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


@dataclass
class PairedDifference:
    """Mean of per-seed differences with its two-sided 95 % t interval (None when n < 2)."""

    values: List[float]
    mean: Optional[float]
    low: Optional[float]
    high: Optional[float]

    @property
    def n(self) -> int:
        return len(self.values)

    def text(self, digits: int = 2) -> str:
        if self.mean is None:
            return "–"
        if self.low is None:
            return f"{self.mean:+.{digits}f} (n = 1)"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def paired_difference(values: Sequence[float], level: float = 0.95) -> PairedDifference:
    """Mean and t interval of per-seed paired differences ``values`` (a - b for each seed)."""
    values = [float(v) for v in values]
    if not values:
        return PairedDifference([], None, None, None)
    mean = statistics.fmean(values)
    if len(values) < 2:
        return PairedDifference(values, mean, None, None)
    sd = statistics.stdev(values)
    half = t_quantile(0.5 + level / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return PairedDifference(values, mean, mean - half, mean + half)


def verdict_greater(diff: PairedDifference, margin: float = 0.0) -> str:
    """Claim "difference > margin": reproduced if the interval lies above ``margin``, not
    reproduced if it lies below it, inconclusive if it straddles it (or n < 2)."""
    if diff.low is None:
        return "inconclusive"
    if diff.low > margin:
        return "reproduced"
    if diff.high < margin:
        return "not reproduced"
    return "inconclusive"


def verdict_not_worse(diff: PairedDifference, margin: float) -> str:
    """Claim "not hurt" (difference >= -margin): reproduced if the whole interval lies above
    -margin, not reproduced if it lies below 0 entirely, inconclusive otherwise."""
    if diff.low is None:
        return "inconclusive"
    if diff.low > -margin:
        return "reproduced"
    if diff.high < 0:
        return "not reproduced"
    return "inconclusive"
