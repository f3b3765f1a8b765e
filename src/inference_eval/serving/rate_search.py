"""The rate search: after the configured rates, find where a server's token throughput stops rising.

``scenario.search`` (null: ``hardware.scale.serving_search``, on for the GPU profiles, off on the CPU
default) extends the sweep:

1. **grow**: from the highest configured rate, multiply the rate by ``growth`` while the throughput
   still rises: the search stops growing after ``flat_steps`` steps in a row whose throughput gained less
   than ``min_gain`` over the best so far, or at a rate whose row failed, broke the SLO (its goodput
   under ``scenario.goodput_share`` of its throughput) or was paced by the client (``client_limited``);
2. **bisect**: ``bisect_steps`` geometric midpoints between the last rate that still rose and the first
   that did not, to place the peak;
3. **inf**: one run with every request sent at once (the server's maximum throughput).

Bounded by ``max_points`` rows in all (the configured rates included) and ``time_budget_s`` of sweep
time. Every point it ran is a row with its ``search_phase`` and, on the last, why the search stopped.
``next_point`` is pure (history in, next rate out) so it is unit-tested without a server.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

PHASES = ("fixed", "grow", "bisect", "inf")


class SearchConfigError(ValueError):
    pass


@dataclass
class SearchSettings:
    enabled: bool = False
    growth: float = 2.0
    min_gain: float = 0.05
    flat_steps: int = 2
    bisect_steps: int = 2
    max_points: int = 12
    time_budget_s: float | None = None
    inf_point: bool = True

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> "SearchSettings":
        """``scenario.search`` (a mapping, or null for the hardware's ``scale.serving_search``)."""
        raw = (cfg.get("scenario") or {}).get("search")
        if raw is None:
            enabled = bool(((cfg.get("hardware") or {}).get("scale") or {}).get("serving_search", False))
            return cls(enabled=enabled)
        if not isinstance(raw, Mapping):
            raise SearchConfigError(f"scenario.search must be a mapping or null, got {raw!r}")
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise SearchConfigError(f"scenario.search: unknown keys {sorted(unknown)}; valid: "
                                    f"{', '.join(cls.__dataclass_fields__)}")
        values = {k: v for k, v in raw.items() if v is not None}
        values.setdefault("enabled", True)  # a search mapping asks for the search unless it says otherwise
        try:
            out = cls(**values)
        except TypeError as exc:
            raise SearchConfigError(f"scenario.search: {exc}") from None
        checks = [("growth", out.growth > 1), ("min_gain", 0 <= out.min_gain < 1), ("flat_steps", out.flat_steps >= 1),
                  ("bisect_steps", out.bisect_steps >= 0), ("max_points", out.max_points >= 1),
                  ("time_budget_s", out.time_budget_s is None or out.time_budget_s > 0)]
        for key, ok in checks:
            if not ok:
                raise SearchConfigError(f"scenario.search.{key} out of range: {getattr(out, key)!r}")
        return out

    def public(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Point:
    """One row of the sweep as the search sees it."""

    rate: float
    phase: str
    tok_s: float
    ok: bool          # the row ran (status ok) and kept the SLO


@dataclass
class SearchState:
    stopped: str = ""
    bracket: tuple[float, float] | None = None  # (last rising, first flat) once growing has stopped
    bisected: int = 0
    notes: list[str] = field(default_factory=list)


def _rising(points: Sequence[Point], min_gain: float) -> list[bool]:
    """Per finite point in rate order: did it gain more than ``min_gain`` over the best rate below it?"""
    best, out = 0.0, []
    for p in points:
        out.append(p.ok and p.tok_s > best * (1 + min_gain))
        if p.ok:
            best = max(best, p.tok_s)
    return out


def next_point(points: Sequence[Point], s: SearchSettings, state: SearchState,
               elapsed_s: float = 0.0) -> tuple[float, str] | None:
    """The next (rate, phase) to run, or None when the search is over (``state.stopped`` says why)."""
    if state.stopped:
        return None
    if len(points) >= s.max_points:
        state.stopped = f"max_points ({s.max_points}) reached"
        return None
    if s.time_budget_s is not None and elapsed_s >= s.time_budget_s:
        state.stopped = f"time budget ({s.time_budget_s:g} s) spent"
        return None
    finite = sorted((p for p in points if math.isfinite(p.rate)), key=lambda p: p.rate)
    if not finite:
        state.stopped = "no finite rate ran"
        return None
    if state.bracket is None:
        rising = _rising(finite, s.min_gain)
        top = finite[-1]
        flat_run = 0
        for r in reversed(rising):
            if r:
                break
            flat_run += 1
        if not top.ok or flat_run >= s.flat_steps:
            last_up = next((p.rate for p, r in zip(reversed(finite), reversed(rising)) if r), finite[0].rate)
            first_flat = next((p.rate for p in finite if p.rate > last_up), top.rate)
            state.bracket = (last_up, first_flat)
            state.notes.append("failure, SLO break or client limit" if not top.ok else
                               f"throughput gained < {s.min_gain:.0%} for {flat_run} step(s)")
        else:
            return top.rate * s.growth, "grow"
    lo, hi = state.bracket
    if state.bisected < s.bisect_steps and hi / lo > 1.05:
        by_rate = {p.rate: p for p in finite}
        if state.bisected:  # narrow the bracket by the last midpoint's outcome
            mid = max((p for p in points if p.phase == "bisect"), key=lambda p: points.index(p))
            base = by_rate.get(lo)
            if mid.ok and base is not None and mid.tok_s > base.tok_s * (1 + s.min_gain):
                lo = mid.rate
            else:
                hi = mid.rate
            state.bracket = (lo, hi)
        if hi / lo > 1.05:
            state.bisected += 1
            return math.sqrt(lo * hi), "bisect"
    if s.inf_point and not any(math.isinf(p.rate) for p in points):
        return math.inf, "inf"
    state.stopped = "; ".join(state.notes + ["search done"])
    return None


def peak(points: Sequence[Point]) -> Point | None:
    """The finite point with the highest token throughput among those that ran."""
    ran = [p for p in points if p.ok and math.isfinite(p.rate)]
    return max(ran, key=lambda p: p.tok_s) if ran else None
