"""The paper's build rules (docs/datasets.md): from parsed source rows to dataset rows.

Lengths are Llama-2 tokens without BOS, counted once here; the ids written are what runners send.
Every random choice draws from ``rng(seed, purpose)``, so one seed fixes the whole dataset.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from inference_eval.datasets.readers import AlpacaRow, PaperRow, Prompt
from inference_eval.requests import DatasetError

Encoder = Callable[[Sequence[str]], list[list[int]]]
TOKENIZE_CHUNK = 512


@dataclass(frozen=True)
class DatasetRow:
    id: str
    prompt: str
    prompt_token_ids: tuple[int, ...]
    max_tokens: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "prompt": self.prompt, "prompt_token_ids": list(self.prompt_token_ids),
                "max_tokens": self.max_tokens}


@dataclass
class RuleResult:
    rows: list[DatasetRow]
    rule: dict[str, Any]  # what was applied, in words and parameters (goes into the manifest)
    details: dict[str, Any] = field(default_factory=dict)


def rng(seed: int, purpose: str) -> np.random.Generator:
    """An independent, reproducible stream per purpose (sampling, output lengths, ...)."""
    return np.random.default_rng([int(seed), zlib.crc32(purpose.encode())])


def llama2_chat(instruction: str, input_text: str = "") -> str:
    """The Llama-2 chat form without a system prompt: ``[INST] {instruction}[\\n\\n{input}] [/INST]``."""
    body = f"{instruction}\n\n{input_text}" if input_text else instruction
    return f"[INST] {body} [/INST]"


def _range(values: Any, what: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{what} must be [min, max], got {values!r}") from exc
    if lo > hi or lo < 0:
        raise DatasetError(f"{what} must be [min, max] with 0 <= min <= max, got {values!r}")
    return lo, hi


def encode_in_chunks(encode: Encoder, texts: Sequence[str], desc: str) -> list[list[int]]:
    out: list[list[int]] = []
    chunks = range(0, len(texts), TOKENIZE_CHUNK)
    for start in tqdm(chunks, desc=desc, unit="chunk", disable=len(chunks) < 4):
        out.extend(encode(texts[start:start + TOKENIZE_CHUNK]))
    return out


def _non_empty(rows: list[DatasetRow], where: str, rule: Mapping[str, Any]) -> list[DatasetRow]:
    if not rows:
        raise DatasetError(f"{where}: no rows left after filtering with rule {dict(rule)}")
    return rows


def from_paper(rows: list[PaperRow], encode: Encoder, prefix: str, where: str,
               default_max_tokens: int | None) -> RuleResult:
    """The authors' rows as they are; a missing ``max_tokens`` takes ``default_max_tokens`` (s16k: 16000)."""
    ids = encode_in_chunks(encode, [r.prompt for r in rows], f"tokenize {prefix}")
    out = []
    for r, toks in zip(rows, ids):
        max_tokens = r.max_tokens if r.max_tokens is not None else default_max_tokens
        if max_tokens is None:
            raise DatasetError(f"{where}: row {r.row}: missing field 'max_tokens' and no default_max_tokens is set")
        if not toks:
            raise DatasetError(f"{where}: row {r.row}: empty prompt")
        out.append(DatasetRow(f"{prefix}-{r.row:05d}", r.prompt, tuple(toks), int(max_tokens)))
    rule = {"description": "the paper authors' rows as published; prompts tokenized (no BOS)",
            "default_max_tokens": default_max_tokens}
    return RuleResult(_non_empty(out, where, rule), rule)


def _draw_output(kind: str, lo: int, hi: int, generator: np.random.Generator) -> int:
    if kind == "uniform":
        return int(generator.integers(lo, hi + 1))
    raise DatasetError(f"unknown output rule {kind!r}; valid: reference, uniform, fixed")


