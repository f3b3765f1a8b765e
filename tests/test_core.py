import json
import os
from pathlib import Path

import pytest

from inference_eval.io import atomic_path, write_json
from inference_eval.report.provenance import provenance, redact
from inference_eval.requests import Completion, DatasetError, Request, check_lengths, load_requests


def test_check_lengths_counts_ids_and_names_mismatches():
    reqs = [Request("a", (1, 2), 3), Request("b", (5,), 2), Request("c", (7,), 1)]
    comps = [Completion("a", [9, 9, 9], 3), Completion("b", [9], 2), Completion("c", [], 1, error="HTTP 500")]
    check = check_lengths(reqs, comps)
    assert not check.valid and check.n_exact == 1
    assert "b: got 1 want 2" in check.reason() and "HTTP 500" in check.reason()
    assert check_lengths(reqs[:1], comps[:1]).valid


def test_missing_completion_is_a_mismatch():
    check = check_lengths([Request("a", (1,), 2)], [])
    assert not check.valid and "missing completion" in check.reason()


def test_request_rejects_empty_prompt_and_zero_tokens():
    with pytest.raises(ValueError, match="r1"):
        Request("r1", (), 3)
    with pytest.raises(ValueError, match="max_tokens"):
        Request("r2", (1,), 0)


def test_load_requests_names_file_and_line(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_text(json.dumps({"id": 1, "prompt_token_ids": [1, 2], "max_tokens": 4}) + "\n{\"id\": 2, \"prompt\n")
    with pytest.raises(DatasetError, match=r"rows.jsonl:2"):
        load_requests(p)
    p.write_text(json.dumps({"id": 1, "prompt_token_ids": [1, 2], "max_tokens": 4}) + "\n")
    (r,) = load_requests(p)
    assert r.id == "1" and r.prompt_token_ids == (1, 2) and r.max_tokens == 4


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_secrets_never_reach_records():
    cfg = {"scenario": {"api_key": "sk-secret", "rates": [1]}, "model": {"hf_token": "hf_abc", "name": "x"},
           "dataset": {"max_tokens_cap": 32}}
    safe = redact(cfg)
    assert "sk-secret" not in json.dumps(safe) and "hf_abc" not in json.dumps(safe)
    assert safe["scenario"]["rates"] == [1] and safe["model"]["name"] == "x"
    assert safe["dataset"]["max_tokens_cap"] == 32
    prov = provenance(cfg)
    assert "sk-secret" not in json.dumps(prov)
    assert prov["config_hash"] and prov["git"].keys() >= {"commit", "dirty"}
    assert prov["hardware"]["cpu"]
    assert "numpy" in prov["versions"] and "snakemake" in prov["versions"]


def test_wrong_hardware_stops_with_a_clear_message(monkeypatch):
    from inference_eval.hardware import WrongHardwareError, ensure_local_hardware

    monkeypatch.setenv("INFERENCE_EVAL_HARDWARE", "cpu")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(WrongHardwareError, match=r"'a100'.*results/a100/.*'cpu'"):
        ensure_local_hardware("a100")
    ensure_local_hardware("cpu")
    ensure_local_hardware("a100", allow_foreign=True)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    ensure_local_hardware("a100")  # the node could not be told apart: trust the allocation
    monkeypatch.setenv("INFERENCE_EVAL_HARDWARE", "h100")
    with pytest.raises(WrongHardwareError):
        ensure_local_hardware("a100")  # a known, different GPU is refused even under SLURM


def test_thread_env_is_capped_at_usable_cores(monkeypatch):
    from inference_eval.hardware import cap_thread_env, usable_cores

    monkeypatch.setenv("OMP_NUM_THREADS", str(usable_cores() + 6))
    monkeypatch.setenv("MKL_NUM_THREADS", "8")
    assert cap_thread_env() == usable_cores()
    assert os.environ["OMP_NUM_THREADS"] == str(usable_cores()) and "MKL_NUM_THREADS" not in os.environ


def test_throughput_figure_labels_synthetic_datasets():
    import pandas as pd

    from inference_eval.report.batch_figures import throughput_figure

    row = {"library_label": "TRF", "model": "tiny-llama", "token_throughput_tok_s": 10.0, "status": "ok"}
    fig = throughput_figure({"s2s": pd.DataFrame([{**row, "synthetic": True}]),
                             "l2s": pd.DataFrame([{**row, "synthetic": False}])}, "t")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["s2s (synthetic)", "l2s"]


def test_sigterm_is_remembered_through_nested_blocks_and_cleared_after():
    import signal

    from inference_eval.termination import (Terminated, raise_if_terminated, terminate_on_sigterm,
                                            termination_pending)

    before = signal.getsignal(signal.SIGTERM)
    with terminate_on_sigterm():
        with pytest.raises(Terminated) as info:
            with terminate_on_sigterm():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(10_000):  # the handler runs at the next bytecode boundary
                    pass
        assert info.value.code == 128 + signal.SIGTERM
        assert termination_pending(), "the inner block's exit must not forget the outer block's signal"
        with pytest.raises(Terminated):
            raise_if_terminated()
    assert not termination_pending()
    assert signal.getsignal(signal.SIGTERM) is before
    raise_if_terminated()  # nothing pending outside a block


def test_sigterm_deferred_holds_the_raise_until_the_block_ends():
    import signal

    from inference_eval.termination import Terminated, sigterm_deferred, terminate_on_sigterm

    with terminate_on_sigterm():
        ours = signal.getsignal(signal.SIGTERM)
        reached = []
        with pytest.raises(Terminated):
            with sigterm_deferred() as deferral:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(10_000):  # a handler would run here
                    pass
                reached.append(deferral.pending())  # no raise inside: the signal is only noted
        assert reached == [True]
        assert signal.getsignal(signal.SIGTERM) is ours, "the raising handler is back after the block"
    with sigterm_deferred() as deferral:  # the default handler: nothing to hold back
        assert deferral is None


def test_source_digest_names_the_code_not_the_checkout(tmp_path):
    import shutil

    from inference_eval.report.provenance import source_digest

    repo = Path(__file__).resolve().parents[1]
    copy = tmp_path / "copy"
    for part in ("src/inference_eval", "conf", "rules", "workflow_scripts"):
        shutil.copytree(repo / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo / "Snakefile", copy / "Snakefile")
    here, there = source_digest(repo), source_digest(copy)
    assert here["files"] > 50 and here == there
    (copy / "conf" / "config.yaml").write_text((copy / "conf" / "config.yaml").read_text() + "\n# changed\n")
    assert source_digest(copy)["sha256"] != here["sha256"]
    assert provenance({"a": 1})["source"] == here
