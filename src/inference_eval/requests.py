"""The shared vocabulary: what every backend, the serving client and the reports speak.

One parameter travels a straight road: a dataset row's ``max_tokens`` becomes a ``Request``,
goes through one backend (batch) or the client (serving), comes back as a ``Completion`` whose
``output_token_ids`` are checked against it (``check_lengths``), then lands in one table row.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence


class DatasetError(ValueError):
    """A dataset file or row that cannot be used; the message names the file and the row."""


# What a synthetic row has in place of a prompt text: a description of its ids, never a prompt to send.
SYNTHETIC_PROMPT = "<synthetic: {n} random token ids>"
_SYNTHETIC_PROMPT = re.compile(r"<synthetic: \d+ random token ids>")


@dataclass(frozen=True)
class Request:
    id: str
    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    prompt: str = ""

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"request {self.id}: max_tokens must be >= 1, got {self.max_tokens}")
        if not self.prompt_token_ids:
            raise ValueError(f"request {self.id}: empty prompt_token_ids")

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def text(self) -> str:
        """The prompt as text when the row has one; "" for a synthetic row, whose ids are the prompt."""
        return "" if _SYNTHETIC_PROMPT.fullmatch(self.prompt) else self.prompt


@dataclass
class Completion:
    """One request's result. Times are seconds on ``time.perf_counter`` (batch) or the client's clock."""

    id: str
    output_token_ids: list[int] = field(default_factory=list)
    requested_tokens: int = 0
    prompt_tokens: int = 0
    error: str = ""
    # serving timings (absolute, same clock as the schedule); batch leaves them at 0
    scheduled_s: float = 0.0
    sent_s: float = 0.0
    first_token_s: float = 0.0
    end_s: float = 0.0
    token_times_s: list[float] = field(default_factory=list)
    # token count reported by the engine where ids are not exposed (e.g. usage fields)
    reported_tokens: int | None = None

    @property
    def output_tokens(self) -> int:
        if self.output_token_ids:
            return len(self.output_token_ids)
        return self.reported_tokens or 0

    @property
    def ok(self) -> bool:
        return not self.error and self.output_tokens == self.requested_tokens


@dataclass
class LengthCheck:
    n_requests: int
    n_exact: int
    mismatches: list[dict]

    @property
    def valid(self) -> bool:
        return self.n_requests > 0 and self.n_exact == self.n_requests

    def reason(self) -> str:
        if self.valid:
            return ""
        if self.n_requests == 0:
            return "no requests completed"
        head = ", ".join(
            f"{m['id']}: got {m['got']} want {m['want']}" + (f" ({m['error']})" if m.get("error") else "")
            for m in self.mismatches[:5]
        )
        more = f" (+{len(self.mismatches) - 5} more)" if len(self.mismatches) > 5 else ""
        return f"{len(self.mismatches)}/{self.n_requests} requests did not generate exactly max_tokens: {head}{more}"


def check_lengths(requests: Sequence[Request], completions: Iterable[Completion]) -> LengthCheck:
    """Every request must come back with exactly ``max_tokens`` generated tokens (counted from ids)."""
    by_id = {c.id: c for c in completions}
    mismatches = []
    for r in requests:
        c = by_id.get(r.id)
        got = c.output_tokens if c else 0
        if c is None or got != r.max_tokens or c.error:
            mismatches.append({"id": r.id, "got": got, "want": r.max_tokens,
                               "error": (c.error if c else "missing completion")})
    return LengthCheck(len(requests), len(requests) - len(mismatches), mismatches)


def load_requests(path: str | Path, limit: int | None = None) -> list[Request]:
    """Read a built dataset (JSONL rows ``{id, prompt, prompt_token_ids, max_tokens}``)."""
    path = Path(path)
    out: list[Request] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append(Request(id=str(row["id"]), prompt_token_ids=tuple(int(t) for t in row["prompt_token_ids"]),
                                   max_tokens=int(row["max_tokens"]), prompt=row.get("prompt", "")))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise DatasetError(f"{path}:{lineno}: bad dataset row: {exc}") from exc
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise DatasetError(f"{path}: no rows")
    return out


def completion_to_row(c: Completion) -> dict:
    d = asdict(c)
    d.pop("output_token_ids")
    d.pop("token_times_s")
    d["output_tokens"] = c.output_tokens
    d["ok"] = c.ok
    return d


def run_limits(cfg: dict) -> tuple[int | None, int | None]:
    """(row limit, output-token cap) of a job's dataset config (``dataset.limit``, ``dataset.max_tokens_cap``).

    The builder already applied both to rows.jsonl; every consumer (batch runs, the roofline bound)
    applies them again through ``run_requests`` so all describe the same requests even when handed
    an unlimited file.
    """
    dataset = cfg.get("dataset") or {}
    limit, cap = dataset.get("limit"), dataset.get("max_tokens_cap")
    return (None if limit is None else int(limit)), (None if cap is None else int(cap))


def run_requests(rows_path: str | Path, cfg: dict) -> list[Request]:
    """The requests a job of ``cfg`` runs: the first ``limit`` rows, ``max_tokens`` capped."""
    return apply_limits(load_requests(rows_path, limit=run_limits(cfg)[0]), cfg)


def apply_limits(rows: Sequence[Request], cfg: dict) -> list[Request]:
    """``rows`` (a whole dataset, or its first rows) cut to the first ``limit`` with ``max_tokens`` capped,
    as ``run_requests`` reads them: for a caller that needs every row too (the batch harness counts them)."""
    limit, cap = run_limits(cfg)
    chosen = list(rows if limit is None else rows[:limit])
    if cap is None:
        return chosen
    return [Request(r.id, r.prompt_token_ids, min(r.max_tokens, cap), r.prompt) for r in chosen]
