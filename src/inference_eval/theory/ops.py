"""FLOPs and exact bytes of every op of a Llama decoder layer (docs/theory.md), plus the model ends.

Symbols: b batch, s length (prefill: input tokens; decode: the context *including* the new token, so
a decode step at context s attends over s keys and appends the s-th cache entry), h hidden,
h' intermediate, n heads, d = h/n, n_kv KV heads, h_kv = n_kv*d, e bytes per element, V vocabulary,
l layers. Prefill processes T = s tokens per sequence, decode T = 1.

FLOPs are the paper's counts (a multiply-add is 2 FLOPs) generalised to GQA: the K and V projections
are h x h_kv, so QKV costs 2bsh(h + 2h_kv), RoPE 3 FLOPs per element of Q and K. Causal masking,
when asked for, counts only the (query, key) pairs a query may see (prefill: s(s+1)/2 instead of s^2,
"halves" the score FLOPs); eager implementations compute the full matrix anyway, so it is an option.

Bytes are exact under two stated models (``FUSED`` and ``UNFUSED``), as a list of ``Traffic``:
one tensor, how many elements, how often it is read and written.

- fused: every operand read once, every result written once (one kernel per op, e.g. vLLM's fused
  QKV and fused add+RMSNorm, FlashAttention); the KV cache is appended in place; the attention score
  matrix never leaves the chip.
- unfused: as fused, except the two places where eager Transformers moves more: attention writes the
  b x n x T x s score matrix (QK^T), softmax reads and writes it, PV reads it (2 reads + 2 writes; the
  full matrix even under a causal mask); the KV cache update is ``torch.cat`` of the past cache and
  the new entries into a new tensor (reads the past and the new entries, writes the whole cache) on
  every step.

Every count is plain arithmetic, so ``b`` and ``s`` may be numpy arrays (``bound`` evaluates many
decode steps at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from inference_eval.opnames import OPS, STAGES

FUSED, UNFUSED = "fused", "unfused"
BYTE_MODELS = (FUSED, UNFUSED)
# Ops outside the decoder layers; whole-model totals = l x layer + these.
MODEL_OPS = ("embedding", "final_norm", "lm_head")
LAYER, MODEL = "layer", "model"   # names of the totals
# Table levels: the layer ops; the layer total; the model-end ops and the model total.
LEVELS = ("op", LAYER, MODEL)

DTYPE_BYTES = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "bfloat16": 2, "bf16": 2,
               "float8": 1, "fp8": 1, "int8": 1}
TOKEN_ID_BYTES = 8  # token ids are int64 tensors in PyTorch frameworks


class TheoryError(ValueError):
    """Bad input to the analytic model; the message names it and lists the valid choices."""


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int          # h
    intermediate: int    # h'
    heads: int           # n
    kv_heads: int        # n_kv
    layers: int          # l
    vocab: int           # V
    bytes_per_element: int  # e
    dtype: str = "bfloat16"

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_hidden(self) -> int:  # h_kv
        return self.kv_heads * self.head_dim

    @property
    def is_mha(self) -> bool:
        return self.kv_heads == self.heads

    def layer_parameters(self) -> int:
        h, hkv, f = self.hidden, self.kv_hidden, self.intermediate
        return h * (h + 2 * hkv) + h * h + 3 * h * f + 2 * h

    def parameters(self) -> int:
        """All weights: l layers + embedding table + final norm + (untied) LM head."""
        return self.layers * self.layer_parameters() + 2 * self.vocab * self.hidden + self.hidden

    def weight_bytes(self) -> int:
        return self.parameters() * self.bytes_per_element

    def kv_bytes_per_token(self) -> int:
        """KV cache bytes one token of context holds across all layers (K and V)."""
        return 2 * self.layers * self.kv_hidden * self.bytes_per_element

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any]) -> "ModelShape":
        """From the ``model`` section of a resolved config (conf/model/*.yaml)."""
        name = str(model_cfg.get("name") or "<unnamed>")
        keys = ("hidden_size", "intermediate_size", "num_heads", "num_layers", "vocab_size")
        values = {}
        for key in keys + ("num_kv_heads",):
            value = model_cfg.get(key)
            if value is None and key == "num_kv_heads":
                value = model_cfg.get("num_heads")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TheoryError(f"model '{name}': {key} must be a positive integer, got {value!r}")
            values[key] = value
        if values["hidden_size"] % values["num_heads"]:
            raise TheoryError(f"model '{name}': hidden_size {values['hidden_size']} is not a multiple of "
                              f"num_heads {values['num_heads']}")
        if values["num_heads"] % values["num_kv_heads"]:
            raise TheoryError(f"model '{name}': num_heads {values['num_heads']} is not a multiple of "
                              f"num_kv_heads {values['num_kv_heads']}")
        dtype = str(model_cfg.get("dtype") or "bfloat16")
        if dtype not in DTYPE_BYTES:
            raise TheoryError(f"model '{name}': dtype {dtype!r} unknown; valid: {', '.join(DTYPE_BYTES)}")
        return cls(name=name, hidden=values["hidden_size"], intermediate=values["intermediate_size"],
                   heads=values["num_heads"], kv_heads=values["num_kv_heads"], layers=values["num_layers"],
                   vocab=values["vocab_size"], bytes_per_element=DTYPE_BYTES[dtype], dtype=dtype)


@dataclass(frozen=True)
class Traffic:
    """One tensor an op moves: ``elements`` of ``bytes_per_element``, read ``reads`` and written ``writes`` times."""

    tensor: str
    kind: str            # weight | activation | kv_cache | scores | token_ids | rope_table | logits | embedding_rows
    elements: Any        # int, float or numpy array
    reads: int
    writes: int
    bytes_per_element: int
    symbol: str = ""     # the element count in the paper's symbols, e.g. "bsh"

    @property
    def bytes(self):
        return self.elements * (self.reads + self.writes) * self.bytes_per_element

    def scaled(self, factor) -> "Traffic":
        return replace(self, elements=self.elements * factor)


@dataclass(frozen=True)
class OpCost:
    op: str
    stage: str
    level: str                 # op (a layer op) | layer (the layer total) | model (a model-end op or the total)
    flops: Any
    matmul_flops: Any          # the part done by matrix multiplications (what FlopCounterMode counts)
    formula: str               # FLOPs in the paper's symbols
    traffic: Mapping[str, tuple[Traffic, ...]] = field(default_factory=dict)  # byte model -> tensors
    summary: str = ""          # for totals: how the bytes add up, instead of listing every tensor
    link_bytes: Any = 0        # bytes one GPU sends over the interconnect (tensor parallel: theory.parallel)

    def bytes(self, model: str = FUSED):
        if model not in self.traffic:
            raise TheoryError(f"unknown byte model {model!r}; valid: {', '.join(BYTE_MODELS)}")
        return sum(t.bytes for t in self.traffic[model]) if self.traffic[model] else 0

    def weight_bytes(self, model: str = FUSED):
        """Bytes of weights every sequence of a batch shares (read once per batch step)."""
        return sum(t.bytes for t in self.traffic[model] if t.kind == "weight")

    def intensity(self, model: str = FUSED):
        """FLOPs per byte moved."""
        return self.flops / self.bytes(model)

    def tensors(self, model: str = FUSED) -> dict[str, Traffic]:
        return {t.tensor: t for t in self.traffic[model]}

    def bytes_formula(self, model: str = FUSED) -> str:
        """Bytes in the paper's symbols, e.g. ``e*(bsh + h(h+2h_kv) + bs(h+2h_kv))``."""
        if self.summary:
            return self.summary
        scaled, other = [], []
        for t in self.traffic[model]:
            count = t.reads + t.writes
            term = f"{count}*{t.symbol}" if count != 1 else t.symbol
            (other if t.kind == "token_ids" else scaled).append(
                f"{t.bytes_per_element}*{term}" if t.kind == "token_ids" else term)
        text = "e*(" + " + ".join(scaled) + ")" if scaled else ""
        return " + ".join([x for x in [text] + other if x]) or "0"


def _check(stage: str, b, s) -> None:
    if stage not in STAGES:
        raise TheoryError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
    if np.any(np.asarray(b) < 1) or np.any(np.asarray(s) < 1):
        raise TheoryError(f"batch and length must be >= 1, got b={b!r}, s={s!r}")


class _Symbols:
    """Renders element-count templates: {T} tokens per sequence, {S} context, {P} past context."""

    def __init__(self, stage: str):
        self.prefill = stage == "prefill"

    def __call__(self, template: str) -> str:
        out = template.replace("{T}", "s" if self.prefill else "").replace("{S}", "s")
        return out.replace("{P}", "(s-1)")  # past context exists only in decode


def _traffic(both: Sequence[Traffic], unfused_only: Sequence[Traffic] | None = None) -> dict:
    fused = tuple(both)
    return {FUSED: fused, UNFUSED: tuple(unfused_only) if unfused_only is not None else fused}


def layer_ops(shape: ModelShape, b, s, stage: str, causal: bool = False) -> list[OpCost]:
    """The decoder-layer ops of ``opnames.OPS``, in order, for one layer."""
    _check(stage, b, s)
    h, f, n, hkv, d, e = (shape.hidden, shape.intermediate, shape.heads, shape.kv_hidden,
                          shape.head_dim, shape.bytes_per_element)
    prefill = stage == "prefill"
    T = s if prefill else 1
    S = s
    past = S - T  # decode: cache entries before this step
    sym = _Symbols(stage)
    mha = shape.is_mha

    def act(name, elements, symbol, reads=0, writes=0, kind="activation"):
        return Traffic(name, kind, elements, reads, writes, e, sym(symbol))

    def weight(name, elements, symbol):
        return Traffic(name, "weight", elements, 1, 0, e, symbol)

    def fstr(gqa: str, paper: str | None = None) -> str:
        text = sym(gqa)
        return f"{text} = {sym(paper)}" if paper and mha else text

    ops: dict[str, OpCost] = {}

    qkv = 2 * b * T * h * (h + 2 * hkv)
    ops["qkv_proj"] = OpCost("qkv_proj", stage, "op", qkv, qkv, fstr("2b{T}h(h+2h_kv)", "6b{T}h^2"), _traffic([
        act("X", b * T * h, "b{T}h", reads=1),
        weight("W_QKV", h * (h + 2 * hkv), "h(h+2h_kv)"),
        act("QKV", b * T * (h + 2 * hkv), "b{T}(h+2h_kv)", writes=1)]))

    ops["rope"] = OpCost("rope", stage, "op", 3 * b * T * (h + hkv), 0, fstr("3b{T}(h+h_kv)", "6b{T}h"), _traffic([
        act("QK", b * T * (h + hkv), "b{T}(h+h_kv)", reads=1, writes=1),
        act("cos_sin", 2 * b * T * d, "2b{T}d", reads=1, kind="rope_table")]))

    ops["kv_cache"] = OpCost("kv_cache", stage, "op", 0, 0, "0", _traffic(
        [act("KV_new", 2 * b * T * hkv, "2b{T}h_kv", reads=1),
         act("KV_cache", 2 * b * T * hkv, "2b{T}h_kv", writes=1, kind="kv_cache")],
        [act("KV_new", 2 * b * T * hkv, "2b{T}h_kv", reads=1)]
        + ([] if prefill else [act("KV_past", 2 * b * past * hkv, "2b{P}h_kv", reads=1, kind="kv_cache")])
        + [act("KV_cache", 2 * b * S * hkv, "2b{S}h_kv", writes=1, kind="kv_cache")]))

    pairs = T * S - (T * (T - 1) // 2 if causal else 0)  # (query, key) pairs computed per sequence and head
    if prefill and causal:
        attn_formula = "2bs(s+1)(h+n)"  # 4b * s(s+1)/2 * (h+n)
    else:
        pair_sym = "s^2" if prefill else "s"
        attn_formula = f"4b{pair_sym}h + 4b{pair_sym}n"
    attn_matmul = 4 * b * pairs * h
    attn_io = [act("Q", b * T * h, "b{T}h", reads=1),
               act("KV", 2 * b * S * hkv, "2b{S}h_kv", reads=1, kind="kv_cache"),
               act("O", b * T * h, "b{T}h", writes=1)]
    scores = act("scores", b * n * T * S, "bns^2" if prefill else "bns", reads=2, writes=2, kind="scores")
    ops["attention"] = OpCost("attention", stage, "op", attn_matmul + 4 * b * pairs * n, attn_matmul,
                              attn_formula, _traffic(attn_io, attn_io + [scores]))

    o = 2 * b * T * h * h
    ops["o_proj"] = OpCost("o_proj", stage, "op", o, o, sym("2b{T}h^2"), _traffic([
        act("O", b * T * h, "b{T}h", reads=1),
        weight("W_O", h * h, "h^2"),
        act("X", b * T * h, "b{T}h", writes=1)]))

    def add_norm(name):
        return OpCost(name, stage, "op", 5 * b * T * h, 0, sym("5b{T}h"), _traffic([
            act("X", b * T * h, "b{T}h", reads=1),
            act("residual", b * T * h, "b{T}h", reads=1, writes=1),
            weight("gamma", h, "h"),
            act("X_norm", b * T * h, "b{T}h", writes=1)]))

    ops["add_norm_attn"] = add_norm("add_norm_attn")

    gu = 4 * b * T * h * f
    ops["gate_up_proj"] = OpCost("gate_up_proj", stage, "op", gu, gu, sym("4b{T}hh'"), _traffic([
        act("X", b * T * h, "b{T}h", reads=1),
        weight("W_GU", 2 * h * f, "2hh'"),
        act("GU", 2 * b * T * f, "2b{T}h'", writes=1)]))

    ops["act_mul"] = OpCost("act_mul", stage, "op", 2 * b * T * f, 0, sym("2b{T}h'"), _traffic([
        act("GU", 2 * b * T * f, "2b{T}h'", reads=1),
        act("D", b * T * f, "b{T}h'", writes=1)]))

    dn = 2 * b * T * h * f
    ops["down_proj"] = OpCost("down_proj", stage, "op", dn, dn, sym("2b{T}hh'"), _traffic([
        act("D", b * T * f, "b{T}h'", reads=1),
        weight("W_D", h * f, "hh'"),
        act("X", b * T * h, "b{T}h", writes=1)]))

    ops["add_norm_mlp"] = add_norm("add_norm_mlp")
    return [ops[name] for name in OPS]


def model_end_ops(shape: ModelShape, b, s, stage: str) -> list[OpCost]:
    """Embedding lookup, final RMSNorm and LM head. The LM head computes logits at the last position
    of each sequence only (what generation needs; vLLM and Transformers' generate do so)."""
    _check(stage, b, s)
    h, V, e = shape.hidden, shape.vocab, shape.bytes_per_element
    T = s if stage == "prefill" else 1
    sym = _Symbols(stage)

    def t(name, kind, elements, symbol, reads=0, writes=0, bpe=e):
        return Traffic(name, kind, elements, reads, writes, bpe, sym(symbol))

    emb = OpCost("embedding", stage, MODEL, 0, 0, "0", _traffic([
        t("ids", "token_ids", b * T, "b{T}", reads=1, bpe=TOKEN_ID_BYTES),
        t("W_E_rows", "embedding_rows", b * T * h, "b{T}h", reads=1),  # per token, not a shared weight read
        t("X", "activation", b * T * h, "b{T}h", writes=1)]))
    norm = OpCost("final_norm", stage, MODEL, 4 * b * T * h, 0, sym("4b{T}h"), _traffic([
        t("X", "activation", b * T * h, "b{T}h", reads=1),
        t("gamma", "weight", h, "h", reads=1),
        t("X_norm", "activation", b * T * h, "b{T}h", writes=1)]))
    head = OpCost("lm_head", stage, MODEL, 2 * b * h * V, 2 * b * h * V, "2bhV", _traffic([
        t("X_last", "activation", b * h, "bh", reads=1),
        t("W_LM", "weight", V * h, "Vh", reads=1),
        t("logits", "logits", b * V, "bV", writes=1)]))
    return [emb, norm, head]


def _sum(name: str, level: str, stage: str, parts: Sequence[tuple[OpCost, Any]], formula: str) -> OpCost:
    traffic = {m: tuple(t.scaled(k) if k != 1 else t for c, k in parts for t in c.traffic[m]) for m in BYTE_MODELS}
    return OpCost(name, stage, level, sum(c.flops * k for c, k in parts), sum(c.matmul_flops * k for c, k in parts),
                  formula, traffic, summary=formula, link_bytes=sum(c.link_bytes * k for c, k in parts))


def _layer_sum(stage: str, ops: Sequence[OpCost]) -> OpCost:
    return _sum(LAYER, LAYER, stage, [(c, 1) for c in ops], "sum of the layer's ops")


def _model_sum(shape: ModelShape, stage: str, layer: OpCost, ends: Sequence[OpCost]) -> OpCost:
    return _sum(MODEL, MODEL, stage, [(layer, shape.layers)] + [(c, 1) for c in ends],
                "l*layer + embedding + final_norm + lm_head")


def layer_total(shape: ModelShape, b, s, stage: str, causal: bool = False) -> OpCost:
    return _layer_sum(stage, layer_ops(shape, b, s, stage, causal))


def model_total(shape: ModelShape, b, s, stage: str, causal: bool = False) -> OpCost:
    """l x layer + embedding + final norm + LM head (the weights of every layer read once)."""
    return _model_sum(shape, stage, layer_total(shape, b, s, stage, causal), model_end_ops(shape, b, s, stage))


def all_costs(shape: ModelShape, b, s, stage: str, causal: bool = False) -> list[OpCost]:
    """Every row a table shows: the layer ops, the layer total, the model-end ops, the model total."""
    ops = layer_ops(shape, b, s, stage, causal)
    ends = model_end_ops(shape, b, s, stage)
    layer = _layer_sum(stage, ops)
    return ops + [layer] + ends + [_model_sum(shape, stage, layer, ends)]
