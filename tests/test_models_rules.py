"""rules/models.smk through Snakemake: the paths model_files() names, planned and (slow) built."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def snakemake(tmp_path: Path, *targets: str, dry_run: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--directory", str(REPO),
           "--config", f"results_dir={tmp_path}", "hardware=cpu"]
    if dry_run:
        cmd.append("-n")
    return subprocess.run(cmd + ["--", *targets], capture_output=True, text=True, timeout=600, cwd=REPO)


def planned_jobs(output: str) -> dict[str, int]:
    table = output.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def test_model_targets_plan(tmp_path):
    pytest.importorskip("snakemake")
    r = snakemake(tmp_path, f"{tmp_path}/models/tiny-llama/gguf/f16.gguf",
                  f"{tmp_path}/models/tiny-mistral/hf/config.json",
                  f"{tmp_path}/a100/engines/trtllm/llama2-7b/engine.json")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    # Without TensorRT-LLM here the engine job only records "not installed": no 13 GB weights planned.
    assert planned_jobs(out) == {"gguf": 1, "prepare_model": 2, "trtllm_engine": 1}
    # the engine build asks for the A100 profile's GPU resources
    engine_job = out.split("rule trtllm_engine:", 1)[1].split("\n\n", 1)[0]
    assert "gpu=1" in engine_job and "llama2-7b/weights/model.safetensors" not in engine_job


@pytest.mark.slow
def test_model_rules_build_tiny_llama(tmp_path):
    pytest.importorskip("gguf")
    targets = [f"{tmp_path}/models/tiny-llama/hf/config.json", f"{tmp_path}/models/tiny-llama/gguf/f32.gguf",
               f"{tmp_path}/cpu/engines/trtllm/tiny-llama/engine.json",
               f"{tmp_path}/models/tiny-llama/weights/model.safetensors"]
    r = snakemake(tmp_path, *targets, dry_run=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads(Path(targets[0]).read_text())["num_key_value_heads"] == 4
    assert (tmp_path / "models/tiny-llama/hf/tokenizer.json").is_file()
    assert (tmp_path / "models/tiny-llama/weights/model.safetensors").stat().st_size > 17_000_000 * 4
    record = json.loads(Path(targets[2]).read_text())
    assert record["status"] in ("not_installed", "unsupported") and record["reason"]
    assert record["provenance"]["config"]["model"]["name"] == "tiny-llama"
    again = snakemake(tmp_path, *targets)
    assert "Nothing to be done" in again.stdout + again.stderr
