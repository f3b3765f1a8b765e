"""Length statistics of a built dataset (counted from token ids, never by re-tokenizing)."""

from __future__ import annotations

from typing import Iterable

import numpy as np

QUANTILES = {"p25": 25, "median": 50, "p75": 75, "p90": 90, "p99": 99}


def length_stats(values: Iterable[int]) -> dict[str, float | int]:
    arr = np.asarray(list(values), dtype=np.int64)
    if arr.size == 0:
        return {"count": 0}
    out: dict[str, float | int] = {"count": int(arr.size), "min": int(arr.min())}
    for key, q in QUANTILES.items():
        out[key] = round(float(np.percentile(arr, q)), 3)
    out.update({"max": int(arr.max()), "mean": round(float(arr.mean()), 3), "sum": int(arr.sum())})
    return out
