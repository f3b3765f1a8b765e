import pytest

from inference_eval.config import (GROUPS, ConfigError, PipelineConfig, compose, config_hash, group_options,
                                   overrides_from_snakemake)


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_member_composes(group):
    options = group_options(group)
    assert options, f"conf/{group} is empty"
    for option in options:
        cfg = compose([f"{group}={option}"])
        assert cfg[group]["name"] in (option, option.split("-synthetic")[0]), (group, option, cfg[group])


def test_required_members_exist():
    assert {"s2s", "s2l", "s16k", "l2s", "s2s-synthetic", "s2l-synthetic", "s16k-synthetic",
            "l2s-synthetic"} <= set(group_options("dataset"))
    assert {"transformers", "vllm", "mii", "trtllm", "llamacpp"} <= set(group_options("library"))
    assert {"llama2-7b", "llama2-13b", "mistral-7b", "vicuna-7b-16k", "vicuna-13b-16k", "tiny-llama"} <= set(
        group_options("model"))
    assert {"3090", "4090", "a100", "h100", "h200", "cpu"} <= set(group_options("hardware"))
    assert {"batch", "serving"} <= set(group_options("scenario"))


def test_hardware_profiles_match_design():
    a100 = compose(["hardware=a100"])["hardware"]
    assert (a100["memory_gb"], a100["bandwidth_gbs"], a100["peak_tflops_bf16"]) == (80, 2039, 312)
    h100 = compose(["hardware=h100"])["hardware"]
    assert h100["measured"]["peak_tflops_bf16"] == 796 and h100["slurm"]["gpus"] == 1


def test_tiny_models_have_head_dim_at_least_64():
    for name in group_options("model"):
        m = compose([f"model={name}"])["model"]
        assert m["hidden_size"] % m["num_heads"] == 0
        assert m["hidden_size"] // m["num_heads"] >= 64, name


def test_unknown_group_value_lists_valid_choices():
    with pytest.raises(ConfigError) as err:
        compose(["model=llama-99b"])
    assert "llama-99b" in str(err.value) and "llama2-7b" in str(err.value)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        compose(["modle=llama2-7b"])
    assert "modle" in str(err.value) and "model" in str(err.value)


def test_unknown_nested_key_fails_clearly():
    with pytest.raises(ConfigError) as err:
        compose(["model.hiden_size=5"])
    assert "hiden_size" in str(err.value)


def test_snakemake_config_becomes_overrides():
    ovs = overrides_from_snakemake({"model": "llama2-13b", "overrides": "seed=3 matrix.libraries=[vllm]"})
    assert ovs == ["model=llama2-13b", "seed=3", "matrix.libraries=[vllm]"]
    cfg = compose(ovs)
    assert cfg["model"]["name"] == "llama2-13b" and cfg["seed"] == 3 and cfg["matrix"]["libraries"] == ["vllm"]


def test_snakemake_overrides_as_list():
    assert overrides_from_snakemake({"overrides": ["seed=1", "model.dtype=float16"]}) == ["seed=1", "model.dtype=float16"]
    with pytest.raises(ConfigError):
        overrides_from_snakemake({"overrides": ["nokey"]})


def test_bad_matrix_entries_fail():
    with pytest.raises(ConfigError, match="matrix.libraries"):
        compose(["matrix.libraries=[vllm,tgi]"])
    with pytest.raises(ConfigError, match="dataset_variant"):
        compose(["matrix.dataset_variant=fake"])


def test_pipeline_matrix_and_jobs(monkeypatch):
    monkeypatch.setenv("INFERENCE_EVAL_HARDWARE", "cpu")
    p = PipelineConfig.from_snakemake({"hardware": "a100"})
    assert p.hardware == "a100" and p.detected_hardware == "cpu"
    assert p.datasets == ["s2s", "s2l", "s16k", "l2s"]
    assert p.models == ["tiny-llama"]
    job = p.job(dataset="s2s", library="vllm", model="tiny-llama", hardware="a100", scenario="batch")
    assert job["dataset"]["name"] == "s2s" and job["dataset"]["synthetic"] is True
    assert job["library"]["name"] == "vllm" and job["hardware"]["name"] == "a100"
    real = PipelineConfig.from_snakemake({"overrides": "matrix.dataset_variant=real"})
    assert real.job(dataset="l2s")["dataset"]["synthetic"] is False


