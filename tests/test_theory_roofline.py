"""Intensity, bound and roofline time on the paper's hardware, the ceilings' sources, the tables and the CLI."""

from __future__ import annotations

import pytest

from inference_eval.config import compose
from inference_eval.opnames import OPS, STAGES
from inference_eval.theory.hardware import Ceilings, ceilings
from inference_eval.theory.ops import ModelShape, TheoryError, layer_ops
from inference_eval.theory.roofline import COMPUTE, MEMORY, bound, op_table, roofline_time

LINEAR = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
# The A100 80GB datasheet figures the paper uses: 2,039 GB/s, 312 TFLOP/s bf16.
A100 = {"name": "a100", "memory_gb": 80, "bandwidth_gbs": 2039, "peak_tflops_bf16": 312, "measured": {}}


@pytest.fixture(scope="module")
def llama7b() -> ModelShape:
    return ModelShape.from_config(compose(["model=llama2-7b"])["model"])


@pytest.fixture(scope="module")
def a100() -> Ceilings:
    return ceilings(A100)


@pytest.mark.parametrize("b", [1, 2, 4, 8, 16])
def test_decode_linear_intensity_is_near_batch_and_attention_near_one(llama7b, a100, b):
    ops = {c.op: c for c in layer_ops(llama7b, b, 512, "decode")}
    for op in LINEAR:
        # weights dominate the bytes: 2*b*rows*cols FLOPs over 2*rows*cols bytes (+ activations)
        assert 0.9 * b < ops[op].intensity() <= b, op
        assert bound(ops[op].intensity(), a100) == MEMORY
    for model in ("fused", "unfused"):
        assert ops["attention"].intensity(model) == pytest.approx(1.0, abs=0.1)
        assert bound(ops["attention"].intensity(model), a100) == MEMORY


def test_prefill_linear_layers_compute_bound_decode_memory_bound_on_a100(llama7b, a100):
    assert a100.ridge_point == pytest.approx(312e12 / 2039e9)
    pre = {c.op: c for c in layer_ops(llama7b, 8, 512, "prefill")}
    dec = {c.op: c for c in layer_ops(llama7b, 8, 512, "decode")}
    for op in LINEAR:
        assert bound(pre[op].intensity(), a100) == COMPUTE, op
        t = roofline_time(pre[op].flops, pre[op].bytes(), a100)
        assert t == pytest.approx(pre[op].flops / a100.peak_flops)
    for op in OPS:
        assert bound(dec[op].intensity(), a100) == MEMORY, op
        assert roofline_time(dec[op].flops, dec[op].bytes(), a100) == pytest.approx(dec[op].bytes() / a100.bandwidth)
    for op in ("rope", "add_norm_attn", "act_mul", "add_norm_mlp"):  # elementwise: memory-bound in both stages
        assert bound(pre[op].intensity(), a100) == MEMORY
    # writing the s x s score matrix turns prefill attention from compute- to memory-bound
    assert bound(pre["attention"].intensity("fused"), a100) == COMPUTE
    assert bound(pre["attention"].intensity("unfused"), a100) == MEMORY


def test_gqa_raises_decode_attention_intensity_by_group_size():
    mistral = ModelShape.from_config(compose(["model=mistral-7b"])["model"])
    attn = {c.op: c for c in layer_ops(mistral, 8, 2048, "decode")}["attention"]
    assert attn.intensity() == pytest.approx(mistral.heads / mistral.kv_heads, rel=0.05)


def test_ceilings_prefer_measured_and_say_so():
    h100 = ceilings(compose(["hardware=h100"])["hardware"])
    assert h100.bandwidth == 3000e9 and h100.peak_flops == 796e12
    assert "measured bandwidth_gbs=3000" in h100.source and "measured peak_tflops_bf16=796" in h100.source
    a100 = ceilings(compose(["hardware=a100"])["hardware"])
    assert a100.source == "datasheet bandwidth_gbs=2039; datasheet peak_tflops_bf16=312"
    partial = ceilings({**A100, "measured": {"bandwidth_gbs": 1800}})
    assert partial.bandwidth == 1800e9 and partial.peak_flops == 312e12
    assert partial.source.startswith("measured bandwidth_gbs=1800; datasheet peak")
    fp32 = ceilings(A100, "float32")
    assert "no peak_tflops_fp32" in fp32.source
    with pytest.raises(TheoryError, match="bandwidth_gbs"):
        ceilings({**A100, "bandwidth_gbs": -1})


def test_op_table_has_tables_4_and_5_columns(llama7b, a100):
    table = op_table(llama7b, a100, 8, 512)
    for col in ("model", "hardware", "stage", "op", "formula", "flops", "bytes_fused", "bytes_unfused",
                "intensity_fused", "intensity_unfused", "bound", "roofline_time_s", "ceilings_source"):
        assert col in table.columns
    ops = table[table["level"] == "op"]
    # the layer's ops, then the tensor-parallel communication op (zero on one GPU)
    assert list(ops[ops["stage"] == "prefill"]["op"]) == list(OPS) + ["all_reduce"]
    comm = ops[ops["op"] == "all_reduce"]
    assert (comm["flops"] == 0).all() and (comm["link_bytes"] == 0).all() and (comm["roofline_time_s"] == 0).all()
    table = table[table["op"] != "all_reduce"]
    assert set(table["stage"]) == set(STAGES)
    model = table[(table["op"] == "model") & (table["stage"] == "decode")].iloc[0]
    assert model["weight_bytes"] == llama7b.weight_bytes() - llama7b.vocab * llama7b.hidden * 2
    assert (table["intensity_fused"] == table["flops"] / table["bytes_fused"]).all()


def test_cli_prints_one_op_layer_and_model(capsys):
    from inference_eval.cli import main

    assert main(["theory", "--model", "llama2-7b", "--hardware", "a100", "--batch", "8", "--seq", "512",
                 "--stage", "decode", "--op", "attention", "--unfused"]) == 0
    out = capsys.readouterr().out
    assert "4bsh + 4bsn" in out and "scores" in out and "memory" in out and "unfused bytes" in out
    assert main(["theory", "--model", "mistral-7b", "--hardware", "h100", "--level", "layer", "--causal"]) == 0
    out = capsys.readouterr().out
    assert "measured bandwidth_gbs=3000" in out and out.count("layer") >= 2 and "causal" in out
    assert main(["theory", "--level", "model", "--csv"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("model,hardware,stage,level,op")
    assert "lm_head" in out and "embedding" in out
    assert main(["theory", "--model", "nope"]) == 2
    assert "valid model choices" in capsys.readouterr().err


def test_paper_flops_column_assumes_one_kv_head_per_head():
    from inference_eval.config import compose
    from inference_eval.theory.roofline import op_table_for_config

    gqa = op_table_for_config(compose(["model=mistral-7b", "hardware=a100"]), 8, 512).set_index(["stage", "op"])
    mha = op_table_for_config(compose(["model=llama2-7b", "hardware=a100"]), 8, 512).set_index(["stage", "op"])
    b, s, h = 8, 512, 4096
    assert gqa.loc[("prefill", "qkv_proj"), "flops_paper"] == 6 * b * s * h**2  # the paper's 6bsh^2
    assert gqa.loc[("prefill", "qkv_proj"), "flops"] == 2 * b * s * h * (h + 2 * 1024)  # GQA: h_kv = 8*128
    assert (mha["flops"] == mha["flops_paper"]).all()
