"""SIGTERM (Snakemake or SLURM cancelling a job) turned into an exception, so ``finally`` blocks run:
servers and workers are stopped and no partial result is left behind.

A signal handler runs wherever the main thread happens to be. Python prints and drops an exception
raised inside a finalizer (a ``__del__``, a weakref callback), and uvloop drops one raised inside a
transport callback, so the raise alone can be lost. The signal is therefore also remembered, and code
that must stop calls ``raise_if_terminated`` at its safe points.
"""

from __future__ import annotations

import contextlib
import signal
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
