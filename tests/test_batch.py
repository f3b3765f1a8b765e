"""The batch harness (inference_eval.batch and batch_plan, batch_watch, batch_record): requests, records,
statuses, the worker process."""

from __future__ import annotations

import csv
import json
import signal

import pytest

from batch_fixtures import MIXED, job_config, tiny_model_dir, write_rows
from inference_eval.batch import run_batch
from inference_eval.batch_plan import load_plan, worker_timeout_s
from inference_eval.batch_record import peak_memory
from inference_eval.batch_watch import describe_exit
from inference_eval.models.files import ModelFiles
from inference_eval.requests import run_limits

RECORD_KEYS = {"kind", "library", "model", "dataset", "dataset_member", "dataset_source", "synthetic", "hardware",
               "status", "reason", "n_requests", "dataset_rows", "input_tokens", "requested_output_tokens",
               "output_tokens", "n_exact", "total_time_s", "load_time_s", "token_throughput_tok_s",
               "requests_per_s", "peak_memory_gb", "provenance"}


def _fake_cfg(cls: str, **library):
    cfg = job_config("transformers", backend=f"batch_fake_backends:{cls}", **library)
    cfg["library"]["name"] = "fake"
    return cfg


def _run(tmp_path, cfg, lengths=MIXED, manifest=None):
    rows = write_rows(tmp_path / "datasets" / "s2s-synthetic", lengths, manifest)
    out = tmp_path / "cpu" / "batch"
    record = run_batch(cfg, rows, ModelFiles(hf_dir=str(tmp_path / "model")), out / "s2s.json",
                       out / "s2s.requests.csv", log_path=out / "s2s.log", echo=False)
    on_disk = json.loads((out / "s2s.json").read_text())
    assert on_disk["status"] == record["status"]
    with (out / "s2s.requests.csv").open() as fh:
        csv_rows = list(csv.DictReader(fh))
    return record, csv_rows


# -- pure functions -------------------------------------------------------------------------------
def test_run_limits_come_from_the_dataset_config():
    assert run_limits({"dataset": {"limit": 16, "max_tokens_cap": 32}}) == (16, 32)
    assert run_limits({"dataset": {}}) == (None, None)


def test_batch_requests_apply_limit_and_cap(tmp_path):
    rows = write_rows(tmp_path, [(4, 40), (5, 3), (6, 50)])
    cfg = {"dataset": {"limit": 2, "max_tokens_cap": 10}}
    plan = load_plan(rows, cfg)
    requests, total = plan.requests, plan.dataset_rows
    assert total == 3
    assert [(r.id, r.max_tokens) for r in requests] == [("r0", 10), ("r1", 3)]


def test_worker_timeout_defaults_to_slurm_runtime_minus_margin():
    assert worker_timeout_s({"scenario": {"timeout_s": 5}}) == 5
    assert worker_timeout_s({"scenario": {}, "hardware": {"slurm": {"runtime_min": 60}}}) == 3600 - 120


def test_describe_exit_names_signal_and_oom_kill():
    status, reason = describe_exit(-signal.SIGSEGV, False, 10, "boom")
    assert status == "failed" and "SIGSEGV" in reason and "boom" in reason
    status, reason = describe_exit(-signal.SIGKILL, False, 10, "")
    assert status == "oom" and "OOM killer" in reason
    assert describe_exit(1, False, 10, "torch.OutOfMemoryError: CUDA out of memory")[0] == "oom"
    status, reason = describe_exit(-9, True, 10, "")
    assert status == "failed" and "timed out after 10 s during start-up" in reason


def test_peak_memory_says_what_it_measured():
    gb, kind = peak_memory({"memory": {"self_max_rss_bytes": 2e9}, "sampled_peak_rss_bytes": 3e9}, gpu=False)
    assert gb == 3.0 and "CPU peak resident" in kind
    gb, kind = peak_memory({"memory": {"torch_max_allocated_bytes": 5e9}}, gpu=True)
    assert gb == 5.0 and "max_memory_allocated" in kind
    assert peak_memory({"memory": {}}, gpu=True) == (None, None)


# -- through the worker process -------------------------------------------------------------------
def test_ok_record_has_every_field_and_csv_rows(tmp_path):
    manifest = {"source": "synthetic", "synthetic": True, "rows": len(MIXED)}
    record, rows = _run(tmp_path, _fake_cfg("CountingBackend"), manifest=manifest)
    assert RECORD_KEYS <= set(record)
    assert record["status"] == "ok", record["reason"]
    assert record["kind"] == "batch" and record["dataset"] == "s2s" and record["dataset_member"] == "s2s-synthetic"
    assert record["dataset_source"] == "synthetic" and record["synthetic"] is True
    assert record["n_requests"] == record["n_exact"] == len(MIXED)
    assert record["input_tokens"] == sum(p for p, _ in MIXED)
    assert record["output_tokens"] == record["requested_output_tokens"] == sum(m for _, m in MIXED)
    assert record["token_throughput_tok_s"] == pytest.approx(record["output_tokens"] / record["total_time_s"])
    assert record["requests_per_s"] == pytest.approx(len(MIXED) / record["total_time_s"])
    assert record["load_time_s"] is not None and record["peak_memory_gb"] > 0
    assert record["provenance"]["config_hash"] and record["provenance"]["finished"] >= record["provenance"]["started"]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(len(MIXED))]
    assert all(r["ok"] == "True" for r in rows)
    assert (tmp_path / "cpu" / "batch" / "s2s.log").exists()
    assert record["warmup_time_s"] is not None  # one untimed short request before the measured call
    assert not any(r["id"].startswith("warmup") for r in rows)


