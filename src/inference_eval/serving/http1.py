"""The load generator's HTTP/1.1 client: a pool of kept-alive connections (``http1_connection.Connection``,
each parsing its response where the bytes arrive) that opens connections without overflowing the server's
accept queue.

Opening connections: a client that opens one connection per request at once (rate inf) can put more
finished handshakes in the server's accept queue than its listen backlog holds; the kernel then drops
them and the client retries after a second (listen overflows, seconds of made-up TTFT). The pool keeps at
most ``max_opening`` connections *unconfirmed*: connecting, or connected and not yet answered. A
connection is confirmed by the first byte of its first response (the server has accepted it), and so is
every connection whose handshake came before that one's (an accept queue is first in, first out). As a
fallback, a connection counts as accepted once ``opening_grace_s`` has passed since its handshake *and*
the server has sent bytes on any connection since: a server that sends nothing on a new connection until
its request gets a slot (a serial server) would otherwise hold the ramp back, while one that has stalled
altogether sends nothing anywhere, and then nothing more is opened. Requests beyond that wait in order
for a connection, and the wait shows as send lag. Requests are not tied to the connection opened for
them: one that frees first takes the next request in line.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from dataclasses import dataclass

from inference_eval.serving.http1_connection import Connection, Endpoint, Exchange

# the request side (http1_connection) with the pool, as the load generator (serving.client) imports them
__all__ = ["Endpoint", "Exchange", "Pool", "PoolStats", "listen_overflows"]

MAX_RESENDS = 2                 # a request sent on kept-alive connections that were closed under it


@dataclass
class PoolStats:
    """What the pool did in one run."""

    connections_opened: int = 0     # connections that completed their handshake
    connect_failures: int = 0       # connection attempts that failed (each fails one request)
    max_unconfirmed: int = 0        # the most connections unconfirmed at once (at most max_opening)
    max_connections: int = 0        # the most connections open at once
    resent_stale: int = 0           # requests resent because a kept-alive connection was closed under them


class Pool:
    """Kept-alive connections to one endpoint, and the requests waiting for one (in arrival order)."""

    def __init__(self, endpoint: Endpoint, t0: float, *, expected: int, max_opening: int = 8,
                 opening_grace_s: float = 0.05, connect_timeout_s: float = 30.0, idle_timeout_s: float = 3.0,
                 max_in_flight: int | None = None, on_done=None, describe=None,
                 reader_errors: tuple[type[BaseException], ...] = (ValueError,)):
        if max_opening < 1:
            raise ValueError(f"max_opening must be >= 1, got {max_opening}")
        self.loop = asyncio.get_running_loop()
        self.endpoint, self.t0 = endpoint, t0
        self.ssl = ssl.create_default_context() if endpoint.scheme == "https" else None
        self.max_opening, self.opening_grace_s = max_opening, opening_grace_s
        self.connect_timeout_s, self.idle_timeout_s = connect_timeout_s, idle_timeout_s
        self.max_in_flight = max_in_flight
        self.on_done, self.describe = on_done, describe or (lambda exc: f"bad stream: {exc}")
        self.reader_errors = reader_errors
        self.closed = False
        self.pending: collections.deque[Exchange] = collections.deque()
        self.idle: list[Connection] = []
        self.conns: set[Connection] = set()
        self.connecting = 0      # connection attempts under way
        self.unconfirmed = 0     # attempts under way + connected, not yet answered nor past the grace
        self.in_flight = 0
        self.last_byte = -1.0    # when the server last sent bytes on any connection (s from t0)
        self.accept_order: collections.deque[Connection] = collections.deque()  # handshake order
        self.remaining = expected
        self.all_done = self.loop.create_future()
        if expected == 0:
            self.all_done.set_result(None)
        self.stats = PoolStats()
        self._tasks: set[asyncio.Task] = set()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    # -- requests ---------------------------------------------------------------------------------------
    def submit(self, ex: Exchange) -> None:
        self.pending.append(ex)
        self.pump()

    def resend(self, ex: Exchange) -> bool:
        """Put ``ex`` first in line again (its kept-alive connection was closed before any answer)."""
        if ex.done or ex.resends >= MAX_RESENDS or self.closed:
            return False
        ex.resends += 1
        self._cancel_timer(ex)
        ex.sent = False
        self.in_flight -= 1
        self.stats.resent_stale += 1
        self.pending.appendleft(ex)
        return True

    def finish(self, ex: Exchange, now: float) -> None:
        """The 200 response is complete: the reader's verdict on it ends the request."""
        try:
            ex.reader.close(now)
        except self.reader_errors as exc:
            self.complete(ex, self.describe(exc), now)
            return
        self.complete(ex, "", now)

    def complete(self, ex: Exchange, error: str, now: float) -> None:
        if ex.done:
            return
        ex.done = True
        self._cancel_timer(ex)
        c = ex.c
        if error:
            c.error = error
        if not c.end_s:
            c.end_s = now
        if not c.error and c.output_tokens != c.requested_tokens:
            c.error = (f"length: generated {c.output_tokens} of {c.requested_tokens} requested tokens "
                       f"(finish_reason={c.finish_reason})")
        if ex.sent:
            self.in_flight -= 1
        if self.on_done is not None:
            self.on_done(c)
        self.remaining -= 1
        if self.remaining == 0 and not self.all_done.done():
            self.all_done.set_result(None)

    def _timeout(self, ex: Exchange, conn: Connection) -> None:
        ex.timer = None
        if ex.done:
            return
        self.complete(ex, f"timeout: no complete response within {ex.timeout_s:g}s "
                          f"({ex.c.output_tokens} tokens received)", self.now())
        if conn.ex is ex:
            conn.ex = None
            conn.transport.abort()
        self.pump()

    @staticmethod
    def _cancel_timer(ex: Exchange) -> None:
        if ex.timer is not None:
            ex.timer.cancel()
            ex.timer = None

    # -- connections ------------------------------------------------------------------------------------
    def pump(self) -> None:
        """Send what waits on idle connections; open connections for the rest, within ``max_opening``."""
        if self.closed:
            return
        pending, idle, cap = self.pending, self.idle, self.max_in_flight
        if pending and idle:
            clock = time.perf_counter()
            while pending and idle and (cap is None or self.in_flight < cap):
                conn = idle.pop()
                if conn.closed:
                    continue
                if clock - conn.idle_since > self.idle_timeout_s:  # the server may be closing it: don't race
                    conn.transport.close()
                    continue
                ex = pending.popleft()
                self.in_flight += 1
                conn.send(ex, clock - self.t0)
                ex.timer = self.loop.call_at(self.loop.time() + ex.timeout_s, self._timeout, ex, conn)
        want = len(pending) if cap is None else min(len(pending), cap - self.in_flight)
        while self.connecting < want and self.unconfirmed < self.max_opening:
            self.connecting += 1
            self.unconfirmed += 1
            self.stats.max_unconfirmed = max(self.stats.max_unconfirmed, self.unconfirmed)
            task = self.loop.create_task(self._connect())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        ep = self.endpoint
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: Connection(self), ep.host, ep.port, ssl=self.ssl),
                self.connect_timeout_s)
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            self.connecting -= 1
            self.unconfirmed -= 1
            self.stats.connect_failures += 1
            if self.pending:  # one attempt per waiting request: a dead server fails them one by one
                ex = self.pending.popleft()
                why = f"timed out after {self.connect_timeout_s:g}s" if isinstance(exc, asyncio.TimeoutError) \
                    else f"{type(exc).__name__}: {exc}"
                now = self.now()
                if not ex.c.sent_s:
                    ex.c.sent_s = now
                self.complete(ex, f"connection: cannot connect to {ep.host}:{ep.port}: {why}", now)
            self.pump()
            return
        self.connecting -= 1
        self.stats.connections_opened += 1
        self.conns.add(conn)
        self.stats.max_connections = max(self.stats.max_connections, len(self.conns))
        conn.connected_at = self.now()
        self.accept_order.append(conn)
        conn.grace = self.loop.call_later(self.opening_grace_s, self._grace, conn)
        self.release(conn)

    def _grace(self, conn: Connection) -> None:
        conn.grace = None
        if conn.confirmed or conn.closed:
            return
        if self.last_byte > conn.connected_at:  # the server has run since this handshake: taken as accepted
            self._settle(conn)
            self.pump()
        else:
            conn.grace = self.loop.call_later(self.opening_grace_s, self._grace, conn)

    def answered(self, conn: Connection) -> None:
        """The first byte on ``conn``: the server has accepted it and every connection before it."""
        order = self.accept_order
        while order:
            earlier = order.popleft()
            self._settle(earlier)
            if earlier is conn:
                break
        self._settle(conn)
        self.pump()

    def _settle(self, conn: Connection) -> None:
        """``conn`` no longer counts against ``max_opening``."""
        if conn.confirmed:
            return
        conn.confirmed = True
        if conn.grace is not None:
            conn.grace.cancel()
            conn.grace = None
        self.unconfirmed -= 1

    def release(self, conn: Connection) -> None:
        conn.idle_since = time.perf_counter()
        self.idle.append(conn)
        self.pump()

    def lost(self, conn: Connection) -> None:
        self.conns.discard(conn)
        self._settle(conn)
        self.pump()

    def close(self) -> None:
        """Abort every connection and attempt (the run is over or cancelled)."""
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self.conns):
            if conn.grace is not None:
                conn.grace.cancel()
            if conn.transport is not None:
                conn.transport.abort()
        for ex in self.pending:
            self._cancel_timer(ex)
        self.idle.clear()
        self.accept_order.clear()


def listen_overflows() -> int | None:
    """The host's count of connections dropped because a listen socket's accept queue was full
    (``TcpExt: ListenOverflows`` in ``/proc/net/netstat``); None where the kernel does not say."""
    try:
        with open("/proc/net/netstat", encoding="ascii") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:]))
            if "ListenOverflows" in fields:
                return int(fields["ListenOverflows"])
    return None
