"""Tensor parallelism in the analytic model: what one of t GPUs computes, reads and sends (docs/theory.md).

Megatron-style tensor parallelism, as vLLM, TensorRT-LLM and DeepSpeed-MII run it with degree t:

- attention is split by heads: each GPU holds n/t query heads and their slice of W_Q and W_O, and
  n_kv/t KV heads with their slice of W_K, W_V and of the KV cache (when t > n_kv, each GPU holds one KV
  head, copied to t/n_kv GPUs: the KV share is 1/n_kv instead of 1/t);
- the MLP is split along h': each GPU holds h'/t columns of W_G, W_U and rows of W_D;
- the output projections (o_proj, down_proj) produce partial sums of the whole b x T x h activation on
  every GPU, added by an all-reduce: **two all-reduces per layer**. A ring all-reduce of N elements sends
  (and receives) 2(t-1)/t x N elements per GPU, so a layer moves 2 x 2(t-1)/t x bTh x e bytes over each
  GPU's link (the ``all_reduce`` op), and adds (t-1)/t x N elements per all-reduce (its FLOPs);
- the h-wide activations (the layer input X, the residual, the norms' inputs and outputs, the RoPE
  table) are replicated: every GPU reads and writes them whole;
- the LM head and the embedding table are split by vocabulary (each GPU reads V/t rows of W_LM and
  writes its V/t logits; an embedding lookup reads on average 1/t of the rows on each GPU).

Per GPU, an op's FLOPs and each tensor's elements are the single-GPU counts (``ops``) times the share
above; at t = 1 every share is 1 and the ``all_reduce`` op is zero, so the single-GPU model is unchanged.
Not counted (each keeps this a lower bound): the embedding's all-reduce and the logits' gather (once
per forward pass, not per layer: under 1/(2l) and 1.2 % of the layers' link bytes for Llama-2-70B),
the per-message latency of each all-reduce, and the all-reduce's own reads and writes of local memory.

The end-to-end time of a step at degree t is the per-GPU roofline time plus the link time:
max(FLOPs_gpu / peak, bytes_gpu / bandwidth) + link_bytes_gpu / interconnect. The all-reduces sit on
the critical path (the next norm needs their sum), so they are added, not overlapped. With everything
split evenly this is "t x the FLOP/s, the bandwidth and the memory" of one GPU, plus communication.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from inference_eval.theory.ops import BYTE_MODELS, FUSED, ModelShape, OpCost, TheoryError, Traffic
from inference_eval.theory.ops import _check, _layer_sum, _model_sum, _Symbols, layer_ops, model_end_ops

COMM_OP = "all_reduce"   # the per-layer communication op of the op table
ALL_REDUCES_PER_LAYER = 2


def check_degree(shape: ModelShape, t: int) -> None:
    """A degree the model's heads allow: t divides n, and t divides n_kv or n_kv divides t."""
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise TheoryError(f"tensor-parallel degree must be a positive integer, got {t!r}")
    if shape.heads % t:
        raise TheoryError(f"model '{shape.name}': tensor-parallel degree {t} does not divide num_heads {shape.heads}")
    if shape.kv_heads % t and t % shape.kv_heads:
        raise TheoryError(f"model '{shape.name}': tensor-parallel degree {t} and num_kv_heads {shape.kv_heads}: "
                          f"neither divides the other")


def kv_share(shape: ModelShape, t: int) -> float:
    """Share of the KV heads (and of W_K, W_V and the KV cache) one GPU holds at degree t."""
    check_degree(shape, t)
    return 1.0 / t if shape.kv_heads % t == 0 else 1.0 / shape.kv_heads


