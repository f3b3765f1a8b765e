"""How fast can the load generator send on this machine before it, not the server, sets the pace?

Starts the project's loopback streaming server (its own process, answering each request at once with
32 streamed tokens) and runs the load generator at rising Poisson rates. Per rate it prints the
achieved/requested send rate and the send lag (sent - scheduled) p50/p99, and at the end the highest
rate with achieved/requested >= 0.99 and lag p99 <= 5 ms.

"requested" is the rate the seeded schedule itself asks for, (n - 1) / (last - first offset), so that
Poisson sampling noise in a finite schedule is not mistaken for generator lag; the nominal rate is
printed beside it.

    python benchmarks/loadgen_capacity.py [--rates 50,100,200,400] [--seconds 4] [--tokens 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from inference_eval.requests import Request
from inference_eval.serving.client import LoadSettings, run_load
from inference_eval.serving.launch import start_server
from inference_eval.serving.schedule import make_schedule
from inference_eval.serving.servers import LoopbackServer

MAX_RATIO_LOSS = 0.99
MAX_LAG_P99_S = 0.005


def measure(url: str, spec: LoopbackServer, rate: float, seconds: float, tokens: int, seed: int) -> dict:
    n = max(200, int(rate * seconds))
    requests = [Request(id=str(i), prompt_token_ids=(1, 2, 3, 4), max_tokens=tokens) for i in range(n)]
    schedule = make_schedule(n, rate, "poisson", seed=seed)
    completions = run_load(requests, schedule, lambda r: spec.body(r, "loopback"),
                           LoadSettings(url=url, request_timeout_s=30.0, progress=False))
    sent = np.array(sorted(c.sent_s for c in completions))
    lag = np.array([c.sent_s - c.scheduled_s for c in completions])
    requested = (n - 1) / schedule.duration_s
    achieved = (n - 1) / (sent[-1] - sent[0])
    return {"rate": rate, "n": n, "requested": requested, "achieved": achieved, "ratio": achieved / requested,
            "lag_p50_ms": float(np.percentile(lag, 50) * 1e3), "lag_p99_ms": float(np.percentile(lag, 99) * 1e3),
            "failed": sum(not c.ok for c in completions)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="50,100,150,200,250,300,400,500,600")
    p.add_argument("--seconds", type=float, default=4.0, help="schedule length per rate (at least 200 requests)")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    spec = LoopbackServer()
    best = None
    with tempfile.TemporaryDirectory() as tmp:
        with start_server(lambda port: spec.command({}, None, "127.0.0.1", port, None), Path(tmp) / "server.log",
                          health_timeout_s=30) as srv:
            url = srv.base_url + spec.completions_path
            measure(url, spec, 50.0, 1.0, args.tokens, args.seed)  # warm the connection pool and the server
            print(f"{'nominal':>8} {'n':>5} {'requested':>9} {'achieved':>9} {'ratio':>6} {'lag p50':>9} {'lag p99':>9} failed")
            for rate in rates:
                m = measure(url, spec, rate, args.seconds, args.tokens, args.seed)
                good = m["ratio"] >= MAX_RATIO_LOSS and m["lag_p99_ms"] <= MAX_LAG_P99_S * 1e3 and not m["failed"]
                print(f"{rate:8.0f} {m['n']:5d} {m['requested']:9.1f} {m['achieved']:9.1f} {m['ratio']:6.3f} "
                      f"{m['lag_p50_ms']:7.2f}ms {m['lag_p99_ms']:7.2f}ms {m['failed']:6d}" + ("" if good else "  <-"),
                      flush=True)
                if good:
                    best = rate if best is None else max(best, rate)
    print(f"highest rate with achieved/requested >= {MAX_RATIO_LOSS} and send-lag p99 <= "
          f"{MAX_LAG_P99_S * 1e3:g} ms: {best:g} req/s" if best is not None else
          "no rate met achieved/requested >= 0.99 and send-lag p99 <= 5 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
