"""The end-to-end roofline bound of a dataset, and the files the theory rules write."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from inference_eval.config import compose
from inference_eval.requests import Request, run_limits
from inference_eval.theory.bound import (DOES_NOT_FIT, OK, bound_table, dataset_bound, decode_schedule,
                                         max_batch_size)
from inference_eval.theory.hardware import ceilings
from inference_eval.theory.ops import FUSED, ModelShape, model_total
from inference_eval.theory.roofline import roofline_time


def shape_and_ceilings(model="llama2-7b", hardware="a100"):
    cfg = compose([f"model={model}", f"hardware={hardware}"])
    shape = ModelShape.from_config(cfg["model"])
    return shape, ceilings(cfg["hardware"], shape.dtype)


def naive_schedule(prompts, decode, slots):
    """Step-by-step continuous batching, longest first: the reference for decode_schedule."""
    queue = sorted(range(len(prompts)), key=lambda i: -decode[i])
    queue = [i for i in queue if decode[i] > 0]
    active, counts, sums = {}, [], []
    while queue or active:
        while queue and len(active) < slots:
            active[queue.pop(0)] = 0
        counts.append(len(active))
        sums.append(sum(prompts[i] + done + 1 for i, done in active.items()))
        for i in list(active):
            active[i] += 1
            if active[i] == decode[i]:
                del active[i]
    return counts, sums


def test_decode_schedule_matches_step_by_step_simulation():
    rng = np.random.default_rng(1)
    for slots in (1, 3, 8):
        prompts = rng.integers(1, 40, 25)
        decode = rng.integers(0, 30, 25)
        count, context_sum = decode_schedule(prompts, decode, slots)
        ref_count, ref_sum = naive_schedule(list(prompts), list(decode), slots)
        assert list(count) == ref_count
        assert list(context_sum) == ref_sum
        assert len(count) >= max(decode.max(), int(np.ceil(decode.sum() / slots)))


def test_single_request_bound_is_its_prefill_plus_each_decode_step():
    shape, c = shape_and_ceilings()
    p, m = 30, 5
    row = dataset_bound([Request("a", tuple(range(1, p + 1)), m)], shape, c)
    pre = model_total(shape, 1, p, "prefill", causal=True)
    expected_prefill = roofline_time(pre.flops, pre.bytes(FUSED), c)
    expected_decode = sum(float(roofline_time((d := model_total(shape, 1, p + j, "decode")).flops, d.bytes(FUSED), c))
                          for j in range(1, m))
    assert row["status"] == OK and row["batch_size"] == 1 and row["decode_steps"] == m - 1
    assert row["prefill_s"] == pytest.approx(float(expected_prefill))
    assert row["decode_s"] == pytest.approx(expected_decode)
    assert row["bound_throughput_tok_s"] == pytest.approx(m / (row["prefill_s"] + row["decode_s"]))


def test_weights_read_once_per_step_make_batching_faster():
    shape, c = shape_and_ceilings()
    requests = [Request(str(i), tuple(range(1, 21)), 50) for i in range(64)]
    batched = dataset_bound(requests, shape, c)
    assert batched["batch_size"] == 64 and batched["decode_steps"] == 49
    # 64 requests one after another read the weights 64x as often
    one_at_a_time = sum(dataset_bound([r], shape, c)["decode_s"] for r in requests)
    assert batched["decode_s"] < one_at_a_time / 20
    # decode is memory-bound: each step costs at least the weights over bandwidth
    assert batched["decode_s"] >= 49 * shape.weight_bytes() * 0.98 / c.bandwidth


def test_batch_size_fits_memory_and_oversized_model_gets_a_reason():
    shape, c = shape_and_ceilings("llama2-7b", "a100")
    b = max_batch_size(shape, c, 2048, 10_000)
    assert shape.weight_bytes() + b * shape.kv_bytes_per_token() * 2048 <= c.memory_bytes
    assert shape.weight_bytes() + (b + 1) * shape.kv_bytes_per_token() * 2048 > c.memory_bytes
    big, c3090 = shape_and_ceilings("llama2-13b", "3090")
    row = dataset_bound([Request("a", (1, 2, 3), 4)], big, c3090)
    assert row["status"] == DOES_NOT_FIT and row["batch_size"] == 0 and np.isnan(row["bound_s"])
    assert "exceed 3090's 24 GB" in row["reason"]


def test_more_bandwidth_lowers_the_bound():
    shape, c = shape_and_ceilings("llama2-7b", "a100")
    requests = [Request(str(i), tuple(range(1, 30 + i)), 20 + i) for i in range(40)]
    slow = dataset_bound(requests, shape, c)
    fast = dataset_bound(requests, shape, ceilings({**compose(["hardware=a100"])["hardware"],
                                                    "measured": {"bandwidth_gbs": 4078}}))
    assert fast["decode_s"] < slow["decode_s"] and "measured bandwidth_gbs=4078" in fast["ceilings_source"]


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_bound_table_applies_run_limits_and_writes_one_row_per_model(tmp_path):
    rows = tmp_path / "rows.jsonl"
    write_rows(rows, [{"id": f"r{i}", "prompt": "", "prompt_token_ids": list(range(5, 15 + i)), "max_tokens": 40}
                      for i in range(20)])
    cfgs = {m: compose(["dataset=s2s-synthetic", f"model={m}", "hardware=cpu"]) for m in ("tiny-llama", "tiny-mistral")}
    limit, cap = run_limits(cfgs["tiny-llama"])
    assert limit == 16 and cap == 32  # the dataset's own limit and cap
    table = bound_table(rows, cfgs, "s2s")
    assert list(table["model"]) == ["tiny-llama", "tiny-mistral"]
    assert (table["n_requests"] == 16).all() and (table["output_tokens"] == 16 * 32).all()
    assert (table["status"] == OK).all() and (table["bound_s"] > 0).all()
    assert (table["bound_s"] == table["prefill_s"] + table["decode_s"]).all()
    assert (table["dataset"] == "s2s").all() and (table["hardware"] == "cpu").all()
    assert (table["dataset_member"] == tmp_path.name).all() and table["synthetic"].all()
    assert table["ceilings_source"].str.contains("datasheet bandwidth_gbs=20").all()


def test_workflow_writes_table_figure_and_bound(tmp_path):
    from inference_eval.theory.workflow import write_bound_table, write_op_table, write_roofline

    cfg = compose(["model=mistral-7b", "hardware=h100"])
    csv = tmp_path / "h100" / "theory" / "mistral-7b_ops_b8_s512.csv"
    write_op_table(csv, cfg, 8, 512)
    table = pd.read_csv(csv)
    assert set(table["stage"]) == {"prefill", "decode"} and (table["batch"] == 8).all()
    assert table["config_hash"].notna().all() and "inference_eval_version" in table
    png = tmp_path / "h100" / "theory" / "mistral-7b_roofline.png"
    write_roofline(csv, png, cfg)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    rows = tmp_path / "rows.jsonl"
    write_rows(rows, [{"id": "a", "prompt_token_ids": [5] * 12, "max_tokens": 8}])
    out = tmp_path / "h100" / "s2s_bound.csv"
    write_bound_table(out, rows, {"mistral-7b": compose(["dataset=s2s-synthetic", "model=mistral-7b",
                                                         "hardware=h100"])}, "s2s")
    bound = pd.read_csv(out)
    assert bound.loc[0, "model"] == "mistral-7b" and bound.loc[0, "output_tokens"] == 8