def shares(shape: ModelShape, t: int) -> dict[str, tuple[float, dict[str, float]]]:
    """Per op: (share of its FLOPs, share of each tensor's elements) one GPU has at degree t."""
    q, kv = 1.0 / t, kv_share(shape, t)
    h, hkv = shape.hidden, shape.kv_hidden
    qkv = (h * q + 2 * hkv * kv) / (h + 2 * hkv)   # Q by query heads, K and V by KV heads
    qk = (h * q + hkv * kv) / (h + hkv)            # RoPE on Q and K
    norm = (1.0, {"X": 1.0, "residual": 1.0, "gamma": 1.0, "X_norm": 1.0})
    return {
        "qkv_proj": (qkv, {"X": 1.0, "W_QKV": qkv, "QKV": qkv}),
        "rope": (qk, {"QK": qk, "cos_sin": 1.0}),
        "kv_cache": (kv, {"KV_new": kv, "KV_past": kv, "KV_cache": kv}),
        "attention": (q, {"Q": q, "KV": kv, "O": q, "scores": q}),
        "o_proj": (q, {"O": q, "W_O": q, "X": 1.0}),
        "add_norm_attn": norm,
        "gate_up_proj": (q, {"X": 1.0, "W_GU": q, "GU": q}),
        "act_mul": (q, {"GU": q, "D": q}),
        "down_proj": (q, {"D": q, "W_D": q, "X": 1.0}),
        "add_norm_mlp": norm,
        "embedding": (1.0, {"ids": 1.0, "W_E_rows": q, "X": 1.0}),
        "final_norm": (1.0, {"X": 1.0, "gamma": 1.0, "X_norm": 1.0}),
        "lm_head": (q, {"X_last": 1.0, "W_LM": q, "logits": q}),
    }


def _share_text(share: float, t: int) -> str:
    if share == 1.0:
        return ""
    return "/t" if abs(share * t - 1.0) < 1e-12 else f"*{share:.4g}"


def shard(cost: OpCost, table: Mapping[str, tuple[float, dict[str, float]]], t: int) -> OpCost:
    """One GPU's part of a single-GPU op ``cost`` (``table`` from ``shares``)."""
    if t == 1:
        return cost
    if cost.op not in table:
        raise TheoryError(f"no tensor-parallel split is defined for op {cost.op!r}")
    flops_share, tensors = table[cost.op]

    def one(tr: Traffic) -> Traffic:
        if tr.tensor not in tensors:
            raise TheoryError(f"no tensor-parallel split is defined for tensor {tr.tensor!r} of op {cost.op!r}")
        share = tensors[tr.tensor]
        if share == 1.0:
            return tr
        symbol = f"{tr.symbol}{_share_text(share, t)}" if tr.symbol else tr.symbol
        return replace(tr, elements=tr.elements * share, symbol=symbol)

    formula = cost.formula if flops_share == 1.0 or cost.formula == "0" else \
        f"({cost.formula}){_share_text(flops_share, t)}"
    traffic = {m: tuple(one(tr) for tr in cost.traffic[m]) for m in BYTE_MODELS}
    return replace(cost, flops=cost.flops * flops_share, matmul_flops=cost.matmul_flops * flops_share,
                   formula=formula, traffic=traffic)


def all_reduce(shape: ModelShape, b, s, stage: str, t: int) -> OpCost:
    """The layer's two all-reduces (after o_proj and after down_proj) on one GPU at degree t."""
    _check(stage, b, s)
    check_degree(shape, t)
    T = s if stage == "prefill" else 1
    elements = b * T * shape.hidden               # one all-reduce's tensor: b x T x h (h is a multiple of t)
    # a ring all-reduce sends 2(t-1)/t elements per element reduced and adds (t-1)/t of them (reduce-scatter);
    # integer arithmetic keeps one GPU's table in integers (0 at t = 1)
    link = ALL_REDUCES_PER_LAYER * 2 * (t - 1) * elements * shape.bytes_per_element / t if t > 1 else 0
    flops = ALL_REDUCES_PER_LAYER * (t - 1) * elements / t if t > 1 else 0
    sym = _Symbols(stage)
    return OpCost(COMM_OP, stage, "op", flops, 0, sym("2(t-1)/t*b{T}h"), {m: () for m in BYTE_MODELS},
                  summary=sym("HBM not counted; link: 2 x 2(t-1)/t x e*b{T}h"), link_bytes=link)


def device_costs(shape: ModelShape, b, s, stage: str, causal: bool = False, t: int = 1) -> list[OpCost]:
    """Every op-table row for one GPU at degree t: the layer ops, ``all_reduce``, the layer total, the
    model-end ops and the model total (``ops.all_costs`` plus the communication op at t = 1)."""
    check_degree(shape, t)
    table = shares(shape, t) if t > 1 else {}
    ops = [shard(c, table, t) for c in layer_ops(shape, b, s, stage, causal)] + [all_reduce(shape, b, s, stage, t)]
    ends = [shard(c, table, t) for c in model_end_ops(shape, b, s, stage)]
    layer = _layer_sum(stage, ops)
    return ops + [layer] + ends + [_model_sum(shape, stage, layer, ends)]


