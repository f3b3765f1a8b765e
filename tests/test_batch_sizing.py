"""The memory model and back-off loop behind Transformers' ``library.batch_size: auto`` (no torch needed)."""

from __future__ import annotations

import pytest

from inference_eval.backends import batch_sizing as bs
from inference_eval.theory.ops import ModelShape

LLAMA2_7B = {"name": "llama2-7b", "hidden_size": 4096, "intermediate_size": 11008, "num_layers": 32,
             "num_heads": 32, "num_kv_heads": 32, "vocab_size": 32000, "dtype": "bfloat16"}
GB = 10**9


@pytest.fixture(scope="module")
def shape():
    return ModelShape.from_config(LLAMA2_7B)


def test_llama2_7b_terms_are_the_stated_formulas(shape):
    m = bs.batch_memory(shape, 16, 100, 50)
    # 2 (K, V) x 32 layers x 4096 x 2 bytes = 512 KiB per token, 150 tokens per row
    assert shape.kv_bytes_per_token() == 524288
    assert m.kv_cache == 16 * 150 * 524288 and m.kv_concat == m.kv_cache // 32
    assert m.weights == shape.weight_bytes() == 6_738_415_616 * 2
    assert m.logits == 16 * 32000 * (2 + 8)            # last position only, + two float32 copies
    assert m.mlp == 16 * 100 * 11008 * 2 * 3 and m.hidden == 16 * 100 * 4096 * 2 * 4
    assert m.attention_scores == 0                     # sdpa
    eager = bs.batch_memory(shape, 16, 100, 50, attn_implementation="eager")
    assert eager.attention_scores == 16 * 32 * 100 * 100 * (2 * 2 + 4)
    assert m.total == sum(v for k, v in m.as_dict().items() if k not in ("batch_size", "prompt_len",
                                                                         "new_tokens", "total"))


def test_llama2_7b_fit_is_the_largest_batch_that_fits(shape):
    """On an 80 GB device with 1000-token rows: b fits (weights + KV <= budget), b + 1 does not."""
    lengths = [(500, 500)] * 1000
    weights = shape.weight_bytes()
    free = 80 * GB - weights
    budget = bs.memory_budget(weights, free)
    assert budget == int(weights + 0.9 * free)
    fit = bs.fit_batch_size(shape, lengths, budget)
    b = fit.batch_size
    kv_per_row = 1000 * shape.kv_bytes_per_token()
    # ~ 0.9 * 66.5 GB / 0.524 GB per row, less the activations: just over a hundred rows
    assert 100 <= b < 0.9 * free // kv_per_row
    assert weights + b * kv_per_row <= budget
    assert fit.memory.total <= budget
    assert bs.batch_memory(shape, b + 1, 500, 500).total > budget
    assert fit.memory.batch_size == b and fit.window.size == b


def test_fit_is_capped_at_the_request_count(shape):
    lengths = [(20, 10)] * 5
    fit = bs.fit_batch_size(shape, lengths, bs.memory_budget(shape.weight_bytes(), 140 * GB))
    assert fit.batch_size == 5 and fit.window == bs.Window(start=0, size=5, prompt_len=20, new_tokens=10)


def test_nothing_fits_gives_zero(shape):
    fit = bs.fit_batch_size(shape, [(4000, 4000)], shape.weight_bytes() + 10**6)
    assert fit.batch_size == 0 and fit.memory.batch_size == 1


def test_worst_window_of_consecutive_requests():
    lengths = [(10, 5), (300, 2), (20, 400), (15, 3), (500, 500), (8, 8)]
    assert bs.sliding_max([p for p, _ in lengths], 2) == [300, 300, 20, 500, 500]
    # width 2: windows pair neighbours only; (300,2)+(20,400) -> 300+400 beats every other pair but the
    # ones holding row 4 (500+500)
    assert bs.worst_window(lengths, 2) == bs.Window(start=3, size=2, prompt_len=500, new_tokens=500)
    without_big = lengths[:4]
    assert bs.worst_window(without_big, 2) == bs.Window(start=1, size=2, prompt_len=300, new_tokens=400)
    # width 1: the single worst row; width above the count: one window of all
    assert bs.worst_window(without_big, 1) == bs.Window(start=2, size=1, prompt_len=20, new_tokens=400)
    assert bs.worst_window(without_big, 99) == bs.Window(start=0, size=4, prompt_len=300, new_tokens=400)


