"""Decoding one streamed ``/v1/completions`` response: SSE lines of JSON completion chunks, fed as the bytes
arrive, into a ``ServedCompletion`` (token ids, usage, first-token and per-chunk times, finish reason).

Token counts come from what the server says: token ids in the stream (vLLM ``return_token_ids``), the
``usage`` block, or per-token logprob entries (llama.cpp). Text is never re-tokenized.

Cost per chunk is what limits a client at high token rates, so the decoder works on whole reads: one
``bytes.split`` per read, a prefix test per line, and one JSON decode per event. The decode is typed with
msgspec where it is installed (vLLM depends on it): about 0.4 us for a vLLM chunk against 3 us for
``json.loads`` here. Without msgspec the same checks run on ``json.loads``'s dicts (``_decode_json``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

_SSE_FIELDS = (b"event", b"id", b"retry")
MAX_LINE_BYTES = 16 * 1024 * 1024  # a line without its end past this is not a completion stream


class MalformedStream(Exception):
    """The server sent something that is not a valid SSE stream of JSON completion chunks."""


try:
    import msgspec
except ImportError:  # the json fallback below
    msgspec = None


if msgspec is not None:
    class _Usage(msgspec.Struct):
        prompt_tokens: int | None = None
        completion_tokens: int | None = None

    class _Choice(msgspec.Struct):
        text: str | None = None
        token_ids: list[int] | None = None
        logprobs: Any = None
        finish_reason: str | None = None

    class _Chunk(msgspec.Struct):
        """The fields of an OpenAI completion chunk the client reads; the others are skipped unparsed."""

        choices: list[_Choice] | None = None
        usage: _Usage | None = None
        error: Any = None

    _decoder = msgspec.json.Decoder(_Chunk)

    def _decode_msgspec(data: bytes) -> _Chunk:
        try:
            return _decoder.decode(data)
        except msgspec.ValidationError as exc:  # JSON, but not a completion chunk
            raise MalformedStream(f"SSE data is not a completion chunk ({exc}): {data[:80]!r}") from None
        except msgspec.DecodeError:
            raise MalformedStream(f"SSE data is not JSON: {data[:80]!r}") from None


class _Obj:
    """``json.loads``'s dicts seen through the attribute names of the msgspec types above."""

    __slots__ = (
        "choices",
        "completion_tokens",
        "error",
        "finish_reason",
        "logprobs",
        "prompt_tokens",
        "text",
        "token_ids",
        "usage",
    )


def _typed(value, kinds, what: str, data: bytes):
    if value is None or isinstance(value, kinds) and not isinstance(value, bool):
        return value
    raise MalformedStream(f"SSE data is not a completion chunk ({what} is {type(value).__name__}): {data[:80]!r}")


def _decode_json(data: bytes) -> _Obj:
    """The msgspec decode's checks on ``json.loads``: the same fields, types and messages."""
    try:
        event = json.loads(data)
    except ValueError:
        raise MalformedStream(f"SSE data is not JSON: {data[:80]!r}") from None
    if not isinstance(event, dict):
        raise MalformedStream(f"SSE data is not a completion chunk (not a JSON object): {data[:80]!r}")
    out = _Obj()
    out.error = event.get("error")
    usage = _typed(event.get("usage"), dict, "usage", data)
    if usage is not None:
        u = out.usage = _Obj()
        u.prompt_tokens = _typed(usage.get("prompt_tokens"), int, "usage.prompt_tokens", data)
        u.completion_tokens = _typed(usage.get("completion_tokens"), int, "usage.completion_tokens", data)
    else:
        out.usage = None
    choices = _typed(event.get("choices"), list, "choices", data)
    out.choices = None
    if choices is not None:
        out.choices = []
        for ch in choices:
            ch = _typed(ch, dict, "a choice", data)
            if ch is None:
                raise MalformedStream(f"SSE data is not a completion chunk (a choice is null): {data[:80]!r}")
            o = _Obj()
            o.text = _typed(ch.get("text"), str, "text", data)
            o.token_ids = _typed(ch.get("token_ids"), list, "token_ids", data)
            if o.token_ids is not None:
                for t in o.token_ids:
                    _typed(t, int, "a token id", data)
            o.logprobs = ch.get("logprobs")
            o.finish_reason = _typed(ch.get("finish_reason"), str, "finish_reason", data)
            out.choices.append(o)
    return out


decode_chunk: Callable[[bytes], Any] = _decode_msgspec if msgspec is not None else _decode_json


def _count_logprob_tokens(lp) -> int:
    if isinstance(lp, dict):
        tokens = lp.get("tokens")
        if isinstance(tokens, list):
            return len(tokens)
    return 0


