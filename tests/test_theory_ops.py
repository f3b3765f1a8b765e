"""The analytic counts against a real transformers LlamaDecoderLayer: FLOPs (FlopCounterMode) and bytes
(the numel * element_size of the tensors each op claims to move)."""

from __future__ import annotations

import numpy as np
import pytest

from inference_eval.opnames import OPS
from inference_eval.theory.ops import (FUSED, UNFUSED, ModelShape, TheoryError, all_costs, layer_ops, layer_total,
                                       model_end_ops, model_total)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from transformers import LlamaConfig  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding  # noqa: E402

TINY = {"mha": dict(hidden=128, intermediate=344, heads=4, kv_heads=4),
        "gqa": dict(hidden=128, intermediate=352, heads=4, kv_heads=2)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def tiny_shape(kind: str, dtype: str = "float32") -> ModelShape:
    return ModelShape(name=f"tiny-{kind}", layers=2, vocab=1000, bytes_per_element=4 if dtype == "float32" else 2,
                      dtype=dtype, **TINY[kind])


def hf_config(shape: ModelShape) -> LlamaConfig:
    cfg = LlamaConfig(hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                      num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                      num_hidden_layers=shape.layers, vocab_size=shape.vocab, tie_word_embeddings=False)
    cfg._attn_implementation = "eager"
    return cfg


class LayerRun:
    """One prefill (b x s) or one decode step (b x 1 at context s, cache of s-1) of a real layer,
    with FLOPs per module and every module's inputs, outputs and weights captured."""

    def __init__(self, shape: ModelShape, b: int, s: int, stage: str, dtype=torch.float32):
        torch.manual_seed(0)
        cfg = hf_config(shape)
        self.layer = LlamaDecoderLayer(cfg, layer_idx=0).to(dtype).eval()
        rotary = LlamaRotaryEmbedding(cfg)
        x = torch.randn(b, s, shape.hidden, dtype=dtype)
        pos = torch.arange(s).expand(b, s)
        self.io: dict[str, tuple] = {}
        self.cache = DynamicCache(config=cfg)
        with torch.no_grad():
            if stage == "decode":
                self.layer(x[:, :s - 1], position_embeddings=rotary(x[:, :s - 1], pos[:, :s - 1]),
                           past_key_values=self.cache, use_cache=True)
                self.past = (self.cache.layers[0].keys.clone(), self.cache.layers[0].values.clone())
                x, pos = x[:, s - 1:], pos[:, s - 1:]
            self.input = x
            self.cos_sin = rotary(x, pos)
            hooks = [m.register_forward_hook(self._hook(name)) for name, m in self.layer.named_modules() if name]
            with FlopCounterMode(display=False) as counter:
                self.layer(x, position_embeddings=self.cos_sin, past_key_values=self.cache, use_cache=True)
            for hook in hooks:
                hook.remove()
        self.flops = {name: sum(v.values()) for name, v in counter.get_flop_counts().items()}

    def _hook(self, name):
        def hook(module, args, output):
            self.io[name] = (args, output)
        return hook

    def module_flops(self, name: str) -> int:
        return self.flops.get(f"LlamaDecoderLayer.{name}", 0)

    def out(self, name):
        out = self.io[name][1]
        return out[0] if isinstance(out, tuple) else out

    def inp(self, name):
        return self.io[name][0][0]

    def param(self, name):
        return self.layer.get_parameter(name)


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("kind", ["mha", "gqa"])
@pytest.mark.parametrize("stage,b,s", [("prefill", 2, 16), ("decode", 3, 24)])
def test_matmul_flops_equal_flop_counter(kind, stage, b, s):
    shape = tiny_shape(kind)
    run = LayerRun(shape, b, s, stage)
    ops = {c.op: c for c in layer_ops(shape, b, s, stage)}
    projections = sum(run.module_flops(f"self_attn.{p}_proj") for p in "qkvo")
    assert ops["qkv_proj"].matmul_flops == sum(run.module_flops(f"self_attn.{p}_proj") for p in "qkv")
    assert ops["o_proj"].matmul_flops == run.module_flops("self_attn.o_proj")
    # what self_attn counts beyond its projections: QK^T and PV
    assert ops["attention"].matmul_flops == run.module_flops("self_attn") - projections
    assert ops["gate_up_proj"].matmul_flops == run.module_flops("mlp.gate_proj") + run.module_flops("mlp.up_proj")
    assert ops["down_proj"].matmul_flops == run.module_flops("mlp.down_proj")
    assert layer_total(shape, b, s, stage).matmul_flops == run.flops["LlamaDecoderLayer"]
    for op in ("rope", "kv_cache", "add_norm_attn", "act_mul", "add_norm_mlp"):
        assert ops[op].matmul_flops == 0


@pytest.mark.parametrize("kind", ["mha", "gqa"])
@pytest.mark.parametrize("stage,b,s", [("prefill", 2, 16), ("decode", 3, 24)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bytes_equal_tensor_sizes(kind, stage, b, s, dtype):
    shape = tiny_shape(kind, dtype)
    run = LayerRun(shape, b, s, stage, DTYPES[dtype])
    ops = {c.op: c for c in layer_ops(shape, b, s, stage)}

    def claimed(op, tensor, model=FUSED):
        t = ops[op].tensors(model)[tensor]
        return t.elements * t.bytes_per_element

    q, k, v = (run.out(f"self_attn.{p}_proj") for p in "qkv")
    assert claimed("qkv_proj", "X") == nbytes(run.inp("self_attn.q_proj"))
    assert claimed("qkv_proj", "W_QKV") == nbytes(*(run.param(f"self_attn.{p}_proj.weight") for p in "qkv"))
    assert claimed("qkv_proj", "QKV") == nbytes(q, k, v)
    assert claimed("rope", "QK") == nbytes(q, k)
    assert claimed("rope", "cos_sin") == nbytes(*run.cos_sin)
    cache_after = (run.cache.layers[0].keys, run.cache.layers[0].values)
    assert claimed("kv_cache", "KV_new") == nbytes(k, v)
    assert claimed("kv_cache", "KV_cache") == nbytes(k, v)  # fused: appended in place
    assert claimed("kv_cache", "KV_cache", UNFUSED) == nbytes(*cache_after)  # concat writes the whole cache
    if stage == "decode":
        assert claimed("kv_cache", "KV_past", UNFUSED) == nbytes(*run.past)
    assert claimed("attention", "Q") == nbytes(q)
    assert claimed("attention", "KV") == nbytes(*cache_after)
    assert claimed("attention", "O") == nbytes(run.inp("self_attn.o_proj"))
    scores = run.io["self_attn"][1][1]  # eager attention returns the softmaxed score matrix
    assert claimed("attention", "scores", UNFUSED) == nbytes(scores)
    assert claimed("o_proj", "W_O") == nbytes(run.param("self_attn.o_proj.weight"))
    assert claimed("o_proj", "X") == nbytes(run.out("self_attn.o_proj"))
    for op, norm in (("add_norm_attn", "input_layernorm"), ("add_norm_mlp", "post_attention_layernorm")):
        assert claimed(op, "gamma") == nbytes(run.param(f"{norm}.weight"))
        assert claimed(op, "X_norm") == nbytes(run.out(norm))
        assert claimed(op, "residual") == nbytes(run.input)
    assert claimed("gate_up_proj", "X") == nbytes(run.inp("mlp.gate_proj"))
    assert claimed("gate_up_proj", "W_GU") == nbytes(run.param("mlp.gate_proj.weight"), run.param("mlp.up_proj.weight"))
    assert claimed("gate_up_proj", "GU") == nbytes(run.out("mlp.gate_proj"), run.out("mlp.up_proj"))
    assert claimed("act_mul", "D") == nbytes(run.inp("mlp.down_proj"))
    assert claimed("down_proj", "W_D") == nbytes(run.param("mlp.down_proj.weight"))
    assert claimed("down_proj", "X") == nbytes(run.out("mlp.down_proj"))
    # the shared weights of a layer are exactly its parameters
    assert layer_total(shape, b, s, stage).weight_bytes() == nbytes(*run.layer.parameters())
    assert shape.layer_parameters() == sum(p.numel() for p in run.layer.parameters())


def test_model_parameters_and_ends_match_llama_for_causal_lm():
    from transformers import LlamaForCausalLM

    shape = tiny_shape("gqa")
    model = LlamaForCausalLM(hf_config(shape)).eval()
    assert shape.parameters() == sum(p.numel() for p in model.parameters())
    b, s = 2, 8
    ids = torch.randint(0, shape.vocab, (b, s))
    cache = DynamicCache(config=model.config)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    ends = {c.op: c for c in model_end_ops(shape, b, s, "prefill")}
    assert ends["lm_head"].tensors()["logits"].elements == out.logits.numel()
    assert ends["lm_head"].tensors()["W_LM"].elements == model.lm_head.weight.numel()
    assert ends["embedding"].tensors()["ids"].elements * 8 == nbytes(ids)
    total = model_total(shape, b, s, "prefill")
    assert total.matmul_flops == counter.get_total_flops()
    assert total.weight_bytes() == nbytes(*model.parameters()) - nbytes(model.model.embed_tokens.weight)
    kv = sum(nbytes(layer.keys, layer.values) for layer in cache.layers)
    assert shape.kv_bytes_per_token() * b * s == kv


def test_paper_counts_for_mha():
    shape = ModelShape("m", hidden=4096, intermediate=11008, heads=32, kv_heads=32, layers=32, vocab=32000,
                       bytes_per_element=2)
    b, s, h, f, n = 8, 512, 4096, 11008, 32
    pre = {c.op: c.flops for c in layer_ops(shape, b, s, "prefill")}
    dec = {c.op: c.flops for c in layer_ops(shape, b, s, "decode")}
    assert pre == {"qkv_proj": 6 * b * s * h * h, "rope": 6 * b * s * h, "kv_cache": 0,
                   "attention": 4 * b * s * s * h + 4 * b * s * s * n, "o_proj": 2 * b * s * h * h,
                   "add_norm_attn": 5 * b * s * h, "gate_up_proj": 4 * b * s * h * f, "act_mul": 2 * b * s * f,
                   "down_proj": 2 * b * s * h * f, "add_norm_mlp": 5 * b * s * h}
    assert dec == {"qkv_proj": 6 * b * h * h, "rope": 6 * b * h, "kv_cache": 0, "attention": 4 * b * s * h + 4 * b * s * n,
                   "o_proj": 2 * b * h * h, "add_norm_attn": 5 * b * h, "gate_up_proj": 4 * b * h * f,
                   "act_mul": 2 * b * f, "down_proj": 2 * b * h * f, "add_norm_mlp": 5 * b * h}
    assert [c.op for c in layer_ops(shape, b, s, "prefill")] == list(OPS)


def test_gqa_counts_and_causal_option():
    shape = ModelShape("g", hidden=4096, intermediate=14336, heads=32, kv_heads=8, layers=32, vocab=32000,
                       bytes_per_element=2)
    b, s = 8, 512
    ops = {c.op: c for c in layer_ops(shape, b, s, "prefill")}
    assert ops["qkv_proj"].flops == 2 * b * s * 4096 * (4096 + 2 * 1024)
    assert ops["qkv_proj"].formula == "2bsh(h+2h_kv)"
    causal = {c.op: c for c in layer_ops(shape, b, s, "prefill", causal=True)}["attention"]
    assert causal.flops / ops["attention"].flops == pytest.approx((s + 1) / (2 * s))
    # a causal mask changes nothing for a decode step (its one query sees every key)
    assert {c.op: c for c in layer_ops(shape, b, s, "decode", causal=True)}["attention"].flops == \
        {c.op: c for c in layer_ops(shape, b, s, "decode")}["attention"].flops


def test_unfused_moves_more_only_in_attention_and_cache():
    shape = tiny_shape("gqa")
    for stage in ("prefill", "decode"):
        for c in layer_ops(shape, 4, 64, stage):
            if c.op == "attention":
                assert c.bytes(UNFUSED) - c.bytes(FUSED) == 4 * 4 * shape.heads * (64 if stage == "prefill" else 1) * 64 * 4
            elif c.op == "kv_cache" and stage == "decode":
                assert c.bytes(UNFUSED) > c.bytes(FUSED)
            else:
                assert c.bytes(UNFUSED) == c.bytes(FUSED)


def test_totals_add_up_and_arrays_broadcast():
    shape = tiny_shape("mha")
    costs = all_costs(shape, 2, 32, "decode")
    by_op = {c.op: c for c in costs}
    layer = sum(by_op[op].bytes() for op in OPS)
    assert by_op["layer"].bytes() == layer
    assert by_op["model"].flops == shape.layers * by_op["layer"].flops + sum(
        by_op[op].flops for op in ("embedding", "final_norm", "lm_head"))
    b = np.array([1, 2, 3])
    s = np.array([10.0, 20.0, 30.0])
    vector = model_total(shape, b, s, "decode")
    for i in range(3):
        one = model_total(shape, int(b[i]), float(s[i]), "decode")
        assert vector.flops[i] == pytest.approx(one.flops)
        assert vector.bytes()[i] == pytest.approx(one.bytes())


def test_bad_inputs_are_named():
    with pytest.raises(TheoryError, match="stage"):
        layer_ops(tiny_shape("mha"), 1, 1, "generate")
    with pytest.raises(TheoryError, match="num_kv_heads"):
        ModelShape.from_config({"name": "x", "hidden_size": 128, "intermediate_size": 1, "num_heads": 4,
                                "num_kv_heads": 3, "num_layers": 1, "vocab_size": 10})
    with pytest.raises(TheoryError, match="dtype"):
        ModelShape.from_config({"name": "x", "hidden_size": 128, "intermediate_size": 1, "num_heads": 4,
                                "num_layers": 1, "vocab_size": 10, "dtype": "int3"})
