"""Tensor parallelism on the CPU: the config keys and their checks, what each backend and server launcher is
given, the per-GPU analytic model (hand-computed numbers), the Llama-2-70B memory check, the scaling table
and figure from records made here, and the plan of the GPU rows (snakemake -n, with the SLURM profile)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inference_eval.config import ConfigError, PipelineConfig, compose
from inference_eval.models.files import ModelFiles
from inference_eval.requests import Request
from inference_eval.tensor_parallel import TensorParallelError, base_library, library_choice, split_library
from inference_eval.theory.hardware import ceilings
from inference_eval.theory.ops import ModelShape, TheoryError, all_costs
from inference_eval.theory.parallel import COMM_OP, device_costs, device_kv_bytes_per_token, device_weight_bytes
from inference_eval.theory.parallel import kv_share, memory_check, memory_check_for_config

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# A small GQA shape for hand counts: h 8, h' 16, n 4 heads, n_kv 2 (d = 2, h_kv = 4), 2 layers, V 10, bf16.
SMALL = ModelShape(name="small", hidden=8, intermediate=16, heads=4, kv_heads=2, layers=2, vocab=10,
                   bytes_per_element=2)
# Round ceilings: 1 TFLOP/s, 1 GB/s HBM, 100 GB memory, 1 GB/s link.
HW = {"name": "toy", "kind": "gpu", "memory_gb": 100, "bandwidth_gbs": 1, "peak_tflops_bf16": 1, "gpus": 4,
      "interconnect_gbs": 1, "measured": {}}


def gpu_cfg(library: str, degree: int = 2, model: str = "llama2-13b", hardware: str = "h200") -> dict:
    return compose([f"library={library}", f"model={model}", f"hardware={hardware}", f"hardware.gpus={max(degree, 1)}",
                    f"library.tensor_parallel={degree}"])


# -- config -----------------------------------------------------------------------------------------------

def test_every_library_and_hardware_profile_has_the_keys():
    for path in sorted((CONF / "library").glob("*.yaml")):
        assert yaml.safe_load(path.read_text())["tensor_parallel"] == 1, path
    for path in sorted((CONF / "hardware").glob("*.yaml")):
        hw = yaml.safe_load(path.read_text())
        assert isinstance(hw["gpus"], int) and "interconnect_gbs" in hw, path
    for name in ("h100", "h200"):  # NVLink 4: 900 GB/s total, 450 per direction (datasheet)
        assert yaml.safe_load((CONF / "hardware" / f"{name}.yaml").read_text())["interconnect_gbs"] == 450
    assert compose(["hardware=cpu"])["hardware"]["gpus"] == 0


def test_library_names_carry_the_degree():
    assert split_library("vllm-tp2") == ("vllm", 2) and split_library("vllm") == ("vllm", None)
    assert base_library("llamacpp-tp4") == "llamacpp" and library_choice("mii", 1) == "mii"
    assert library_choice("mii", 2) == "mii-tp2"
    with pytest.raises(TensorParallelError, match="degree 1 is the plain library name 'vllm'"):
        split_library("vllm-tp1")


def test_a_degree_above_the_gpu_count_stops_at_compose_naming_both():
    with pytest.raises(ConfigError, match=r"tensor_parallel = 2 needs 2 GPUs but hardware 'h200' has gpus = 1"):
        compose(["library=vllm", "hardware=h200", "library.tensor_parallel=2"])
    with pytest.raises(ConfigError, match=r"tensor_parallel = 3 does not divide model llama2-13b's num_heads = 40"):
        compose(["library=vllm", "model=llama2-13b", "hardware=h200", "hardware.gpus=4", "library.tensor_parallel=3"])
    with pytest.raises(ConfigError, match="has gpus = 0"):
        compose(["library=vllm", "hardware=cpu", "library.tensor_parallel=2"])
    # the pipeline stops at parse time for a matrix degree the hardware cannot take
    with pytest.raises(ConfigError, match="needs 2 GPUs"):
        PipelineConfig.from_snakemake({"hardware": "h200", "overrides": "matrix.tensor_parallel=[1,2]"})


def test_pipeline_job_of_a_suffixed_library():
    pipe = PipelineConfig.from_snakemake({"hardware": "h200", "model": "llama2-13b",
                                          "overrides": "hardware.gpus=2 matrix.tensor_parallel=[1,2]"})
    job = pipe.job(library="vllm-tp2")
    assert job["library"]["name"] == "vllm" and job["library"]["tensor_parallel"] == 2
    assert pipe.job(library="vllm")["library"]["tensor_parallel"] == 1
    # a degree set without the name would file a t = 2 row under batch/vllm/: refused with the way out
    with pytest.raises(ConfigError, match=r"name the degree in the library instead \(transformers-tp2"):
        PipelineConfig.from_snakemake({"hardware": "h200", "overrides": "hardware.gpus=2 library.tensor_parallel=2"})


def test_split_mode_schema_enum_is_the_backends():
    from inference_eval.backends.llamacpp_backend import SPLIT_MODES

    schema = yaml.safe_load((CONF / "schema" / "library.yaml").read_text())
    assert schema["properties"]["split_mode"]["anyOf"][0]["enum"] == list(SPLIT_MODES)


# -- backends ---------------------------------------------------------------------------------------------

def test_vllm_gets_tensor_parallel_size():
    from inference_eval.backends.vllm_backend import VllmBackend

    for degree in (1, 2):
        args = VllmBackend(gpu_cfg("vllm", degree), ModelFiles(hf_dir="/m/hf")).engine_args()
        assert args["tensor_parallel_size"] == degree


def test_mii_gets_tensor_parallel():
    from inference_eval.backends.mii_backend import MiiBackend

    kwargs = MiiBackend(gpu_cfg("mii", 4), ModelFiles(weights_dir="/m/w")).pipeline_kwargs()
    assert kwargs["tensor_parallel"] == 4


def test_llamacpp_splits_rows_over_the_gpus(tmp_path):
    from inference_eval.backends.base import BackendUnsupported
    from inference_eval.backends.llamacpp_backend import LlamaCppBackend

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    files = ModelFiles(gguf_path=str(gguf))
    kwargs = LlamaCppBackend(gpu_cfg("llamacpp", 2), files).llama_kwargs()
    assert (kwargs["split_mode"], kwargs["main_gpu"], kwargs["tensor_split"]) == (2, 0, [1.0, 1.0])  # row split
    one = LlamaCppBackend(gpu_cfg("llamacpp", 1), files).llama_kwargs()
    assert one["split_mode"] == 0 and "tensor_split" not in one  # one GPU, not llama.cpp's spread over all
    layer = gpu_cfg("llamacpp", 2)
    layer["library"]["split_mode"] = "layer"
    assert LlamaCppBackend(layer, files).llama_kwargs()["split_mode"] == 1
    layer["library"]["split_mode"] = "none"
    with pytest.raises(BackendUnsupported, match="split_mode none keeps the model on one GPU"):
        LlamaCppBackend(layer, files).llama_kwargs()
    cpu = compose(["library=llamacpp", "hardware=cpu"])
    assert "split_mode" not in LlamaCppBackend(cpu, files).llama_kwargs()


def test_transformers_refuses_tensor_parallel():
    pytest.importorskip("torch")
    from inference_eval.backends.base import BackendUnsupported
    from inference_eval.backends.transformers_backend import TransformersBackend

    with pytest.raises(BackendUnsupported, match="does not support tensor parallelism"):
        TransformersBackend(gpu_cfg("transformers", 2), ModelFiles(hf_dir="/m/hf")).load()


def test_trtllm_builds_and_loads_an_engine_for_t_gpus(tmp_path, monkeypatch):
    import types

    from inference_eval.backends.trtllm_backend import TrtLlmBackend
    from inference_eval.models.spec import ModelSpec
    from inference_eval.models.trtllm_engine import build_engine

    calls = []

    class FakeLLM:
        def __init__(self, **kw):
            calls.append(kw)

        def save(self, path):
            Path(path).mkdir(parents=True)
            for rank in range(calls[-1].get("tensor_parallel_size", 1)):
                (Path(path) / f"rank{rank}.engine").write_bytes(b"engine")

    class BuildConfig:
        def __init__(self, **kw):
            self.kw = kw

    mod = types.ModuleType("tensorrt_llm")
    mod.__version__, mod.LLM, mod.BuildConfig, mod.SamplingParams = "0.0-fake", FakeLLM, BuildConfig, object
    sub = types.ModuleType("tensorrt_llm._tensorrt_engine")
    sub.LLM = FakeLLM
    monkeypatch.setitem(sys.modules, "tensorrt_llm", mod)
    monkeypatch.setitem(sys.modules, "tensorrt_llm._tensorrt_engine", sub)
    cfg = gpu_cfg("trtllm", 2, model="tiny-llama")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "model.safetensors").write_bytes(b"weights")
    record = build_engine(ModelSpec.from_config(cfg["model"]), cfg["library"], tmp_path / "w", tmp_path / "hf",
                          tmp_path / "trtllm-tp2" / "engine.json", cfg["hardware"])
    assert record["status"] == "ok" and record["tensor_parallel"] == 2
    assert calls[0]["tensor_parallel_size"] == 2
    assert sorted(p.name for p in Path(record["engine_dir"]).glob("rank*.engine")) == ["rank0.engine", "rank1.engine"]
    kwargs = TrtLlmBackend(cfg, ModelFiles(engine_record=str(tmp_path / "trtllm-tp2" / "engine.json"))).llm_kwargs()
    assert kwargs["tensor_parallel_size"] == 2 and kwargs["model"] == record["engine_dir"]


# -- server launchers -------------------------------------------------------------------------------------

def _argv(spec, cfg, files):
    return spec.command(cfg, files, "127.0.0.1", 8123, None).argv


def _flag(argv, name, n=1):
    i = argv.index(name)
    return argv[i + 1] if n == 1 else argv[i + 1:i + 1 + n]


def test_server_launchers_pass_the_degree(tmp_path):
    from inference_eval.serving.servers import LlamaCppServer, MiiServer, TransformersServer, TrtLlmServer, VllmServer

    assert _flag(_argv(VllmServer(), gpu_cfg("vllm", 2), ModelFiles(hf_dir="/m/hf")), "--tensor-parallel-size") == "2"
    assert _flag(_argv(MiiServer(), gpu_cfg("mii", 2), ModelFiles(weights_dir="/m/w")), "--tensor-parallel") == "2"
    trt = _argv(TrtLlmServer(), dict(gpu_cfg("trtllm", 2), scenario=compose(["scenario=serving"])["scenario"]),
                ModelFiles(hf_dir="/m/hf"))
    assert _flag(trt, "--tp_size") == "2"
    lcp = _argv(LlamaCppServer(), gpu_cfg("llamacpp", 2), ModelFiles(gguf_path="/m/f16.gguf"))
    assert _flag(lcp, "--split_mode") == "2" and _flag(lcp, "--main_gpu") == "0"
    assert _flag(lcp, "--tensor_split", 2) == ["1.0", "1.0"]
    assert TransformersServer().unsupported_reason(gpu_cfg("transformers", 2))
    assert TransformersServer().unsupported_reason(gpu_cfg("transformers", 1)) is None
    none = gpu_cfg("llamacpp", 2)
    none["library"]["split_mode"] = "none"
    assert "split_mode none" in LlamaCppServer().unsupported_reason(none)


def test_llamacpp_server_cli_reads_the_split_arguments():
    pytest.importorskip("llama_cpp.server.settings")
    import argparse

    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, Settings

    from inference_eval.serving.servers import LlamaCppServer

    # the server's own parser (llama_cpp.server.__main__: every Settings field), on our command line
    argv = _argv(LlamaCppServer(), gpu_cfg("llamacpp", 2), ModelFiles(gguf_path="/m/f16.gguf"))
    parser = argparse.ArgumentParser()
    add_args_from_model(parser, Settings)
    settings = parse_model_from_args(ModelSettings, parser.parse_args(argv[3:]))
    assert settings.split_mode == 2 and settings.tensor_split == [1.0, 1.0] and settings.main_gpu == 0


def test_a_sweep_the_server_cannot_take_is_an_unsupported_row(tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("sse_starlette")
    from batch_fixtures import write_rows

    from inference_eval.serving.servers import LlamaCppServer
    from inference_eval.serving.sweep import run_sweep

    cfg = compose(["library=llamacpp", "model=tiny-llama", "hardware=h200", "hardware.gpus=2",
                   "library.tensor_parallel=2", "scenario=serving", "library.split_mode=none"])
    rows = write_rows(tmp_path / "datasets" / "s2s-synthetic")
    frame = run_sweep(cfg, rows, ModelFiles(), tmp_path / "out.csv", tmp_path / "run", spec=LlamaCppServer())
    assert list(frame["status"]) == ["unsupported"] and "split_mode none" in frame["reason"].iloc[0]


# -- theory: one GPU's share at degree t ------------------------------------------------------------------

def test_per_gpu_counts_by_hand():
    costs = {c.op: c for c in device_costs(SMALL, 1, 3, "prefill", t=2)}
    # qkv: 2bsh(h + 2h_kv) = 2*1*3*8*16 = 768 FLOPs on one GPU; Q by heads and K, V by KV heads: half each
    assert costs["qkv_proj"].flops == 384
    # o_proj reads O/t (12) and W_O/t (32) and writes the whole partial sum X (24): 68 elements, 136 bytes
    assert costs["o_proj"].bytes() == 136
    # the norms are replicated: every GPU does all 5bsh = 120 FLOPs
    assert costs["add_norm_attn"].flops == 120
    # two all-reduces of bsh = 24 elements: 2 x 2(t-1)/t x 24 x 2 bytes = 96 link bytes, (t-1)/t x 24 adds each
    assert costs[COMM_OP].link_bytes == 96 and costs[COMM_OP].flops == 24 and costs[COMM_OP].bytes() == 0
    assert costs["layer"].link_bytes == 96 and costs["model"].link_bytes == 2 * 96
    # on one GPU: the single-GPU model, and a zero communication op
    one = device_costs(SMALL, 1, 3, "prefill", t=1)
    single = all_costs(SMALL, 1, 3, "prefill")
    assert [c.op for c in one if c.op != COMM_OP] == [c.op for c in single]
    for a, b in zip([c for c in one if c.op != COMM_OP], single):
        assert (a.flops, a.bytes(), a.bytes("unfused")) == (b.flops, b.bytes(), b.bytes("unfused")), a.op
    assert next(c for c in one if c.op == COMM_OP).link_bytes == 0


def test_weights_and_kv_per_gpu_by_hand():
    # one layer: h(h + 2h_kv) + h^2 + 3hh' + 2h = 128 + 64 + 384 + 16 = 592; the model 2*592 + 2Vh + h = 1352
    assert SMALL.weight_bytes() == device_weight_bytes(SMALL, 1) == 2704
    # t = 2: 8*(4 + 4) + 32 + 192 + 16 = 304 a layer; 608 + 80 (V/t rows of W_E and W_LM) + 8 = 696 -> 1392 B
    assert device_weight_bytes(SMALL, 2) == 1392
    # KV cache: 2 l h_kv e = 32 B a token; half on each of 2 GPUs; at t = 4 > n_kv each GPU keeps one KV head
    assert device_kv_bytes_per_token(SMALL, 2) == 16 and kv_share(SMALL, 4) == 0.5
    with pytest.raises(TheoryError, match="does not divide num_heads 4"):
        device_costs(SMALL, 1, 3, "decode", t=3)


def test_bound_adds_the_all_reduce_time_by_hand():
    from inference_eval.theory.bound import dataset_bound

    c = ceilings(HW)
    # one request: 3 prompt tokens, 2 output tokens = the prefill (3 tokens) and one decode step (1 token)
    reqs = [Request(id="r", prompt_token_ids=[1, 2, 3], max_tokens=2)]
    two = dataset_bound(reqs, SMALL, c, degree=2)
    # link bytes: l x 2 x 2(t-1)/t x (tokens x h) x e = 2 x 2 x 1 x (3 x 8) x 2 = 192 (prefill) + 64 (decode)
    assert two["communication_s"] == pytest.approx(256 / 1e9)
    one = dataset_bound(reqs, SMALL, c, degree=1)
    assert one["communication_s"] == 0 and one["tensor_parallel"] == 1
    # memory-bound on these ceilings: each GPU reads more than half of what one GPU alone reads (the h-wide
    # activations and the norms are replicated) and less than all of it; the link comes on top
    assert one["bound_s"] / 2 < two["bound_s"] - two["communication_s"] < one["bound_s"]
    assert two["weights_gb_per_gpu"] == pytest.approx(1392 / 1e9)
    no_link = dict(HW, interconnect_gbs=None)
    with pytest.raises(TheoryError, match="needs interconnect_gbs"):
        dataset_bound(reqs, SMALL, ceilings(no_link), degree=2)


def test_op_table_gains_the_communication_op():
    from inference_eval.theory.roofline import op_table

    table = op_table(SMALL, ceilings(HW), 1, 3, stages=["prefill"], tensor_parallel=2)
    comm = table[table["op"] == COMM_OP].iloc[0]
    assert comm["bound"] == "interconnect" and comm["link_bytes"] == 96
    # 96 link bytes at 1 GB/s, after its 24 additions at 1 TFLOP/s
    assert comm["roofline_time_s"] == pytest.approx(96 / 1e9 + 24 / 1e12) and comm["tensor_parallel"] == 2
    zero = op_table(SMALL, ceilings(HW), 1, 3, stages=["prefill"])
    assert zero[zero["op"] == COMM_OP].iloc[0]["roofline_time_s"] == 0


def test_llama2_70b_does_not_fit_one_gpu():
    cfg = compose(["model=llama2-70b", "hardware=h200"])
    shape = ModelShape.from_config(cfg["model"])
    assert (shape.layers, shape.hidden, shape.intermediate, shape.heads, shape.kv_heads, shape.vocab) == \
        (80, 8192, 28672, 64, 8, 32000)
    assert shape.weight_bytes() / 1e9 == pytest.approx(137.95, abs=0.01)  # 68.98 B parameters in bf16
    for hardware in ("h200", "h100"):
        one = memory_check_for_config(gpu_cfg("vllm", 1, model="llama2-70b", hardware=hardware))
        assert not one["fits"] and "does not fit" in one["reason"] and "on one GPU" in one["reason"], one
        assert memory_check_for_config(gpu_cfg("vllm", 2, model="llama2-70b", hardware=hardware))["fits"]
    # the sentence names the numbers: 138.0 GB of weights against vLLM's 0.9 of the H200's 141 GB
    one = memory_check_for_config(gpu_cfg("vllm", 1, model="llama2-70b"))
    assert "weights 138.0 GB per GPU" in one["reason"] and "126.9 GB usable" in one["reason"]
    # all of an H100's 80 GB would not hold it either; half of it on each of two would
    assert not memory_check(shape, 80e9, 1)["fits"] and memory_check(shape, 80e9, 2)["fits"]


# -- the scaling table and figure -------------------------------------------------------------------------

def _record(path: Path, degree: int, time_s: float | None, status: str = "ok", requests: str = "abc") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "status": status, "reason": "" if status == "ok" else "engine failed", "total_time_s": time_s,
        "token_throughput_tok_s": 1000 / time_s if time_s else None, "output_tokens": 1000,
        "fairness": {"requests_sha256": requests},
        "provenance": {"config": {"library": {"name": "vllm", "tensor_parallel": degree}}}}))
    return str(path)


def _bounds(tmp_path: Path) -> dict:
    out = {}
    for t, (b13, b70) in {1: (5.0, 9.0), 2: (3.0, 4.0), 4: (2.0, 2.5)}.items():
        path = tmp_path / f"bound_tp{t}.csv"
        path.write_text(f"model,bound_s,communication_s\nllama2-13b,{b13},0.1\nllama2-70b,{b70},0.2\n")
        out[t] = path
    return out


def test_scaling_table_by_hand(tmp_path):
    from inference_eval.report.tensor_parallel import scaling_table, write_scaling_figure, write_scaling_table

    r = tmp_path / "batch"
    base = {"library": "vllm", "dataset": "s2s", "hardware": "h200"}
    planned = [
        {**base, "model": "llama2-13b", "tensor_parallel": 1, "record": _record(r / "13-1.json", 1, 10.0)},
        {**base, "model": "llama2-13b", "tensor_parallel": 2, "record": _record(r / "13-2.json", 2, 6.0)},
        {**base, "model": "llama2-13b", "tensor_parallel": 4, "record": _record(r / "13-4.json", 4, 4.0)},
        {**base, "model": "llama2-70b", "tensor_parallel": 1, "record": None, "status": "does_not_fit",
         "reason": "llama2-70b on one GPU: weights 138.0 GB per GPU; does not fit in 126.9 GB usable"},
        {**base, "model": "llama2-70b", "tensor_parallel": 2, "record": _record(r / "70-2.json", 2, 8.0)},
        {**base, "model": "llama2-70b", "tensor_parallel": 4, "record": _record(r / "70-4.json", 4, 5.0)},
    ]
    table = scaling_table(planned, _bounds(tmp_path)).set_index(["model", "tensor_parallel"])
    row = table.loc[("llama2-13b", 2)]
    assert row["speedup"] == pytest.approx(10 / 6) and row["scaling_efficiency"] == pytest.approx(10 / 12)
    assert row["efficiency"] == pytest.approx(3 / 6) and row["bound_speedup"] == pytest.approx(5 / 3)
    assert table.loc[("llama2-13b", 4)]["scaling_efficiency"] == pytest.approx(10 / 16)
    # 70B: no one-GPU run, so t0 = 2; at t = 4 the speed-up 8/5 is over 2x as many GPUs
    assert table.loc[("llama2-70b", 1)]["status"] == "does_not_fit"
    assert "does not fit" in table.loc[("llama2-70b", 1)]["reason"]
    row = table.loc[("llama2-70b", 4)]
    assert row["baseline_degree"] == 2 and row["speedup"] == pytest.approx(1.6)
    assert row["scaling_efficiency"] == pytest.approx(0.8) and row["efficiency"] == pytest.approx(2.5 / 5)

    # a failed run keeps its row; other requests give no speed-up; a record of another degree is invalid
    planned[2]["record"] = _record(r / "13-4.json", 4, None, status="failed")
    planned[1]["record"] = _record(r / "13-2.json", 2, 6.0, requests="other")
    planned[5]["record"] = _record(r / "70-4.json", 2, 5.0)
    table = scaling_table(planned, _bounds(tmp_path)).set_index(["model", "tensor_parallel"])
    assert table.loc[("llama2-13b", 4)]["status"] == "failed" and table.loc[("llama2-13b", 4)]["reason"]
    assert "requests differ" in table.loc[("llama2-13b", 2)]["note"]
    assert table.loc[("llama2-70b", 4)]["status"] == "invalid"

    csv = write_scaling_table(tmp_path / "s2s_scaling.csv", planned, _bounds(tmp_path))
    assert len(csv) == 6 and (tmp_path / "s2s_scaling.csv").exists()
    write_scaling_figure(tmp_path / "tp.png", {"s2s": tmp_path / "s2s_scaling.csv"}, title="test")
    assert (tmp_path / "tp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the plan of the GPU rows -----------------------------------------------------------------------------

PLAN = ("hardware.gpus=2 matrix.tensor_parallel=[1,2] matrix.libraries=[vllm] "
        "matrix.models=[llama2-13b,llama2-70b] matrix.datasets=[s2s,l2s] matrix.dataset_variant=real")


def _snakemake(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), INFERENCE_EVAL_HARDWARE="cpu")
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "-n", "--nolock", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False)


def test_plan_of_the_gpu_rows_with_the_slurm_profile(tmp_path):
    out = _snakemake(tmp_path, "--profile", str(REPO / "profiles" / "slurm"), "--config", "hardware=h200",
                     f"overrides={PLAN}", "--", "results/h200/tensor_parallel/s2s_scaling.csv",
                     "results/h200/tensor_parallel/l2s_scaling.csv", "results/h200/figures/tensor_parallel.png")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    blocks = [b for b in re.split(r"\n(?=\[|localrule |rule )", text) if b.startswith("rule batch_run:")]
    runs = {re.search(r"wildcards: (.*)", b).group(1): re.search(r"gpu=(\d+)", b).group(1) for b in blocks}
    expected = {f"hardware=h200, library={lib}, model={m}, dataset={d}": gpus
                for d in ("s2s", "l2s") for lib, m, gpus in
                (("vllm", "llama2-13b", "1"), ("vllm-tp2", "llama2-13b", "2"), ("vllm-tp2", "llama2-70b", "2"))}
    assert runs == expected  # vLLM t = 1, 2 on 13B; t = 2 only on 70B (t = 1 does not fit), 2 GPUs asked for t = 2
    for rule in ("dataset_bound_tp", "tensor_parallel_table", "tensor_parallel_figure"):
        assert f"rule {rule}:" in text or f"localrule {rule}:" in text, rule
    # without hardware.gpus the t = 2 jobs stop at parse time, naming the degree and the GPU count
    out = _snakemake(tmp_path, "--config", "hardware=h200", "overrides=matrix.tensor_parallel=[1,2]",
                     "--", "results/h200/tensor_parallel/s2s_scaling.csv")
    assert out.returncode != 0 and "needs 2 GPUs but hardware 'h200' has gpus = 1" in out.stdout + out.stderr


def test_all_with_tensor_parallel_plans_and_renders_its_report_pages(tmp_path):
    """`all` with a degree above 1 plans an HTML page beside each tensor-parallel table (the report shows a CSV
    only as a download), and the pages render: the per-GPU op table (all_reduce rows) and a scaling table."""
    out = _snakemake(tmp_path, "--quiet", "rules", "--cores", "2", "all", "--config", "hardware=h200", f"overrides={PLAN}")
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    planned = dict(re.findall(r"^(\w+)\s+(\d+)$", text, flags=re.M))
    assert planned.get("report_html_tp_scaling") == "2" and planned.get("report_html_theory_ops_tp") == "2", planned

    from inference_eval.report.tensor_parallel import write_scaling_table

    tables = tmp_path / "results" / "h200" / "tensor_parallel"
    planned_rows = [{"library": "vllm", "dataset": "s2s", "hardware": "h200", "model": "llama2-13b", "tensor_parallel": t,
                     "record": _record(tmp_path / "batch" / f"13-{t}.json", t, time_s)} for t, time_s in ((1, 10.0), (2, 6.0))]
    write_scaling_table(tables / "s2s_scaling.csv", planned_rows, _bounds(tmp_path))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), INFERENCE_EVAL_HARDWARE="cpu")
    theory = "results/h200/theory/llama2-13b_ops_b8_s512_tp2.html"
    run = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--nolock", "--cores", "1", "--allowed-rules", "theory_ops_tp",
                          "report_html_theory_ops_tp", "report_html_tp_scaling", "--config", "hardware=h200",
                          f"overrides={PLAN}", "--", theory, "results/h200/tensor_parallel/s2s_scaling.html"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    page = (tmp_path / theory).read_text()
    assert "<table" in page and "all_reduce" in page
    page = (tables / "s2s_scaling.html").read_text()
    assert "<table" in page and "scaling_efficiency" in page and "0.833" in page  # 10/6 over 2 GPUs


def test_interconnect_script_measures_an_all_reduce(tmp_path):
    """scripts/device/interconnect.py on two CPU processes (gloo): the sums are right and the bus bandwidth is
    2(t-1)/t x bytes / time."""
    pytest.importorskip("torch.distributed")
    out = tmp_path / "ic.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "device" / "interconnect.py"), str(out), "--gpus", "2",
                           "--backend", "gloo", "--device", "cpu", "--sizes", "65536", "--repeats", "3"],
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    (row,) = result["sizes"]
    assert row["sum_ok"] and row["bytes"] == 65536
    assert row["busbw_gbs"] == pytest.approx(2 * (2 - 1) / 2 * 65536 / row["time_s"] / 1e9)
    assert result["interconnect_gbs"] == row["busbw_gbs"]
