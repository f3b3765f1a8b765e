"""`inference-eval dataset`: build or describe a dataset, or check/save the offline Llama-2 tokenizer.

  inference-eval dataset build s2s-synthetic [--out results/datasets] [--override data_root=../shared/data]
  inference-eval dataset describe results/datasets/s2s/rows.jsonl
  inference-eval dataset tokenizer --check [--save models/x/hf]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset_command", required=True)
    build = sub.add_parser("build", help="build one member (s2s, s2s-synthetic, ...) into <out>/<member>/")
    build.add_argument("member", help="s2s | s2l | s16k | l2s, optionally with -synthetic")
    build.add_argument("--out", default="results/datasets", help="folder holding <member>/rows.jsonl")
    build.add_argument("--override", "-o", action="append", default=[],
                       help="Hydra override, e.g. data_root=/path/to/sources or dataset.limit=100 (repeatable)")
    describe = sub.add_parser("describe", help="length statistics of a built rows.jsonl")
    describe.add_argument("rows", help="path to rows.jsonl")
    tok = sub.add_parser("tokenizer", help="the offline Llama-2 tokenizer (llama.cpp vocabulary from PyPI)")
    tok.add_argument("--check", action="store_true", help="compare with llama.cpp's reference tokenizations")
    tok.add_argument("--save", metavar="DIR", help="write HF tokenizer files into DIR")


def _build(args) -> int:
    from inference_eval.config import compose
    from inference_eval.datasets.build import build_and_write

    cfg = compose([f"dataset={args.member}", *args.override])
    folder = Path(args.out) / args.member
    manifest = build_and_write(cfg, folder / "rows.jsonl", folder / "manifest.json")
    label = " (SYNTHETIC)" if manifest["synthetic"] else ""
    print(f"{folder}: {manifest['rows']} rows{label}, source {manifest['source']}, "
          f"input tokens {manifest['input_tokens']}, output tokens {manifest['output_tokens']}")
    return 0


def _describe(args) -> int:
    from inference_eval.datasets.stats import length_stats
    from inference_eval.requests import load_requests

    requests = load_requests(args.rows)
    print(json.dumps({"rows": len(requests),
                      "input_tokens": length_stats(r.prompt_len for r in requests),
                      "output_tokens": length_stats(r.max_tokens for r in requests)}, indent=2))
    return 0


def _tokenizer(args) -> int:
    from inference_eval.datasets import tokenizer as T

    tok = T.load_llama2_tokenizer()
    print(f"vocabulary: {T.llama2_vocab_gguf()}\ntokenizer: {T.tokenizer_id()}")
    status = 0
    if args.check:
        cases = T.reference_cases()
        bad = [c for c in cases if T.encode(tok, c.text) != list(c.token_ids)]
        print(f"llama.cpp reference tokenizations: {len(cases) - len(bad)}/{len(cases)} match")
        for c in bad[:5]:
            print(f"  mismatch: {c.text!r}: got {T.encode(tok, c.text)} want {list(c.token_ids)}")
        status = 1 if bad else 0
    if args.save:
        for path in T.save_llama2_tokenizer(args.save):
            print(f"wrote {path}")
    return status


def run(args) -> int:
    from inference_eval.config import ConfigError
    from inference_eval.datasets.tokenizer import TokenizerUnavailable
    from inference_eval.requests import DatasetError

    handlers = {"build": _build, "describe": _describe, "tokenizer": _tokenizer}
    try:
        return handlers[args.dataset_command](args)
    except (DatasetError, ConfigError, TokenizerUnavailable) as exc:
        print(f"inference-eval dataset {args.dataset_command}: {exc}", file=sys.stderr)
        return 2