def from_alpaca(rows: list[AlpacaRow], encode: Encoder, rule: Mapping[str, Any], seed: int, where: str) -> RuleResult:
    """Alpaca in the Llama-2 chat form: a seeded sample of ``rows`` rows whose lengths pass the rule.

    Rows are visited in a seeded random order and kept until ``rows`` pass, so the sample is uniform
    over the eligible rows. ``output: reference`` takes the reference answer's token count as
    ``max_tokens`` and keeps the row only if it is in ``output_tokens``; ``output: uniform`` draws it.
    """
    want = int(rule["rows"])
    in_lo, in_hi = _range(rule["input_tokens"], "input_tokens")
    out_lo, out_hi = _range(rule["output_tokens"], "output_tokens")
    kind = str(rule.get("output", "reference"))
    if kind not in ("reference", "uniform"):
        raise DatasetError(f"{where}: unknown output rule {kind!r}; valid for alpaca: reference, uniform")
    order = rng(seed, "alpaca-order").permutation(len(rows))
    lengths = rng(seed, "output-lengths")
    out: list[DatasetRow] = []
    seen_prompts: set[str] = set()
    visited = 0
    progress = tqdm(total=want, desc="alpaca rows", unit="row", disable=want < 100)
    for start in range(0, len(order), TOKENIZE_CHUNK):
        chunk = [rows[i] for i in order[start:start + TOKENIZE_CHUNK]]
        prompts = [llama2_chat(r.instruction, r.input) for r in chunk]
        prompt_ids = encode(prompts)
        answer_ids = encode([r.output for r in chunk]) if kind == "reference" else [[]] * len(chunk)
        for r, prompt, toks, answer in zip(chunk, prompts, prompt_ids, answer_ids):
            visited += 1
            if prompt in seen_prompts or not (in_lo <= len(toks) <= in_hi):
                continue
            if kind == "reference":
                if not (out_lo <= len(answer) <= out_hi):
                    continue
                max_tokens = len(answer)
            else:
                max_tokens = _draw_output(kind, out_lo, out_hi, lengths)
            seen_prompts.add(prompt)
            out.append(DatasetRow(f"alpaca-{r.row:05d}", prompt, tuple(toks), max_tokens))
            progress.update(1)
            if len(out) == want:
                break
        if len(out) == want:
            break
    progress.close()
    applied = {"description": "Alpaca rows in the Llama-2 chat form '[INST] {instruction}[\\n\\n{input}] [/INST]', "
                              "visited in a seeded random order, kept while prompt tokens are in input_tokens and "
               + ("the reference answer's token count (= max_tokens) is in output_tokens" if kind == "reference"
                  else "max_tokens drawn uniformly from output_tokens") + "; duplicate prompts dropped",
               "rows": want, "input_tokens": [in_lo, in_hi], "output": kind, "output_tokens": [out_lo, out_hi],
               "template": "llama2-chat"}
    _non_empty(out, where, applied)
    return RuleResult(out, applied, {"rows_visited": visited, "rows_short": max(0, want - len(out))})


def from_prompts_fixed(prompts: list[Prompt], encode: Encoder, rule: Mapping[str, Any], prefix: str,
                       where: str) -> RuleResult:
    """Raw prompts, each with the same ``max_tokens`` (s16k: the 80 Vicuna-bench questions, 16,000)."""
    max_tokens = int(rule["max_tokens"])
    ids = encode_in_chunks(encode, [p.text for p in prompts], f"tokenize {prefix}")
    out = []
    for p, toks in zip(prompts, ids):
        if not toks:
            raise DatasetError(f"{where}: row {p.row}: empty prompt")
        out.append(DatasetRow(f"{prefix}-{p.id}", p.text, tuple(toks), max_tokens))
    applied = {"description": "raw prompts (no template), every max_tokens fixed", "max_tokens": max_tokens,
               "template": "raw"}
    return RuleResult(_non_empty(out, where, applied), applied)


def _unique(prompts: Iterable[Prompt]) -> tuple[list[Prompt], int]:
    seen_ids: set[str] = set()
    seen_texts: set[str] = set()
    out, dropped = [], 0
    for p in prompts:
        if p.id in seen_ids or p.text in seen_texts or not p.text.strip():
            dropped += 1
            continue
        seen_ids.add(p.id)
        seen_texts.add(p.text)
        out.append(p)
    return out, dropped


