"""The b/s sweeps: measure every point, then write one module table per library x stage x sweep.

Settings (model, sweeps, extra fit points, held-out points, warm-up, repeats) default per hardware
kind (``DEFAULTS``) and are overridden key by key by a ``profiling:`` block of the config.

Measured time of an op = its time summed over all decoder layers of one forward of the stage, mean
over ``repeats`` runs after ``warmup`` runs (``time_s``; ``time_per_layer_s`` divides by l). On a GPU
it is device-kernel time (torch.profiler CUDA activity); on a CPU the CPU operators' self time.
Theory (``inference_eval.theory``) is per layer; ``achieved_fraction = roofline_time_s /
time_per_layer_s``. The decode step after a prefill of s tokens runs at context s+1 (the new token
included), which is what the theory's decode ``s`` means, so theory is evaluated at s+1 there.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from typing import Any, Iterable

import numpy as np
import pandas as pd

from inference_eval import libraries
from inference_eval.config_roots import roots_of
from inference_eval.opnames import OPS, OTHER, STAGES

SWEEPS = ("seq", "batch")
ROLES = SWEEPS + ("extra", "heldout")

DEFAULTS: dict[str, dict[str, Any]] = {
    "gpu": {
        "model": "llama2-7b",
        "libraries": None,     # every profiled variant of the library registry (module_profiling)
        "seq": {"b": 8, "s": [32, 128, 512, 1024, 2048]},
        "batch": {"s": 1024, "b": [1, 2, 4, 8, 16]},
        # extra fit points off the two sweep lines, so b and s vary jointly in the fit
        "extra": [[2, 256], [4, 768], [16, 128], [1, 2048]],
        # shapes never used in the fit: the held-out error of the time model
        "heldout": [[2, 1536], [12, 512], [4, 64]],
        "warmup": 2,
        "repeats": 5,
        "cpu_threads": None,   # leave PyTorch's default
        "ncu": {"enabled": True, "layer": 1, "timeout_s": 1800},
    },
    "cpu": {
        "model": "tiny-llama",
        "libraries": None,
        "seq": {"b": 2, "s": [16, 32, 64, 128]},
        "batch": {"s": 64, "b": [1, 2, 4]},
        "extra": [[1, 128], [4, 32], [3, 96]],
        "heldout": [[3, 48], [1, 96]],
        "warmup": 1,
        "repeats": 3,
        # one intra-op thread: on a small shared CPU, OpenMP threads that spin against other processes
        # turn a 10-MFLOP matmul from 0.3 ms into 30 ms at random; one thread keeps the times stable
        "cpu_threads": 1,
        "ncu": {"enabled": False, "layer": 1, "timeout_s": 600},
    },
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if v is None:
            continue  # null in the config: keep the hardware kind's default
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def settings(cfg: dict) -> dict:
    """This hardware kind's defaults, overridden by ``cfg['profiling']`` where the config has one."""
    kind = cfg["hardware"].get("kind", "cpu")
    if kind not in DEFAULTS:
        raise ValueError(f"hardware kind {kind!r} has no profiling defaults; valid: {', '.join(DEFAULTS)}")
    merged = _merge(DEFAULTS[kind], cfg.get("profiling") or {})
    variants = libraries.profiled_variants(roots_of(cfg))
    if merged["libraries"] is None:
        merged["libraries"] = list(variants)
    unknown = [v for v in merged["libraries"] if v not in variants]
    if unknown:
        raise ValueError(f"profiling.libraries names {unknown}, which no library profiles; valid (module_profiling "
                         f"of conf/library/*.yaml): {', '.join(variants)}")
    for key in ("warmup", "repeats"):
        if int(merged[key]) < (1 if key == "repeats" else 0):
            raise ValueError(f"profiling.{key} must be >= {1 if key == 'repeats' else 0}, got {merged[key]!r}")
    return merged


