"""`inference-eval config [overrides...]`: print the resolved config, as a job would see it."""

from __future__ import annotations

import json
import sys

from inference_eval.config import ConfigError, compose, config_hash


def add_arguments(p):
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=llama2-13b hardware=a100")


def run(args) -> int:
    try:
        cfg = compose(args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"config_hash": config_hash(cfg), "config": cfg}, indent=2))
    return 0
