"""The load generator: replays a precomputed schedule against an OpenAI-compatible ``/v1/completions``
endpoint with streamed responses, and records per request when it was scheduled, sent, got its first
token, got each chunk, ended, how many tokens came back and why it failed.

Latency counts from the *scheduled* send time, so a generator (or a concurrency cap) that sends late
shows up as latency, never hides it; the send lag (sent - scheduled) is recorded separately. A request is
sent when its bytes are written to a connection: waiting for one (``max_opening`` below) is send lag.

Token counts come from what the server says (``sse.StreamDecoder``). A request is a success only if the
stream finished cleanly *and* carried exactly ``max_tokens`` tokens.

How it keeps up (benchmarks/loadgen_capacity.py measures it against vLLM's own client): request bytes
(head and body) are made before the run; one dispatcher coroutine sleeps until each absolute deadline
and hands the request to the connection pool (``http1``), with no task or coroutine per request; each
response is parsed inside its connection's ``data_received``, one clock read and one ``bytes.split``
per read and one typed JSON decode per chunk; the event loop is uvloop where installed; connections are
kept alive and reused, and opened at most ``max_opening`` at a time so that rate inf does not overflow
the server's accept queue; garbage collection is kept off the send path (``_quiet_gc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import signal
import time
from dataclasses import dataclass, field
from collections.abc import Callable, Sequence

from inference_eval.requests import Completion, Request
from inference_eval.serving.http1 import Endpoint, Exchange, Pool, PoolStats
from inference_eval.serving.schedule import Schedule
from inference_eval.serving.sse import MalformedStream, StreamDecoder
from inference_eval.termination import SigtermDeferral, raise_if_terminated, sigterm_deferred

__all__ = ["LoadSettings", "MalformedStream", "PoolStats", "ServedCompletion", "run_load", "run_load_async"]

# Start the first request a little after t0 so that building the run's state is not counted as lag.
START_LEAD_S = 0.05


@dataclass
class ServedCompletion(Completion):
    """A ``Completion`` plus what only the serving client knows."""

    finish_reason: str | None = None
    server_prompt_tokens: int | None = None
    n_chunks: int = 0
    http_status: int | None = None


@dataclass
class LoadSettings:
    url: str                                   # full endpoint, e.g. http://127.0.0.1:8000/v1/completions
    request_timeout_s: float = 600.0           # per request, from the moment it is sent
    max_concurrency: int | None = None         # requests in flight at most (None: unlimited)
    api_key: str | None = None                 # sent as a bearer token; never stored in results
    progress: bool = True
    # the server streams text only (no ids, no usage) and sets finish_reason "length" exactly when it
    # generated max_tokens tokens (llama.cpp, MII): that finish_reason certifies the count
    length_from_finish_reason: bool = False
    extra_headers: dict = field(default_factory=dict)
    # connections opening at once (connecting, or connected and not yet answered): well under the listen
    # backlog of the servers we drive (uvicorn, under every engine's OpenAI server: 2048; aiohttp: 128)
    max_opening: int = 8
    # a connection counts as accepted this long after its handshake even before its first answer, if the
    # server has sent bytes on any connection since (http1: a server that has stalled gets no more)
    opening_grace_s: float = 0.05

    def headers(self) -> dict:
        h = {"Content-Type": "application/json", "Accept": "text/event-stream", **self.extra_headers}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def __repr__(self) -> str:  # keep the key out of any log that prints the settings
        return (f"LoadSettings(url={self.url!r}, request_timeout_s={self.request_timeout_s}, "
                f"max_concurrency={self.max_concurrency}, api_key={'<redacted>' if self.api_key else None})")


BodyBuilder = Callable[[Request], dict]


def _new_completion(r: Request, scheduled_s: float) -> ServedCompletion:
    return ServedCompletion(id=r.id, requested_tokens=r.max_tokens, prompt_tokens=r.prompt_len,
                            scheduled_s=scheduled_s)


async def run_load_async(requests: Sequence[Request], schedule: Schedule, body_for: BodyBuilder,
                         settings: LoadSettings, stats: PoolStats | None = None) -> list[ServedCompletion]:
    """Send ``requests[i]`` at ``schedule.offsets_s[i]``; return one completion per request, in order.

    Times in the completions are seconds from the schedule's origin (``scheduled_s`` is the offset).
    ``stats``, if given, is filled with what the connection pool did (connections opened, at most
    how many unconfirmed at once, resends).
    """
    if len(requests) != len(schedule):
        raise ValueError(f"{len(requests)} requests but the schedule has {len(schedule)} send times")
    endpoint = Endpoint.parse(settings.url)
    headers = settings.headers()
    offsets = [float(x) for x in schedule.offsets_s]
    completions = [_new_completion(r, off) for r, off in zip(requests, offsets)]
    exchanges = [Exchange(c, endpoint.post(json.dumps(body_for(r), separators=(",", ":")).encode(), headers),
                          StreamDecoder(c, settings.length_from_finish_reason), settings.request_timeout_s)
                 for r, c in zip(requests, completions)]
    bar = None
    if settings.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(requests), desc=f"rate {schedule.rate:g}/s", unit="req", mininterval=1.0, leave=False)
    t0 = time.perf_counter() + START_LEAD_S
    pool = Pool(endpoint, t0, expected=len(exchanges), max_opening=settings.max_opening,
                opening_grace_s=settings.opening_grace_s,
                connect_timeout_s=min(30.0, settings.request_timeout_s), max_in_flight=settings.max_concurrency,
                on_done=(lambda _c: bar.update(1)) if bar is not None else None,
                describe=lambda exc: f"bad stream: {exc}", reader_errors=(MalformedStream,))
    try:
        for off, ex in zip(offsets, exchanges):
            # never early: the loop's timers are coarser than perf_counter (uvloop: 1 ms), so re-check
            while (delay := t0 + off - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            pool.submit(ex)
        await pool.all_done
    finally:
        pool.close()
        if bar is not None:
            bar.close()
        if stats is not None:
            stats.__dict__.update(pool.stats.__dict__)
    for ex in exchanges:
        ex.c.http_status = ex.status
    return completions


@contextlib.contextmanager
def _quiet_gc():
    """Fewer, cheaper collections while sending: objects from setup are frozen out of the collector's
    view and the young-generation threshold is raised, so no long GC pause lands on a send time."""
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(max(old[0], 20_000), old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


async def _cancelled_by_sigterm(coro, deferral: SigtermDeferral | None):
    """Run ``coro`` with SIGTERM delivered through the event loop: it cancels the run and is noted in
    ``deferral`` (``sigterm_deferred``, whose handler gets it once the loop is gone). A ``signal.signal``
    handler that raises (``terminate_on_sigterm``) must not run inside the loop: uvloop runs it inside
    whatever callback is current, and one inside a transport's ``data_received`` is logged as a fatal
    transport error and swallowed, so the run goes on."""
    if deferral is None:
        return await coro
    loop, main = asyncio.get_running_loop(), asyncio.current_task()
    in_force = signal.getsignal(signal.SIGTERM)

    def on_sigterm() -> None:
        deferral.note()
        main.cancel()
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        if deferral.pending():  # noted while the loop started, or one whose raise was lost before
            coro.close()
            on_sigterm()
            await asyncio.sleep(0)  # the cancellation lands here
        return await coro
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, in_force)


def _event_loop_runner(coro):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run_load(requests: Sequence[Request], schedule: Schedule, body_for: BodyBuilder,
             settings: LoadSettings, stats: PoolStats | None = None) -> list[ServedCompletion]:
    """Blocking wrapper around :func:`run_load_async` (uvloop where installed). A SIGTERM during the run
    cancels it; the SIGTERM handler that was installed before then runs here, outside the loop. The
    handler is held back from the start of the loop on: a raise inside uvloop's setup left that loop
    running and the signal wake-up fd set, and every later event loop of the process failed."""
    cancelled = None
    with sigterm_deferred() as deferral:
        try:
            with _quiet_gc():
                completions = _event_loop_runner(_cancelled_by_sigterm(
                    run_load_async(requests, schedule, body_for, settings, stats), deferral))
        except asyncio.CancelledError as exc:
            if deferral is None or not deferral.noted:
                raise
            cancelled = exc  # the noted SIGTERM reaches its handler as the block ends (it raises, as a rule)
    if cancelled is not None:
        raise cancelled
    raise_if_terminated()
    return completions
