"""`inference-eval theory`: FLOPs, bytes, intensity and roofline of one op, one layer or one model.

    inference-eval theory --model llama2-7b --hardware a100 --batch 8 --seq 512
    inference-eval theory --model mistral-7b --hardware h100 --stage decode --op attention --unfused
    inference-eval theory --model llama2-13b --hardware a100 --level model --causal
    inference-eval theory --model llama2-70b --hardware h200 --tensor-parallel 2 --stage decode
"""

from __future__ import annotations

import argparse
import sys

from inference_eval.opnames import OPS, STAGES
from inference_eval.theory.ops import LAYER, LEVELS, MODEL, MODEL_OPS, TheoryError
from inference_eval.theory.parallel import COMM_OP

OP_CHOICES = tuple(OPS) + (COMM_OP,) + MODEL_OPS + (LAYER, MODEL)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--model", default="llama2-7b", help="conf/model member (default llama2-7b)")
    parser.add_argument("--hardware", default="a100", help="conf/hardware member (default a100)")
    parser.add_argument("--batch", "-b", type=int, default=8, help="batch size b (default 8)")
    parser.add_argument("--seq", "-s", type=int, default=512,
                        help="prefill: input length; decode: context including the new token (default 512)")
    parser.add_argument("--stage", choices=STAGES, action="append",
                        help="prefill or decode (repeatable; default both)")
    parser.add_argument("--op", choices=OP_CHOICES, metavar="OP",
                        help=f"only this op, with the tensors it moves ({', '.join(OP_CHOICES)})")
    parser.add_argument("--level", choices=LEVELS, default="op",
                        help="op: the layer's ops; layer: one layer's total; model: embedding, final norm, "
                             "LM head and the whole-model total (default op)")
    parser.add_argument("--unfused", action="store_true",
                        help="bytes as eager Transformers moves them (score matrix written and read, KV cache "
                             "concatenated every step) instead of the fused model")
    parser.add_argument("--causal", action="store_true", help="count only the (query, key) pairs a causal mask keeps")
    parser.add_argument("--tensor-parallel", "-t", type=int, default=1, metavar="T",
                        help="one of T GPUs' share, with the all_reduce op (default 1: one GPU)")
    parser.add_argument("--csv", action="store_true", help="print every column as CSV instead of a table")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. +hardware.measured.bandwidth_gbs=1800 (+ adds a key the profile lacks)")


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _seconds(value: float) -> str:
    for factor, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "us")):
        if value >= factor:
            return f"{value / factor:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def _render(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from inference_eval.config import ConfigError, compose
    from inference_eval.theory.hardware import ceilings
    from inference_eval.theory.ops import ModelShape
    from inference_eval.theory.parallel import device_costs
    from inference_eval.theory.roofline import bound, op_table, step_time

    try:
        cfg = compose([f"model={args.model}", f"hardware={args.hardware}"] + list(args.overrides))
        shape = ModelShape.from_config(cfg["model"])
        c = ceilings(cfg["hardware"], shape.dtype)
        stages = args.stage or list(STAGES)
        table = op_table(shape, c, args.batch, args.seq, stages, args.causal, args.tensor_parallel)
    except (ConfigError, TheoryError) as exc:
        print(f"inference-eval theory: {exc}", file=sys.stderr)
        return 2

    if args.op:
        table = table[table["op"] == args.op]
    else:
        table = table[table["level"] == args.level]
    if args.csv:
        table.to_csv(sys.stdout, index=False)
        return 0

    model = "unfused" if args.unfused else "fused"
    print(f"{shape.name} on {c.hardware}: b={args.batch} s={args.seq}, {shape.dtype} (e={shape.bytes_per_element}), "
          f"h={shape.hidden} h'={shape.intermediate} n={shape.heads} n_kv={shape.kv_heads} l={shape.layers} "
          f"V={shape.vocab}; {'causal' if args.causal else 'full'} attention; {model} bytes"
          + (f"; per GPU of {args.tensor_parallel} (tensor parallel)" if args.tensor_parallel > 1 else ""))
    print(f"ceilings: {_si(c.peak_flops, 'FLOP/s')}, {_si(c.bandwidth, 'B/s')}, ridge point "
          f"{c.ridge_point:.1f} FLOP/B ({c.source})"
          + (f"; interconnect {_si(c.interconnect, 'B/s')} ({c.interconnect_source})" if c.interconnect else ""))
    rows = [[r["stage"], r["op"], r["formula"], _si(r["flops"], "FLOP"), _si(r[f"bytes_{model}"], "B"),
             f"{r[f'intensity_{model}']:.3g}", r[f"bound_{model}"], _seconds(r[f"roofline_time_{model}_s"])]
            for _, r in table.iterrows()]
    print(_render(rows, ["stage", "op", "FLOPs formula", "FLOPs", "bytes", "FLOP/B", "bound", "roofline time"]))
    if args.op:
        costs = {(cost.stage, cost.op): cost for stage in stages
                 for cost in device_costs(shape, args.batch, args.seq, stage, args.causal, args.tensor_parallel)}
        for stage in stages:
            cost = costs[(stage, args.op)]
            print(f"\n{stage} {args.op} bytes = {cost.bytes_formula(model)}")
            if cost.level == "op" or cost.op in MODEL_OPS:
                detail = [[t.tensor, t.kind, f"{t.elements:,}", t.reads, t.writes, _si(t.bytes, "B")]
                          for t in cost.traffic[model]]
                print(_render(detail, ["tensor", "kind", "elements", "reads", "writes", "bytes"]))
            t = step_time(cost.flops, cost.bytes(model), cost.link_bytes, c)
            if cost.op == COMM_OP:
                print(f"link bytes {_si(float(cost.link_bytes), 'B')} per GPU; time {_seconds(float(t))}")
            else:
                print(f"bound: {bound(cost.flops / cost.bytes(model), c)}; roofline time {_seconds(float(t))}")
    return 0