def test_config_hash_changes_with_config():
    a, b = compose([]), compose(["seed=1"])
    assert config_hash(a) != config_hash(b) and config_hash(a) == config_hash(compose([]))


def test_group_overrides_apply_to_the_members_that_have_them():
    # one override list serves every job of a run: serving keys for serving jobs, llama.cpp keys for
    # llama.cpp jobs; the other jobs compose without them
    ov = ["scenario.num_requests=160", "library.gguf_dtype=bf16"]
    batch = compose(ov)
    assert batch["scenario"]["name"] == "batch" and "num_requests" not in batch["scenario"]
    assert "gguf_dtype" not in batch["library"]
    serving = compose(ov + ["scenario=serving", "library=llamacpp"])
    assert serving["scenario"]["num_requests"] == 160 and serving["library"]["gguf_dtype"] == "bf16"


def test_group_key_no_member_has_is_an_error():
    with pytest.raises(ConfigError, match="num_reqests.*valid scenario keys.*num_requests"):
        compose(["scenario.num_reqests=1"])


def test_synthetic_rows_carry_no_prompt_text():
    from inference_eval.requests import SYNTHETIC_PROMPT, Request
    from inference_eval.serving.sweep import prompt_texts

    synthetic = Request("s", (5, 6), 2, prompt=SYNTHETIC_PROMPT.format(n=2))
    real = Request("r", (5, 6), 2, prompt="what is 2+2?")
    assert synthetic.text == "" and real.text == "what is 2+2?"
    with pytest.raises(ValueError, match="no tokenizer folder"):
        prompt_texts([real, synthetic], None)  # the synthetic one needs its ids decoded
    assert prompt_texts([real], None) == {"r": "what is 2+2?"}


def test_job_params_never_show_secrets_to_snakemake(monkeypatch):
    import pickle

    monkeypatch.setenv("INFERENCE_EVAL_HARDWARE", "cpu")
    secret = "sk-test-DO-NOT-STORE-77"
    p = PipelineConfig.from_snakemake({"overrides": f"scenario.api_key={secret}"})
    job = p.job(dataset="s2s", library="vllm", scenario="serving")
    # Snakemake stores repr(param) in .snakemake/metadata (persistence._serialize_param)
    assert secret not in repr(job) and "<secret sha256:" in repr(job)
    other = PipelineConfig.from_snakemake({"overrides": "scenario.api_key=another"})
    assert repr(other.job(dataset="s2s", library="vllm", scenario="serving")) != repr(job)  # a new key reruns
    copy = pickle.loads(pickle.dumps(job))  # what the job script gets
    assert type(copy) is dict and copy["scenario"]["api_key"] == secret


# -- schemas (conf/schema/*.yaml), checked when composing ------------------------------------------
WRONG_VALUES = [
    # (overrides, job choices or None for the root compose, what the message must say)
    ("dataset.limit=abc", None, ["dataset.limit = 'abc'", "an integer >= 1 or null", "conf/dataset/s2s-synthetic.yaml"]),
    ("dataset.profile.output_tokens.dist=normal", None,
     ["dataset.profile.output_tokens.dist = 'normal'", "one of 'fixed', 'uniform', 'lognormal'"]),
    ("library.batch_size=big", None, ["library.batch_size = 'big'", "an integer >= 1 or 'auto' or null"]),
    ("library.gguf_dtype=q4", {"library": "llamacpp"}, ["library.gguf_dtype = 'q4'", "one of 'f32', 'f16', 'bf16'",
                                                       "conf/library/llamacpp.yaml"]),
    ("library.gpu_memory_utilization=1.5", {"library": "vllm"}, ["library.gpu_memory_utilization = 1.5", "<= 1"]),
    ("model.num_layers=two", None, ["model.num_layers = 'two'", "an integer >= 1", "conf/model/tiny-llama.yaml"]),
    ("model.dtype=fp16", None, ["model.dtype = 'fp16'", "one of 'float32', 'float16', 'bfloat16'"]),
    ("hardware.memory_gb=lots", None, ["hardware.memory_gb = 'lots'", "a number > 0"]),
    ("hardware.scale.batch_repeats=0", None, ["hardware.scale.batch_repeats = 0", "an integer >= 1"]),
    ("scenario.warmup_requests=some", None, ["scenario.warmup_requests = 'some'", "an integer >= 0 or null"]),
    ("scenario.arrival=burst", {"scenario": "serving"}, ["scenario.arrival = 'burst'",
                                                         "one of 'poisson', 'gamma', 'constant' or null"]),
    ("scenario.rates=[2,-1]", {"scenario": "serving"}, ["scenario.rates[1] = -1", "a number > 0"]),
    ("seed=abc", None, ["config key seed = 'abc'", "an integer >= 0"]),
    ("matrix.fine_grain=maybe", None, ["matrix.fine_grain = 'maybe'", "true or false"]),
    ("profiling.repeats=0", None, ["profiling.repeats = 0", "an integer >= 1 or null"]),
    ("results_dir=null", None, ["results_dir = null", "a non-empty string"]),
]


