"""Shared by the serving tests that run a real sweep against the project's loopback server."""
from __future__ import annotations

import json
from pathlib import Path

from inference_eval.config import compose
from inference_eval.models.files import ModelFiles
from inference_eval.serving.launch import TAG_ENV
from inference_eval.serving.procaudit import ProcessAudit
from inference_eval.serving.servers import LoopbackServer
from inference_eval.serving.sweep import run_sweep


def write_rows(path: Path, n: int, max_tokens: int) -> Path:
    """``n`` two-token prompts, each asking for ``max_tokens``."""
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"r{i}", "prompt": "", "prompt_token_ids": [1, 5 + i],
                                 "max_tokens": max_tokens}) + "\n")
    return path


def loopback_sweep(overrides, rows, tmp_path, monkeypatch, server_args=()):
    """run_sweep (vLLM's config, tiny model, CPU) on the loopback server started with ``server_args``;
    no process of the server may outlive it. Writes ``tmp_path/out.csv`` and ``tmp_path/run/``."""
    audit = ProcessAudit()
    monkeypatch.setenv(TAG_ENV, audit.tag)
    cfg = compose(["scenario=serving", "library=vllm", "model=tiny-llama", "hardware=cpu", *overrides])
    try:
        return run_sweep(cfg, rows, ModelFiles(), tmp_path / "out.csv", tmp_path / "run",
                         spec=LoopbackServer(tuple(server_args)), dataset="s2s")
    finally:
        assert not audit.survivors(wait_s=10)
