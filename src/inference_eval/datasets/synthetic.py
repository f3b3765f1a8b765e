"""Synthetic datasets: random token ids following a task's length profile (no tokenizer, no network).

A profile gives the row count, the input and output length distributions and the token id range:
``{dist: uniform, min, max}``, ``{dist: lognormal, median, sigma, min, max}`` (rounded and clipped) or
``{dist: fixed, value}``. The prompt text is a placeholder; the ids are what runners send.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from inference_eval.datasets.rules import DatasetRow, RuleResult, rng
from inference_eval.requests import SYNTHETIC_PROMPT, DatasetError


def draw_lengths(spec: Mapping[str, Any], n: int, generator: np.random.Generator, what: str) -> np.ndarray:
    dist = spec.get("dist")
    try:
        if dist == "fixed":
            values = np.full(n, int(spec["value"]))
        elif dist == "uniform":
            values = generator.integers(int(spec["min"]), int(spec["max"]) + 1, size=n)
        elif dist == "lognormal":
            raw = generator.lognormal(math.log(float(spec["median"])), float(spec["sigma"]), size=n)
            values = np.clip(np.rint(raw), int(spec["min"]), int(spec["max"])).astype(int)
        else:
            raise DatasetError(f"{what}: unknown dist {dist!r}; valid: fixed, uniform, lognormal")
    except KeyError as exc:
        raise DatasetError(f"{what}: dist {dist!r} needs field {exc.args[0]!r}") from exc
    if (values < 1).any():
        raise DatasetError(f"{what}: lengths must be >= 1 (spec {dict(spec)})")
    return values.astype(int)


def synthetic_rows(name: str, profile: Mapping[str, Any], seed: int) -> RuleResult:
    """``profile['rows']`` rows with ids ``<name>-synthetic-<k>``; input ids uniform in ``token_ids``."""
    n = int(profile["rows"])
    if n < 1:
        raise DatasetError(f"synthetic {name}: profile rows must be >= 1, got {n}")
    lo, hi = (int(v) for v in profile.get("token_ids", [259, 31999]))
    if lo <= 2 or hi < lo:
        raise DatasetError(f"synthetic {name}: token_ids must be [min, max] above the special ids 0/1/2, "
                           f"got {[lo, hi]}")
    inputs = draw_lengths(profile["input_tokens"], n, rng(seed, f"{name}-synthetic-inputs"), f"{name} input_tokens")
    outputs = draw_lengths(profile["output_tokens"], n, rng(seed, f"{name}-synthetic-outputs"),
                           f"{name} output_tokens")
    ids_rng = rng(seed, f"{name}-synthetic-ids")
    rows = []
    for k, (n_in, n_out) in enumerate(zip(inputs, outputs)):
        ids = ids_rng.integers(lo, hi + 1, size=int(n_in))
        rows.append(DatasetRow(f"{name}-synthetic-{k:05d}", SYNTHETIC_PROMPT.format(n=int(n_in)),
                               tuple(int(t) for t in ids), int(n_out)))
    rule = {"description": "SYNTHETIC: random token ids (uniform in token_ids) with input and output lengths "
                           "drawn from the profile", "profile": dict(profile)}
    return RuleResult(rows, rule)
