"""HTML for the Snakemake report (``snakemake --report report.html``): a result table as a page, and the
run summary that the report's front page (``report/workflow.rst``) embeds.

Snakemake's report shows an HTML or image result inline but offers a CSV only as a download, so each
registered table gets an HTML rendering beside its CSV (``rules/report_pages.smk``). The run summary is
built from the tables and the run records they name: what ran, on which hardware, with which library
versions, and which rows failed and why.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from inference_eval.records import BatchRecord

STYLE = """
body { font-family: system-ui, sans-serif; font-size: 13px; margin: 12px; color: #111; }
h1 { font-size: 16px; margin: 0 0 6px 0; }
p.meta { color: #555; margin: 0 0 10px 0; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.text { text-align: left; white-space: normal; max-width: 40em; }
tr.notok td { background: #fff3f0; }
"""


def format_cell(value) -> str:
    """A table cell as text: floats to 4 significant digits, empty for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def table_page(csv_path: str | Path, title: str) -> str:
    """A standalone HTML page showing the CSV at ``csv_path`` as a table, with the CSV itself attached as
    a download (a data URI, so the page stays self-contained inside the report). Rows whose ``status``
    is not ``ok`` are tinted."""
    csv_path = Path(csv_path)
    raw = csv_path.read_bytes()
    frame = pd.read_csv(csv_path, keep_default_na=True) if raw.strip() else pd.DataFrame()
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        status = row.get("status") if "status" in frame.columns else "ok"
        cls = ' class="notok"' if isinstance(status, str) and status != "ok" else ""
        cells = []
        for value in row:
            text = format_cell(value)
            kind = ' class="text"' if isinstance(value, str) and len(text) > 24 else ""
            cells.append(f"<td{kind}>{html.escape(text)}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    data = base64.b64encode(raw).decode("ascii")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f"<p class=\"meta\">{len(frame)} rows, {len(frame.columns)} columns, from <code>{html.escape(str(csv_path))}</code> "
        f"(<a download=\"{html.escape(csv_path.name)}\" href=\"data:text/csv;base64,{data}\">download CSV</a>)</p>\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>\n</body></html>\n"
    )


def _records(tables: Iterable[pd.DataFrame]) -> list[BatchRecord]:
    """The run records named in the tables' ``record`` column that exist (a missing library's record
    exists too; a SLURM failure record stands in for a killed job). Unreadable files are left out; a
    record of an unknown schema version raises (``records.RecordVersionError``)."""
    out, seen = [], set()
    for frame in tables:
        for path in frame.get("record", pd.Series(dtype=str)).dropna():
            if path in seen or not Path(path).is_file():
                continue
            seen.add(path)
            try:
                out.append(BatchRecord.load(path))
            except (OSError, json.JSONDecodeError):
                continue
    return out


def hardware_line(records: list[BatchRecord]) -> str:
    """The hardware the records ran on, from their provenance: GPU name, driver, CPU, host."""
    for rec in records:
        hw = rec.provenance.get("hardware") or {}
        if not hw:
            continue
        parts = []
        gpus = hw.get("gpus") or []
        if gpus:
            g = gpus[0]
            parts.append(f"{len(gpus)} x {g.get('name', '?')} (driver {g.get('driver_version', '?')}, "
                         f"{g.get('memory.total', '?')}, SM clock {g.get('clocks.sm', '?')})")
        parts.append(f"CPU {hw.get('cpu', '?')} ({hw.get('cpu_count', '?')} cores)")
        parts.append(f"Python {hw.get('python', '?')} on {hw.get('platform', '?')}")
        return "; ".join(parts)
    return "unknown (no run record carries provenance)"


def versions(records: list[BatchRecord]) -> dict[str, str]:
    """Package versions over all records: the harness's packages (provenance) and each library's own."""
    out: dict[str, set] = {}
    for rec in records:
        merged = dict(rec.provenance.get("versions") or {})
        merged.update(rec.library_versions or {})
        for name, version in merged.items():
            if version:
                out.setdefault(name, set()).add(str(version))
    return {name: ", ".join(sorted(v)) for name, v in sorted(out.items())}


def failed_rows(tables: Mapping[str, pd.DataFrame]) -> list[tuple[str, str, str, str, str]]:
    """(dataset, library, model, status, reason) of every batch row whose status is not ``ok``."""
    out = []
    for dataset, frame in tables.items():
        for _, row in frame.iterrows():
            status = str(row.get("status", ""))
            if status != "ok":
                reason = row.get("reason")
                out.append((dataset, str(row.get("library", "")), str(row.get("model", "")), status,
                            "" if pd.isna(reason) else str(reason)))
    return out


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="docutils"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def run_summary_fragment(hardware: str, tables: Mapping[str, pd.DataFrame], serving: Iterable[str | Path] = (),
                         coefficients: str | Path | None = None) -> str:
    """The HTML fragment the report's front page embeds: what ran (datasets, libraries, models, rows),
    on which hardware, with which versions, and the batch rows that did not succeed with their reasons."""
    records = _records(tables.values())
    libraries = sorted({str(x) for f in tables.values() for x in f.get("library", [])})
    models = sorted({str(x) for f in tables.values() for x in f.get("model", [])})
    ran = []
    for dataset, frame in tables.items():
        rows = frame.get("n_requests", pd.Series(dtype=float)).dropna()
        reps = frame.get("repeats", pd.Series(dtype=float)).dropna()
        source = frame.get("dataset_source", pd.Series(dtype=str)).dropna()
        ran.append([dataset, str(source.iloc[0]) if len(source) else "",
                    str(int(rows.max())) if len(rows) else "", str(int(reps.max())) if len(reps) else "",
                    str(int((frame.get("status") == "ok").sum())) + f" of {len(frame)}"])
    serving = [Path(p) for p in serving]
    parts = [
        f"<p><b>Hardware {html.escape(hardware)}</b>: {html.escape(hardware_line(records))}.</p>",
        f"<p><b>Batch</b>: libraries {html.escape(', '.join(libraries) or 'none')}; "
        f"models {html.escape(', '.join(models) or 'none')}.</p>",
        _html_table(["dataset", "source", "requests", "repeats", "rows ok"], ran),
    ]
    if serving:
        parts.append(f"<p><b>Serving</b>: {len(serving)} sweeps ("
                     + html.escape(", ".join(p.stem for p in serving)) + ").</p>")
    if coefficients is not None:
        coef = pd.read_csv(coefficients)
        parts.append("<p><b>Per-module analysis</b>: time model fitted for "
                     + html.escape(", ".join(sorted({f"{r.library} {r.stage}" for r in coef.itertuples()})))
                     + ".</p>")
    vers = versions(records)
    parts.append("<p><b>Versions</b> (from the run records' provenance): "
                 + html.escape("; ".join(f"{k} {v}" for k, v in vers.items()) or "none recorded") + ".</p>")
    commits = sorted({str((r.provenance.get("git") or {}).get("commit", ""))[:12] for r in records} - {""})
    if commits:
        parts.append(f"<p><b>Source</b>: git commit {html.escape(', '.join(commits))}.</p>")
    failed = failed_rows(tables)
    if failed:
        parts.append(f"<p><b>Rows that did not run</b> ({len(failed)}):</p>")
        parts.append(_html_table(["dataset", "library", "model", "status", "reason"], [list(r) for r in failed]))
    else:
        parts.append("<p><b>Rows that did not run</b>: none; every batch row has status ok.</p>")
    return "\n".join(parts) + "\n"
