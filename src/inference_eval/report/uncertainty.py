"""Uncertainty of repeated measurements: mean, 95 % Student-t confidence interval, coefficient of variation.

Batch rows repeat the whole dataset ``repeats`` times in one loaded engine; the interval is over those
repeats (it says how far the mean time would move on the same machine and build, not across machines).
With one repeat there is no interval (NaN), and the tables say ``repeats = 1``.
"""

from __future__ import annotations

import math
from typing import Sequence

# Two-sided 95 % quantiles of Student's t, t(0.975, df), for df = 1..30; larger df use the normal's 1.96
# through the table's tail (40, 60, 120).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
_T975_TAIL = ((40, 2.021), (60, 2.000), (120, 1.980))


def t975(df: int) -> float:
    """t(0.975, df): the half-width factor of a two-sided 95 % interval."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    for limit, value in _T975_TAIL:
        if df <= limit:
            return value
    return 1.960


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, lower, upper) of a 95 % Student-t interval for the mean; the bounds are NaN for n < 2."""
    xs = [float(v) for v in values]
    if not xs:
        return math.nan, math.nan, math.nan
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def coefficient_of_variation(values: Sequence[float]) -> float:
    """Sample standard deviation over the mean; NaN for n < 2 or a zero mean."""
    xs = [float(v) for v in values]
    if len(xs) < 2:
        return math.nan
    mean = sum(xs) / len(xs)
    if mean == 0:
        return math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
    return sd / mean
