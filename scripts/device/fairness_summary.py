"""Before and after the fair defaults, side by side, from the records themselves:
    python scripts/device/fairness_summary.py results/h200 > results/h200/FAIRNESS.md   (report.sh runs it)

Reads the rows kept from before (``<hw>/before-fairness/``: vLLM's serving sweeps with its prefix cache on,
the batch records of one run each, Transformers at static batch 8; MII's and llama.cpp's rows made before the
manifest, which unpack_results.py keeps there when their re-runs arrive) and the re-run ones in their usual
places, and prints Markdown tables: vLLM serving per rate, vLLM against MII at the same rates, and the
batch rows with their repeats. Every number comes from a CSV or record under ``<hw>/``.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from inference_eval.records import BatchRecord  # noqa: E402
from inference_eval.records.serving import read_sweep  # noqa: E402

SERVING = ("token_throughput_tok_s", "ttft_s_p50", "tpot_s_mean", "e2e_s_p99")
_LOG_HIT = re.compile(r"Prefix cache hit rate: ([\d.]+)%")


def _ms(v: float) -> str:
    return f"{v * 1e3:,.1f} ms" if v < 1 else f"{v:,.2f} s"


def _last_logged_hit_rate(run_dir: Path) -> str:
    """vLLM's own periodic log line (a running share since the server started) at the sweep's end."""
    try:
        hits = _LOG_HIT.findall((run_dir / "server.log").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return "n/a"
    return f"{float(hits[-1]):.1f} % (server log, cumulative)" if hits else "n/a"


def serving_tables(hw: Path, dataset: str) -> list[str]:
    before_path = hw / "before-fairness" / "serving" / f"vllm_llama2-7b_{dataset}.csv"
    after_path = hw / "serving" / f"vllm_llama2-7b_{dataset}.csv"
    missing = [str(p.relative_to(hw)) for p in (before_path, after_path) if not p.exists()]
    heading = [f"### {dataset}: vLLM serving, prefix cache on (before) and off (after)", ""]
    if missing:  # e.g. a column whose vLLM sweeps have not been re-run yet: say so, compare nothing
        return heading + [f"Not compared: missing under {hw.name}/: {', '.join(missing)}.", ""]
    before = read_sweep(before_path)
    after = read_sweep(after_path)
    mii_path = hw / "serving" / f"mii_llama2-7b_{dataset}.csv"
    mii = read_sweep(mii_path) if mii_path.exists() else None
    # MII's own row from before, once MII has been re-run too (unpack_results.py kept it); else its one row
    mii_before_path = hw / "before-fairness" / "serving" / f"mii_llama2-7b_{dataset}.csv"
    mii_before = read_sweep(mii_before_path) if mii_before_path.exists() else mii
    old_hit = _last_logged_hit_rate(hw / "before-fairness" / "serving" / "runs" / f"vllm_llama2-7b_{dataset}")
    out = heading + [
        f"Before: vLLM 0.24's default (prefix caching on); its log's last hit-rate line: {old_hit}. "
        "After: `--no-enable-prefix-caching`, hit rate per rate from vLLM's `/metrics` counters.", "",
        "| rate (req/s) | tok/s before / after | TTFT p50 before / after (95 % CI) | TPOT mean before / after "
        "| E2E p99 before / after | prompt tokens from cache, after | exact |",
        "|---|---|---|---|---|---|---|"]
    for b, a in zip(before, after):
        ci = "" if math.isnan(a.ttft_s_p50_ci_lo) else f"{_ms(a.ttft_s_p50_ci_lo)}-{_ms(a.ttft_s_p50_ci_hi)}"
        out.append(f"| {a.rate:g} | {b.token_throughput_tok_s:,.0f} / {a.token_throughput_tok_s:,.0f} "
                   f"| {_ms(b.ttft_s_p50)} / {_ms(a.ttft_s_p50)} ({ci}) "
                   f"| {_ms(b.tpot_s_mean)} / {_ms(a.tpot_s_mean)} | {_ms(b.e2e_s_p99)} / {_ms(a.e2e_s_p99)} "
                   f"| {a.prefix_cache_hit_rate:.1%} | {int(a.n_ok)}/{int(a.n_measured)} |")
    if mii is not None:
        whose = ("MII's rows before and after its own re-run with the fair defaults" if mii_before is not mii else
                 "MII's rows as published: FastGen has no prefix cache, but the rows predate the manifest, so the "
                 "gate marks them")
        out += ["", f"vLLM against MII on {dataset} ({whose}; ratios are MII / vLLM, above 1 = vLLM better):", "",
                "| rate | TPOT mean MII / vLLM, before -> after | E2E p99 MII / vLLM, before -> after "
                "| TTFT p50 MII / vLLM, before -> after |", "|---|---|---|---|"]
        for a in after:
            m = next((r for r in mii if r.rate == a.rate), None)
            mb = next((r for r in mii_before if r.rate == a.rate), None)
            b = next((r for r in before if r.rate == a.rate), None)
            if m is None or mb is None or b is None:
                continue
            cells = [f"{getattr(mb, k) / getattr(b, k):.2f}x -> {getattr(m, k) / getattr(a, k):.2f}x"
                     for k in ("tpot_s_mean", "e2e_s_p99", "ttft_s_p50")]
            out.append(f"| {a.rate:g} | " + " | ".join(cells) + " |")
    return out + [""]


def _record(path: Path) -> BatchRecord | None:
    return BatchRecord.load(path) if path.exists() else None


def batch_table(hw: Path) -> list[str]:
    out = ["### Batch rows: one run before, 3 repeats after (mean, 95 % Student-t interval, every repeat)", "",
           "| library | dataset | before: time, tok/s | after: mean time (95 % CI), tok/s | repeat times (s) "
           "| batching after | exact |", "|---|---|---|---|---|---|---|"]
    before_setting = {"transformers": "static batch 8", "vllm": "prefix caching on, vLLM's default",
                      "mii": "no manifest", "llamacpp": "no manifest"}
    for lib in ("vllm", "transformers", "mii", "llamacpp"):
        for d in ("s2s", "l2s", "s2l"):
            b = _record(hw / "before-fairness" / "batch" / lib / "llama2-7b" / f"{d}.json")
            a = _record(hw / "batch" / lib / "llama2-7b" / f"{d}.json")
            if not (a and b):
                continue
            lo, hi = a.total_time_ci95_lo_s, a.total_time_ci95_hi_s
            ci = f"{lo:.3g} to {hi:.3g}" if lo is not None and hi is not None else "n/a"
            batching = a.settings.get("batching", "")
            before_batching = before_setting[lib]
            out.append(f"| {lib} | {d} | {b.total_time_s:.3g} s, {b.token_throughput_tok_s:,.0f} ({before_batching}) "
                       f"| {a.total_time_s:.3g} s ({ci}), {a.token_throughput_tok_s:,.0f} "
                       f"| {' '.join(f'{t:.3g}' for t in a.repeat_times_s)} | {batching} "
                       f"| {a.n_exact}/{a.n_requests} |")
    return out + [""]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[1], file=sys.stderr)
        return 2
    hw = Path(argv[1])
    if not (hw / "before-fairness").is_dir():
        print(f"fairness_summary: {hw / 'before-fairness'} does not exist: nothing to compare", file=sys.stderr)
        return 1
    lines = [f"# {hw.name}: before and after the fair defaults", "",
             "Generated by `scripts/device/fairness_summary.py` from the CSVs and records under this folder "
             "(`before-fairness/` holds the rows as first published). docs/fairness.md says what changed.", ""]
    for d in ("s2s", "l2s"):
        lines += serving_tables(hw, d)
    lines += batch_table(hw)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
