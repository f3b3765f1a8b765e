"""`inference-eval loadgen`: the load generator against a server that is already running.

    inference-eval loadgen --url http://127.0.0.1:8000 --rows results/datasets/s2s-synthetic/rows.jsonl \
        --rate 1 --rate 4 --num-requests 200 --dialect vllm --model tiny-llama --out sweep.csv

The request body follows ``--dialect`` (a launcher entry of ``servers.SERVERS``: how that server takes
token ids and ignores EOS). The API key, if any, is read from the environment variable named by
``--api-key-env`` so that it never appears in a shell history or process list.
"""

from __future__ import annotations

import argparse
import os
import sys

from inference_eval.serving.servers import SERVERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--rows", required=True, help="dataset rows.jsonl ({id, prompt_token_ids, max_tokens})")
    parser.add_argument("--rate", type=float, action="append", required=True,
                        help="requests/s (repeat for a sweep; 'inf' sends all at once)")
    parser.add_argument("--num-requests", type=int, default=100)
    parser.add_argument("--arrival", choices=("poisson", "gamma", "constant"), default="poisson")
    parser.add_argument("--burstiness", type=float, default=1.0, help="gamma shape (1 = Poisson)")
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens-cap", type=int, default=None, help="cap each row's max_tokens")
    parser.add_argument("--drop-first", type=int, default=0)
    parser.add_argument("--drop-last", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")
    parser.add_argument("--dialect", default="vllm", choices=sorted(SERVERS), help="request schema of the server")
    parser.add_argument("--model", default="model", help="model name the server expects in requests")
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer folder (text-prompt dialects, rows without text)")
    parser.add_argument("--api-key-env", default=None, help="name of the environment variable holding the API key")
    parser.add_argument("--out", default=None, help="write the per-rate metrics CSV here")


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from inference_eval.io import write_csv
    from inference_eval.requests import load_requests
    from inference_eval.serving.client import LoadSettings, run_load
    from inference_eval.serving.metrics import rate_metrics
    from inference_eval.serving.schedule import make_schedule
    from inference_eval.serving.servers import server_spec
    from inference_eval.serving.sweep import build_requests, prompt_texts

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            print(f"loadgen: environment variable {args.api_key_env} is not set", file=sys.stderr)
            return 2
    spec = server_spec(args.dialect)
    try:
        requests = build_requests(load_requests(args.rows), args.num_requests, args.max_tokens_cap)
        texts = prompt_texts(requests, args.tokenizer) if spec.prompt_as_text else {}
    except (OSError, ValueError) as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    if args.drop_first + args.drop_last >= len(requests):
        print(f"loadgen: --drop-first + --drop-last must be below --num-requests ({len(requests)})", file=sys.stderr)
        return 2
    settings = LoadSettings(url=args.url.rstrip("/") + spec.completions_path, request_timeout_s=args.timeout,
                            max_concurrency=args.max_concurrency, api_key=api_key,
                            length_from_finish_reason=spec.length_from_finish_reason)
    rows = []
    for rate in args.rate:
        schedule = make_schedule(len(requests), rate, args.arrival, args.burstiness, args.seed)
        completions = run_load(requests, schedule, lambda r: spec.body(r, args.model, texts.get(r.id)), settings)
        m = rate_metrics(completions, rate, args.drop_first, args.drop_last)
        rows.append(m)
        print(f"rate {rate:g}/s: achieved {m['achieved_rate']:.2f}/s, ok {m['n_ok']}/{m['n_measured']}, "
              f"{m['token_throughput_tok_s']:.1f} tok/s, TTFT p50 {m['ttft_s_p50'] * 1e3:.1f} ms, "
              f"e2e p99 {m['e2e_s_p99']:.3f} s, lag p99 {m['send_lag_p99_s'] * 1e3:.2f} ms"
              + (f", failures: {m['failures']}" if m["failures"] else ""))
    if args.out:
        write_csv(args.out, pd.DataFrame(rows))
    return 0 if all(r["n_failed_total"] == 0 for r in rows) else 1