def from_sharegpt(prompts: list[Prompt], encode: Encoder, rule: Mapping[str, Any], seed: int,
                  where: str) -> RuleResult:
    """l2s: first human turns of ``input_tokens`` length, topped up with stitched contexts (seeded).

    Natural rows: every prompt whose token count is in ``input_tokens`` (a seeded sample if there are
    more than ``rows``). Stitched rows, while ``stitch`` is on and rows are missing: the shorter prompts in
    a seeded order are joined with ``stitch_separator`` into one context; a prompt whose addition would
    overshoot the maximum is left for a later context; a context is closed once its (re-tokenized)
    length reaches the minimum. Each prompt is used at most once, so no two rows share a prefix.
    ``max_tokens`` is drawn uniformly from ``output_tokens`` (the files keep no replies).
    """
    want = int(rule["rows"])
    in_lo, in_hi = _range(rule["input_tokens"], "input_tokens")
    out_lo, out_hi = _range(rule["output_tokens"], "output_tokens")
    sep = str(rule.get("stitch_separator", "\n\n"))
    stitch = bool(rule.get("stitch", True))
    unique, dropped = _unique(prompts)
    ids = encode_in_chunks(encode, [p.text for p in unique], "tokenize sharegpt")
    natural = [(p, t) for p, t in zip(unique, ids) if in_lo <= len(t) <= in_hi]
    pool = [(p, t) for p, t in zip(unique, ids) if 0 < len(t) < in_lo]
    if len(natural) > want:
        keep = sorted(rng(seed, "l2s-natural").choice(len(natural), size=want, replace=False))
        natural = [natural[i] for i in keep]
    rows = [DatasetRow(f"sharegpt-{p.id}", p.text, tuple(t), 0) for p, t in natural]
    stitched_parts: list[dict[str, Any]] = []
    if stitch and len(rows) < want:
        stitched = _stitch(pool, encode, sep, in_lo, in_hi, want - len(rows), rng(seed, "l2s-stitch"))
        for k, (parts, text, toks) in enumerate(stitched):
            row_id = f"stitched-{k:05d}"
            rows.append(DatasetRow(row_id, text, tuple(toks), 0))
            stitched_parts.append({"id": row_id, "parts": [p.id for p in parts], "tokens": len(toks)})
    lengths = rng(seed, "output-lengths")
    rows = [DatasetRow(r.id, r.prompt, r.prompt_token_ids, _draw_output("uniform", out_lo, out_hi, lengths))
            for r in rows]
    applied = {"description": "ShareGPT first human turns, raw (no template), with prompt tokens in input_tokens; "
                              "topped up to `rows` by stitching shorter prompts (seeded order, joined with "
                              "stitch_separator, each used once, a context closes when it reaches the minimum); "
                              "max_tokens drawn uniformly from output_tokens because the files keep no replies",
               "rows": want, "input_tokens": [in_lo, in_hi], "output": "uniform", "output_tokens": [out_lo, out_hi],
               "stitch": stitch, "stitch_separator": sep, "template": "raw"}
    _non_empty(rows, where, applied)
    details = {"candidates": len(unique), "duplicates_dropped": dropped, "natural_rows": len(natural),
               "stitched_rows": len(stitched_parts), "rows_short": max(0, want - len(rows)),
               "stitched": stitched_parts}
    return RuleResult(rows, applied, details)


def _stitch(pool, encode: Encoder, sep: str, lo: int, hi: int, need: int, generator: np.random.Generator):
    """Join short prompts into contexts of lo..hi tokens; see ``from_sharegpt``."""
    order = [pool[i] for i in generator.permutation(len(pool))]
    sep_tokens = len(encode([f"a{sep}b"])[0]) - len(encode(["ab"])[0]) + 1
    available = list(order)
    out = []
    progress = tqdm(total=need, desc="stitch l2s contexts", unit="row", disable=need < 50)
    while len(out) < need and available:
        parts: list = []
        length = 0
        text, toks = "", []
        remaining = []
        for idx, (p, t) in enumerate(available):
            if length >= lo:
                remaining.extend(available[idx:])
                break
            estimate = length + len(t) + (sep_tokens if parts else 0)
            if estimate > hi + 2:  # cheap pre-check; the exact count is taken below
                remaining.append((p, t))
                continue
            candidate = sep.join([q.text for q, _ in parts] + [p.text])
            cand_toks = encode([candidate])[0]
            if len(cand_toks) > hi:
                remaining.append((p, t))
                continue
            parts.append((p, t))
            text, toks, length = candidate, cand_toks, len(cand_toks)
        if length < lo:  # the pool cannot fill another context
            break
        out.append(([p for p, _ in parts], text, toks))
        available = remaining
        progress.update(1)
    progress.close()
    return out
