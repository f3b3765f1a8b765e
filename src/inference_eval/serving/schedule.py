"""Arrival schedules, computed entirely before a run from a seeded ``numpy.random.Generator``.

The load generator only replays these offsets; it never draws random numbers while sending, so a
run is reproducible and the schedule does not depend on how fast the generator happens to be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ARRIVALS = ("poisson", "gamma", "constant")


@dataclass(frozen=True)
class Schedule:
    """Send offsets in seconds from the run start (non-decreasing, the first is 0)."""

    offsets_s: np.ndarray
    rate: float
    arrival: str
    burstiness: float
    seed: int

    def __len__(self) -> int:
        return len(self.offsets_s)

    @property
    def duration_s(self) -> float:
        return float(self.offsets_s[-1]) if len(self.offsets_s) else 0.0


def rate_seed(seed: int, rate: float) -> np.random.SeedSequence:
    """One independent, reproducible stream per (seed, rate): changing the sweep's rate list does not
    change the schedule of a rate that stays in it."""
    rate_key = 0 if math.isinf(rate) else int(round(rate * 1_000_000))
    return np.random.SeedSequence([int(seed), rate_key])


def make_schedule(n: int, rate: float, arrival: str = "poisson", burstiness: float = 1.0,
                  seed: int = 0) -> Schedule:
    """Offsets of ``n`` requests at ``rate`` requests/s.

    ``poisson``: exponential gaps (mean 1/rate). ``gamma``: gamma gaps with shape ``burstiness`` and the
    same mean (shape 1 is Poisson; below 1 is burstier, above 1 smoother). ``constant``: gaps of 1/rate.
    ``rate=inf`` sends everything at once.
    """
    if n < 1:
        raise ValueError(f"number of requests must be >= 1, got {n}")
    if arrival not in ARRIVALS:
        raise ValueError(f"unknown arrival process {arrival!r}; valid: {', '.join(ARRIVALS)}")
    if not rate > 0:
        raise ValueError(f"request rate must be > 0 (or inf), got {rate}")
    if arrival == "gamma" and not burstiness > 0:
        raise ValueError(f"gamma burstiness (shape) must be > 0, got {burstiness}")
    if math.isinf(rate):
        return Schedule(np.zeros(n), rate, arrival, burstiness, seed)
    rng = np.random.default_rng(rate_seed(seed, rate))
    mean_gap = 1.0 / rate
    if arrival == "poisson":
        gaps = rng.exponential(mean_gap, size=n - 1)
    elif arrival == "gamma":
        gaps = rng.gamma(shape=burstiness, scale=mean_gap / burstiness, size=n - 1)
    else:
        gaps = np.full(n - 1, mean_gap)
    offsets = np.concatenate([[0.0], np.cumsum(gaps)])
    return Schedule(offsets, float(rate), arrival, float(burstiness), int(seed))