def device_model_total(shape: ModelShape, b, s, stage: str, causal: bool = False, t: int = 1) -> OpCost:
    """The whole model's step on one GPU at degree t (its ``link_bytes``: what that GPU sends)."""
    return device_costs(shape, b, s, stage, causal, t)[-1]


def device_weight_bytes(shape: ModelShape, t: int = 1) -> float:
    """Weights one GPU holds at degree t: every split weight / t (K and V by the KV share), the norms whole."""
    q, kv = 1.0 / t, kv_share(shape, t)
    h, hkv, f = shape.hidden, shape.kv_hidden, shape.intermediate
    layer = h * (h * q + 2 * hkv * kv) + h * h * q + 3 * h * f * q + 2 * h
    params = shape.layers * layer + 2 * shape.vocab * shape.hidden * q + shape.hidden
    return params * shape.bytes_per_element


def device_kv_bytes_per_token(shape: ModelShape, t: int = 1) -> float:
    """KV cache bytes one token of context takes on one GPU at degree t."""
    return shape.kv_bytes_per_token() * kv_share(shape, t)


def memory_check(shape: ModelShape, memory_bytes: float, t: int = 1, usable_share: float = 1.0,
                 context_tokens: int = 0, who: str = "", hardware: str = "") -> dict[str, Any]:
    """Whether the model's weights (and one sequence's KV cache of ``context_tokens``) fit one GPU's
    usable memory at degree t: ``usable_share`` x ``memory_bytes`` (an engine's own share, e.g. vLLM's
    gpu_memory_utilization; 1: all of it). Returns fits, need_gb, usable_gb and a sentence saying so."""
    if not 0 < usable_share <= 1:
        raise TheoryError(f"usable memory share must be in (0, 1], got {usable_share!r}")
    weights = device_weight_bytes(shape, t)
    need = weights + device_kv_bytes_per_token(shape, t) * int(context_tokens)
    usable = usable_share * memory_bytes
    fits = need <= usable
    on = f"{t} GPUs" if t > 1 else "one GPU"
    what = f"weights {weights / 1e9:.1f} GB per GPU"
    if context_tokens:
        what += f" + one sequence's KV cache at context {context_tokens} ({(need - weights) / 1e9:.2f} GB)"
    of = f"{hardware}'s {memory_bytes / 1e9:.0f} GB" if hardware else f"{memory_bytes / 1e9:.0f} GB"
    where = f"{usable / 1e9:.1f} GB usable ({who + ' ' if who else ''}{usable_share:g} of {of})"
    text = f"{shape.name} on {on}: {what}; {'fits in' if fits else 'does not fit in'} {where}"
    return {"fits": bool(fits), "need_gb": need / 1e9, "usable_gb": usable / 1e9, "weights_gb_per_gpu": weights / 1e9,
            "tensor_parallel": t, "reason": text}


def memory_check_for_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``memory_check`` for a job's resolved config: its model, its hardware's memory per GPU, its
    ``library.tensor_parallel`` and the library's own share of GPU memory where it has one
    (``gpu_memory_utilization``, vLLM's; 1 otherwise). The weights are checked, not the KV cache, because
    the dataset's contexts are not known when jobs are planned."""
    from inference_eval.theory.hardware import ceilings

    shape = ModelShape.from_config(cfg["model"])
    lib = cfg.get("library") or {}
    t = int(lib.get("tensor_parallel") or 1)
    share = lib.get("gpu_memory_utilization") if (cfg.get("hardware") or {}).get("kind") == "gpu" else None
    who = f"{lib.get('name')} gpu_memory_utilization" if share else ""
    c = ceilings(cfg["hardware"], shape.dtype)
    return memory_check(shape, c.memory_bytes, t, float(share or 1.0), who=who, hardware=c.hardware)


__all__ = ["ALL_REDUCES_PER_LAYER", "COMM_OP", "FUSED", "all_reduce", "check_degree", "device_costs",
           "device_kv_bytes_per_token", "device_model_total", "device_weight_bytes", "kv_share", "memory_check",
           "memory_check_for_config", "shard", "shares"]
