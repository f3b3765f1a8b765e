"""inference_eval.processes with real processes: groups, the EPERM rule, ending, dying with the parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from inference_eval import processes
from inference_eval.processes import Ending, end_group, group_alive, run_group, start_group

# A leader that starts a child in its group and prints the child's pid, then sleeps.
TREE = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print(child.pid, flush=True)
    time.sleep(600)
""")
# The same, but the leader ignores SIGTERM (only SIGKILL ends it).
STUBBORN = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + TREE


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tree(code: str = TREE) -> tuple[subprocess.Popen, int]:
    proc = start_group([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def test_start_group_makes_a_new_session_whose_id_is_the_leader():
    proc, child = _tree()
    try:
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
        assert os.getpgid(child) == proc.pid and os.getsid(proc.pid) == proc.pid
        assert group_alive(proc.pid)
    finally:
        assert end_group(proc, grace_s=5) is Ending.TERMINATED
    assert not _alive(proc.pid) and not _alive(child) and proc.returncode == -signal.SIGTERM
    assert not group_alive(proc.pid)


def test_start_group_refuses_its_own_session_arguments():
    with pytest.raises(ValueError, match="start_new_session"):
        start_group([sys.executable, "-c", "pass"], start_new_session=False)


def test_end_group_kills_what_ignores_sigterm_and_says_so():
    proc, child = _tree(STUBBORN)
    started = time.monotonic()
    assert end_group(proc, grace_s=0.5) is Ending.KILLED
    assert time.monotonic() - started < 5
    assert proc.returncode == -signal.SIGKILL and not _alive(child)


def test_end_group_ends_the_orphans_of_a_leader_that_already_exited():
    code = ("import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
            " print(c.pid, flush=True)")
    proc = start_group([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    orphan = int(proc.stdout.readline())
    proc.wait(timeout=30)
    assert _alive(orphan) and group_alive(proc.pid)
    assert end_group(proc, grace_s=5) is Ending.TERMINATED
    deadline = time.monotonic() + 5
    while _alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(orphan)


def test_end_group_of_a_finished_group_reports_exited():
    proc = start_group([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    assert end_group(proc, grace_s=1) is Ending.EXITED and proc.returncode == 0


def test_permission_error_from_the_probe_means_the_group_exists(monkeypatch):
    """EPERM: the group has a member we may not signal. It is there (the batch harness once read it as gone)."""
    def eperm(pgid, sig):
        raise PermissionError(1, "Operation not permitted")

    proc, _ = _tree()
    try:
        monkeypatch.setattr(os, "killpg", eperm)
        assert group_alive(proc.pid)
    finally:
        monkeypatch.undo()
        end_group(proc, grace_s=5)
    monkeypatch.setattr(os, "killpg", eperm)
    assert not group_alive(proc.pid)  # the probe says it exists, but no live member is left


def test_zombies_do_not_keep_a_group_alive():
    proc = start_group([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, 0)  # the unreaped leader still answers the probe
    assert not group_alive(proc.pid)
    proc.wait()


def test_exit_watch_wakes_at_the_exit():
    proc = start_group([sys.executable, "-c", "import time; time.sleep(0.3)"])
    with processes.ExitWatch(proc) as watch:
        assert not watch.wait(0.01)
        started = time.monotonic()
        assert watch.wait(30)
        assert time.monotonic() - started < 5 and proc.returncode == 0


def test_run_group_returns_output_and_exit_code():
    result = run_group([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
                       30, capture_output=True, text=True)
    assert (result.returncode, result.stdout, result.stderr, result.timed_out) == (3, "out\n", "err\n", False)


def test_run_group_timeout_ends_the_whole_tree():
    """subprocess.run's timeout kills its child only; the profiled program under it would live on."""
    code = TREE.replace("print(child.pid, flush=True)", "open(sys.argv[1], 'w').write(str(child.pid))")
    pid_file = f"/tmp/ie-test-run-group-{os.getpid()}"
    try:
        started = time.monotonic()
        result = run_group([sys.executable, "-c", code, pid_file], 1.0, grace_s=2, capture_output=True, text=True)
        assert result.timed_out and result.returncode is None and result.ending is Ending.TERMINATED
        assert time.monotonic() - started < 10
        child = int(Path(pid_file).read_text())
        assert not _alive(child)
    finally:
        if os.path.exists(pid_file):
            os.unlink(pid_file)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("how", ["preexec", "self"])
def test_a_child_dies_with_a_sigkilled_parent(how):
    """The parent dies without running any cleanup: the kernel sends DEATH_SIGNAL to its group leader."""
    if how == "preexec":  # a program that cannot ask for it itself (a server)
        start = ("p = processes.start_group([sys.executable, '-c', 'import time; time.sleep(600)'], "
                 "die_with_parent=True)")
    else:  # a Python child of ours (the batch worker) asks itself
        start = ("p = processes.start_group([sys.executable, '-c', 'import os, time; "
                 "from inference_eval.processes import die_with_parent; die_with_parent(' + str(os.getpid()) + ');"
                 " print(1, flush=True); time.sleep(600)'], stdout=subprocess.PIPE); p.stdout.readline()")
    code = ("import os, subprocess, sys\nfrom inference_eval import processes\n" + start
            + "\nprint(p.pid, flush=True)\nimport time; time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the child outlived its SIGKILLed parent"


def test_die_with_parent_ends_a_child_whose_parent_is_already_gone():
    code = "from inference_eval.processes import die_with_parent; die_with_parent(1); print('survived')"
    if not sys.platform.startswith("linux") or os.getpid() == 1:
        pytest.skip("needs Linux and a parent other than pid 1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 1 and "survived" not in out.stdout