@pytest.mark.parametrize("override, job, expected", WRONG_VALUES, ids=[w[0] for w in WRONG_VALUES])
def test_a_wrong_value_fails_at_compose_naming_key_value_and_allowed(monkeypatch, override, job, expected):
    monkeypatch.setenv("INFERENCE_EVAL_HARDWARE", "cpu")
    with pytest.raises(ConfigError) as err:  # the default matrix has every library and scenario
        PipelineConfig.from_snakemake({"overrides": override})
    for text in expected:
        assert text in str(err.value), (text, str(err.value))
    if job is not None:  # a key of another member than the root's: with that member out of the matrix, it
        p = PipelineConfig.from_snakemake({"overrides": f"{override} matrix.libraries=[transformers] "
                                                        "matrix.scenarios=[batch]"})  # fails when a job composes it
        with pytest.raises(ConfigError) as err:
            p.job(dataset="s2s", **job)
        for text in expected:
            assert text in str(err.value), (text, str(err.value))


def test_nested_unknown_keys_and_cross_key_checks():
    with pytest.raises(ConfigError, match=r"unknown config key scenario\.slo\.s9.*'default', 's2s'"):
        compose(["scenario=serving", "+scenario.slo.s9={ttft_s: 1}"])
    with pytest.raises(ConfigError, match=r"unknown config key hardware\.measured\.bw.*bandwidth_gbs"):
        compose(["hardware=h100", "+hardware.measured.bw=3"])
    with pytest.raises(ConfigError, match=r"scenario\.search\.growth = 0\.5 is not allowed; expected a number > 1"):
        compose(["scenario=serving", "scenario.search={growth: 0.5}"])
    with pytest.raises(ConfigError, match=r"dataset\.source = 'vicuna' has no entry under dataset\.sources"):
        compose(["dataset=s2s", "dataset.source=vicuna"])
    with pytest.raises(ConfigError, match=r"dataset\.source = 'paper'.*expected 'synthetic'"):
        compose(["dataset.source=paper"])  # a synthetic member
    with pytest.raises(ConfigError, match=r"profiling\.model = 'llama-99b' is not a conf/model member"):
        compose(["profiling.model=llama-99b"])
    with pytest.raises(ConfigError, match=r"not divisible by num_heads 3"):  # ModelSpec's shape checks
        compose(["model.num_heads=3"])
    with pytest.raises(ConfigError, match=r"unknown config key foo; valid root keys: .*results_dir"):
        compose(["+foo=1"])


def test_library_registry_keys_are_typed_and_engine_keys_pass():
    """The registry keys (inference_eval.libraries) are checked; a library's own engine keys pass unchecked."""
    cfg = compose(["library.packages=[torch]", "+library.my_engine_knob={any: thing}"])
    assert cfg["library"]["packages"] == ["torch"] and cfg["library"]["my_engine_knob"] == {"any": "thing"}
    with pytest.raises(ConfigError, match=r"library\.label = 7 is not allowed; expected a non-empty string"):
        compose(["library.label=7"])
    with pytest.raises(ConfigError, match=r"library\.model_files\[1\] = 'onnx' is not allowed; expected one of 'hf'"):
        compose(["library.model_files=[hf,onnx]"])
    with pytest.raises(ConfigError, match=r"library\.backend = 'nocolon'.*'package\.module:ClassName'"):
        compose(["library.backend=nocolon"])