class StreamDecoder:
    """Fed the body bytes of one streamed response with the time they arrived (``feed``); fills ``c``.

    ``feed`` returns True once the stream is complete ([DONE]); ``close`` at the end of the body checks
    that it ended properly and carried a token count. Both raise ``MalformedStream``. All lines of one
    read share that read's time: they arrived together.
    """

    __slots__ = (
        "_ids",
        "_logprob_tokens",
        "_saw_logprobs",
        "_tail",
        "_times",
        "c",
        "decode",
        "done",
        "finished",
        "length_from_finish_reason",
    )

    def __init__(self, c, length_from_finish_reason: bool = False, decode: Callable[[bytes], Any] | None = None):
        self.c = c
        self.decode = decode or decode_chunk
        self.length_from_finish_reason = length_from_finish_reason
        self._tail = b""
        self.finished = False   # a finish_reason or [DONE] was seen
        self.done = False       # [DONE] was seen: whatever follows is not read
        self._logprob_tokens = 0
        self._saw_logprobs = False
        self._ids = c.output_token_ids
        self._times = c.token_times_s

    def feed(self, data: bytes, now: float) -> bool:
        if self.done:
            return True
        if self._tail:
            data = self._tail + data
        lines = data.split(b"\n")
        self._tail = lines.pop()
        if len(self._tail) > MAX_LINE_BYTES:
            raise MalformedStream(f"an SSE line longer than {MAX_LINE_BYTES} bytes: {self._tail[:80]!r}")
        for line in lines:
            if line[:5] == b"data:":
                if self._event(line[5:].strip(), now):
                    return True
                continue
            line = line.strip()
            if not line or line[:1] == b":":
                continue
            if line[:5] == b"data:":  # the line had leading blanks
                if self._event(line[5:].strip(), now):
                    return True
                continue
            if line.split(b":", 1)[0] in _SSE_FIELDS:
                continue
            raise MalformedStream(f"not an SSE line: {line[:80]!r}")
        return False

    def _event(self, data: bytes, now: float) -> bool:
        if data == b"[DONE]":
            self.finished = self.done = True
            self.c.end_s = now
            return True
        c = self.c
        ev = self.decode(data)
        if ev.error is not None:
            err = ev.error
            msg = err.get("message", err) if isinstance(err, dict) else err
            raise MalformedStream(f"server error in stream: {str(msg)[:200]}")
        usage = ev.usage
        if usage is not None:
            if usage.completion_tokens is not None:
                c.reported_tokens = usage.completion_tokens
            if usage.prompt_tokens is not None:
                c.server_prompt_tokens = usage.prompt_tokens
        choices = ev.choices
        if not choices:
            return False
        choice = choices[0]
        carried = False
        ids = choice.token_ids
        if ids:
            self._ids.extend(ids)
            carried = True
        lp = choice.logprobs
        if lp is not None:
            self._saw_logprobs = True
            n_lp = _count_logprob_tokens(lp)
            self._logprob_tokens += n_lp
            carried = carried or n_lp > 0
        if choice.text:
            carried = True
        if carried:
            if not c.first_token_s:
                c.first_token_s = now
            self._times.append(now)
            c.n_chunks += 1
        if choice.finish_reason:
            c.finish_reason = choice.finish_reason
            self.finished = True  # some servers (transformers serve) end without [DONE]
        return False

    def close(self, now: float) -> None:
        """The body ended at ``now``: raise ``MalformedStream`` unless the stream completed with a count."""
        c = self.c
        if not self.done:
            if self._tail.strip():  # a last line without its newline
                tail, self._tail = self._tail, b""
                self.feed(tail + b"\n", now)
            c.end_s = now
        if not self.finished:
            raise MalformedStream("stream ended before completion (no finish_reason and no [DONE]): "
                                  "the server closed the connection mid-response")
        if c.reported_tokens is None and not c.output_token_ids:
            if self._saw_logprobs:
                c.reported_tokens = self._logprob_tokens
            elif self.length_from_finish_reason:
                # "length" is set exactly at max_tokens; otherwise the chunk count is the best the server says
                c.reported_tokens = c.requested_tokens if c.finish_reason == "length" else c.n_chunks
            else:
                raise MalformedStream("the stream carried no token count (no token ids, usage or logprobs)")
        if c.output_token_ids and c.reported_tokens is not None and c.reported_tokens != len(c.output_token_ids):
            raise MalformedStream(f"server's usage says {c.reported_tokens} tokens but the stream carried "
                                  f"{len(c.output_token_ids)} token ids")
