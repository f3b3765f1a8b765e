"""``results/<hw>/SUMMARY.md``: the numbers of one hardware's results in Markdown, generated from its tables
(the per-dataset batch tables, the serving sweeps and the fitted coefficients), so a results README never
carries hand-typed numbers. Written by the ``results_summary`` rule (``rules/report_pages.smk``) and by
``scripts/write_summary.py`` for a committed results folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from inference_eval.records.serving import read_sweep
from inference_eval.report.pages import format_cell

COEFFICIENT_NAMES = ("alpha", "beta", "gamma", "eta", "lambda", "mu", "phi", "psi", "omega", "nu")
REASON_CHARS = 200


def _md(text) -> str:
    """A Markdown table cell: pipes escaped, newlines flattened, long reasons cut."""
    s = format_cell(text).replace("\n", " ").replace("|", "\\|")
    return s if len(s) <= REASON_CHARS else s[: REASON_CHARS - 3] + "..."


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
    return out


def _num(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{float(value):,.{digits}f}"


def _ci(row) -> str:
    lo, hi = row.get("token_throughput_ci95_lo_tok_s"), row.get("token_throughput_ci95_hi_tok_s")
    lo_s, hi_s = _num(lo, 1), _num(hi, 1)
    if not lo_s and not hi_s:
        return ""
    return f"{lo_s or '?'} - {hi_s or 'unbounded'}"


def _reason(row) -> str:
    for key, prefix in (("reason", ""), ("comparability_reason", "not comparable: ")):
        value = row.get(key)
        if isinstance(value, str) and value and value != "no result":
            return prefix + value
    return ""


def batch_section(dataset: str, frame: pd.DataFrame) -> list[str]:
    """One dataset's batch table: per library and model the mean time, throughput and its 95 % interval,
    efficiency against its model's roofline bound, status and reason."""
    n = frame["n_requests"].dropna() if "n_requests" in frame else pd.Series(dtype=float)
    reps = frame["repeats"].dropna() if "repeats" in frame else pd.Series(dtype=float)
    # each model's bound (a table holds one group of rows per model), in the table's order
    bounds = (frame.dropna(subset=["bound_s"]).drop_duplicates("model")[["model", "bound_s"]].values.tolist()
              if "bound_s" in frame and "model" in frame else [])
    meta = []
    if len(n):
        meta.append(f"{int(n.max())} requests")
    if "output_tokens" in frame and frame["output_tokens"].notna().any():
        meta.append(f"{int(frame['requested_output_tokens'].max()):,} output tokens")
    if len(reps):
        meta.append(f"up to {int(reps.max())} timed repeats")
    if len(bounds) == 1:
        meta.append(f"roofline bound {bounds[0][1]:.3g} s")
    elif bounds:
        meta.append("roofline bound " + ", ".join(f"{m} {b:.3g} s" for m, b in bounds))
    rows = []
    for _, r in frame.iterrows():
        rows.append([r.get("library_label") if isinstance(r.get("library_label"), str) else r.get("library"),
                     r.get("model"), r.get("status"), _num(r.get("total_time_s"), 3),
                     _num(r.get("token_throughput_tok_s"), 1), _ci(r), _num(r.get("efficiency"), 3),
                     _num(r.get("repeats"), 0), _reason(r)])
    header = ["library", "model", "status", "time (s)", "tok/s", "95 % CI tok/s", "efficiency", "repeats",
              "reason"]
    return [f"### {dataset}", "", (", ".join(meta) + ".") if meta else "", ""] + _table(header, rows) + [""]


