"""Process groups: the one module that starts, watches and ends the processes the harness runs.

Whatever the harness starts that may start processes of its own (a batch worker and the library's helpers, a
server and its engine processes, Nsight Compute and the program it profiles, Chromium) runs as the leader of
a new session, so its whole tree is one process group whose id is the leader's pid. Ending the run ends the
group, children included, whoever their parent has become.

The rules, in one place:

- A group exists while ``killpg(pgid, 0)`` does not raise ``ProcessLookupError`` (ESRCH). A
  ``PermissionError`` (EPERM) means it exists: some member runs as another user or changed credentials (a
  set-uid helper), so it cannot be signalled but it is not gone.
- Zombies do not count: an orphan re-parented to an init that reaps slowly stays a zombie for a while,
  which ``killpg(pgid, 0)`` still counts. ``group_alive`` looks for a member that is not a zombie.
- ``end_group`` sends SIGTERM to the whole group, gives it ``grace_s`` to go, then SIGKILL, and reaps
  the leader; it says how the group ended (``Ending``).
- ``die_with_parent`` asks the kernel (Linux ``PR_SET_PDEATHSIG``) to send ``DEATH_SIGNAL`` when the
  harness dies without running its cleanup (SIGKILL, a crash). See ``DEATH_SIGNAL`` for why SIGTERM.
"""

from __future__ import annotations

import ctypes
import enum
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import subprocess

# subprocess and select are imported where used: the batch worker imports this module before the
# library it times, and the library's own import should be what loads them (batch_worker's note).

# SIGTERM rather than SIGKILL when the harness dies: the kernel sends this signal to the group's leader
# only, and once the harness is gone nobody else will end the leader's own children (a server's engine
# processes, a library's helpers). SIGTERM lets the leader shut those down itself, and a process without a
# SIGTERM handler (a plain Python worker) dies from it at once, as from SIGKILL. A leader that ignores
# SIGTERM survives; SIGKILL would end it but orphan its children, which is worse for a harness whose point
# is that no process outlives its run.
DEATH_SIGNAL = signal.SIGTERM
# How long end_group waits after SIGKILL for the group to disappear, and for the leader to be reaped.
KILL_WAIT_S = 5.0
POLL_S = 0.02
_PR_SET_PDEATHSIG = 1


class Ending(str, enum.Enum):
    """How ``end_group`` found or left a group."""

    EXITED = "exited"            # nothing alive in the group when end_group was called
    TERMINATED = "terminated"    # gone within the grace period after SIGTERM
    KILLED = "killed"            # needed SIGKILL
    SURVIVED = "survived"        # a member still alive after SIGKILL (e.g. stuck in uninterruptible sleep)


def _prctl():
    """libc's ``prctl``, resolved once in the parent (never inside a forked child), or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def die_with_parent(parent_pid: int | None = None, sig: int = DEATH_SIGNAL) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux); False where it cannot.

    With ``parent_pid``, a parent that already died before the request took effect (this process was
    then re-parented) ends this process at once, with exit code 1."""
    if _PRCTL is None or _PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
    return True


def _pdeathsig_after_fork(parent_pid: int):
    def _child() -> None:  # runs in the forked child before exec; the kernel keeps the setting across exec
        die_with_parent(parent_pid)
    return _child


def start_group(argv: Sequence[str], *, die_with_parent: bool = False, **popen_kwargs) -> subprocess.Popen:
    """``subprocess.Popen(argv)`` as the leader of a new session (its own process group, pgid = pid).

    ``die_with_parent`` sets ``DEATH_SIGNAL`` in the child before it executes ``argv``: for programs that
    cannot ask for it themselves (servers). A Python child of ours calls ``die_with_parent()`` itself
    instead, which needs no code between fork and exec."""
    if "start_new_session" in popen_kwargs or "preexec_fn" in popen_kwargs or "process_group" in popen_kwargs:
        raise ValueError("start_group sets the session itself; drop start_new_session/preexec_fn/process_group")
    import subprocess

    preexec = _pdeathsig_after_fork(os.getpid()) if die_with_parent and _PRCTL is not None else None
    return subprocess.Popen(list(argv), start_new_session=True, preexec_fn=preexec, **popen_kwargs)


def group_alive(pgid: int) -> bool:
    """Whether a process that is not a zombie is left in group ``pgid`` (EPERM counts as alive)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # the group exists; look for a live member below
    try:
        import psutil
    except ImportError:
        return True
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                return True
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # gone, or members we may not signal: the wait below tells which


def _wait_gone(proc: subprocess.Popen, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        proc.poll()  # reap the leader as soon as it exits, so it does not linger as our zombie
        if not group_alive(proc.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def end_group(proc: subprocess.Popen, grace_s: float, kill_wait_s: float = KILL_WAIT_S) -> Ending:
    """End ``proc``'s process group (started by ``start_group``): SIGTERM to the whole group, up to
    ``grace_s`` for it to go, then SIGKILL and up to ``kill_wait_s``; the leader is reaped. Ends the
    group even when the leader is gone (its orphans are still in the group)."""
    import subprocess

    pgid = proc.pid
    if proc.poll() is not None and not group_alive(pgid):
        ending = Ending.EXITED
    else:
        _signal_group(pgid, signal.SIGTERM)
        if _wait_gone(proc, grace_s):
            ending = Ending.TERMINATED
        else:
            _signal_group(pgid, signal.SIGKILL)
            ending = Ending.KILLED if _wait_gone(proc, kill_wait_s) else Ending.SURVIVED
    try:
        proc.wait(timeout=kill_wait_s)
    except subprocess.TimeoutExpired:
        pass
    return ending


class ExitWatch:
    """Waits for one child's exit. A pidfd (Linux >= 5.3) wakes at the exit itself, so a measured exit
    time holds no polling delay; elsewhere it falls back to ``Popen.wait`` with a timeout."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        try:
            self._fd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self._fd = None

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s``; True once the child has exited (and been reaped)."""
        import subprocess

        if self._fd is not None:
            import select

            select.select([self._fd], [], [], timeout_s)
            return self.proc.poll() is not None
        try:
            self.proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ExitWatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class GroupResult:
    """What ``run_group`` returns: the leader's exit code (None if it had to be ended), its output, and
    whether the timeout ended it."""

    argv: list[str]
    returncode: int | None
    stdout: str | bytes | None
    stderr: str | bytes | None
    timed_out: bool
    ending: Ending


def run_group(argv: Sequence[str], timeout_s: float | None = None, *, grace_s: float = 10.0,
              capture_output: bool = False, text: bool = False, **popen_kwargs) -> GroupResult:
    """Like ``subprocess.run``, with the program in its own process group: on the timeout, or when the
    caller is interrupted (Ctrl-C, ``inference_eval.termination``'s SIGTERM), the whole group is ended,
    not only the program's own process."""
    import subprocess

    if capture_output:
        popen_kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc = start_group(argv, text=text, **popen_kwargs)
    timed_out = False
    stdout = stderr = None
    try:
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
    finally:
        ending = end_group(proc, grace_s)
    if timed_out:
        try:  # what the program wrote before it was ended
            stdout, stderr = proc.communicate(timeout=KILL_WAIT_S)
        except (subprocess.TimeoutExpired, ValueError, OSError):
            pass
    return GroupResult(list(argv), None if timed_out else proc.returncode, stdout, stderr, timed_out, ending)