def sweep_points(st: dict) -> list[tuple[int, int, str]]:
    """(b, s, role) for every point measured: the seq and batch sweeps, extra and held-out points."""
    pts = [(int(st["seq"]["b"]), int(s), "seq") for s in st["seq"]["s"]]
    pts += [(int(b), int(st["batch"]["s"]), "batch") for b in st["batch"]["b"]]
    for role in ("extra", "heldout"):
        for item in st.get(role) or []:
            b, s = (int(x) for x in item)
            pts.append((b, s, role))
    bad = [p for p in pts if p[0] < 1 or p[1] < 1]
    if bad:
        raise ValueError(f"profiling points must have b >= 1 and s >= 1, got {bad}")
    fit = {(b, s) for b, s, r in pts if r != "heldout"}
    clash = sorted({(b, s) for b, s, r in pts if r == "heldout"} & fit)
    if clash:
        raise ValueError(f"profiling.heldout shapes {clash} are also fit points; held-out shapes must be unused in the fit")
    return pts


def unique_shapes(points: Iterable[tuple[int, int, str]]) -> list[tuple[int, int]]:
    seen: dict[tuple[int, int], None] = {}
    for b, s, _ in points:
        seen.setdefault((b, s), None)
    return list(seen)


def measure(runner, shapes: list[tuple[int, int]], warmup: int, repeats: int, device: bool,
            progress: bool = True) -> pd.DataFrame:
    """Long table: one row per (b, s, stage, repeat, op) with ``time_s`` (all layers)."""
    import torch
    from tqdm import tqdm

    from inference_eval.profiling.attribution import attribute_events

    activities = [torch.profiler.ProfilerActivity.CPU]
    if device:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    rows = []
    for b, s in tqdm(shapes, desc=f"profiling {getattr(runner, 'library', '')}", disable=not progress):
        for i in range(warmup):
            runner.run(b, s, repeat=-1 - i)
        wall = []
        with torch.profiler.profile(activities=activities) as prof:
            for rep in range(repeats):
                t0 = time.perf_counter()
                runner.run(b, s, repeat=rep)
                wall.append(time.perf_counter() - t0)
        attribution = attribute_events(prof.events(), device=device)
        for stage in STAGES:
            per_rep = attribution.per_stage(stage)
            if sorted(per_rep) != list(range(repeats)):
                raise RuntimeError(f"b={b} s={s}: the {stage} stage was seen in repeats {sorted(per_rep)}, "
                                   f"expected 0..{repeats - 1}: the stage ranges did not fire")
            for rep, ops in per_rep.items():
                for op, t in ops.items():
                    rows.append({"b": b, "s": s, "stage": stage, "repeat": rep, "op": op, "time_s": t,
                                 "run_wall_s": wall[rep], "time_source": attribution.source})
    return pd.DataFrame(rows)


def byte_model(variant: str, op: str, cfg: dict | None = None) -> str:
    """Which of the theory's byte models describes how ``variant`` moves ``op``'s data: its registry
    entry's ``byte_model`` and ``unfused_ops`` (Transformers eager materialises the score matrix and
    concatenates the KV cache: unfused; SDPA fuses attention but still concatenates the cache)."""
    return libraries.profiled_variant(variant, roots_of(cfg) if cfg else None).op_byte_model(op)


def theory_columns(cfg: dict, variant: str, b: int, s: int, stage: str) -> dict[str, dict[str, Any]]:
    """Per-op theory (one layer) from ``inference_eval.theory``: FLOPs, bytes, roofline time."""
    from inference_eval.theory.hardware import ceilings
    from inference_eval.theory.ops import FUSED, UNFUSED, ModelShape, layer_ops
    from inference_eval.theory.roofline import roofline_time

    shape = ModelShape.from_config(cfg["model"])
    c = ceilings(cfg["hardware"], shape.dtype)
    s_theory = s if stage == "prefill" else s + 1
    out = {}
    for cost in layer_ops(shape, b, s_theory, stage):
        model = byte_model(variant, cost.op, cfg)
        nbytes = cost.bytes(model)
        out[cost.op] = {"theory_flops": float(cost.flops), "theory_bytes": float(nbytes), "byte_model": model,
                        "theory_bytes_fused": float(cost.bytes(FUSED)),
                        "theory_bytes_unfused": float(cost.bytes(UNFUSED)),
                        "roofline_time_s": float(roofline_time(cost.flops, nbytes, c)),
                        "ceilings": c.source}
    return out


