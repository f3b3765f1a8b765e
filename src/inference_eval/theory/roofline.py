"""The roofline: attainable FLOP/s, bound (compute or memory) and least time of an op on given ceilings.

Time = max(FLOPs / peak, bytes / bandwidth); an op is compute-bound when its intensity (FLOPs/bytes)
exceeds the ridge point (peak / bandwidth). ``op_table`` gives the paper's Tables 4 and 5 for any model;
at a tensor-parallel degree t every row is one GPU's share (``theory.parallel``) and the communication
op ``all_reduce`` adds its link time (bytes over the interconnect / its bandwidth; zero at t = 1).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from inference_eval.opnames import STAGES
from inference_eval.theory.hardware import Ceilings
from inference_eval.theory.ops import BYTE_MODELS, FUSED, UNFUSED, ModelShape, OpCost
from inference_eval.theory.parallel import COMM_OP, device_costs

COMPUTE, MEMORY, INTERCONNECT = "compute", "memory", "interconnect"


def roofline_time(flops, nbytes, c: Ceilings):
    return np.maximum(np.asarray(flops, dtype=float) / c.peak_flops, np.asarray(nbytes, dtype=float) / c.bandwidth)


def step_time(flops, nbytes, link_bytes, c: Ceilings):
    """One GPU's roofline time plus its all-reduce link time (on the critical path, not overlapped)."""
    return roofline_time(flops, nbytes, c) + c.link_time(link_bytes)


def attainable_flops(intensity, c: Ceilings):
    """FLOP/s the roof allows at ``intensity``."""
    return np.minimum(c.peak_flops, np.asarray(intensity, dtype=float) * c.bandwidth)


def bound(intensity: float, c: Ceilings) -> str:
    return COMPUTE if intensity > c.ridge_point else MEMORY


def cost_row(cost: OpCost, c: Ceilings) -> dict:
    row = {"stage": cost.stage, "level": cost.level, "op": cost.op, "formula": cost.formula,
           "flops": cost.flops, "matmul_flops": cost.matmul_flops}
    comm = cost.op == COMM_OP
    link = float(cost.link_bytes)
    for model in BYTE_MODELS:
        nbytes = cost.bytes(model)
        intensity = cost.flops / nbytes if nbytes else float("nan")  # the all-reduce moves no counted HBM bytes
        row[f"bytes_{model}"] = nbytes
        row[f"bytes_formula_{model}"] = cost.bytes_formula(model)
        row[f"intensity_{model}"] = intensity
        row[f"bound_{model}"] = INTERCONNECT if comm else bound(intensity, c)
        row[f"roofline_time_{model}_s"] = float(step_time(cost.flops, nbytes, link, c))
    row["weight_bytes"] = cost.weight_bytes(FUSED)
    row["link_bytes"] = link
    row["link_time_s"] = float(c.link_time(link))
    return row


def op_table(shape: ModelShape, c: Ceilings, batch: int, seq: int, stages: Iterable[str] = STAGES,
             causal: bool = False, tensor_parallel: int = 1) -> pd.DataFrame:
    """One row per op, the communication op, layer total, model-end op and model total, per stage
    (Tables 4 and 5); at ``tensor_parallel`` = t > 1 each row is one of t GPUs' share.

    ``bound`` and ``roofline_time_s`` use the fused byte model; the ``*_unfused`` columns the other.
    """
    import dataclasses

    # The paper's counts assume n_kv = n: the same ops for the shape with every head its own K/V head
    # (equal to ``flops`` for MHA models; for GQA models such as Mistral they differ in qkv and rope).
    paper_shape = dataclasses.replace(shape, kv_heads=shape.heads)
    t = tensor_parallel
    rows = []
    for stage in stages:
        paper = {(p.level, p.op): p.flops for p in device_costs(paper_shape, batch, seq, stage, causal, t)}
        for cost in device_costs(shape, batch, seq, stage, causal, t):
            rows.append({**cost_row(cost, c), "flops_paper": paper.get((cost.level, cost.op))})
    frame = pd.DataFrame(rows)
    frame["bound"] = frame[f"bound_{FUSED}"]
    frame["roofline_time_s"] = frame[f"roofline_time_{FUSED}_s"]
    frame.insert(0, "model", shape.name)
    frame.insert(1, "hardware", c.hardware)
    frame["batch"] = batch
    frame["seq"] = seq
    frame["causal"] = causal
    frame["tensor_parallel"] = t
    frame["interconnect_gbs"] = c.interconnect / 1e9 if c.interconnect else None
    frame["dtype"] = shape.dtype
    frame["peak_tflops"] = c.peak_flops / 1e12
    frame["bandwidth_gbs"] = c.bandwidth / 1e9
    frame["ridge_point"] = c.ridge_point
    frame["ceilings_source"] = c.source
    first = ["model", "hardware", "stage", "level", "op", "formula", "flops", "flops_paper", "bytes_fused", "bytes_unfused",
             "intensity_fused", "intensity_unfused", "bound", "roofline_time_s"]
    return frame[first + [col for col in frame.columns if col not in first]]


__all__ = ["COMPUTE", "MEMORY", "INTERCONNECT", "FUSED", "UNFUSED", "roofline_time", "step_time", "attainable_flops",
           "bound", "cost_row", "op_table", "op_table_for_config"]


def op_table_for_config(cfg: dict, batch: int, seq: int, stages: Iterable[str] = STAGES,
                        causal: bool = False, tensor_parallel: int = 1) -> pd.DataFrame:
    """``op_table`` for a resolved config (its ``model`` and ``hardware`` sections)."""
    from inference_eval.theory.hardware import ceilings

    shape = ModelShape.from_config(cfg["model"])
    return op_table(shape, ceilings(cfg["hardware"], shape.dtype), batch, seq, stages, causal, tensor_parallel)
