"""End-to-end roofline bound of a dataset: the least time any library could take for it on a hardware.

The model of the ideal run, stated:
- Requests are the dataset rows a batch run uses (``run_requests``: the first rows up to the job's row
  limit, outputs capped as the job's config says); prompt lengths are counted from token ids, outputs
  are ``max_tokens``.
- Batch size B: the largest number of sequences whose KV cache fits beside the weights in device memory
  when every sequence holds the dataset's longest context (prompt + output); activations and workspace
  are not counted (a bound must not be pessimistic). A model whose weights alone do not fit gets a row
  with status ``does_not_fit`` and no bound.
- Prefill: requests in groups of B; a group reads the weights once and does every request's prefill
  FLOPs (causal attention: only the visible (query, key) pairs) and activation bytes (fused model); its
  time is max(FLOPs/peak, bytes/bandwidth). The prefill produces each request's first output token.
- Decode: the other ``max_tokens - 1`` tokens of each request, one per decode step, continuous batching
  over B slots (longest request first, a freed slot taken at once). A step reads the weights once, and
  every active sequence's KV cache up to its context; its time is its roofline time.
- bound_s = prefill_s + decode_s (no overlap of prefill with decode is assumed).
- Tensor parallel degree t (``degree``): every step is one GPU's share (``theory.parallel``: weights,
  KV cache, FLOPs and bytes split over t GPUs, the h-wide activations whole) plus the layers' two
  all-reduces at the interconnect's bandwidth, added to the step's time; B counts the weights and KV
  cache one GPU holds against one GPU's memory. ``communication_s`` is the all-reduce part of bound_s.
"""

from __future__ import annotations

import heapq
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from inference_eval.requests import Request, run_requests
from inference_eval.theory.hardware import Ceilings, ceilings
from inference_eval.theory.ops import FUSED, ModelShape
from inference_eval.theory.parallel import (check_degree, device_kv_bytes_per_token, device_model_total,
                                            device_weight_bytes)
from inference_eval.theory.roofline import roofline_time

OK, DOES_NOT_FIT = "ok", "does_not_fit"
COLUMNS = ["model", "dataset", "dataset_member", "synthetic", "hardware", "status", "reason", "batch_size", "n_requests",
           "input_tokens", "output_tokens", "max_context", "decode_steps", "prefill_s", "decode_s", "bound_s",
           "bound_throughput_tok_s", "weights_gb", "kv_cache_gb_per_sequence", "peak_tflops", "bandwidth_gbs",
           "ceilings_source", "config_hash",
           # tensor parallel (theory.parallel): degree, one GPU's weights, the all-reduce part of bound_s
           "tensor_parallel", "weights_gb_per_gpu", "communication_s", "interconnect_gbs"]


