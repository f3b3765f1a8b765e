"""inference_eval.rule_log.tee_to_log: a script's output in the rule's log and still on the terminal."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_script(body: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh interpreter (its file descriptors 1 and 2 are the captured pipes, as a
    Snakemake script's are the terminal), with the worktree's package first on the path."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body), encoding="utf-8")
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})


def test_python_c_level_and_child_output_reach_log_and_terminal(tmp_path):
    log = tmp_path / "logs" / "rule" / "job.log"  # the folder does not exist yet
    proc = run_script(f"""
        import os, subprocess, sys
        from inference_eval.rule_log import tee_to_log

        print("before the block")
        with tee_to_log({str(log)!r}) as path:
            print("python stdout")
            print("python stderr", file=sys.stderr)
            os.write(1, b"fd-level stdout\\n")
            subprocess.run([sys.executable, "-c", "import sys; print('child out'); print('child err', file=sys.stderr)"])
        print("after the block")
        print("returned", path)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = log.read_text()
    for line in ("python stdout", "python stderr", "fd-level stdout", "child out", "child err"):
        assert line in text, (line, text)
    assert "before the block" not in text and "after the block" not in text
    # the terminal keeps everything, each stream where it went
    for line in ("before the block", "python stdout", "fd-level stdout", "child out", "after the block"):
        assert line in proc.stdout, (line, proc.stdout)
    assert "python stderr" in proc.stderr and "child err" in proc.stderr
    assert "python stderr" not in proc.stdout and "child out" not in proc.stderr
    assert f"returned {log}" in proc.stdout


def test_exception_traceback_is_logged_and_still_raised(tmp_path):
    log = tmp_path / "job.log"
    proc = run_script(f"""
        from inference_eval.rule_log import tee_to_log

        with tee_to_log({str(log)!r}):
            print("working")
            raise ValueError("bad input: dataset.limit = -1")
    """, tmp_path)
    assert proc.returncode == 1
    text = log.read_text()
    assert "working" in text
    assert "Traceback" in text and "ValueError: bad input: dataset.limit = -1" in text
    assert text.index("working") < text.index("Traceback")  # the output first, then why it stopped
    assert "ValueError: bad input: dataset.limit = -1" in proc.stderr  # Python's own report, on the terminal
    assert "working" in proc.stdout


def test_log_is_truncated_and_streams_are_restored(tmp_path):
    log = tmp_path / "job.log"
    log.write_text("an older run's log\n")
    proc = run_script(f"""
        import os
        from inference_eval.rule_log import tee_to_log

        fds = sorted(os.listdir("/proc/self/fd"))
        for _ in range(3):  # repeated use: nothing leaks, nothing stays redirected
            with tee_to_log({str(log)!r}):
                print("this run")
        os.write(1, b"after\\n")
        print("same fds:", sorted(os.listdir("/proc/self/fd")) == fds)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert log.read_text() == "this run\n"
    assert "same fds: True" in proc.stdout and "after" in proc.stdout


def test_no_log_path_runs_the_block_unchanged(tmp_path):
    proc = run_script("""
        from inference_eval.rule_log import tee_to_log

        with tee_to_log(None) as path:
            print("no log:", path)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "no log: None\n"
    assert list(tmp_path.iterdir()) == [tmp_path / "script.py"]


def test_a_child_that_outlives_the_block_does_not_hang_it(tmp_path, monkeypatch):
    log = tmp_path / "job.log"
    proc = run_script(f"""
        import subprocess, sys, time
        from inference_eval import rule_log

        rule_log.DRAIN_TIMEOUT_S = 0.5
        start = time.monotonic()
        with rule_log.tee_to_log({str(log)!r}):
            print("started a child", flush=True)
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
        print("exit took", round(time.monotonic() - start, 1))
        child.kill()
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    took = float(proc.stdout.split("exit took", 1)[1])
    assert took < 2.5, proc.stdout
    assert log.read_text() == "started a child\n"


@pytest.mark.parametrize("path_type", [str, Path])
def test_in_process_path_types(tmp_path, capfd, path_type):
    from inference_eval.rule_log import tee_to_log

    log = tmp_path / "job.log"
    with tee_to_log(path_type(log)) as got:
        print("in process", flush=True)
    assert got == log
    assert log.read_text() == "in process\n"
    assert "in process" in capfd.readouterr().out
