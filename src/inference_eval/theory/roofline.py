"""The roofline: attainable FLOP/s, bound (compute or memory) and least time of an op on given ceilings.

Time = max(FLOPs / peak, bytes / bandwidth); an op is compute-bound when its intensity (FLOPs/bytes)
exceeds the ridge point (peak / bandwidth). ``op_table`` gives the paper's Tables 4 and 5 for any model.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from inference_eval.opnames import STAGES
from inference_eval.theory.hardware import Ceilings
from inference_eval.theory.ops import BYTE_MODELS, FUSED, UNFUSED, ModelShape, OpCost, all_costs

COMPUTE, MEMORY = "compute", "memory"


def roofline_time(flops, nbytes, c: Ceilings):
    return np.maximum(np.asarray(flops, dtype=float) / c.peak_flops, np.asarray(nbytes, dtype=float) / c.bandwidth)


def attainable_flops(intensity, c: Ceilings):
    """FLOP/s the roof allows at ``intensity``."""
    return np.minimum(c.peak_flops, np.asarray(intensity, dtype=float) * c.bandwidth)


def bound(intensity: float, c: Ceilings) -> str:
    return COMPUTE if intensity > c.ridge_point else MEMORY


def cost_row(cost: OpCost, c: Ceilings) -> dict:
    row = {"stage": cost.stage, "level": cost.level, "op": cost.op, "formula": cost.formula,
           "flops": cost.flops, "matmul_flops": cost.matmul_flops}
    for model in BYTE_MODELS:
        nbytes = cost.bytes(model)
        intensity = cost.flops / nbytes
        row[f"bytes_{model}"] = nbytes
        row[f"bytes_formula_{model}"] = cost.bytes_formula(model)
        row[f"intensity_{model}"] = intensity
        row[f"bound_{model}"] = bound(intensity, c)
        row[f"roofline_time_{model}_s"] = float(roofline_time(cost.flops, nbytes, c))
    row["weight_bytes"] = cost.weight_bytes(FUSED)
    return row


def op_table(shape: ModelShape, c: Ceilings, batch: int, seq: int, stages: Iterable[str] = STAGES,
             causal: bool = False) -> pd.DataFrame:
    """One row per op, layer total, model-end op and model total, per stage (Tables 4 and 5).

    ``bound`` and ``roofline_time_s`` use the fused byte model; the ``*_unfused`` columns the other.
    """
    import dataclasses

    # The paper's counts assume n_kv = n: the same ops for the shape with every head its own K/V head
    # (equal to ``flops`` for MHA models; for GQA models such as Mistral they differ in qkv and rope).
    paper_shape = dataclasses.replace(shape, kv_heads=shape.heads)
    rows = []
    for stage in stages:
        paper = {(p.level, p.op): p.flops for p in all_costs(paper_shape, batch, seq, stage, causal)}
        for cost in all_costs(shape, batch, seq, stage, causal):
            rows.append({**cost_row(cost, c), "flops_paper": paper.get((cost.level, cost.op))})
    frame = pd.DataFrame(rows)
    frame["bound"] = frame[f"bound_{FUSED}"]
    frame["roofline_time_s"] = frame[f"roofline_time_{FUSED}_s"]
    frame.insert(0, "model", shape.name)
    frame.insert(1, "hardware", c.hardware)
    frame["batch"] = batch
    frame["seq"] = seq
    frame["causal"] = causal
    frame["dtype"] = shape.dtype
    frame["peak_tflops"] = c.peak_flops / 1e12
    frame["bandwidth_gbs"] = c.bandwidth / 1e9
    frame["ridge_point"] = c.ridge_point
    frame["ceilings_source"] = c.source
    first = ["model", "hardware", "stage", "level", "op", "formula", "flops", "flops_paper", "bytes_fused", "bytes_unfused",
             "intensity_fused", "intensity_unfused", "bound", "roofline_time_s"]
    return frame[first + [col for col in frame.columns if col not in first]]


__all__ = ["COMPUTE", "MEMORY", "FUSED", "UNFUSED", "roofline_time", "attainable_flops", "bound", "cost_row",
           "op_table", "op_table_for_config"]


def op_table_for_config(cfg: dict, batch: int, seq: int, stages: Iterable[str] = STAGES,
                        causal: bool = False) -> pd.DataFrame:
    """``op_table`` for a resolved config (its ``model`` and ``hardware`` sections)."""
    from inference_eval.theory.hardware import ceilings

    shape = ModelShape.from_config(cfg["model"])
    return op_table(shape, ceilings(cfg["hardware"], shape.dtype), batch, seq, stages, causal)