def serving_peak_rows(paths: Iterable[str | Path]) -> list[list]:
    """Per sweep (library x model x dataset), the rate with the highest token throughput among its ok rows
    (``records.ServingRow``; the first such rate on a tie)."""
    rows = []
    for path in sorted(Path(p) for p in paths):
        sweep = read_sweep(path)
        ok = [r for r in sweep if r.status == "ok" and not _nan(r.token_throughput_tok_s)]
        first = sweep[0] if sweep else None
        lib, model, dataset = (first.library, first.model, first.dataset) if first else (path.stem, "", "")
        if not ok:
            reason = next((r.reason for r in sweep if isinstance(r.reason, str) and r.reason), "no ok rate")
            rows.append([lib, model, dataset, "", "", "", "", "", str(len(sweep)), reason])
            continue
        n_ok = sum(r.status == "ok" for r in sweep)
        best = max(ok, key=lambda r: r.token_throughput_tok_s)
        rows.append([lib, model, dataset, _num(best.token_throughput_tok_s, 1), format_cell(best.rate),
                     _num(best.achieved_rate, 2), _num(best.ttft_s_p50 * 1000, 1),
                     _num(best.tpot_s_mean * 1000, 2), f"{n_ok} of {len(sweep)}", ""])
    return rows


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def serving_section(paths: Iterable[str | Path]) -> list[str]:
    rows = serving_peak_rows(paths)
    if not rows:
        return []
    header = ["library", "model", "dataset", "peak tok/s", "at rate (req/s)", "achieved (req/s)",
              "TTFT p50 (ms)", "TPOT mean (ms)", "rates ok", "reason"]
    return (["## Serving peak per library", "",
             "The rate with the highest output-token throughput of each sweep (among rates with status ok).", ""]
            + _table(header, rows) + [""])


def coefficient_section(path: str | Path) -> list[str]:
    frame = pd.read_csv(path)
    rows = []
    for _, r in frame.iterrows():
        coefs = ", ".join(f"{k}={r[k]:.3g}" for k in COEFFICIENT_NAMES
                          if k in frame and not pd.isna(r[k]))
        # `fit`: total (one regression of the stage total) or per_term (each term on its ops' measured
        # time; its `total` row is the sum of the terms). Tables written before per-term fits lack both.
        fit = r.get("fit") if isinstance(r.get("fit"), str) else "total"
        term = r.get("term") if isinstance(r.get("term"), str) else "total"
        rows.append([r.get("library"), r.get("stage"), fit, term, r.get("status"), _num(r.get("r2"), 4),
                     _num(r.get("heldout_mape"), 2), _num(r.get("fit_mape"), 2), _num(r.get("n_points"), 0),
                     coefs, r.get("reason") if isinstance(r.get("reason"), str) else ""])
    header = ["library", "stage", "fit", "term", "status", "R^2", "held-out MAPE %", "fit MAPE %", "points", "coefficients",
              "reason"]
    return (["## Time-model coefficients", "",
             "Fitted per library and stage on the per-op profiles (`coefficients.csv`; formula per row there). "
             "`total` rows regress the stage total on every term at once; `per_term` rows fit each term on the "
             "measured time of its own ops (docs/theory.md), and their `total` is the sum of the terms. A term's "
             "held-out error is leave-one-shape-out over the module points; a total's is on the held-out shapes.",
             ""]
            + _table(header, rows) + [""])


def summary_markdown(hardware: str, tables: Mapping[str, pd.DataFrame], serving: Iterable[str | Path] = (),
                     coefficients: str | Path | None = None) -> str:
    lines = [f"# Results summary: {hardware}", "",
             "Generated from this folder's tables (`<dataset>_table.csv`, `serving/*.csv`, `coefficients.csv`) "
             "by `scripts/write_summary.py` or the `results_summary` rule; do not edit by hand.", "",
             "## Batch (offline) per dataset", ""]
    for dataset, frame in tables.items():
        lines += batch_section(dataset, frame)
    lines += serving_section(serving)
    if coefficients is not None and Path(coefficients).is_file():
        lines += coefficient_section(coefficients)
    return "\n".join(lines).rstrip() + "\n"


def read_tables(paths: Iterable[str | Path]) -> dict[str, pd.DataFrame]:
    """``{dataset: table}`` from ``<dataset>_table.csv`` paths, in the given order."""
    out = {}
    for p in paths:
        p = Path(p)
        if not p.name.endswith("_table.csv"):
            raise ValueError(f"{p}: expected a <dataset>_table.csv batch table")
        out[p.name[: -len("_table.csv")]] = pd.read_csv(p)
    return out
