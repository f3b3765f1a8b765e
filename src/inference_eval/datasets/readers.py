"""Readers for the source formats; every error names the file and the row.

- paper:    the authors' files, a JSON array of ``{prompt, max_tokens?}``
- alpaca:   Stanford Alpaca, a JSON array of ``{instruction, input, output}``
- sharegpt: a JSON array of ``{id, conversations: [{from, value}, ...]}``
- vicuna:   FastChat's ``question.jsonl``, one ``{question_id, turns: [...]}`` per line
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference_eval.requests import DatasetError


@dataclass(frozen=True)
class PaperRow:
    prompt: str
    max_tokens: int | None
    row: int


@dataclass(frozen=True)
class AlpacaRow:
    instruction: str
    input: str
    output: str
    row: int


@dataclass(frozen=True)
class Prompt:
    """A raw prompt with its id in the source (ShareGPT conversation id, Vicuna question id)."""

    id: str
    text: str
    row: int


def _load_array(path: Path) -> list:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text: {exc}") from exc
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    return data


def _field(path: Path, row: int, obj: Any, key: str, kind: type, required: bool = True):
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: row {row}: expected an object, got {type(obj).__name__}")
    if key not in obj or obj[key] is None:
        if required:
            raise DatasetError(f"{path}: row {row}: missing field {key!r}")
        return None
    value = obj[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise DatasetError(f"{path}: row {row}: field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def read_paper(path: Path, require_max_tokens: bool = True) -> list[PaperRow]:
    out = []
    for i, obj in enumerate(_load_array(path)):
        prompt = _field(path, i, obj, "prompt", str)
        max_tokens = _field(path, i, obj, "max_tokens", int, required=require_max_tokens)
        if max_tokens is not None and max_tokens < 1:
            raise DatasetError(f"{path}: row {i}: max_tokens must be >= 1, got {max_tokens}")
        out.append(PaperRow(prompt, max_tokens, i))
    return out


def read_alpaca(path: Path) -> list[AlpacaRow]:
    out = []
    for i, obj in enumerate(_load_array(path)):
        out.append(AlpacaRow(_field(path, i, obj, "instruction", str), _field(path, i, obj, "input", str, False) or "",
                             _field(path, i, obj, "output", str), i))
    return out


def read_sharegpt(path: Path) -> list[Prompt]:
    """First turn of each conversation when it comes from the human (system/gpt openers are skipped)."""
    out = []
    for i, obj in enumerate(_load_array(path)):
        conv_id = _field(path, i, obj, "id", str)
        turns = _field(path, i, obj, "conversations", list)
        if not turns:
            continue
        who = _field(path, i, turns[0], "from", str)
        text = _field(path, i, turns[0], "value", str)
        if who == "human":
            out.append(Prompt(conv_id, text, i))
    return out


def read_vicuna(path: Path) -> list[Prompt]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}: line {lineno}: malformed JSON: {exc.msg}") from exc
            turns = _field(path, lineno, obj, "turns", list)
            qid = obj.get("question_id", lineno) if isinstance(obj, dict) else lineno
            if not turns or not isinstance(turns[0], str):
                raise DatasetError(f"{path}: line {lineno}: field 'turns' must hold at least one string")
            out.append(Prompt(str(qid), turns[0], lineno))
    return out
