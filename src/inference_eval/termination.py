"""SIGTERM (Snakemake or SLURM cancelling a job) turned into an exception, so ``finally`` blocks run:
servers and workers are stopped and no partial result is left behind.

A signal handler runs wherever the main thread happens to be. Python prints and drops an exception
raised inside a finalizer (a ``__del__``, a weakref callback), and uvloop drops one raised inside a
transport callback, so the raise alone can be lost. The signal is therefore also remembered, and code
that must stop calls ``raise_if_terminated`` at its safe points. Code that must not be interrupted at an
arbitrary point at all (an event loop's start: uvloop left half set up stays unusable for the rest of
the process) runs inside ``sigterm_deferred``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Terminated(SystemExit):
    """SIGTERM turned into an exception so ``finally`` blocks run. A SystemExit, as
    asyncio propagates those out of a running loop (other BaseExceptions would stay inside a task)."""


# The SIGTERM received inside ``terminate_on_sigterm``, if any (see the module's note), and how many
# such blocks are open (a nested block leaves the outer one's signal in place).
_received: list[int] = []
_depth = [0]


def termination_pending() -> bool:
    return bool(_received)


def raise_if_terminated() -> None:
    if _received:
        raise Terminated(128 + _received[0])


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises (like Ctrl-C does), so cleanup runs; the previous handler is
    restored after. Only usable from the main thread."""
    def _raise(signum, frame):
        _received.append(signum)
        raise Terminated(128 + signum)
    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread
        yield
        return
    if _depth[0] == 0:
        _received.clear()
    _depth[0] += 1
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _depth[0] -= 1
        if _depth[0] == 0:
            _received.clear()


class SigtermDeferral:
    """What ``sigterm_deferred`` yields: the handler it stands in for, and the signals it noted."""

    def __init__(self, previous):
        self.previous = previous
        self.noted: list[int] = []

    def note(self, signum: int = signal.SIGTERM, frame=None) -> None:
        self.noted.append(signum)

    def pending(self) -> bool:
        """A SIGTERM noted here, or one remembered by ``terminate_on_sigterm`` whose raise was lost."""
        return bool(self.noted) or termination_pending()


@contextlib.contextmanager
def sigterm_deferred() -> Iterator[SigtermDeferral | None]:
    """Within the block a Python SIGTERM handler (``terminate_on_sigterm``'s) does not run: the signal is
    only noted, and the code inside checks ``pending()`` where it can stop. On leaving, the handler is
    restored and a noted signal is delivered to it (so it raises there, outside the block). The default
    and ignoring handlers are left in force (yields None): they raise nothing that could be lost."""
    if threading.current_thread() is not threading.main_thread() or not callable(signal.getsignal(signal.SIGTERM)):
        yield None
        return
    deferral = SigtermDeferral(signal.getsignal(signal.SIGTERM))
    signal.signal(signal.SIGTERM, deferral.note)
    try:
        yield deferral
    finally:
        signal.signal(signal.SIGTERM, deferral.previous)
        if deferral.noted:
            signal.raise_signal(signal.SIGTERM)
