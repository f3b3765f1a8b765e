"""Per-op attribution on CPU with the tiny model (transformers eager and SDPA), sweep tables, NCU CSV parsing."""

import math

import pandas as pd
import pytest

from inference_eval.opnames import OPS, OTHER, STAGES

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from inference_eval.config import compose  # noqa: E402
from inference_eval.profiling import ncu, sweep  # noqa: E402
from inference_eval.profiling.attribution import RangeMarker, attribute_events  # noqa: E402
from inference_eval.profiling.runners import make_runner  # noqa: E402


@pytest.fixture(scope="module")
def cpu_cfg():
    return compose(["model=tiny-llama", "hardware=cpu"])


@pytest.mark.parametrize("variant", ["transformers-eager", "transformers-sdpa"])
def test_every_op_gets_time_in_both_stages(cpu_cfg, variant):
    torch.set_num_threads(1)
    runner = make_runner(variant, cpu_cfg, RangeMarker())
    try:
        runner.run(2, 16, repeat=-1)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for rep in range(2):
                runner.run(2, 16, repeat=rep)
    finally:
        runner.close()
    attribution = attribute_events(prof.events(), device=False)
    for stage in STAGES:
        per_rep = attribution.per_stage(stage)
        assert sorted(per_rep) == [0, 1], f"{stage}: repeats seen {sorted(per_rep)}"
        for rep, ops in per_rep.items():
            assert set(ops) == {*OPS, OTHER}
            zero = [op for op in OPS if ops[op] <= 0]
            assert not zero, f"{variant} {stage}: ops without time {zero}"
            assert ops[OTHER] > 0, "embedding / final norm must show up as 'other'"


def test_hooks_are_removed_on_close(cpu_cfg):
    import transformers.models.llama.modeling_llama as modeling
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    rope = modeling.apply_rotary_pos_emb
    runner = make_runner("transformers-eager", cpu_cfg, RangeMarker())
    assert modeling.apply_rotary_pos_emb is not rope
    layer = runner.model.model.layers[0]
    runner.close()
    assert modeling.apply_rotary_pos_emb is rope
    assert "get_interface" not in vars(ALL_ATTENTION_FUNCTIONS)
    assert not layer.self_attn.q_proj._forward_pre_hooks


def test_sweep_tables_have_shares_summing_to_one_and_theory(cpu_cfg):
    torch.set_num_threads(1)
    cfg = dict(cpu_cfg, profiling={"seq": {"b": 1, "s": [8, 16]}, "batch": {"s": 8, "b": [1, 2]},
                                   "extra": [], "heldout": [[2, 12]], "warmup": 0, "repeats": 2})
    st = sweep.settings(cfg)
    points = sweep.sweep_points(st)
    runner = make_runner("transformers-sdpa", cfg, RangeMarker())
    try:
        long = sweep.measure(runner, sweep.unique_shapes(points), st["warmup"], st["repeats"], device=False,
                             progress=False)
    finally:
        runner.close()
    summary = sweep.summarize(long, cfg, "transformers-sdpa", points)
    for stage in STAGES:
        for name in sweep.SWEEPS:
            table = sweep.sweep_table(summary, stage, name)
            assert not table.empty
            sums = table.groupby(["b", "s"])["share"].sum()
            assert all(math.isclose(v, 1.0, rel_tol=1e-9) for v in sums), sums
            assert set(table["op"]) == {*OPS, OTHER}
            layer_ops = table[table["op"].isin(OPS) & (table["op"] != "kv_cache")]
            assert (layer_ops["theory_flops"] > 0).all()
            assert (layer_ops["roofline_time_s"] > 0).all()
            assert (layer_ops["achieved_fraction"] > 0).all()
    assert set(summary[summary["b"].eq(1) & summary["s"].eq(8)]["roles"]) == {"seq,batch"}
    pts = sweep.points_table(summary, cfg)
    assert set(pts["stage"]) == set(STAGES)
    assert pts.loc[(pts["b"] == 2) & (pts["s"] == 12), "heldout"].all()
    assert (pts["layers_time_s"] > 0).all() and (pts["stage_time_s"] >= pts["layers_time_s"]).all()


