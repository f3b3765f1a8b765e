"""A Snakemake rule's log file for a `script:` rule: what the script prints, duplicated into the log.

    from inference_eval.rule_log import tee_to_log

    with tee_to_log(snakemake.log[0]):
        ...  # everything printed here (Python, C libraries, child processes) also lands in the log

The duplication is at the file-descriptor level: file descriptors 1 and 2 point at pipes for the
duration of the block, and one thread per pipe copies what arrives to the original stdout or stderr
(the terminal keeps its progress output, each stream where it went before) and to the log. So output
of child processes (servers, Nsight Compute, compilers) and of C extensions is logged too, not only
Python's ``print``; such children see a pipe, not a terminal, so a program that buffers its output
when it is not on a terminal prints it in larger pieces. An exception that leaves the block is written
to the log with its traceback, after the output before it, then raised again (Python prints it on the
terminal as usual).

The log is written as the output arrives, not renamed into place at the end: a job that is killed
(SLURM's time or memory limit, Ctrl-C) keeps what it printed up to then, which is when a log matters.
It is truncated when the block starts, as Snakemake expects of a job's log.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import BinaryIO, Iterator

# How long the block's exit waits for the copy threads to drain their pipes. A child process that
# outlives the block (a detached server) keeps its end of the pipe open: the exit does not hang on it,
# and what that child prints after the block goes to the terminal only (the log is closed by then).
DRAIN_TIMEOUT_S = 5.0
_CHUNK = 65536


class _Copier(threading.Thread):
    """Copies everything read from ``read_fd`` to ``terminal_fd`` and to the shared log file."""

    def __init__(self, read_fd: int, terminal_fd: int, log: BinaryIO, lock: threading.Lock, name: str):
        super().__init__(name=f"tee_to_log-{name}", daemon=True)
        self.read_fd, self.terminal_fd, self.log, self.lock = read_fd, terminal_fd, log, lock
        self.terminal_ok = True

    def run(self) -> None:
        try:
            while True:
                try:
                    chunk = os.read(self.read_fd, _CHUNK)
                except InterruptedError:
                    continue
                if not chunk:
                    return
                self._to_terminal(chunk)
                with self.lock:
                    if not self.log.closed:
                        self.log.write(chunk)
                        self.log.flush()
        finally:
            os.close(self.read_fd)

    def _to_terminal(self, chunk: bytes) -> None:
        # A terminal that went away (closed pipe, hung-up tty) must not stop the log.
        if not self.terminal_ok:
            return
        view = memoryview(chunk)
        try:
            while view:
                written = os.write(self.terminal_fd, view)
                view = view[written:]
        except OSError:
            self.terminal_ok = False


def _on_fd(stream, fd: int) -> bool:
    try:
        return stream is not None and stream.fileno() == fd
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
        return False


def _fd_stream(fd: int, like) -> io.TextIOWrapper:
    """A line-buffered text stream on ``fd`` (for a sys.stdout/sys.stderr that writes elsewhere)."""
    encoding = getattr(like, "encoding", None) or "utf-8"
    return io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding=encoding, errors="backslashreplace",
                            line_buffering=True)


def _flush_python_streams() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream has nothing left to lose here
            pass


@contextlib.contextmanager
def tee_to_log(path: str | os.PathLike | None) -> Iterator[Path | None]:
    """Duplicate this process's stdout and stderr (file descriptors 1 and 2) into ``path`` for the
    block; the terminal still gets both. ``None`` (a rule without a log) runs the block unchanged."""
    if path is None:
        yield None
        return
    log_path = Path(path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")
    lock = threading.Lock()
    _flush_python_streams()
    saved: dict[int, int] = {}
    replaced: dict[str, object] = {}
    copiers: list[_Copier] = []
    failure = ""
    try:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            read_fd, write_fd = os.pipe()
            saved[fd] = os.dup(fd)
            copier = _Copier(read_fd, saved[fd], log, lock, name)
            copier.start()
            copiers.append(copier)
            os.dup2(write_fd, fd)  # children started in the block inherit the pipe as their stdout/stderr
            os.close(write_fd)
        # Python's own streams normally write to file descriptors 1 and 2; where they were replaced
        # (a test's capture, a wrapper), they write to the descriptors for the block, so that print()
        # is logged too.
        for name, fd in (("stdout", 1), ("stderr", 2)):
            stream = getattr(sys, name)
            if not _on_fd(stream, fd):
                replaced[name] = stream
                setattr(sys, name, _fd_stream(fd, stream))
        try:
            yield log_path
        except BaseException:
            failure = traceback.format_exc()  # logged after the output before it (below), then raised
            raise
    finally:
        _flush_python_streams()
        for name, stream in replaced.items():
            getattr(sys, name).close()  # closefd=False: the descriptor stays open
            setattr(sys, name, stream)
        for fd, original in saved.items():
            os.dup2(original, fd)  # closes the pipe's write end held at fd: the copier sees end of file
        for copier in copiers:
            copier.join(DRAIN_TIMEOUT_S)
        for original in saved.values():
            if not any(c.is_alive() and c.terminal_fd == original for c in copiers):
                os.close(original)
        with lock:
            if failure:
                log.write(failure.encode("utf-8", "replace"))
            log.close()