def test_values_the_consumers_accept_pass():
    assert compose(["library.batch_size=AUTO"])["library"]["batch_size"] == "AUTO"
    assert compose(["library.batch_size=16"])["library"]["batch_size"] == 16
    serving = compose(["scenario=serving", "scenario.rates=4.0", "scenario.search={enabled: true, max_points: 9}",
                       "+scenario.slo.s2s.e2e_s=30"])
    assert serving["scenario"]["rates"] == 4.0 and serving["scenario"]["slo"]["s2s"] == {"e2e_s": 30}
    assert compose(["dataset=s2s", "dataset.limit=null", "dataset.sha256=" + "a" * 64])["dataset"]["limit"] is None


def test_schema_enums_match_their_consumers():
    """The schema's allowed values are the ones the code that reads the key accepts."""
    from inference_eval.backends.batch_sizing import AUTO
    from inference_eval.backends.transformers_backend import ATTN_IMPLEMENTATIONS
    from inference_eval.config_schema import schema
    from inference_eval.datasets.build import SOURCES, TASKS
    from inference_eval.models.gguf_writer import GGUF_DTYPES
    from inference_eval.models.spec import DTYPES, FAMILIES
    from inference_eval.libraries import ARTIFACTS, BYTE_MODELS, LENGTH_CHECKS, PROMPTS, RUNNERS
    from inference_eval.profiling.runners import RUNNERS as RUNNER_CLASSES
    from inference_eval.theory.ops import FUSED, UNFUSED
    from inference_eval.profiling.sweep import DEFAULTS
    from inference_eval.serving.metrics import SLO_KEYS
    from inference_eval.serving.rate_search import SearchSettings
    from inference_eval.serving.schedule import ARRIVALS

    ds, lib, model, sc, root = (schema(g) for g in ("dataset", "library", "model", "scenario", "config"))
    assert tuple(ds["properties"]["name"]["enum"]) == TASKS and tuple(ds["properties"]["source"]["enum"]) == SOURCES
    assert tuple(lib["properties"]["gguf_dtype"]["enum"]) == GGUF_DTYPES
    assert tuple(lib["properties"]["attn_implementation"]["anyOf"][0]["enum"]) == ATTN_IMPLEMENTATIONS
    assert AUTO == "auto" and "'auto'" in lib["properties"]["batch_size"]["anyOf"][1]["title"]
    assert tuple(model["properties"]["family"]["enum"]) == FAMILIES
    assert tuple(model["properties"]["dtype"]["enum"]) == DTYPES
    assert tuple(sc["properties"]["arrival"]["anyOf"][0]["enum"]) == ARRIVALS
    slo_entry = sc["properties"]["slo"]["anyOf"][1]["additionalProperties"]["anyOf"][1]
    assert tuple(slo_entry["properties"]) == SLO_KEYS
    search = sc["properties"]["search"]["anyOf"][1]["properties"]
    assert tuple(search) == tuple(SearchSettings.__dataclass_fields__)
    profiling = root["properties"]["profiling"]["anyOf"][1]["properties"]
    assert set(profiling) == set(DEFAULTS["gpu"]) == set(DEFAULTS["cpu"])
    assert RUNNERS == RUNNER_CLASSES and BYTE_MODELS == (FUSED, UNFUSED)
    variant = lib["$defs"]["profiled_variant"]["properties"]
    assert tuple(variant["runner"]["enum"]) == RUNNERS and tuple(variant["byte_model"]["enum"]) == BYTE_MODELS
    assert tuple(variant["attn_implementation"]["anyOf"][0]["enum"]) == ATTN_IMPLEMENTATIONS
    assert tuple(lib["$defs"]["artifacts"]["items"]["enum"]) == ARTIFACTS
    server = lib["$defs"]["server"]["properties"]
    assert tuple(server["prompt"]["enum"]) == PROMPTS and tuple(server["length_check"]["enum"]) == LENGTH_CHECKS
    assert set(profiling["ncu"]["anyOf"][1]["properties"]) == set(DEFAULTS["gpu"]["ncu"])