def test_settings_defaults_by_kind_and_overrides(cpu_cfg):
    st = sweep.settings(cpu_cfg)
    assert st["model"] == "tiny-llama" and st["ncu"]["enabled"] is False
    gpu = sweep.settings({"hardware": {"kind": "gpu"}})
    assert gpu["seq"] == {"b": 8, "s": [32, 128, 512, 1024, 2048]}
    assert gpu["batch"] == {"s": 1024, "b": [1, 2, 4, 8, 16]}
    over = sweep.settings({"hardware": {"kind": "cpu"}, "profiling": {"seq": {"b": 3}}})
    assert over["seq"] == {"b": 3, "s": [16, 32, 64, 128]}
    nulls = sweep.settings({"hardware": {"kind": "gpu"}, "profiling": {"model": None, "ncu": {"layer": None}}})
    assert nulls["model"] == "llama2-7b" and nulls["ncu"]["layer"] == 1
    with pytest.raises(ValueError, match="heldout"):
        sweep.sweep_points(sweep.settings({"hardware": {"kind": "cpu"}, "profiling": {"heldout": [[2, 16]]}}))
    with pytest.raises(ValueError, match="kind"):
        sweep.settings({"hardware": {"kind": "tpu"}})


# Captured from `ncu --nvtx --nvtx-include ... --clock-control none --metrics
# gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv --print-units base` (ncu 2025.3.1
# on an H100), range names changed to ours and trimmed to four kernels; the first lines are ncu's own.
NCU_SAMPLE = '''==PROF== Connected to process 551 (/usr/bin/python3.12)
==PROF== Disconnected from process 551
"ID","Process ID","Process Name","Host Name","thread Domain:Push/Pop_Range:PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg","Id:Domain:Start/Stop_Range:PL_Type:PL_Value:CLR_Type:Color:Msg_Type:Msg","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","551","python3.12","127.0.0.1","551  ""<default domain>:ie.b2.s8.prefill.qkv_proj:none:none:none:none:none:none"" ","","nvjet_sm90_tst_64x24_64x16_2x4_h_bz_NNT","1","7","(384, 1, 1)","(8, 6, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","147,456"
"0","551","python3.12","127.0.0.1","551  ""<default domain>:ie.b2.s8.prefill.qkv_proj:none:none:none:none:none:none"" ","","nvjet_sm90_tst_64x24_64x16_2x4_h_bz_NNT","1","7","(384, 1, 1)","(8, 6, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","0"
"0","551","python3.12","127.0.0.1","551  ""<default domain>:ie.b2.s8.prefill.qkv_proj:none:none:none:none:none:none"" ","","nvjet_sm90_tst_64x24_64x16_2x4_h_bz_NNT","1","7","(384, 1, 1)","(8, 6, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","ns","4,640"
"1","551","python3.12","127.0.0.1","551  ""<default domain>:ie.b2.s8.prefill.qkv_proj:none:none:none:none:none:none"" ","","nvjet_sm90_tst_64x24_64x16_2x4_h_bz_NNT","1","7","(384, 1, 1)","(8, 6, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","1,000"
"1","551","python3.12","127.0.0.1","551  ""<default domain>:ie.b2.s8.prefill.qkv_proj:none:none:none:none:none:none"" ","","nvjet_sm90_tst_64x24_64x16_2x4_h_bz_NNT","1","7","(384, 1, 1)","(8, 6, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","2,048"
"1","551","python3.12","127.0.0.1","551  ""<default domain>:ie.b2.s8.prefill.qkv_proj:none:none:none:none:none:none"" ","","nvjet_sm90_tst_64x24_64x16_2x4_h_bz_NNT","1","7","(384, 1, 1)","(8, 6, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","ns","360"
"2","551","python3.12","127.0.0.1","551  ""<default domain>:ie.b2.s8.decode.attention:none:none:none:none:none:none"" ","","void vllm::reshape_and_cache_flash_kernel<__nv_bfloat16>(int)","1","7","(128, 1, 1)","(64, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","4,096"
"2","551","python3.12","127.0.0.1","551  ""<default domain>:ie.b2.s8.decode.attention:none:none:none:none:none:none"" ","","void vllm::reshape_and_cache_flash_kernel<__nv_bfloat16>(int)","1","7","(128, 1, 1)","(64, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","4,096"
"2","551","python3.12","127.0.0.1","551  ""<default domain>:ie.b2.s8.decode.attention:none:none:none:none:none:none"" ","","void vllm::reshape_and_cache_flash_kernel<__nv_bfloat16>(int)","1","7","(128, 1, 1)","(64, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","ns","2,000"
"3","551","python3.12","127.0.0.1","551  ""<default domain>:ie.b2.s8.decode.attention:none:none:none:none:none:none"" ","","flash_fwd_kernel","1","7","(128, 1, 1)","(64, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","65,536"
"3","551","python3.12","127.0.0.1","551  ""<default domain>:ie.b2.s8.decode.attention:none:none:none:none:none:none"" ","","flash_fwd_kernel","1","7","(128, 1, 1)","(64, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","512"
"3","551","python3.12","127.0.0.1","551  ""<default domain>:ie.b2.s8.decode.attention:none:none:none:none:none:none"" ","","flash_fwd_kernel","1","7","(128, 1, 1)","(64, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","ns","9,000"
'''


