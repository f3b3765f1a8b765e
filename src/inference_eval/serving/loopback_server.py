"""A minimal OpenAI-style streaming ``/v1/completions`` server (aiohttp) that generates no text: it
streams ``max_tokens`` tokens at once (or with a delay per token). It exists to measure the load
generator's own capacity (benchmarks/loadgen_capacity.py) and to inject faults in tests: HTTP errors,
stalls, malformed SSE, short streams, a server that never becomes healthy or dies.

    python -m inference_eval.serving.loopback_server --port 8000 [--token-delay 0.01] [--fail-every 3 ...]

The stream is vLLM's: one chunk per token (text "t"; its token id too when the request asks for
``return_token_ids``), ``finish_reason`` on the last token's chunk, then, when ``stream_options.include_usage``
is set, a chunk with empty ``choices`` and the ``usage`` block, then ``data: [DONE]``. So vLLM's own
benchmark client, which reads ``usage`` only from a chunk whose ``choices`` is empty, counts its tokens
as it does against vLLM.

It must never be what limits a client measured against it: the listen backlog is raised to 4096
(``--backlog``; the kernel caps it at ``net.core.somaxconn``) from aiohttp's 128, so a client that opens
hundreds of connections at once is not made to retry them, and with ``--token-delay 0`` a stream's
chunks are built from precomputed bytes and written in one write.

Fault options pick every K-th request (1-based count of completion requests received).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time

from aiohttp import web

DONE = b"data: [DONE]\n\n"
DEFAULT_BACKLOG = 4096


class _Stream:
    """The SSE bytes of one completion, in vLLM's shape."""

    def __init__(self, n: int, model: str, with_ids: bool):
        head = json.dumps({"id": f"cmpl-loopback-{n}", "object": "text_completion", "created": int(time.time()),
                           "model": model}, separators=(",", ":"))[:-1]
        self.head = b"data: " + head.encode()
        self.prefix = self.head + b',"choices":[{"index":0,"text":"t","logprobs":null,'
        self.with_ids = with_ids

    def chunk(self, token_id: int, finish: str | None = None) -> bytes:
        ids = b'"token_ids":[' + str(token_id).encode() + b"]," if self.with_ids else b""
        fr = b"null" if finish is None else json.dumps(finish).encode()
        return self.prefix + ids + b'"finish_reason":' + fr + b"}]}\n\n"

    def chunks(self, ids: list[int], finish: str) -> bytes:
        if not ids:  # nothing generated: the finish reason comes on an empty chunk, as vLLM sends it
            empty = b',"choices":[{"index":0,"text":"","logprobs":null,'
            return (self.head + empty + (b'"token_ids":[],' if self.with_ids else b"")
                    + b'"finish_reason":' + json.dumps(finish).encode() + b"}]}\n\n")
        if self.with_ids:
            pre, post = self.prefix + b'"token_ids":[', b'],"finish_reason":null}]}\n\n'
            body = b"".join([pre + str(t).encode() + post for t in ids[:-1]])
        else:
            body = (self.prefix + b'"finish_reason":null}]}\n\n') * (len(ids) - 1)
        return body + self.chunk(ids[-1], finish)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        u = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
        return self.head + b',"choices":[],"usage":' + json.dumps(u, separators=(",", ":")).encode() + b"}\n\n"


def _picked(every: int, n: int) -> bool:
    return every > 0 and n % every == 0


def make_app(args: argparse.Namespace) -> web.Application:
    state = {"n": 0}
    api_key = os.environ.get("LOOPBACK_API_KEY")
    running = asyncio.Semaphore(args.max_running) if args.max_running > 0 else contextlib.nullcontext()

    async def health(_request: web.Request) -> web.Response:
        if args.never_healthy:
            return web.json_response({"status": "starting"}, status=503)
        return web.json_response({"status": "ok"})

    async def completions(request: web.Request) -> web.StreamResponse:
        if api_key and request.headers.get("Authorization") != f"Bearer {api_key}":
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        state["n"] += 1
        n = state["n"]
        body = await request.json()
        max_tokens = int(body.get("max_tokens") or 16)
        prompt = body.get("prompt") or []
        prompt_tokens = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
        if _picked(args.fail_every, n):
            return web.json_response({"error": {"message": f"injected HTTP {args.fail_status}"}},
                                     status=args.fail_status)
        if _picked(args.stall_every, n):
            await asyncio.sleep(3600)  # no byte at all: the client's timeout must end it
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if _picked(args.stall_stream_every, n):
            # the stream is open and never ends, as when MII's server failed inside a streamed request
            print(f"loopback server: injected error: request {n} stalls inside its stream", flush=True)
            await asyncio.sleep(3600)
        stream = _Stream(n, str(body.get("model") or "loopback"), bool(body.get("return_token_ids")))
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        n_tokens = max_tokens
        if _picked(args.short_every, n):
            n_tokens = max(0, max_tokens // 2)
        finish = "length" if n_tokens == max_tokens else "stop"
        if _picked(args.malformed_every, n):
            await resp.write(stream.chunk(7) + b"data: {this is not json\n\n")
            await resp.write_eof()
            return resp
        ids = [(3 + (n * 131 + i * 7) % 31990) for i in range(n_tokens)]
        tail = (stream.usage(prompt_tokens, n_tokens) if include_usage else b"") + DONE
        async with running:  # at most --max-running streams generate at once: a server that saturates
            if args.token_delay <= 0:
                await resp.write(stream.chunks(ids, finish) + tail)
            else:
                for i, t in enumerate(ids):
                    await asyncio.sleep(args.token_delay)
                    await resp.write(stream.chunk(t, finish if i == len(ids) - 1 else None))
                if not ids:
                    await resp.write(stream.chunks(ids, finish))
                await resp.write(tail)
        await resp.write_eof()
        return resp

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "loopback", "object": "model"}]})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    return app


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backlog", type=int, default=DEFAULT_BACKLOG,
                   help="listen backlog (aiohttp's own default is 128; the kernel caps it at net.core.somaxconn)")
    p.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens (0: all at once)")
    p.add_argument("--max-running", type=int, default=0,
                   help="streams generating at once; the rest wait (0: no limit). With --token-delay the server "
                        "then saturates at max-running / token-delay tokens/s")
    p.add_argument("--fail-every", type=int, default=0, help="answer every K-th request with --fail-status")
    p.add_argument("--fail-status", type=int, default=500)
    p.add_argument("--stall-every", type=int, default=0, help="every K-th request: send nothing, ever")
    p.add_argument("--stall-stream-every", type=int, default=0,
                   help="every K-th request: open the stream, then send nothing, ever")
    p.add_argument("--malformed-every", type=int, default=0, help="every K-th request: broken SSE data")
    p.add_argument("--short-every", type=int, default=0, help="every K-th request: half the tokens")
    p.add_argument("--never-healthy", action="store_true", help="/health answers 503 forever")
    p.add_argument("--exit-at-start", type=int, default=None, help="exit with this code instead of serving")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.exit_at_start is not None:
        print(f"loopback server: exiting with code {args.exit_at_start} as asked", flush=True)
        return args.exit_at_start
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    print(f"loopback server on http://{args.host}:{args.port}", flush=True)
    web.run_app(make_app(args), host=args.host, port=args.port, access_log=None, print=None, backlog=args.backlog,
                handle_signals=True, shutdown_timeout=1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