def test_window_maxima_may_come_from_different_rows(shape):
    """The batch pads to its longest prompt and runs to its longest output, even from two rows."""
    lengths = [(1000, 1), (1, 1000), (1, 1), (1, 1)]
    window, memory = bs.window_memory(shape, lengths, 2, weight_bytes=0)
    assert (window.start, window.prompt_len, window.new_tokens) == (0, 1000, 1000)
    assert memory.kv_cache == 2 * 2000 * shape.kv_bytes_per_token()
    # aligned batches of 2 would be (1000,1)+(1,1000) = the same; windows also see (1,1000)+(1,1)
    assert bs.worst_window(lengths[1:], 2) == bs.Window(start=0, size=2, prompt_len=1, new_tokens=1000)


def test_need_grows_with_the_batch_size(shape):
    lengths = [(50 + (i * 37) % 400, 1 + (i * 53) % 300) for i in range(64)]
    needs = [bs.window_memory(shape, lengths, b)[1].total for b in range(1, 65)]
    assert all(a <= b for a, b in zip(needs, needs[1:]))


@pytest.mark.parametrize("value, kind, expected", [
    (None, "cpu", 8), (None, "gpu", "auto"), (None, None, 8), ("auto", "cpu", "auto"), ("AUTO", "gpu", "auto"),
    (8, "gpu", 8), (1, "cpu", 1), (128, "gpu", 128),
])
def test_resolve_setting(value, kind, expected):
    assert bs.resolve_setting(value, kind) == expected


@pytest.mark.parametrize("value", [0, -1, "abc", 2.5, True, False, "8", [8]])
def test_bad_setting_names_the_key_the_value_and_what_is_allowed(value):
    with pytest.raises(ValueError) as info:
        bs.resolve_setting(value, "gpu")
    message = str(info.value)
    assert "library.batch_size" in message and repr(value) in message
    assert "positive integer" in message and "'auto'" in message and "null" in message


class FakeOOM(RuntimeError):
    pass


FakeOOM.__name__ = "OutOfMemoryError"


def test_back_off_goes_64_48_36_and_stops_at_the_first_that_works():
    ran, released = [], []

    def try_batch(b):
        ran.append(b)
        if b > 30:
            raise FakeOOM(f"CUDA out of memory at {b}")

    chosen, tried = bs.probe_batch_size(64, try_batch, on_oom=lambda: released.append(len(ran)))
    assert tried == [64, 48, 36, 27] and ran == tried and chosen == 27
    assert released == [1, 2, 3]  # after each failure, before the next try


def test_back_off_recognises_runtime_error_text_and_keeps_tries_when_it_gives_up():
    tried: list[int] = []

    def always_oom(b):
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        bs.probe_batch_size(8, always_oom, tried=tried)
    assert tried == [8, 6, 4, 3, 2, 1]


def test_back_off_raises_other_errors_at_once():
    tried: list[int] = []

    def broken(b):
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError, match="shape mismatch"):
        bs.probe_batch_size(64, broken, tried=tried)
    assert tried == [64]


def test_first_size_that_works_is_kept():
    chosen, tried = bs.probe_batch_size(12, lambda b: None)
    assert (chosen, tried) == (12, [12])


def test_is_oom_error():
    assert bs.is_oom_error(FakeOOM("x"))
    assert bs.is_oom_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not bs.is_oom_error(RuntimeError("expected scalar type"))
    assert not bs.is_oom_error(ValueError("out of memory"))  # only RuntimeErrors by their text


def test_cpu_free_bytes():
    assert bs.cpu_free_bytes(24, 10**9) == 23 * GB
    assert bs.cpu_free_bytes(1, 2 * GB) == 0


def test_module_imports_no_torch():
    import subprocess
    import sys
    code = "import sys, inference_eval.backends.batch_sizing; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