def test_ncu_csv_parse_and_join():
    kernels = ncu.parse_csv(NCU_SAMPLE)
    assert list(kernels["id"]) == [0, 1, 2, 3]
    assert kernels.loc[0, "dram__bytes_read.sum"] == 147456
    assert kernels.loc[0, "gpu__time_duration.sum"] == pytest.approx(4.64e-6)
    joined = ncu.join_ranges(kernels, layer=1).set_index(["stage", "op"])
    qkv = joined.loc[("prefill", "qkv_proj")]
    assert qkv["ncu_kernels"] == 2 and qkv["b"] == 2 and qkv["s"] == 8
    assert qkv["dram_read_bytes"] == 148456 and qkv["dram_write_bytes"] == 2048
    assert qkv["dram_bytes"] == 150504
    assert qkv["ncu_time_s"] == pytest.approx(5.0e-6)
    # vLLM's cache write runs inside its attention layer: split off by kernel name
    assert joined.loc[("decode", "kv_cache"), "dram_bytes"] == 8192
    assert joined.loc[("decode", "attention"), "dram_bytes"] == 66048
    assert set(joined["ncu_layer"]) == {1}


def test_ncu_rejects_output_without_header_and_builds_command():
    with pytest.raises(ncu.NcuError, match="header"):
        ncu.parse_csv("==PROF== nothing profiled\n")
    cmd = ncu.command(["python", "-m", "x"], "/tmp/out.csv")
    assert cmd[:2] == ["ncu", "--nvtx"] and "--clock-control" in cmd and cmd[cmd.index("--clock-control") + 1] == "none"
    assert ",".join(ncu.METRICS) in cmd and cmd[-3:] == ["python", "-m", "x"]
    assert ncu.RANGE_RE.fullmatch(ncu.range_name(8, 512, "prefill", "gate_up_proj"))


@pytest.mark.slow
@pytest.mark.engines
def test_vllm_cpu_in_process_attribution(cpu_cfg, tmp_path):
    pytest.importorskip("vllm")
    from inference_eval.profiling.runners import llama_config
    llama_config(cpu_cfg["model"]).save_pretrained(tmp_path)
    runner = make_runner("vllm", cpu_cfg, RangeMarker(), hf_dir=str(tmp_path), max_tokens_per_step=64, max_seqs=2)
    try:
        long = sweep.measure(runner, [(2, 16)], warmup=1, repeats=1, device=False, progress=False)
    finally:
        runner.close()
    t = long.groupby(["stage", "op"])["time_s"].sum()
    for stage in STAGES:
        assert t[stage][[op for op in OPS]].gt(0).sum() >= len(OPS) - 1, t[stage]
        assert t[stage]["kv_cache"] > 0 and t[stage]["attention"] > 0
