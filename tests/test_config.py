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
