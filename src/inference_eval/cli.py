"""`inference-eval`: the parts a person runs by hand (the pipeline itself runs through Snakemake)."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module providing `add_arguments(parser)` and `run(args) -> int`
SUBCOMMANDS = {
    "config": ("inference_eval.config_cli", "compose and print a resolved config"),
    "theory": ("inference_eval.theory.cli", "per-op FLOPs, bytes, intensity and roofline for a model"),
    "dataset": ("inference_eval.datasets.cli", "build or describe a dataset"),
    "loadgen": ("inference_eval.serving.cli", "run the load generator against an OpenAI-compatible server"),
    "provenance": ("inference_eval.report.provenance", "the source digest and git state run records carry"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inference-eval", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    loaded = {}
    for name, (module, help_text) in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:  # optional parts missing: say so only when asked for
            p = sub.add_parser(name, help=f"{help_text} (unavailable: {exc})")
            loaded[name] = exc
            continue
        p = sub.add_parser(name, help=help_text)
        mod.add_arguments(p)
        loaded[name] = mod
    args = parser.parse_args(argv)
    mod = loaded[args.command]
    if isinstance(mod, Exception):
        print(f"inference-eval {args.command}: unavailable: {mod}", file=sys.stderr)
        return 2
    return int(mod.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
