"""The load generator: replays a precomputed schedule against an OpenAI-compatible ``/v1/completions``
endpoint with streamed responses, and records per request when it was scheduled, sent, got its first
token, got each chunk, ended, how many tokens came back and why it failed.

Latency counts from the *scheduled* send time, so a generator (or a concurrency cap) that sends late
shows up as latency, never hides it; the send lag (sent - scheduled) is recorded separately.

Token counts come from what the server says: token ids in the stream (vLLM ``return_token_ids``),
the ``usage`` block, or per-token logprob entries (llama.cpp). Text is never re-tokenized. A request is
a success only if the stream finished cleanly *and* carried exactly ``max_tokens`` tokens.

How it keeps up (see also benchmarks/loadgen_capacity.py): request bodies are serialized before the
run; one dispatcher coroutine sleeps until each absolute deadline and only starts a task (no work per
request on the dispatch path); the event loop is uvloop where installed; connections are kept alive
and reused; the hot path per SSE line is one timestamp, a prefix test and one ``json.loads``; garbage
collection is kept off the send path (``_quiet_gc``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import aiohttp

from inference_eval.requests import Completion, Request
from inference_eval.serving.schedule import Schedule
from inference_eval.termination import SigtermDeferral, raise_if_terminated, sigterm_deferred

# Start the first request a little after t0 so that task creation for the run is not counted as lag.
START_LEAD_S = 0.05
_SSE_FIELDS = (b"event", b"id", b"retry")


class MalformedStream(Exception):
    """The server sent something that is not a valid SSE stream of JSON completion chunks."""


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

    def headers(self) -> dict:
        h = {"Content-Type": "application/json", "Accept": "text/event-stream", **self.extra_headers}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    def __repr__(self) -> str:  # keep the key out of any log that prints the settings
        return (f"LoadSettings(url={self.url!r}, request_timeout_s={self.request_timeout_s}, "
                f"max_concurrency={self.max_concurrency}, api_key={'<redacted>' if self.api_key else None})")


BodyBuilder = Callable[[Request], dict]


def _elapsed(t0: float) -> float:
    return time.perf_counter() - t0


def _count_logprob_tokens(choice: dict) -> int:
    lp = choice.get("logprobs")
    if isinstance(lp, dict):
        tokens = lp.get("tokens")
        if isinstance(tokens, list):
            return len(tokens)
    return 0


async def _read_stream(resp: aiohttp.ClientResponse, c: ServedCompletion, t0: float,
                       length_from_finish_reason: bool = False) -> None:
    """Consume one SSE response; fill ``c`` (ids, usage, times). Raises ``MalformedStream``."""
    finished = False
    logprob_tokens = 0
    saw_logprobs = False
    async for raw in resp.content:
        now = _elapsed(t0)
        line = raw.strip()
        if not line or line[:1] == b":":
            continue
        if not line.startswith(b"data:"):
            if line.split(b":", 1)[0] in _SSE_FIELDS:
                continue
            raise MalformedStream(f"not an SSE line: {line[:80]!r}")
        data = line[5:].strip()
        if data == b"[DONE]":
            finished = True
            break
        try:
            event = json.loads(data)
        except ValueError:
            raise MalformedStream(f"SSE data is not JSON: {data[:80]!r}") from None
        if not isinstance(event, dict):
            raise MalformedStream(f"SSE data is not a JSON object: {data[:80]!r}")
        if "error" in event:
            err = event["error"]
            msg = err.get("message", err) if isinstance(err, dict) else err
            raise MalformedStream(f"server error in stream: {str(msg)[:200]}")
        usage = event.get("usage")
        if isinstance(usage, dict):
            if usage.get("completion_tokens") is not None:
                c.reported_tokens = int(usage["completion_tokens"])
            if usage.get("prompt_tokens") is not None:
                c.server_prompt_tokens = int(usage["prompt_tokens"])
        choices = event.get("choices") or []
        if not choices:
            continue
        choice = choices[0]
        ids = choice.get("token_ids")
        carried = False
        if ids:
            c.output_token_ids.extend(int(t) for t in ids)
            carried = True
        n_lp = _count_logprob_tokens(choice)
        if choice.get("logprobs") is not None:
            saw_logprobs = True
            logprob_tokens += n_lp
            carried = carried or n_lp > 0
        if choice.get("text"):
            carried = True
        if carried:
            if not c.first_token_s:
                c.first_token_s = now
            c.token_times_s.append(now)
            c.n_chunks += 1
        if choice.get("finish_reason"):
            c.finish_reason = choice["finish_reason"]
            finished = True  # some servers (transformers serve) end without [DONE]
    c.end_s = _elapsed(t0)
    if not finished:
        raise MalformedStream("stream ended before completion (no finish_reason and no [DONE]): "
                              "the server closed the connection mid-response")
    if c.reported_tokens is None and not c.output_token_ids:
        if saw_logprobs:
            c.reported_tokens = logprob_tokens
        elif length_from_finish_reason:
            # "length" is set exactly at max_tokens; otherwise the chunk count is the best the server says
            c.reported_tokens = c.requested_tokens if c.finish_reason == "length" else c.n_chunks
        else:
            raise MalformedStream("the stream carried no token count (no token ids, usage or logprobs)")
    if c.output_token_ids and c.reported_tokens is not None and c.reported_tokens != len(c.output_token_ids):
        raise MalformedStream(f"server's usage says {c.reported_tokens} tokens but the stream carried "
                              f"{len(c.output_token_ids)} token ids")


async def _one_request(session: aiohttp.ClientSession, settings: LoadSettings, headers: dict, body: bytes,
                       c: ServedCompletion, t0: float, slots: asyncio.Semaphore | None) -> ServedCompletion:
    try:
        if slots is not None:
            await slots.acquire()
        try:
            c.sent_s = _elapsed(t0)
            await asyncio.wait_for(_post(session, settings, headers, body, c, t0), settings.request_timeout_s)
        finally:
            if slots is not None:
                slots.release()
    except asyncio.TimeoutError:
        c.error = (f"timeout: no complete response within {settings.request_timeout_s:g}s "
                   f"({c.output_tokens} tokens received)")
    except MalformedStream as exc:
        c.error = f"bad stream: {exc}"
    except aiohttp.ClientResponseError as exc:
        c.error = f"HTTP {exc.status}: {exc.message}"
    except (aiohttp.ClientError, ConnectionError, OSError) as exc:
        c.error = f"connection: {type(exc).__name__}: {exc}" + (
            f" ({c.output_tokens} tokens received)" if c.output_tokens else "")
    except ValueError as exc:  # aiohttp: an SSE line longer than the read buffer
        c.error = f"bad stream: {exc}"
    if not c.end_s:
        c.end_s = _elapsed(t0)
    if not c.error and c.output_tokens != c.requested_tokens:
        c.error = (f"length: generated {c.output_tokens} of {c.requested_tokens} requested tokens "
                   f"(finish_reason={c.finish_reason})")
    return c


async def _post(session, settings: LoadSettings, headers, body, c: ServedCompletion, t0: float) -> None:
    async with session.post(settings.url, data=body, headers=headers) as resp:
        c.http_status = resp.status
        if resp.status != 200:
            text = (await resp.text(errors="replace"))[:300].replace("\n", " ")
            raise aiohttp.ClientResponseError(resp.request_info, resp.history, status=resp.status,
                                              message=text or resp.reason or "")
        await _read_stream(resp, c, t0, settings.length_from_finish_reason)


def _new_completion(r: Request, scheduled_s: float) -> ServedCompletion:
    return ServedCompletion(id=r.id, requested_tokens=r.max_tokens, prompt_tokens=r.prompt_len,
                            scheduled_s=scheduled_s)


async def run_load_async(requests: Sequence[Request], schedule: Schedule, body_for: BodyBuilder,
                         settings: LoadSettings) -> list[ServedCompletion]:
    """Send ``requests[i]`` at ``schedule.offsets_s[i]``; return one completion per request, in order.

    Times in the completions are seconds from the schedule's origin (``scheduled_s`` is the offset).
    """
    if len(requests) != len(schedule):
        raise ValueError(f"{len(requests)} requests but the schedule has {len(schedule)} send times")
    bodies = [json.dumps(body_for(r), separators=(",", ":")).encode() for r in requests]
    headers = settings.headers()
    offsets = [float(x) for x in schedule.offsets_s]
    completions = [_new_completion(r, off) for r, off in zip(requests, offsets)]
    slots = asyncio.Semaphore(settings.max_concurrency) if settings.max_concurrency else None
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=3.0, enable_cleanup_closed=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(30.0, settings.request_timeout_s))
    bar = None
    if settings.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(requests), desc=f"rate {schedule.rate:g}/s", unit="req", mininterval=1.0, leave=False)
    tasks: list[asyncio.Task] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                     read_bufsize=1 << 20) as session:
        t0 = time.perf_counter() + START_LEAD_S
        for off, body, c in zip(offsets, bodies, completions):
            # never early: the loop's timers are coarser than perf_counter (uvloop: 1 ms), so re-check
            while (delay := t0 + off - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(_one_request(session, settings, headers, body, c, t0, slots))
            if bar is not None:
                task.add_done_callback(lambda _t: bar.update(1))
            tasks.append(task)
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            if bar is not None:
                bar.close()
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
             settings: LoadSettings) -> list[ServedCompletion]:
    """Blocking wrapper around :func:`run_load_async` (uvloop where installed). A SIGTERM during the run
    cancels it; the SIGTERM handler that was installed before then runs here, outside the loop. The
    handler is held back from the start of the loop on: a raise inside uvloop's setup left that loop
    running and the signal wake-up fd set, and every later event loop of the process failed."""
    cancelled = None
    with sigterm_deferred() as deferral:
        try:
            with _quiet_gc():
                completions = _event_loop_runner(_cancelled_by_sigterm(
                    run_load_async(requests, schedule, body_for, settings), deferral))
        except asyncio.CancelledError as exc:
            if deferral is None or not deferral.noted:
                raise
            cancelled = exc  # the noted SIGTERM reaches its handler as the block ends (it raises, as a rule)
    if cancelled is not None:
        raise cancelled
    raise_if_terminated()
    return completions
