"""rules/batch.smk through Snakemake itself, in a scratch working directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")

pytestmark = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed")


def _snakemake(workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, INFERENCE_EVAL_HARDWARE="cpu")
    env.pop("SLURM_JOB_ID", None)
    return subprocess.run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
                           "--cores", "2", *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_dry_run_plans_batch_run_with_its_inputs(tmp_path):
    target = "results/cpu/batch/transformers/tiny-llama/s2s.json"
    proc = _snakemake(tmp_path, "-n", target)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    out = proc.stdout + proc.stderr
    assert "rule batch_run:" in out
    assert "results/datasets/s2s-synthetic/rows.jsonl" in out and "results/models/tiny-llama/hf/config.json" in out
    assert "results/cpu/batch/transformers/tiny-llama/s2s.requests.csv" in out


def test_job_for_other_hardware_fails_without_a_record(tmp_path):
    """A wrong-hardware job is a failed Snakemake job with the reason, never a record."""
    rows = tmp_path / "results" / "datasets" / "s2s-synthetic"
    rows.mkdir(parents=True)
    (rows / "rows.jsonl").write_text(json.dumps({"id": "a", "prompt_token_ids": [5, 6], "max_tokens": 2}) + "\n")
    (rows / "manifest.json").write_text("{}")
    hf = tmp_path / "results" / "models" / "tiny-llama" / "hf"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text("{}")
    record = tmp_path / "results" / "a100" / "batch" / "transformers" / "tiny-llama" / "s2s.json"
    proc = _snakemake(tmp_path, str(record.relative_to(tmp_path)), "--allowed-rules", "batch_run")
    assert proc.returncode != 0
    assert "this job is for hardware 'a100'" in proc.stdout + proc.stderr
    assert not record.exists()
