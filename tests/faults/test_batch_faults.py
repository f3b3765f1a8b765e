"""Issue 8, batch mode: a library OOM or crash makes that row say so; the other rows still complete;
nothing hangs and no process survives its run."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fake backends and fixtures

from batch_fixtures import MIXED, job_config, write_rows  # noqa: E402
from inference_eval.batch import run_batch  # noqa: E402
from inference_eval.models.files import ModelFiles  # noqa: E402


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cfg(fault: str | None, tmp_path: Path, timeout_s: float = 60) -> dict:
    cls = "FaultyBackend" if fault else "CountingBackend"
    cfg = job_config("transformers", backend=f"batch_fake_backends:{cls}", fault=fault,
                     pid_file=str(tmp_path / "helper.pid"))
    cfg["library"]["name"] = f"fake-{fault or 'ok'}"
    cfg["scenario"]["timeout_s"] = timeout_s
    cfg["scenario"]["warmup_requests"] = 0  # fault in the measured call (the warm-up has its own test)
    return cfg


def _run(tmp_path: Path, cfg: dict, name: str) -> dict:
    rows = write_rows(tmp_path / "datasets" / "s2s-synthetic", MIXED)
    out = tmp_path / "cpu" / "batch" / name
    before = _descendants()
    started = time.perf_counter()
    record = run_batch(cfg, rows, ModelFiles(), out / "s2s.json", out / "s2s.requests.csv", echo=False)
    elapsed = time.perf_counter() - started
    assert _descendants() <= before, f"processes survived the run: {_descendants() - before}"
    assert json.loads((out / "s2s.json").read_text())["status"] == record["status"]
    assert (out / "s2s.requests.csv").read_text().count("\n") == len(MIXED) + 1
    assert not list(out.glob(".*")), "temporary files left beside the record"
    record["_elapsed"] = elapsed
    return record


@pytest.mark.parametrize("fault, status, words", [
    ("exit", "failed", ["exited with code 3 during generate"]),
    ("segv", "failed", ["SIGSEGV during generate"]),
    ("sigkill", "oom", ["SIGKILL", "OOM killer"]),
    ("memoryerror", "oom", ["MemoryError during generate", "64 GiB"]),
    ("raise", "failed", ["RuntimeError during generate: the library broke"]),
])
def test_crash_or_oom_becomes_a_record(tmp_path, fault, status, words):
    record = _run(tmp_path, _cfg(fault, tmp_path), fault)
    assert record["status"] == status
    for w in words:
        assert w in record["reason"]
    assert record["token_throughput_tok_s"] is None and record["n_exact"] == 0
    assert record["load_time_s"] is not None  # it got past load; the reason says where it died


def test_crash_in_the_warmup_names_the_warmup(tmp_path):
    cfg = _cfg("segv", tmp_path)
    cfg["scenario"]["warmup_requests"] = 1
    record = _run(tmp_path, cfg, "warmup")
    assert record["status"] == "failed" and "SIGSEGV during warmup" in record["reason"]


def test_torch_out_of_memory_error_is_oom(tmp_path):
    pytest.importorskip("torch")
    record = _run(tmp_path, _cfg("torch_oom", tmp_path), "torch_oom")
    assert record["status"] == "oom" and "OutOfMemoryError during generate" in record["reason"]


def test_hang_is_killed_at_the_timeout(tmp_path):
    record = _run(tmp_path, _cfg("hang", tmp_path, timeout_s=2), "hang")
    assert record["status"] == "failed" and "timed out after 2 s during generate" in record["reason"]
    assert record["_elapsed"] < 15


def test_helper_process_of_a_dead_worker_is_reaped(tmp_path):
    record = _run(tmp_path, _cfg("orphan", tmp_path), "orphan")
    assert record["status"] == "failed"
    helper = int((tmp_path / "helper.pid").read_text())
    deadline = time.time() + 5
    while _alive(helper) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(helper), f"library helper process {helper} outlived its run"


def test_other_rows_complete_after_a_crash(tmp_path):
    crashed = _run(tmp_path, _cfg("segv", tmp_path), "first")
    fine = _run(tmp_path, _cfg(None, tmp_path), "second")
    assert crashed["status"] == "failed"
    assert fine["status"] == "ok" and fine["n_exact"] == len(MIXED)


def test_sigterm_to_the_harness_kills_the_worker_and_writes_nothing(tmp_path):
    """Snakemake or SLURM cancelling the job: the worker goes with it, no record claims completion."""
    import os
    import signal
    import subprocess

    cfg = _cfg("hang", tmp_path, timeout_s=600)
    rows = write_rows(tmp_path / "datasets" / "s2s-synthetic", MIXED)
    out = tmp_path / "out"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    script = (
        "import json, sys\n"
        f"sys.path[:0] = {[str(Path(__file__).resolve().parents[1])]!r}\n"
        "from inference_eval.models.files import ModelFiles\n"
        "from inference_eval.batch import run_batch\n"
        f"run_batch(json.load(open({str(tmp_path / 'cfg.json')!r})), {str(rows)!r}, ModelFiles(),\n"
        f"          {str(out / 's2s.json')!r}, {str(out / 's2s.requests.csv')!r}, echo=False)\n")
    harness = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ))
    try:
        deadline = time.time() + 30
        while time.time() < deadline:  # wait until the worker is inside generate
            progress = list(out.glob(".batch-worker-*/result.json.progress"))
            if progress and '"generate"' in progress[0].read_text():
                break
            time.sleep(0.05)
        else:
            pytest.fail("the worker never reached generate")
        workers = [p.pid for p in psutil.Process(harness.pid).children(recursive=True)]
        assert workers
        harness.send_signal(signal.SIGTERM)
        assert harness.wait(timeout=20) != 0
    finally:
        if harness.poll() is None:
            harness.kill()
    assert not any(_alive(pid) for pid in workers)
    assert not (out / "s2s.json").exists() and not (out / "s2s.requests.csv").exists()
    assert not list(out.glob(".batch-worker-*")), "the worker's scratch folder was left behind"