def summarize(long: pd.DataFrame, cfg: dict, variant: str, points: list[tuple[int, int, str]],
              dram: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (b, s, stage, op): mean and median time over repeats, share, theory, achieved fraction.

    ``dram`` (optional, from Nsight Compute): per (b, s, stage, op) measured DRAM bytes of one layer.
    """
    n_layers = int(cfg["model"]["num_layers"])
    g = long.groupby(["b", "s", "stage", "op"], sort=False)["time_s"]
    table = g.agg(time_s="mean", time_median_s="median", time_std_s="std", repeats="count").reset_index()
    table["time_std_s"] = table["time_std_s"].fillna(0.0)
    total = table.groupby(["b", "s", "stage"])["time_s"].transform("sum")
    table["share"] = table["time_s"] / total
    table["stage_time_s"] = total
    table["time_per_layer_s"] = table["time_s"] / n_layers
    theory_rows = []
    cache: dict = {}
    for _, r in table.iterrows():
        key = (int(r.b), int(r.s), r.stage)
        if key not in cache:
            cache[key] = theory_columns(cfg, variant, *key)
        theory_rows.append(cache[key].get(r.op, {}))
    theory = pd.DataFrame(theory_rows, index=table.index)
    table = pd.concat([table, theory], axis=1)
    table["achieved_fraction"] = table["roofline_time_s"] / table["time_per_layer_s"]
    if dram is not None and not dram.empty:
        table = table.merge(dram, on=["b", "s", "stage", "op"], how="left")
        table["measured_intensity"] = table["theory_flops"] / table["dram_bytes"]
    roles = defaultdict(list)
    for b, s, role in points:
        roles[(b, s)].append(role)
    table["roles"] = [",".join(roles[(int(b), int(s))]) for b, s in zip(table["b"], table["s"])]
    table.insert(0, "library", variant)
    table.insert(1, "model", cfg["model"]["name"])
    table.insert(2, "hardware", cfg["hardware"]["name"])
    table["layers"] = n_layers
    table["time_source"] = long["time_source"].iloc[0] if len(long) else ""
    order = {op: i for i, op in enumerate((*OPS, OTHER))}
    table["_o"] = table["op"].map(order)
    return table.sort_values(["stage", "b", "s", "_o"]).drop(columns="_o").reset_index(drop=True)


def sweep_table(summary: pd.DataFrame, stage: str, sweep: str) -> pd.DataFrame:
    """Rows of one stage on one sweep line (points whose roles include ``sweep``)."""
    if sweep not in SWEEPS or stage not in STAGES:
        raise ValueError(f"sweep must be one of {SWEEPS} and stage one of {STAGES}, got {sweep!r}, {stage!r}")
    mask = (summary["stage"] == stage) & summary["roles"].str.split(",").map(lambda r: sweep in r)
    return summary[mask].drop(columns=["roles"]).reset_index(drop=True).assign(sweep=sweep)


def points_table(summary: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """One row per (b, s, stage): what the time model is fitted to.

    ``layers_time_s``: op time summed over all decoder layers (every op but ``other``), mean over
    repeats; ``layers_time_median_s`` the same from per-op medians (the regression's target: robust
    to the outliers a shared machine produces). ``stage_time_s`` adds ``other`` (embedding, final
    norm, rope tables, masks).
    """
    m = cfg["model"]
    layer = summary[summary["op"] != OTHER].groupby(["library", "b", "s", "stage"], sort=False)
    pts = layer.agg(layers_time_s=("time_s", "sum"), layers_time_median_s=("time_median_s", "sum"),
                    stage_time_s=("stage_time_s", "first"),
                    roles=("roles", "first")).reset_index()
    pts["heldout"] = pts["roles"] == "heldout"
    # the decode step after a prefill of s tokens attends over s+1 positions (as theory_columns counts)
    pts["context"] = pts["s"] + (pts["stage"] == "decode").astype(int)
    pts["h"] = int(m["hidden_size"])
    pts["h_ff"] = int(m["intermediate_size"])
    pts["n"] = int(m["num_heads"])
    pts["l"] = int(m["num_layers"])
    pts["model"] = m["name"]
    return pts


def failed_tables(variant: str, cfg: dict, status: str, reason: str) -> pd.DataFrame:
    """The rows a library that could not be profiled leaves: status and reason, never a silent gap."""
    return pd.DataFrame([{"library": variant, "model": cfg["model"]["name"], "hardware": cfg["hardware"]["name"],
                          "status": status, "reason": reason}])


__all__ = ["DEFAULTS", "SWEEPS", "settings", "sweep_points", "unique_shapes", "measure", "summarize", "sweep_table",
           "points_table", "theory_columns", "failed_tables"]
