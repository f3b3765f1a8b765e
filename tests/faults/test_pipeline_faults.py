"""Pipeline-level faults: an interrupted run leaves nothing that passes for complete and resumes;
a result made under an older config is rerun, never mixed; a truncated dataset is a clear error."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inference_eval.requests import DatasetError

REPO = Path(__file__).resolve().parents[2]


def snakemake_cmd(results, *args):
    return [sys.executable, "-m", "snakemake", "--cores", "2", "--nolock", "--directory", str(REPO),
            "--snakefile", str(REPO / "Snakefile"), *args]


def env():
    return dict(os.environ, INFERENCE_EVAL_HARDWARE="cpu")


def overrides(results, extra=""):
    return ["--config", f"overrides=results_dir={results} {extra}".strip()]


def test_changed_config_reruns_instead_of_mixing(tmp_path):
    results = tmp_path / "results"
    target = str(results / "datasets" / "s2s-synthetic" / "rows.jsonl")
    done = subprocess.run(snakemake_cmd(results, target, *overrides(results)), capture_output=True, text=True,
                          env=env(), cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    same = subprocess.run(snakemake_cmd(results, "-n", target, *overrides(results)), capture_output=True,
                          text=True, env=env(), cwd=REPO, timeout=300)
    assert "Nothing to be done" in same.stdout + same.stderr
    changed = subprocess.run(snakemake_cmd(results, "-n", target, *overrides(results, "dataset.limit=8")),
                             capture_output=True, text=True, env=env(), cwd=REPO, timeout=300)
    text = changed.stdout + changed.stderr
    assert changed.returncode == 0 and "build_dataset" in text
    assert "params" in text.lower()  # the reason Snakemake gives: the job's parameters (its config) changed


def test_interrupted_run_leaves_no_complete_looking_file_and_resumes(tmp_path):
    results = tmp_path / "results"
    record = results / "cpu" / "batch" / "transformers" / "tiny-llama" / "s2s.json"
    args = snakemake_cmd(results, str(record), *overrides(results))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), cwd=REPO,
                            start_new_session=True)
    log = record.with_suffix(".log")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not log.exists():  # the batch job has started
        time.sleep(0.2)
    assert log.exists(), "batch job never started"
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=120)
    assert not record.exists(), "an interrupted run left a record that looks complete"
    assert not list(results.rglob("*.part")), "temporary files left behind"
    again = subprocess.run(args, capture_output=True, text=True, env=env(), cwd=REPO, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    rec = json.loads(record.read_text())
    assert rec["status"] == "ok" and rec["output_tokens"] == rec["requested_output_tokens"]


def test_truncated_dataset_is_a_clear_error(tmp_path):
    from inference_eval.batch_plan import load_plan

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": "a", "prompt_token_ids": [5, 6], "max_tokens": 3}\n{"id": "b", "prompt_tok')
    with pytest.raises(DatasetError, match=r"rows.jsonl:2"):
        load_plan(rows, {"dataset": {}})