def max_batch_size(shape: ModelShape, c: Ceilings, max_context: int, n_requests: int, degree: int = 1) -> int:
    free = c.memory_bytes - device_weight_bytes(shape, degree)
    if free <= 0:
        return 0
    return int(min(n_requests, free // (device_kv_bytes_per_token(shape, degree) * max_context)))


def prefill_time(shape: ModelShape, c: Ceilings, prompt_lens: np.ndarray, batch_size: int,
                 degree: int = 1) -> tuple[float, float]:
    """(prefill seconds, of which all-reduce seconds) for requests in groups of ``batch_size``."""
    cost = device_model_total(shape, 1, prompt_lens, "prefill", causal=True, t=degree)
    flops = np.broadcast_to(np.asarray(cost.flops, dtype=float), prompt_lens.shape)
    nbytes = np.broadcast_to(np.asarray(cost.bytes(FUSED), dtype=float), prompt_lens.shape)
    link = np.broadcast_to(np.asarray(cost.link_bytes, dtype=float), prompt_lens.shape)
    shared = float(cost.weight_bytes(FUSED))
    total = comm = 0.0
    for start in range(0, len(prompt_lens), batch_size):
        group = slice(start, start + batch_size)
        k = len(prompt_lens[group])
        step_comm = float(c.link_time(link[group].sum()))
        total += float(roofline_time(flops[group].sum(), nbytes[group].sum() - (k - 1) * shared, c)) + step_comm
        comm += step_comm
    return total, comm


def decode_schedule(prompt_lens: np.ndarray, decode_tokens: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per decode step: how many sequences are active and the sum of their contexts.

    Continuous batching over ``batch_size`` slots, longest request first. Request i's j-th decode step
    (j = 1 .. decode_tokens[i]) runs at context prompt_lens[i] + j (the new token included).
    """
    n = len(prompt_lens)
    starts = np.zeros(n, dtype=np.int64)
    slots = [0] * batch_size
    for i in np.argsort(-decode_tokens, kind="stable"):
        if decode_tokens[i] == 0:
            continue
        starts[i] = heapq.heappop(slots)
        heapq.heappush(slots, int(starts[i] + decode_tokens[i]))
    ends = starts + decode_tokens
    steps = int(ends.max()) if n else 0
    active = decode_tokens > 0
    count = np.zeros(steps + 1, dtype=np.int64)
    offset = np.zeros(steps + 1, dtype=np.float64)  # context at step t = (prompt + 1 - start) + t
    np.add.at(count, starts[active], 1)
    np.add.at(count, ends[active], -1)
    const = (prompt_lens + 1 - starts).astype(np.float64)
    np.add.at(offset, starts[active], const[active])
    np.add.at(offset, ends[active], -const[active])
    count = np.cumsum(count)[:steps]
    context_sum = np.cumsum(offset)[:steps] + np.arange(steps) * count
    return count, context_sum


def decode_time(shape: ModelShape, c: Ceilings, prompt_lens: np.ndarray, decode_tokens: np.ndarray,
                batch_size: int, degree: int = 1) -> tuple[float, int, float]:
    """(decode seconds, decode steps, of which all-reduce seconds)."""
    count, context_sum = decode_schedule(prompt_lens, decode_tokens, batch_size)
    if len(count) == 0:
        return 0.0, 0, 0.0
    # Every decode cost is affine in each sequence's context, so a step's cost is that of `count`
    # sequences at the mean context.
    cost = device_model_total(shape, count, context_sum / count, "decode", causal=True, t=degree)
    comm = float(np.sum(c.link_time(cost.link_bytes)))
    return float(np.sum(roofline_time(cost.flops, cost.bytes(FUSED), c))) + comm, len(count), comm


def dataset_bound(requests: Sequence[Request], shape: ModelShape, c: Ceilings, degree: int = 1) -> dict:
    """The bound's numbers for one model on one dataset (a row of ``<dataset>_bound.csv``, less the names),
    on ``degree`` GPUs of ``c`` (tensor parallel)."""
    check_degree(shape, degree)
    prompt_lens = np.array([r.prompt_len for r in requests], dtype=np.int64)
    outputs = np.array([r.max_tokens for r in requests], dtype=np.int64)
    max_context = int((prompt_lens + outputs).max())
    batch = max_batch_size(shape, c, max_context, len(requests), degree)
    per_gpu = device_weight_bytes(shape, degree)
    row = {"n_requests": len(requests), "input_tokens": int(prompt_lens.sum()), "output_tokens": int(outputs.sum()),
           "max_context": max_context, "batch_size": batch, "weights_gb": shape.weight_bytes() / 1e9,
           "kv_cache_gb_per_sequence": shape.kv_bytes_per_token() * max_context / 1e9,
           "peak_tflops": c.peak_flops / 1e12, "bandwidth_gbs": c.bandwidth / 1e9, "ceilings_source": c.source,
           "tensor_parallel": degree, "weights_gb_per_gpu": per_gpu / 1e9,
           "interconnect_gbs": c.interconnect / 1e9 if c.interconnect else None}
    if batch < 1:
        need = per_gpu + device_kv_bytes_per_token(shape, degree) * max_context
        on = f"{c.hardware}'s {c.memory_bytes / 1e9:.0f} GB" + (f" per GPU (of {degree})" if degree > 1 else "")
        row.update(status=DOES_NOT_FIT, reason=(
            f"weights {per_gpu / 1e9:.1f} GB + one sequence's KV cache at context {max_context} "
            f"({need / 1e9:.1f} GB) exceed {on}"),
            prefill_s=float("nan"), decode_s=float("nan"), bound_s=float("nan"),
            bound_throughput_tok_s=float("nan"), decode_steps=0, communication_s=float("nan"))
        return row
    prefill, prefill_comm = prefill_time(shape, c, prompt_lens, batch, degree)
    decode, steps, decode_comm = decode_time(shape, c, prompt_lens, outputs - 1, batch, degree)
    total = prefill + decode
    row.update(status=OK, reason="", prefill_s=prefill, decode_s=decode, bound_s=total, decode_steps=steps,
               bound_throughput_tok_s=row["output_tokens"] / total, communication_s=prefill_comm + decode_comm)
    return row


def bound_table(rows_path: str | Path, cfgs: Mapping[str, Mapping[str, Any]], dataset: str,
                degree: int = 1) -> pd.DataFrame:
    """``<dataset>_bound.csv`` (``<dataset>_bound_tp<t>.csv`` at degree t > 1): one row per model;
    ``cfgs`` maps model name -> that job's resolved config."""
    from inference_eval.config import config_hash

    out = []
    for model, cfg in cfgs.items():
        shape = ModelShape.from_config(cfg["model"])
        c = ceilings(cfg["hardware"], shape.dtype)
        row = dataset_bound(run_requests(rows_path, cfg), shape, c, degree)
        row.update(model=model, dataset=dataset, dataset_member=Path(rows_path).parent.name,
                   synthetic=bool((cfg.get("dataset") or {}).get("synthetic", False)), hardware=c.hardware,
                   config_hash=config_hash(cfg))
        out.append(row)
    return pd.DataFrame(out, columns=COLUMNS)
