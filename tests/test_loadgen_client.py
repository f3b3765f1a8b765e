"""The load generator's parts: the stream decoder (serving/sse.py, with msgspec and with the json fallback),
its HTTP/1.1 client (serving/http1.py) against small servers of this file that control the bytes on the
wire, connection opening against a real listen backlog, and the loopback server's OpenAI stream."""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import socket
import threading
import time

import pytest

from inference_eval.requests import Request
from inference_eval.serving import sse
from inference_eval.serving.client import LoadSettings, PoolStats, ServedCompletion, run_load
from inference_eval.serving.http1 import Endpoint, listen_overflows
from inference_eval.serving.launch import start_server
from inference_eval.serving.schedule import make_schedule
from inference_eval.serving.servers import LoopbackServer

DECODERS = [pytest.param(sse._decode_json, id="json")]
if sse.msgspec is not None:
    DECODERS.insert(0, pytest.param(sse._decode_msgspec, id="msgspec"))


def _event(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _token(i: int, finish=None, ids=True) -> bytes:
    choice = {"index": 0, "text": "t", "logprobs": None, "finish_reason": finish}
    if ids:
        choice["token_ids"] = [100 + i]
    return _event({"id": "c", "object": "text_completion", "model": "m", "choices": [choice]})


def _stream(n: int, usage: bool = True, ids: bool = True, done: bool = True) -> bytes:
    out = b"".join(_token(i, "length" if i == n - 1 else None, ids) for i in range(n))
    if usage:
        out += _event({"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n}})
    return out + (b"data: [DONE]\n\n" if done else b"")


def _completion(n: int) -> ServedCompletion:
    return ServedCompletion(id="r", requested_tokens=n, prompt_tokens=3)


# -- the stream decoder ------------------------------------------------------------------------------------

@pytest.mark.parametrize("decode", DECODERS)
@pytest.mark.parametrize("piece", [1, 7, 10_000])
def test_decoder_reads_any_split_of_the_stream(decode, piece):
    """However the bytes are cut into reads, the same ids, chunk count and usage come out; each chunk's
    time is the time of the read that completed it."""
    data = b": a comment\nevent: completion\n" + _stream(5).replace(b"\n", b"\r\n", 2)
    c = _completion(5)
    dec = sse.StreamDecoder(c, decode=decode)
    done = False
    for k, i in enumerate(range(0, len(data), piece)):
        done = dec.feed(data[i:i + piece], float(k + 1))
        if done:
            break
    assert done and dec.finished
    dec.close(99.0)
    assert c.output_token_ids == [100, 101, 102, 103, 104]
    assert c.n_chunks == 5 and c.reported_tokens == 5 and c.server_prompt_tokens == 3
    assert c.finish_reason == "length"
    assert c.token_times_s == sorted(c.token_times_s) and c.first_token_s == c.token_times_s[0] > 0
    assert c.end_s == k + 1  # [DONE]'s read, not the later close


@pytest.mark.parametrize("decode", DECODERS)
def test_decoder_counts_from_usage_logprobs_or_finish_reason(decode):
    c = _completion(4)
    dec = sse.StreamDecoder(c, decode=decode)
    dec.feed(_stream(4, ids=False), 1.0)
    dec.close(1.0)
    assert c.reported_tokens == 4 and not c.output_token_ids and c.n_chunks == 4
    c = _completion(2)
    dec = sse.StreamDecoder(c, decode=decode)
    lp = [_event({"choices": [{"text": "a", "logprobs": {"tokens": ["a", "b"]}, "finish_reason": "length"}]})]
    dec.feed(b"".join(lp), 1.0)
    dec.close(2.0)  # ends without [DONE] (as transformers serve does): the finish_reason ended it
    assert c.reported_tokens == 2 and c.end_s == 2.0
    c = _completion(3)
    dec = sse.StreamDecoder(c, length_from_finish_reason=True, decode=decode)
    dec.feed(_stream(3, usage=False, ids=False), 1.0)
    dec.close(1.0)
    assert c.reported_tokens == 3


@pytest.mark.parametrize("decode", DECODERS)
@pytest.mark.parametrize("data, message", [
    (b"data: {not json\n\n", "SSE data is not JSON"),
    (b"data: [1, 2]\n\n", "SSE data is not a completion chunk"),
    (b'data: {"choices": [{"token_ids": ["x"]}]}\n\n', "SSE data is not a completion chunk"),
    (b'data: {"choices": [{"text": 5}]}\n\n', "SSE data is not a completion chunk"),
    (b'data: {"usage": {"completion_tokens": "3"}}\n\n', "SSE data is not a completion chunk"),
    (b'data: {"error": {"message": "engine died"}}\n\n', "server error in stream: engine died"),
    (b"<html>oops</html>\n", "not an SSE line"),
])
def test_decoder_rejects_what_is_not_a_completion_stream(decode, data, message):
    dec = sse.StreamDecoder(_completion(1), decode=decode)
    with pytest.raises(sse.MalformedStream, match=message):
        dec.feed(data, 1.0)


@pytest.mark.parametrize("decode", DECODERS)
def test_decoder_close_checks_the_end_and_the_count(decode):
    dec = sse.StreamDecoder(_completion(2), decode=decode)
    dec.feed(_token(0) + _token(1), 1.0)
    with pytest.raises(sse.MalformedStream, match="stream ended before completion"):
        dec.close(1.0)
    dec = sse.StreamDecoder(_completion(2), decode=decode)
    dec.feed(_stream(2, usage=False, ids=False), 1.0)
    with pytest.raises(sse.MalformedStream, match="carried no token count"):
        dec.close(1.0)
    dec = sse.StreamDecoder(_completion(2), decode=decode)
    dec.feed(_stream(2, usage=False, done=False) + _event({"choices": [], "usage": {"completion_tokens": 9}})
             + b"data: [DONE]\n\n", 1.0)
    with pytest.raises(sse.MalformedStream, match="usage says 9 tokens but the stream carried 2"):
        dec.close(1.0)


# -- the HTTP/1.1 client against servers of this file ------------------------------------------------------

class _Server:
    """An asyncio TCP server on its own thread: ``handler(reader, writer, n)`` serves connection ``n``.
    ``accept_after_s`` holds the listening socket unaccepted that long (its queue fills as the kernel's)."""

    def __init__(self, handler, backlog: int = 128, accept_after_s: float = 0.0):
        self.handler, self.backlog, self.accept_after_s = handler, backlog, accept_after_s
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        time.sleep(self.accept_after_s)

        async def serve(reader, writer):
            self.connections += 1
            try:
                await self.handler(reader, writer, self.connections)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass
            finally:
                writer.close()
        self.server = self.loop.run_until_complete(asyncio.start_server(serve, sock=self.sock, backlog=self.backlog))
        self.ready.set()
        self.loop.run_forever()
        self.server.close()
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.sock.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/completions"


async def _read_request(reader) -> dict:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
    return json.loads(await reader.readexactly(length))


def _run(url: str, n: int, tokens: int, rate: float = math.inf, stats: PoolStats | None = None, **kw):
    reqs = [Request(id=f"q{i}", prompt_token_ids=(1, 2, 3), max_tokens=tokens) for i in range(n)]
    body = LoopbackServer().body
    return run_load(reqs, make_schedule(n, rate, "constant"), lambda r: body(r, "m"),
                    LoadSettings(url=url, progress=False, **kw), stats=stats)


def _chunk(data: bytes) -> bytes:
    """One HTTP chunk (the body goes on)."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


def _chunked(data: bytes, size: int) -> bytes:
    """``data`` as HTTP chunks of ``size`` bytes, with a chunk extension and a trailer field."""
    out = b"".join(b"%x;ext=1\r\n" % len(data[i:i + size]) + data[i:i + size] + b"\r\n"
                   for i in range(0, len(data), size))
    return out + b"0\r\nX-Trailer: yes\r\n\r\n"


def test_chunked_keep_alive_responses_cut_anywhere():
    """Chunked bodies written a few bytes at a time, over one kept-alive connection, request after request."""
    async def handler(reader, writer, _n):
        while True:
            req = await _read_request(reader)
            wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(_stream(req["max_tokens"]), 50)
            for i in range(0, len(wire), 13):
                writer.write(wire[i:i + 13])
                await writer.drain()
    stats = PoolStats()
    with _Server(handler) as srv:
        srv.ready.wait(5)
        comps = _run(srv.url, 6, 8, stats=stats, max_concurrency=1)  # one after another
    assert all(c.ok and c.output_token_ids == list(range(100, 108)) for c in comps), [c.error for c in comps]
    assert all(c.http_status == 200 and c.first_token_s >= c.sent_s >= c.scheduled_s for c in comps)
    assert stats.connections_opened == 1 and srv.connections == 1


@pytest.mark.parametrize("framing", ["content-length", "close"])
def test_length_and_close_delimited_bodies(framing):
    async def handler(reader, writer, _n):
        while True:
            req = await _read_request(reader)
            body = _stream(req["max_tokens"])
            if framing == "close":
                writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + body)
                await writer.drain()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
    stats = PoolStats()
    with _Server(handler) as srv:
        srv.ready.wait(5)
        comps = _run(srv.url, 4, 5, stats=stats, max_concurrency=1)
    assert all(c.ok for c in comps), [c.error for c in comps]
    assert stats.connections_opened == (4 if framing == "close" else 1)


def test_http_error_timeout_and_cut_stream_are_failures_with_reasons():
    async def handler(reader, writer, n):
        await _read_request(reader)
        if n == 1:
            msg = b'{"error": {"message": "overloaded"}}'
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                         % len(msg) + msg)
            await writer.drain()
            await asyncio.sleep(5)
        elif n == 2:  # the head, then nothing: the request's timeout ends it
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(5)
        elif n == 3:  # one chunk of a stream, then the connection closes inside the body
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunk(_token(0)))
            await writer.drain()
        else:  # a body that ends properly, but the stream in it did not
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(_token(0), 100))
            await writer.drain()
    with _Server(handler) as srv:
        srv.ready.wait(5)
        t = time.monotonic()
        comps = _run(srv.url, 4, 4, request_timeout_s=1.0, max_concurrency=1)
    assert time.monotonic() - t < 4
    errors = sorted(c.error for c in comps)
    assert errors[0].startswith("HTTP 503: ") and "overloaded" in errors[0]
    assert errors[1].startswith("bad stream: stream ended before completion")
    assert errors[2].startswith("connection: the server closed the connection before the response ended (1 tokens")
    assert errors[3] == "timeout: no complete response within 1s (0 tokens received)"


def test_request_on_a_connection_the_server_closed_is_sent_again():
    """A kept-alive connection the server closes as a request arrives (its idle timeout) costs no request."""
    async def handler(reader, writer, _n):
        req = await _read_request(reader)
        body = _stream(req["max_tokens"])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        await _read_request(reader)  # the next request on this connection: closed unanswered
    stats = PoolStats()
    with _Server(handler) as srv:
        srv.ready.wait(5)
        comps = _run(srv.url, 4, 3, stats=stats, max_concurrency=1)
    assert all(c.ok for c in comps), [c.error for c in comps]
    assert stats.resent_stale == 3 and stats.connections_opened == 4


def test_unreachable_server_fails_each_request_with_the_reason():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        stats = PoolStats()
        comps = _run(f"http://127.0.0.1:{port}/v1/completions", 5, 4, stats=stats)
    assert all(c.error.startswith(f"connection: cannot connect to 127.0.0.1:{port}: ConnectionRefusedError")
               for c in comps)
    assert stats.connect_failures == 5


@pytest.mark.parametrize("url, target, host", [
    ("http://127.0.0.1:8000/v1/completions", "/v1/completions", "127.0.0.1:8000"),
    ("https://example.org/v1/completions?x=1", "/v1/completions?x=1", "example.org"),
    ("http://[::1]:9/c", "/c", "[::1]:9"),
])
def test_endpoint_request_bytes(url, target, host):
    wire = Endpoint.parse(url).post(b'{"a":1}', {"Content-Type": "application/json"})
    head, body = wire.split(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == f"POST {target} HTTP/1.1" and f"Host: {host}" in lines
    assert "Content-Length: 7" in lines and body == b'{"a":1}'


@pytest.mark.parametrize("url", ["ftp://h/x", "127.0.0.1:8000/v1", "http://h:port/x"])
def test_endpoint_rejects_bad_urls(url):
    with pytest.raises(ValueError, match="load generator URL"):
        Endpoint.parse(url)


# -- opening connections against a real accept queue -------------------------------------------------------

needs_counter = pytest.mark.skipif(listen_overflows() is None, reason="no ListenOverflows in /proc/net/netstat")


def _sse_handler(tokens: int):
    async def handler(reader, writer, _n):
        while True:
            await _read_request(reader)
            body = _stream(tokens)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
    return handler


@needs_counter
def test_rate_inf_waits_for_a_server_that_does_not_accept_yet():
    """A server with a backlog of 16 that accepts nothing for 0.4 s: opening every connection at once
    overflows its queue (the kernel drops handshakes, to be retried a second later); the pool opens
    max_opening (8) and no more until the server answers, so nothing overflows."""
    runs = {}
    for label, kw in (("all at once", {"max_opening": 200}), ("pool", {})):
        stats = PoolStats()
        with _Server(_sse_handler(4), backlog=16, accept_after_s=0.4) as srv:
            before, t = listen_overflows(), time.monotonic()
            comps = _run(srv.url, 200, 4, stats=stats, **kw)
            runs[label] = (listen_overflows() - before, time.monotonic() - t, stats, comps)
    overflows, seconds, stats, comps = runs["pool"]
    assert all(c.ok for c in comps)
    assert overflows == 0 and stats.max_unconfirmed <= 8 and seconds < 1.2, (overflows, seconds, stats)
    assert runs["all at once"][0] > 0, "the control run did not overflow: the check would not see one"


def test_a_serial_server_that_withholds_answers_does_not_hold_the_ramp_back():
    """A server that answers one request at a time and sends nothing on the others until then (as
    llama-cpp-python's does): 30 requests at 100/s against 20/s of capacity. Confirmed only by answers,
    the pool would keep all but max_opening (8) of them waiting (send lag); the grace, with the server's
    bytes flowing on the served connection, opens the rest as they come."""
    def serial():
        lock = []  # made on the server's loop

        async def handler(reader, writer, _n):
            if not lock:
                lock.append(asyncio.Lock())
            while True:
                req = await _read_request(reader)
                async with lock[0]:
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for i in range(req["max_tokens"]):
                        writer.write(_chunk(_token(i, "length" if i == req["max_tokens"] - 1 else None)))
                        await writer.drain()
                        await asyncio.sleep(0.005)
                    writer.write(_chunked(b"data: [DONE]\n\n", 100))
                    await writer.drain()
        return handler
    lags = {}
    for label, grace in (("grace", None), ("answers only", 30.0)):
        kw = {} if grace is None else {"opening_grace_s": grace}
        with _Server(serial()) as srv:
            srv.ready.wait(5)
            comps = _run(srv.url, 30, 10, rate=100.0, **kw)
        assert all(c.ok for c in comps), [c.error for c in comps]
        lags[label] = max(c.sent_s - c.scheduled_s for c in comps)
    assert lags["grace"] < 0.1 < 0.25 < lags["answers only"], lags


@needs_counter
def test_rate_inf_against_the_loopback_server_with_a_small_backlog(tmp_path):
    spec = LoopbackServer(("--backlog", "16"))
    with start_server(lambda port: spec.command({}, None, "127.0.0.1", port, None), tmp_path / "s.log",
                      health_timeout_s=30) as srv:
        stats = PoolStats()
        before = listen_overflows()
        comps = _run(srv.base_url + "/v1/completions", 1600, 16, stats=stats)
        overflows = listen_overflows() - before
    assert all(c.ok for c in comps), {c.error for c in comps if c.error}
    assert overflows == 0 and stats.max_unconfirmed <= 8 and stats.resent_stale == 0, (overflows, stats)


# -- the loopback server speaks vLLM's stream --------------------------------------------------------------

def _events(port: int, body: dict) -> list:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    data = conn.getresponse().read().decode()
    conn.close()
    return [e[len("data: "):] for e in data.split("\n\n") if e.strip()]


def test_loopback_stream_has_vllm_shape(tmp_path):
    spec = LoopbackServer()
    with start_server(lambda port: spec.command({}, None, "127.0.0.1", port, None), tmp_path / "s.log",
                      health_timeout_s=30) as srv:
        port = int(srv.base_url.rsplit(":", 1)[1])
        with_usage = _events(port, {"model": "m", "prompt": "a b c", "max_tokens": 3, "stream": True,
                                    "stream_options": {"include_usage": True}})
        plain = _events(port, {"model": "m", "prompt": [1, 2], "max_tokens": 2, "stream": True,
                               "return_token_ids": True})
    assert with_usage[-1] == plain[-1] == "[DONE]"
    chunks = [json.loads(e) for e in with_usage[:-1]]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:3]] == [None, None, "length"]
    assert all("token_ids" not in c["choices"][0] and c["model"] == "m" for c in chunks[:3])
    assert chunks[3]["choices"] == [] and chunks[3]["usage"] == {"prompt_tokens": 3, "completion_tokens": 3,
                                                                 "total_tokens": 6}
    chunks = [json.loads(e) for e in plain[:-1]]
    assert len(chunks) == 2 and all(len(c["choices"][0]["token_ids"]) == 1 for c in chunks)
    assert "usage" not in chunks[-1] and chunks[-1]["choices"][0]["finish_reason"] == "length"
