"""TransformersBackend on CPU with the tiny random-weight Llama: exact lengths, padding, config errors."""

from __future__ import annotations

import pytest

from batch_fixtures import MIXED, job_config, requests_from, tiny_model_dir
from inference_eval.backends import batch_sizing as batching
from inference_eval.models.files import ModelFiles
from inference_eval.requests import Request, check_lengths
from inference_eval.theory.ops import ModelShape

pytest.importorskip("transformers")
from inference_eval.backends.transformers_backend import TransformersBackend  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


def _backend(model_dir, **library):
    backend = TransformersBackend(job_config("transformers", **library), ModelFiles(hf_dir=str(model_dir)))
    backend.load()
    return backend


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def loaded(request, model_dir):
    backend = _backend(model_dir, batch_size=4, attn_implementation=request.param)
    yield backend
    backend.close()


def test_static_batches_generate_exactly_each_requests_length(loaded):
    requests = requests_from(MIXED)
    completions = loaded.generate(requests)
    check = check_lengths(requests, completions)
    assert check.valid, check.reason()
    assert [len(c.output_token_ids) for c in completions] == [m for _, m in MIXED]
    vocab = loaded.model.config.vocab_size
    assert all(0 <= t < vocab for c in completions for t in c.output_token_ids)
    # batches of 4 in dataset order, each run to its longest row: (1,3,8,13) -> 13, (2,5) -> 5
    assert loaded.stats["batches"] == 2 and loaded.stats["padded_generated_tokens"] == 4 * 13 + 2 * 5
    assert loaded.model.config._attn_implementation == loaded.attn_implementation


def test_left_padding_does_not_change_greedy_output(loaded):
    """A row generated inside a left-padded batch matches the same row generated alone."""
    requests = requests_from(MIXED[:4])
    batched = {c.id: c.output_token_ids for c in loaded.generate(requests)}
    loaded.batch_size = 1
    try:
        alone = {c.id: c.output_token_ids for c in loaded.generate(requests)}
    finally:
        loaded.batch_size = 4
    assert batched == alone


def test_generated_ids_exclude_the_prompt(loaded):
    (request,) = requests_from([(30, 4)])
    (completion,) = loaded.generate([request])
    assert len(completion.output_token_ids) == 4 and completion.prompt_tokens == 30


@pytest.mark.slow
def test_continuous_batching_generates_exact_lengths(model_dir):
    backend = _backend(model_dir, continuous_batching=True, attn_implementation="sdpa")
    try:
        requests = requests_from(MIXED)
        completions = backend.generate(requests)
    finally:
        backend.close()
    check = check_lengths(requests, completions)
    assert check.valid, check.reason()
    assert backend.stats["mode"] == "continuous"


@pytest.mark.parametrize("library, message", [
    ({"attn_implementation": "flash"}, "attn_implementation"),
    ({"batch_size": 0}, "library.batch_size must be .*, got 0$"),
    ({"batch_size": -1}, "library.batch_size must be .*, got -1$"),
    ({"batch_size": "abc"}, "library.batch_size must be .*, got 'abc'$"),
    ({"batch_size": 2.5}, "library.batch_size must be .*, got 2.5$"),
    ({"batch_size": True}, "library.batch_size must be .*, got True$"),
])
def test_bad_library_config_names_the_key(library, message):
    with pytest.raises(ValueError, match=message) as info:
        TransformersBackend(job_config("transformers", **library), ModelFiles(hf_dir="unused"))
    if "batch_size" in library:
        assert "a positive integer, 'auto' or null" in str(info.value)


# -- library.batch_size: null / auto / int -------------------------------------------------------
def test_default_batch_size_is_null_and_means_8_on_cpu_and_auto_on_gpu():
    cfg = job_config("transformers")
    assert cfg["library"]["batch_size"] is None  # conf/library/transformers.yaml
    cpu = TransformersBackend(cfg, ModelFiles(hf_dir="unused"))
    assert cpu.batch_size_setting == 8 and cpu.batch_size == 8
    cfg["hardware"]["kind"] = "gpu"
    gpu = TransformersBackend(cfg, ModelFiles(hf_dir="unused"))
    assert gpu.batch_size_setting == "auto" and gpu.batch_size is None
    cfg["library"]["batch_size"] = 8  # the paper's setting stays selectable on a GPU
    assert TransformersBackend(cfg, ModelFiles(hf_dir="unused")).batch_size == 8


def test_fixed_batch_size_records_its_setting_and_prepare_changes_nothing(loaded):
    requests = requests_from(MIXED)
    loaded.prepare(requests)
    assert loaded.batch_size == 4
    loaded.generate(requests)
    assert loaded.stats["batch_size"] == 4 and loaded.stats["batch_size_setting"] == "4"
    assert not any(k.startswith("batch_size_") and k != "batch_size_setting" for k in loaded.stats)
    assert loaded.resolved_settings() == {}


