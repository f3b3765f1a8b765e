"""One connection of the load generator's HTTP/1.1 client: an ``asyncio.Protocol`` that writes a request
made in advance and parses its response where the bytes arrive, and the request's URL and bytes
(``Endpoint``, ``Exchange``). ``serving.http1`` holds the pool that opens these connections and hands them
requests.

Why not a general HTTP client (aiohttp): per streamed chunk it wakes a reading coroutine and runs a
``readline`` per SSE line, which made the client slower per chunk than vLLM's own benchmark client; here a
read is parsed in the transport's callback (``data_received``) with no task, future or coroutine per read
or per request (benchmarks/loadgen_capacity.py measures both). It speaks just what the benchmark needs:
``POST`` with a body known in advance, responses framed by ``Transfer-Encoding: chunked``,
``Content-Length`` or the connection's close, ``http`` and ``https``.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024      # a response head longer than this is not HTTP we can use
MAX_ERROR_BODY = 64 * 1024      # the body of a non-200 answer kept for its message
CHUNKED, LENGTH, UNTIL_CLOSE = 1, 2, 3
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


class Connection(asyncio.Protocol):
    """A kept-alive connection of a ``serving.http1.Pool`` (``pool``): it sends one ``Exchange`` at a time and
    reports to the pool when the response is complete, fails, or the connection is lost."""

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

    def __init__(self, pool):
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
