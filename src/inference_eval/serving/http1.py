"""The load generator's HTTP/1.1 client: kept-alive connections, each an ``asyncio.Protocol`` that parses
the response where the bytes arrive, and a pool that opens connections without overflowing the server's
accept queue.

Why not a general HTTP client (aiohttp): per streamed chunk it wakes a reading coroutine and runs a
``readline`` per SSE line, which made the client slower per chunk than vLLM's own benchmark client; here a
read is parsed in the transport's callback (``data_received``) with no task, future or coroutine per read
or per request (benchmarks/loadgen_capacity.py measures both). It speaks just what the benchmark needs:
``POST`` with a body known in advance, responses framed by ``Transfer-Encoding: chunked``,
``Content-Length`` or the connection's close, ``http`` and ``https``.

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
import urllib.parse
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024      # a response head longer than this is not HTTP we can use
MAX_ERROR_BODY = 64 * 1024      # the body of a non-200 answer kept for its message
CHUNKED, LENGTH, UNTIL_CLOSE = 1, 2, 3
MAX_RESENDS = 2                 # a request sent on kept-alive connections that were closed under it
# how a kept-alive connection the server closed (idle) shows when a request is written on it
_STALE = (type(None), ConnectionResetError, BrokenPipeError)


class ProtocolError(Exception):
    """The server's bytes are not an HTTP/1.1 response we can read."""


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: ``http(s)://host[:port]/path[?query]``."""

    scheme: str
    host: str
    port: int
    target: str     # the request target: path and query

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"load generator URL must be http(s)://host[:port]/path, got {url!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"load generator URL has a bad port: {url!r}") from None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.hostname, port, target)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def post(self, body: bytes, headers: dict) -> bytes:
        """The whole request on the wire, made before the run so that sending is one ``write``."""
        lines = [f"POST {self.target} HTTP/1.1", f"Host: {self.host_header}", "User-Agent: inference-eval"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "content-length")]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Exchange:
    """One request and its response. ``reader`` gets the 200 body: ``feed(data, now) -> bool`` (True: the
    response is complete) and ``close(now)`` at its end; both raise to fail the request."""

    __slots__ = (
        "c",
        "done",
        "error_body",
        "reader",
        "reason",
        "resends",
        "sent",
        "status",
        "timeout_s",
        "timer",
        "wire",
    )

    def __init__(self, c, wire: bytes, reader, timeout_s: float):
        self.c, self.wire, self.reader, self.timeout_s = c, wire, reader, timeout_s
        self.timer = None
        self.done = False
        self.sent = False
        self.status = None
        self.reason = ""
        self.error_body = b""
        self.resends = 0


@dataclass
class PoolStats:
    """What the pool did in one run."""

    connections_opened: int = 0     # connections that completed their handshake
    connect_failures: int = 0       # connection attempts that failed (each fails one request)
    max_unconfirmed: int = 0        # the most connections unconfirmed at once (at most max_opening)
    max_connections: int = 0        # the most connections open at once
    resent_stale: int = 0           # requests resent because a kept-alive connection was closed under them


