"""TransformersBackend on CPU with the tiny random-weight Llama: exact lengths, padding, config errors."""

from __future__ import annotations

import pytest

from batch_fixtures import MIXED, job_config, requests_from, tiny_model_dir
from inference_eval.backends.base import ModelFiles
from inference_eval.requests import check_lengths

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
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_library_config_names_the_key(library, message):
    with pytest.raises(ValueError, match=message):
        TransformersBackend(job_config("transformers", **library), ModelFiles(hf_dir="unused"))


def test_missing_model_folder_is_a_clear_error():
    backend = TransformersBackend(job_config("transformers"), ModelFiles())
    with pytest.raises(ValueError, match="hf_dir"):
        backend.load()