def test_record_without_manifest_falls_back_to_config(tmp_path):
    record, _ = _run(tmp_path, _fake_cfg("CountingBackend"))
    assert record["dataset_source"] == "synthetic" and record["synthetic"] is True


def test_wrong_lengths_mark_the_run_invalid_with_counts(tmp_path):
    record, rows = _run(tmp_path, _fake_cfg("CountingBackend", short=True))
    assert record["status"] == "invalid"
    assert record["n_exact"] == 3 and "3/6 requests did not generate exactly max_tokens" in record["reason"]
    assert "r1: got 2 want 3" in record["reason"]
    assert [r["ok"] for r in rows] == ["True", "False"] * 3


def test_missing_library_is_not_installed(tmp_path):
    record, rows = _run(tmp_path, _fake_cfg("MissingLibraryBackend"))
    assert record["status"] == "not_installed" and "fakelib is not installed" in record["reason"]
    assert record["total_time_s"] is None and record["token_throughput_tok_s"] is None
    assert len(rows) == len(MIXED) and all(r["ok"] == "False" and r["error"] for r in rows)


def test_unknown_backend_module_fails_with_its_name(tmp_path):
    cfg = _fake_cfg("CountingBackend")
    cfg["library"]["backend"] = "inference_eval.backends.nosuch_backend:NoSuch"
    record, _ = _run(tmp_path, cfg)
    assert record["status"] == "failed" and "inference_eval.backends.nosuch_backend" in record["reason"]


def test_transformers_run_batch_end_to_end(tmp_path):
    """The CPU default through the real worker: tiny random-weight Llama, static batches of 4."""
    cfg = job_config("transformers", batch_size=4, attn_implementation="sdpa")
    tiny_model_dir(tmp_path / "model", cfg["model"])
    record, rows = _run(tmp_path, cfg)
    assert record["status"] == "ok", record["reason"]
    assert record["library"] == "transformers" and record["model"] == "tiny-llama"
    assert record["n_exact"] == len(MIXED) and record["output_tokens"] == sum(m for _, m in MIXED)
    assert record["backend_stats"]["batches"] == 2
    assert record["library_versions"]["transformers"]
    assert record["total_time_s"] > 0 and record["load_time_s"] > 0
    assert [int(r["output_tokens"]) for r in rows] == [m for _, m in MIXED]
    # the worker's end after its result, timed by the parent on the same clock: short, never negative
    assert 0 <= record["exit_time_s"] < record["worker_wall_s"]
    phases = ("import_time_s", "load_time_s", "warmup_time_s", "total_time_s", "close_time_s", "exit_time_s")
    assert sum(record[k] for k in phases) < record["worker_wall_s"] < record["harness_wall_s"]


def test_repeats_time_every_run_and_give_an_interval(tmp_path):
    """Three timed runs of the dataset in one loaded engine: each checked, the mean and its 95 % interval."""
    cfg = job_config("transformers", batch_size=4, attn_implementation="sdpa")
    cfg["scenario"]["repeats"] = 3
    tiny_model_dir(tmp_path / "model", cfg["model"])
    record, _ = _run(tmp_path, cfg)
    assert record["status"] == "ok", record["reason"]
    times = record["repeat_times_s"]
    assert record["repeats"] == 3 and len(times) == 3 and all(t > 0 for t in times)
    assert record["total_time_s"] == pytest.approx(sum(times) / 3)
    assert record["total_time_ci95_lo_s"] < record["total_time_s"] < record["total_time_ci95_hi_s"]
    assert record["token_throughput_ci95_lo_tok_s"] < record["token_throughput_tok_s"], times
    if record["total_time_ci95_lo_s"] > 0:  # a tiny model on a shared CPU can vary by more than its mean
        assert record["token_throughput_tok_s"] < record["token_throughput_ci95_hi_tok_s"]
    else:
        assert record["token_throughput_ci95_hi_tok_s"] is None
    assert record["total_time_cv"] > 0
    assert record["fairness"]["repeats"] == 3 and "3 timed run(s)" in record["fairness"]["repeats_method"]
    assert record["warmup_repeats"] == 0 and record["warmup_repeats_time_s"] is None  # the CPU profile's default


def test_warmup_repeats_run_the_dataset_untimed_first(tmp_path):
    cfg = job_config("transformers", batch_size=4, attn_implementation="sdpa")
    cfg["scenario"]["repeats"], cfg["scenario"]["warmup_repeats"] = 2, 1
    tiny_model_dir(tmp_path / "model", cfg["model"])
    record, _ = _run(tmp_path, cfg)
    assert record["status"] == "ok", record["reason"]
    assert record["warmup_repeats"] == 1 and record["warmup_repeats_time_s"] > 0
    assert len(record["repeat_times_s"]) == 2
    assert "and 1 untimed run(s) of the whole dataset" in record["fairness"]["repeats_method"]