def _window_need(backend, requests, b):
    lengths = [(r.prompt_len, r.max_tokens) for r in requests]
    return batching.window_memory(ModelShape.from_config(backend.cfg["model"]), lengths, b,
                                  backend.attn_implementation, weight_bytes=backend._loaded_bytes())[1].total


def test_auto_on_cpu_prepares_one_batch_of_all_and_records_the_sizing(model_dir):
    backend = _backend(model_dir, batch_size="auto")
    try:
        requests = requests_from(MIXED)
        backend.prepare(requests)
        loaded_bytes = backend._loaded_bytes()
        # tiny-llama: 17,966,336 float32 parameters (+ the rotary buffer)
        assert 17_966_336 * 4 <= loaded_bytes < 17_966_336 * 4 + 10**5
        warm = backend.generate([Request("warmup-r0", requests[0].prompt_token_ids, 1)])
        assert len(warm[0].output_token_ids) == 1 and backend.batch_size == 6  # the warm-up keeps the size
        completions = backend.generate(requests)
    finally:
        backend.close()
    check = check_lengths(requests, completions)
    assert check.valid, check.reason()
    stats = backend.stats
    free = int(backend.cfg["hardware"]["memory_gb"] * 1e9) - loaded_bytes  # conf/hardware/cpu.yaml, less the model
    assert stats["batch_size"] == 6 and stats["batch_size_model_fit"] == 6  # capped at the 6 requests
    assert stats["batch_size_setting"] == "auto" and stats["mode"] == "static"
    assert stats["batches"] == 1 and stats["padded_generated_tokens"] == 6 * 13
    assert stats["batch_size_free_bytes"] == free
    assert stats["batch_size_budget_bytes"] == int(loaded_bytes + 0.9 * free)
    assert stats["batch_size_model_bytes"] == _window_need(backend, requests, 6)
    assert stats["batch_size_tried"] == []  # no probe on CPU
    assert stats["batch_size_sized_in_generate"] is False
    assert 0 < stats["batch_size_probe_s"] < 5
    assert stats["attn_implementation"] == "sdpa"
    assert backend.resolved_settings() == {"batching": "static batches of 6 (library.batch_size auto)"}


def test_auto_on_cpu_fits_the_memory_it_is_given(model_dir):
    """With room for 2 rows of the worst window but not 3, auto picks 2: batches (0,1), (2,3), (4,5)."""
    probe = _backend(model_dir, batch_size=4)
    requests = requests_from(MIXED)
    weights = probe._loaded_bytes()
    need2, need3 = _window_need(probe, requests, 2), _window_need(probe, requests, 3)
    probe.close()
    assert weights < need2 < need3
    budget = (need2 + need3) // 2
    memory_gb = (weights + (budget - weights) / 0.9) / 1e9
    cfg = job_config("transformers", batch_size="auto")
    cfg["hardware"]["memory_gb"] = memory_gb
    backend = TransformersBackend(cfg, ModelFiles(hf_dir=str(model_dir)))
    backend.load()
    try:
        completions = backend.generate(requests)  # no prepare: it sizes itself inside this call
    finally:
        backend.close()
    assert check_lengths(requests, completions).valid
    stats = backend.stats
    assert stats["batch_size"] == 2 and stats["batches"] == 3
    assert stats["padded_generated_tokens"] == 2 * 3 + 2 * 13 + 2 * 5
    assert stats["batch_size_model_bytes"] == need2 <= stats["batch_size_budget_bytes"] < need3
    assert stats["batch_size_sized_in_generate"] is True


def test_missing_model_folder_is_a_clear_error():
    backend = TransformersBackend(job_config("transformers"), ModelFiles())
    with pytest.raises(ValueError, match="hf_dir"):
        backend.load()


def test_probe_holds_the_last_steps_cache_and_computes_only_the_prompt(model_dir):
    """The GPU probe's generate, run here on CPU: the worst window for b=2 of MIXED is rows 2-3 (P=20,
    N=13); b copies of row 3's prompt behind 12 cached positions, so the cache ends at P + N - 1 = 32
    and the decoder sees 20 new tokens per row."""
    backend = _backend(model_dir, batch_size="auto")
    calls, widths = [], []
    real_generate = backend.model.generate

    def recording_generate(**kwargs):
        cache = kwargs["past_key_values"]
        calls.append((tuple(kwargs["input_ids"].shape), cache.get_seq_length(), kwargs["max_new_tokens"]))
        out = real_generate(**kwargs)
        calls.append(cache.get_seq_length())
        return out

    hook = backend.model.model.layers[0].register_forward_hook(
        lambda module, args, kwargs, out: widths.append(tuple(kwargs.get("hidden_states", args[0] if args else None).shape)),
        with_kwargs=True)
    backend.model.generate = recording_generate
    try:
        backend._probe(requests_from(MIXED), 2)
    finally:
        hook.remove()
        backend.close()
    assert calls == [((2, 12 + 20), 12, 1), 32]
    assert widths == [(2, 20, 256)]
