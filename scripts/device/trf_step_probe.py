"""How long one Transformers decode step takes as the context grows, to say whether a batch row fits a call.

Transformers on s16k (2 rows of 16,000 forced tokens, one static batch) is 16,000 steps of ``generate``;
a device call may run 10 minutes. This loads the model's random weights on the GPU the way the batch backend
does (``from_config``, SDPA, bf16), then, at each context length, times ``generate`` for 1 and for 1 + N new
tokens (``min_new_tokens = max_new_tokens``, as the backend forces lengths) and takes the difference over N.
The forecast integrates those step times over the run's contexts (trapezoids). Prints and writes one JSON.

    python3 scripts/device/trf_step_probe.py conf/model/vicuna-7b-16k.yaml $OUT/trf_step_probe.json \
        --batch 2 --prompt 20 --new-tokens 16000 --contexts 16 2048 4096 8192 12288 16000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from inference_eval.models.hf import hf_config_dict  # noqa: E402
from inference_eval.models.spec import ModelSpec  # noqa: E402


def timed_generate(model, ids, new_tokens: int) -> float:
    mask = torch.ones_like(ids)
    torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   do_sample=False, num_beams=1, pad_token_id=0)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def forecast_s(points: list[tuple[int, float]], start: int, end: int) -> float:
    """Sum of step times over contexts start..end, linear between the measured points (flat outside)."""
    points = sorted(points)
    total = 0.0
    for (c0, t0), (c1, t1) in zip(points, points[1:]):
        lo, hi = max(start, c0), min(end, c1)
        if hi > lo:
            at = lambda c: t0 + (t1 - t0) * (c - c0) / (c1 - c0)  # noqa: E731
            total += (at(lo) + at(hi)) / 2 * (hi - lo)
    if start < points[0][0]:
        total += points[0][1] * (min(end, points[0][0]) - start)
    if end > points[-1][0]:
        total += points[-1][1] * (end - max(start, points[-1][0]))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_yaml")
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=20, help="the run's prompt length (forecast start)")
    parser.add_argument("--new-tokens", type=int, default=16000, help="the run's forced output length")
    parser.add_argument("--contexts", type=int, nargs="+", default=[16, 2048, 4096, 8192, 12288, 16000])
    parser.add_argument("--steps", type=int, default=32, help="decode steps timed at each context")
    args = parser.parse_args()

    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = ModelSpec.from_config(yaml.safe_load(Path(args.model_yaml).read_text()))
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(json.dumps(hf_config_dict(spec)))
        config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.eval()
    points, rows = [], []
    with torch.inference_mode():
        warm = torch.randint(3, spec.vocab_size, (args.batch, 16), device="cuda")
        timed_generate(model, warm, 4)
        for ctx in args.contexts:
            ids = torch.randint(3, spec.vocab_size, (args.batch, ctx), device="cuda")
            first = timed_generate(model, ids, 1)
            more = timed_generate(model, ids, 1 + args.steps)
            step = (more - first) / args.steps
            points.append((ctx, step))
            rows.append({"context": ctx, "prefill_and_first_token_s": round(first, 4), "step_ms": round(step * 1e3, 2)})
            print(json.dumps(rows[-1]), flush=True)
    total = forecast_s(points, args.prompt, args.prompt + args.new_tokens)
    report = {"model": spec.name, "batch": args.batch, "steps_timed_per_context": args.steps,
              "library_versions": {"torch": torch.__version__, "transformers": transformers.__version__},
              "device": torch.cuda.get_device_name(), "points": rows,
              "forecast": {"prompt": args.prompt, "new_tokens": args.new_tokens, "decode_s": round(total, 1)}}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report["forecast"]))


if __name__ == "__main__":
    main()