class _Connection(asyncio.Protocol):
    __slots__ = (
        "body_left",
        "buf",
        "chunk_left",
        "closed",
        "confirmed",
        "connected_at",
        "draining",
        "ex",
        "got_bytes",
        "grace",
        "idle_since",
        "keep_alive",
        "mode",
        "need_crlf",
        "pool",
        "served",
        "trailer",
        "transport",
    )

    def __init__(self, pool: Pool):
        self.pool = pool
        self.transport = None
        self.ex: Exchange | None = None
        self.confirmed = False
        self.grace = None
        self.connected_at = 0.0
        self.idle_since = 0.0
        self.closed = False
        self.served = 0
        self._reset()

    def _reset(self) -> None:
        self.mode = 0           # 0: reading the head
        self.buf = b""
        self.chunk_left = 0
        self.need_crlf = False
        self.trailer = False
        self.body_left = 0
        self.keep_alive = False
        self.got_bytes = False
        self.draining = False   # the exchange is complete; the rest of the body is read and dropped

    # -- asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        pool = self.pool
        now = time.perf_counter() - pool.t0
        pool.last_byte = now
        if not self.confirmed:
            pool.answered(self)
        ex = self.ex
        if ex is None:  # bytes nobody asked for: the connection is not in a state we can reuse
            self.transport.abort()
            return
        self.got_bytes = True
        try:
            if self.mode == 0:
                data = self._head(data, ex)
                if data is None:
                    return
            if self.mode == CHUNKED:
                self._chunked(data, now)
            elif self.mode == LENGTH:
                left = self.body_left
                if len(data) >= left:
                    self._deliver(data[:left] if len(data) > left else data, now)
                    self.body_left = 0
                    self._body_end(now)
                else:
                    self.body_left = left - len(data)
                    self._deliver(data, now)
            else:
                self._deliver(data, now)
        except ProtocolError as exc:
            self._fail(f"bad response: {exc}", now)
        except self.pool.reader_errors as exc:  # the reader's verdict (a malformed stream): the request fails
            self._fail(self.pool.describe(exc), now)

    def connection_lost(self, exc) -> None:
        self.closed = True
        pool = self.pool
        now = time.perf_counter() - pool.t0
        ex = self.ex
        if ex is not None and not ex.done and self.mode == UNTIL_CLOSE and exc is None:
            self._body_end(now)   # the close ends the body
            ex = None
        elif ex is not None:
            self.ex = None
            if not ex.done:
                if not self.got_bytes and self.served and isinstance(exc, _STALE) and pool.resend(ex):
                    pass  # a kept-alive connection the server had closed: the request goes on another
                else:
                    n = ex.c.output_tokens
                    why = f"{type(exc).__name__}: {exc}" if exc else \
                        "the server closed the connection before the response ended"
                    pool.complete(ex, f"connection: {why}" + (f" ({n} tokens received)" if n else ""), now)
        pool.lost(self)

    # -- sending ----------------------------------------------------------------------------------------
    def send(self, ex: Exchange, now: float) -> None:
        self.ex = ex
        self._reset()
        ex.sent = True
        if not ex.c.sent_s:
            ex.c.sent_s = now
        self.transport.write(ex.wire)

    # -- parsing ----------------------------------------------------------------------------------------
    def _head(self, data: bytes, ex: Exchange) -> bytes | None:
        buf = self.buf + data if self.buf else data
        while True:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise ProtocolError(f"no end of the response head in {len(buf)} bytes")
                self.buf = buf
                return None
            head, buf = buf[:i].decode("latin-1"), buf[i + 4:]
            lines = head.split("\r\n")
            status_line = lines[0].split(" ", 2)
            if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
                raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
            try:
                status = int(status_line[1])
            except ValueError:
                raise ProtocolError(f"bad status in {lines[0][:80]!r}") from None
            if 100 <= status < 200:  # an interim answer (100 Continue): the real head follows
                continue
            break
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        ex.status, ex.reason = status, (status_line[2] if len(status_line) > 2 else "")
        conn = headers.get("connection", "").lower()
        self.keep_alive = ("close" not in conn) if status_line[0] == "HTTP/1.1" else ("keep-alive" in conn)
        self.buf = b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.mode = CHUNKED
        elif "content-length" in headers:
            try:
                self.body_left = int(headers["content-length"])
            except ValueError:
                raise ProtocolError(f"bad Content-Length {headers['content-length']!r}") from None
            self.mode = LENGTH
            if self.body_left == 0:
                self._body_end(time.perf_counter() - self.pool.t0)
                return None
        else:
            self.mode = UNTIL_CLOSE
            self.keep_alive = False
        return buf

    def _chunked(self, data: bytes, now: float) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        pos, n = 0, len(data)
        pieces = []
        while pos < n:
            left = self.chunk_left
            if left:
                end = pos + left
                if end > n:
                    pieces.append(data[pos:] if pos else data)
                    self.chunk_left = end - n
                    break
                pieces.append(data[pos:end])
                pos, self.chunk_left, self.need_crlf = end, 0, True
                continue
            if self.need_crlf:
                if n - pos < 2:
                    self.buf = data[pos:]
                    break
                if data[pos:pos + 2] != b"\r\n":
                    raise ProtocolError("a chunk's data is not followed by CRLF")
                pos += 2
                self.need_crlf = False
                continue
            j = data.find(b"\r\n", pos)
            if j < 0:
                if n - pos > 4096:
                    raise ProtocolError("a chunk-size line longer than 4096 bytes")
                self.buf = data[pos:]
                break
            if self.trailer:
                if j == pos:  # the empty line after the last chunk (and any trailer fields)
                    if pieces:
                        self._deliver(b"".join(pieces), now)
                    self._body_end(now)
                    return
                pos = j + 2
                continue
            try:
                size = int(data[pos:j].split(b";", 1)[0], 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {data[pos:j][:40]!r}") from None
            pos = j + 2
            if size:
                self.chunk_left = size
            else:
                self.trailer = True
        if pieces:
            self._deliver(pieces[0] if len(pieces) == 1 else b"".join(pieces), now)

    def _deliver(self, payload: bytes, now: float) -> None:
        ex = self.ex
        if self.draining or ex is None or ex.done:
            return
        if ex.status == 200:
            if ex.reader.feed(payload, now):
                self.draining = True
                self.pool.finish(ex, now)
        elif len(ex.error_body) < MAX_ERROR_BODY:
            ex.error_body += payload[:MAX_ERROR_BODY - len(ex.error_body)]

    def _body_end(self, now: float) -> None:
        ex, pool = self.ex, self.pool
        self.ex = None
        if ex is not None and not ex.done:
            if ex.status == 200:
                pool.finish(ex, now)
            else:
                text = ex.error_body.decode("utf-8", "replace")[:300].replace("\n", " ")
                pool.complete(ex, f"HTTP {ex.status}: {text or ex.reason}", now)
        self.served += 1
        if self.keep_alive and not self.closed:
            self.mode = 0
            pool.release(self)
        else:
            self.transport.close()

    def _fail(self, error: str, now: float) -> None:
        ex = self.ex
        self.ex = None
        if ex is not None and not ex.done:
            self.pool.complete(ex, error, now)
        self.transport.abort()


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
        self.idle: list[_Connection] = []
        self.conns: set[_Connection] = set()
        self.connecting = 0      # connection attempts under way
        self.unconfirmed = 0     # attempts under way + connected, not yet answered nor past the grace
        self.in_flight = 0
        self.last_byte = -1.0    # when the server last sent bytes on any connection (s from t0)
        self.accept_order: collections.deque[_Connection] = collections.deque()  # handshake order
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

    def _timeout(self, ex: Exchange, conn: _Connection) -> None:
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
                self.loop.create_connection(lambda: _Connection(self), ep.host, ep.port, ssl=self.ssl),
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

    def _grace(self, conn: _Connection) -> None:
        conn.grace = None
        if conn.confirmed or conn.closed:
            return
        if self.last_byte > conn.connected_at:  # the server has run since this handshake: taken as accepted
            self._settle(conn)
            self.pump()
        else:
            conn.grace = self.loop.call_later(self.opening_grace_s, self._grace, conn)

    def answered(self, conn: _Connection) -> None:
        """The first byte on ``conn``: the server has accepted it and every connection before it."""
        order = self.accept_order
        while order:
            earlier = order.popleft()
            self._settle(earlier)
            if earlier is conn:
                break
        self._settle(conn)
        self.pump()

    def _settle(self, conn: _Connection) -> None:
        """``conn`` no longer counts against ``max_opening``."""
        if conn.confirmed:
            return
        conn.confirmed = True
        if conn.grace is not None:
            conn.grace.cancel()
            conn.grace = None
        self.unconfirmed -= 1

    def release(self, conn: _Connection) -> None:
        conn.idle_since = time.perf_counter()
        self.idle.append(conn)
        self.pump()

    def lost(self, conn: _Connection) -> None:
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
