"""How far a campaign has come on one hardware column: every part's datasets against the records present.

For each part of a campaign (``inference_eval.campaign``) and each of its datasets, the record the
pipeline writes there (the part's target under ``results/<hw>/``) is read and put in one state:

- ``ran``: the record ran with the campaign's settings (a batch record ``ok`` with every request exact
  and the campaign's repeats; a sweep whose rates ran, with the rate search where the schedule asks for
  it; a modules record ``ok`` with the shapes and repeats that the part's ``profiling.*`` overrides name).
- ``recorded``: a record with another outcome (``failed``, ``not_installed``, ``unsupported``, ...):
  the table's row states the reason and the campaign does not plan it again (a library missing from the
  machine gives the same row each time). An outcome that a second run may change (``RETRY_STATUSES``: a
  crash, a time limit, an environment that failed to set up) is listed apart, with its device call, for a
  person to judge.
- ``stale``: a record made with other settings than the campaign's (no fairness manifest, another row
  limit, fewer repeats, a fixed-rate sweep where the schedule searches, other profiling shapes): its row is
  in the tables (the comparability gate marks one without a manifest), and the campaign still has to run it.
- ``missing``: no record; the tables have no row for the pair, and this list is where the gap is stated.

``seconds`` is what the record measured of the device's time: a batch job's whole wall time in the
harness (model load included), or the sum of a sweep's measured windows (server start and warm-up
requests left out, so it is a lower bound), or a modules run's measuring time. What is left to run is
estimated from the parts' ``estimate_s``, in proportion to their datasets still stale or missing, and
the table ends with those parts and the device call that runs each (``todo``, ``run_command``).

    python -m inference_eval.campaign_progress h200 [--hardware h100] [--results results] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from inference_eval.campaign import Campaign, CampaignError, Part, load, on_hardware
from inference_eval.records.base import RecordError, blank_cell
from inference_eval.records.batch import BatchRecord
from inference_eval.records.serving import read_sweep, sweep_made_before_manifest

STATES = ("ran", "recorded", "stale", "missing")

# Record outcomes that need not repeat on a second run, unlike ``not_installed``, ``unsupported`` or ``oom``,
# which the same machine and settings give again.
RETRY_STATUSES = ("failed", "timeout", "env_failed")


@dataclass(frozen=True)
class Entry:
    """One dataset of one part (a modules part has one entry, dataset None) on one hardware column."""

    part: str
    dataset: str | None
    target: str
    state: str                 # one of STATES
    detail: str                # what the record says: its status, why it is stale, where a search stopped
    seconds: float | None      # device seconds the record measured (None: no record, or it has none)


def _batch(c: Campaign, p: Part, dataset: str, path: Path) -> tuple[str, str, float | None]:
    rec = BatchRecord.load(path)
    seconds = rec.harness_wall_s or rec.worker_wall_s
    if not rec.has_result:
        return "recorded", f"{rec.status}: {rec.reason}".rstrip(": "), seconds
    stale = []
    if rec.fairness is None:
        stale.append("no fairness manifest")
    if rec.row_limit != c.limit(dataset):
        stale.append(f"row limit {rec.row_limit}, the campaign's {c.limit(dataset)}")
    want = p.repeats or c.repeats
    if (rec.repeats or 1) < want:
        stale.append(f"{rec.repeats or 1} timed repeat(s), the campaign's {want}")
    if rec.status != "ok":
        stale.append(f"{rec.status}: {rec.reason}")
    exact = f"{rec.n_exact}/{rec.n_requests} exact, {rec.repeats or 1} repeat(s)"
    return ("stale", "; ".join(stale), seconds) if stale else ("ran", exact, seconds)


def _serving(c: Campaign, p: Part, dataset: str, path: Path) -> tuple[str, str, float | None]:
    rows = read_sweep(path)
    ran = [r for r in rows if r.ran]
    durations = [r.duration_s for r in ran if not blank_cell(r.duration_s)]
    seconds = sum(durations) if durations else None
    if not ran:
        first = rows[0] if rows else None
        return "recorded", f"{first.status}: {first.reason}" if first else "an empty sweep", seconds
    stale = []
    if sweep_made_before_manifest(rows):
        stale.append("no fairness manifest")
    limits = {int(r.row_limit) for r in rows if not blank_cell(r.row_limit)}
    if limits and limits != {c.limit(dataset)}:
        stale.append(f"row limit {', '.join(map(str, sorted(limits)))}, the campaign's {c.limit(dataset)}")
    searches = bool((c.schedules[p.schedule].get("search") or {}).get("enabled")) if p.schedule else False
    phases = {r.search_phase for r in rows}
    if searches and not phases & {"grow", "bisect", "inf"}:
        stale.append(f"{len(rows)} fixed rates, no rate search")
    if stale:
        return "stale", "; ".join(stale), seconds
    stop = next((r.search_note for r in reversed(rows) if r.search_note), "")
    detail = f"{len(ran)}/{len(rows)} rates ran" + (", inf point" if "inf" in phases else "")
    return "ran", detail + (f"; search: {stop}" if stop else ""), seconds


# The profiling settings that change what a modules record measured (its shapes and repeats), as opposed to
# how it was run (the libraries of one call, Nsight Compute's time box).
MEASURED_PROFILING_KEYS = ("seq", "batch", "extra", "heldout", "warmup", "repeats")


def _profiling_overrides(p: Part) -> dict[str, object]:
    """The part's ``profiling.<key>=<value>`` overrides of measured settings, values parsed as Hydra does
    for these (YAML flow values: ``[[2,256],[16,128]]``, ``3``)."""
    import yaml

    out = {}
    for override in p.overrides:
        key, _, value = override.partition("=")
        name = key.removeprefix("profiling.")
        if key.startswith("profiling.") and name in MEASURED_PROFILING_KEYS:
            out[name] = yaml.safe_load(value)
    return out


def _modules(p: Part, path: Path) -> tuple[str, str, float | None]:
    data = json.loads(path.read_text(encoding="utf-8"))
    status, reason = data.get("status"), data.get("reason") or ""
    seconds = data.get("measure_s")
    if status != "ok":
        return "recorded", f"{status}: {reason}".rstrip(": "), seconds
    settings = data.get("settings") or {}
    stale = [f"profiling.{k} = {json.dumps(settings.get(k))}, the campaign's {json.dumps(v)}"
             for k, v in _profiling_overrides(p).items() if settings.get(k) != v]
    if stale:
        return "stale", "; ".join(stale), seconds
    return "ran", f"{len(data.get('points') or [])} points", seconds


def entries(c: Campaign, results: str | Path = "results") -> list[Entry]:
    """Every part's datasets (in the campaign's order) with the state of its record under ``results``.
    A record that cannot be read is ``stale`` with the reading error as its detail."""
    out = []
    for p in c.parts.values():
        for dataset in c.calls(p.name):
            target = c.targets(p.name, dataset, str(results))[0]
            path = Path(target)
            if not path.is_file():
                out.append(Entry(p.name, dataset, target, "missing", "", None))
                continue
            try:
                if p.scenario == "batch":
                    state, detail, seconds = _batch(c, p, dataset, path)
                elif p.scenario == "serving":
                    state, detail, seconds = _serving(c, p, dataset, path)
                else:
                    state, detail, seconds = _modules(p, path)
            except (OSError, ValueError, RecordError) as exc:    # json.JSONDecodeError is a ValueError
                state, detail, seconds = "stale", f"unreadable record: {exc}", None
            out.append(Entry(p.name, dataset, target, state, detail, seconds))
    return out


def _left(c: Campaign, rows: Sequence[Entry]) -> list[tuple[str, tuple[str, ...], float]]:
    """Per part with datasets still stale or missing: (part, those datasets (empty for a modules part), their
    share of the part's ``estimate_s``, spread evenly over its datasets)."""
    out = []
    for p in c.parts.values():
        mine = [e for e in rows if e.part == p.name]
        left = [e for e in mine if e.state in ("stale", "missing")]
        if left:
            datasets = tuple(e.dataset for e in left if e.dataset is not None)
            out.append((p.name, datasets, p.estimate_s * len(left) / max(len(mine), 1)))
    return out


def remaining_s(c: Campaign, rows: Sequence[Entry]) -> int:
    """The estimated device seconds of what is stale or missing."""
    return round(sum(share for _, _, share in _left(c, rows)))


def todo(c: Campaign, rows: Sequence[Entry]) -> list[tuple[str, tuple[str, ...], int]]:
    """The parts with datasets still stale or missing, in the campaign's order: (part, those datasets
    (empty for a modules part), their share of the part's ``estimate_s``, in whole seconds)."""
    return [(part, datasets, round(share)) for part, datasets, share in _left(c, rows)]


def may_be_transient(e: Entry) -> bool:
    """Whether ``e`` is a recorded outcome that a second run may change (its detail starts with the record's
    status, as the readers above write it)."""
    return e.state == "recorded" and e.detail.partition(":")[0] in RETRY_STATUSES


def retries(c: Campaign, rows: Sequence[Entry]) -> list[tuple[Entry, str]]:
    """The recorded outcomes a second run may change, in the campaign's order, each with its device call."""
    return [(e, run_command(c, e.part, [e.dataset] if e.dataset else [])) for e in rows if may_be_transient(e)]


def run_command(c: Campaign, part: str, datasets: Sequence[str]) -> str:
    """The device call that runs what is left of ``part`` (scripts/device/campaign.sh; ``DATASETS`` when only
    some of its datasets are left, since a fresh machine has none of the committed records)."""
    p = c.part(part)
    only = f'DATASETS="{" ".join(datasets)}" ' if datasets and tuple(datasets) != p.datasets else ""
    return f"{only}bash scripts/device/campaign.sh run {part}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(c: Campaign, rows: Sequence[Entry], markdown: bool = False) -> str:
    """The entries as a table (Markdown with ``markdown``), with the counts per state and the estimate of
    what is left first."""
    counts = {s: sum(e.state == s for e in rows) for s in STATES}
    measured = sum(e.seconds or 0.0 for e in rows)
    left = remaining_s(c, rows)
    parts_done = sum(all(e.state in ("ran", "recorded") for e in rows if e.part == p) for p in c.parts)
    summary = (f"Campaign {c.name} on {c.hardware}: {len(rows)} part datasets; "
               + ", ".join(f"{counts[s]} {s}" for s in STATES)
               + f". {parts_done} of {len(c.parts)} parts complete. The records measured {measured / 60:.0f} "
                 f"device minutes; left to run: about {left} s ({left / 60:.0f} minutes, from the parts' "
                 f"estimate_s).")
    header = ("part", "dataset", "state", "seconds", "detail")
    table = [(e.part, e.dataset or "-", e.state, "" if e.seconds is None else f"{e.seconds:.0f}", e.detail)
             for e in rows]
    if markdown:
        lines = [f"# What has run of campaign {c.name} on {c.hardware}", "",
                 f"Generated by `python -m inference_eval.campaign_progress {c.name} --hardware {c.hardware} "
                 f"--markdown` from the records under results/{c.hardware}/ and {c.path.name}'s parts "
                 "(states: `inference_eval.campaign_progress`). Do not edit.", "",
                 summary, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in table]
        lines += ["", "## Left to run", "", "Each part with datasets still stale or missing, its share of the part's "
                  "`estimate_s` and the device call (docs/campaign.md: what to carry first):", ""]
        lines += [f"- `{part}` ({', '.join(ds) or 'one call'}; about {sec} s): `{run_command(c, part, ds)}`"
                  for part, ds, sec in todo(c, rows)] or ["- nothing: every part ran or has its row with a reason"]
        lines += ["", "## Recorded failures a second run may change", "",
                  f"Recorded with a status in {', '.join(RETRY_STATUSES)}: not planned again above; read the "
                  "detail and re-run by hand where the cause has gone:", ""]
        lines += [f"- `{e.part}` ({e.dataset or 'one call'}): {_cell(e.detail)}: `{command}`"
                  for e, command in retries(c, rows)] or ["- none"]
        return "\n".join(lines) + "\n"
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header) - 1)]
    lines = [summary, ""]
    for r in [header, *table]:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r[:-1], widths)) + "  " + r[-1])
    lines += ["", "Left to run:"] + [f"  {sec:>5} s  {run_command(c, part, ds)}" for part, ds, sec in todo(c, rows)]
    retry = retries(c, rows)
    if retry:
        lines += ["", "Recorded failures a second run may change (re-run by hand):"]
        lines += [f"  {command}  # {e.detail}" for e, command in retry]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m inference_eval.campaign_progress",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("campaign", help="a conf/campaign member (h200) or a campaign file")
    ap.add_argument("--hardware", help="the campaign's parts on this conf/hardware member's column instead")
    ap.add_argument("--results", default="results", help="the results folder holding <hw>/")
    ap.add_argument("--markdown", action="store_true", help="a Markdown page (results/<hw>/CAMPAIGN.md)")
    args = ap.parse_args(argv)
    try:
        c = on_hardware(load(args.campaign), args.hardware)
    except CampaignError as exc:
        print(f"campaign_progress: {exc}", file=sys.stderr)
        return 2
    print(render(c, entries(c, args.results), args.markdown), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
