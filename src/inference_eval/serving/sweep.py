"""A serving sweep: one server for a (library, model, dataset), the load generator at each request rate,
one CSV row per rate plus, under the run folder, per-rate request CSVs, the server log and a JSON
record with provenance. A library that is missing or fails still writes its CSV (one row with status
and reason) and its record: never a silent gap.

Row status: ``ok`` (every request returned exactly its tokens), ``invalid`` (some failed or came back
with the wrong length: the row's numbers are not comparable), ``failed`` (none succeeded, or the server
failed), ``not_installed``, ``unsupported`` (the library's registry entry has no server), ``env_failed`` (the
library's environment, ``library.env``, gave no interpreter).

This module runs the server and the rates in order (the configured ones, then the rate search's);
``serving.sweep_settings`` holds the settings and the requests, ``serving.sweep_rate`` one rate's
measurement and row.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path
from typing import Sequence

import pandas as pd

from inference_eval import environments, fairness
from inference_eval.datasets.manifest import read_manifest_or_empty
from inference_eval.io import write_csv, write_json
from inference_eval.models.files import ModelFiles
from inference_eval.records.serving import ServingRow, rows_frame
from inference_eval.report.provenance import provenance, utc_now
from inference_eval.requests import Request, load_requests, run_limits
from inference_eval.serving.client import LoadSettings, run_load
from inference_eval.serving.launch import ServerError, ServerProcess, start_server
from inference_eval.serving.metrics import goodput_knee, slo_for
from inference_eval.serving.rate_search import Point, SearchSettings, SearchState, next_point, peak
from inference_eval.serving.schedule import make_schedule
from inference_eval.serving.servers import ServerSpec, server_spec
from inference_eval.serving.sweep_rate import measure_rate
from inference_eval.serving.sweep_settings import (
    ServingConfigError,
    ServingSettings,
    build_requests,
    dataset_source,
    prompt_texts,
)
from inference_eval.termination import raise_if_terminated, terminate_on_sigterm

# What the sweep's callers import from here: the settings and requests are in serving.sweep_settings.
__all__ = ["COLUMNS", "ServingConfigError", "ServingSettings", "build_requests", "prompt_texts", "run_sweep",
           "search_points"]

# The CSV's columns: the fields of records.ServingRow, in order, and its schema version.
COLUMNS = ServingRow.columns()
WARMUP_TOKENS = 4


def run_sweep(cfg: dict, rows_path: str | Path, files: ModelFiles, out_csv: str | Path, run_dir: str | Path,
              spec: ServerSpec | None = None, dataset: str | None = None) -> pd.DataFrame:
    """Run the sweep of ``cfg`` (a job config from ``PIPELINE.job(..., scenario='serving')``) and write
    ``out_csv`` and ``run_dir/{record.json, server.log, requests_rate<r>.csv}``. Returns the rows."""
    started = utc_now()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    library = cfg["library"]["name"]
    spec = spec or server_spec(cfg["library"])  # the library's registry entry as the job config carries it
    settings = ServingSettings.from_cfg(cfg)
    source, synthetic = dataset_source(cfg, rows_path)
    ident = {"library": library, "model": cfg["model"]["name"],
             "dataset": dataset or (cfg.get("dataset") or {}).get("task") or (cfg.get("dataset") or {}).get("name", ""),
             "dataset_source": source, "hardware": cfg["hardware"]["name"]}
    record = {"kind": "serving", **ident, "dataset_member": (cfg.get("dataset") or {}).get("name"),
              "synthetic": synthetic, "settings": settings.public(), "server_command": None,
              "server_log": None, "rates": [], "status": None, "reason": ""}
    rows: list[dict] = []
    task = str(ident["dataset"]).removesuffix("-synthetic")
    try:
        slo = slo_for(cfg.get("scenario") or {}, task)
        goodput_share = float((cfg.get("scenario") or {}).get("goodput_share") or 0.99)
        search = SearchSettings.from_cfg(cfg)
    except (TypeError, ValueError) as exc:
        raise ServingConfigError(str(exc)) from None
    record["slo"] = {"limits": slo, "task": task, "goodput_share": goodput_share}

    def finish(status: str, reason: str) -> pd.DataFrame:
        if not rows:
            rows.append({**ident, "rate": float("nan"), "status": status, "reason": reason})
        record["status"], record["reason"] = status, reason
        typed = [ServingRow.from_dict(r, source=f"{out_csv} rate {r.get('rate')}") for r in rows]
        record["rates"] = [r.to_dict() for r in typed]
        # the highest rate whose goodput stays within goodput_share of its throughput
        knee = goodput_knee(rows, goodput_share)
        record["slo"]["goodput_knee_rate"] = None if math.isnan(knee) else knee
        record["provenance"] = provenance(cfg, started=started, interpreter=spec.python)
        frame = rows_frame(typed)
        write_json(run_dir / "record.json", record)
        write_csv(out_csv, frame)
        return frame

    try:  # the library's interpreter (library.env): its server runs with it
        spec.python = environments.library_python(cfg)
    except environments.EnvironmentFailed as exc:
        return finish("env_failed", str(exc))
    reason = spec.unavailable_reason()
    if reason:
        return finish(spec.unavailable_status, reason)  # not_installed, or unsupported: no server spec
    reason = spec.unsupported_reason(cfg)  # e.g. a tensor-parallel degree the server cannot take
    if reason:
        return finish("unsupported", reason)
    try:
        spec.check_files(files)
        rows_used = load_requests(rows_path, limit=run_limits(cfg)[0])
        # built once to the longest schedule; rate r sends the first settings.requests_at(r) of them
        requests = build_requests(rows_used, settings.most_requests(), settings.max_tokens_cap)
        texts = prompt_texts(requests, files.hf_dir) if spec.prompt_as_text else {}
    except (FileNotFoundError, ValueError, OSError) as exc:
        return finish("failed", f"cannot prepare the run: {exc}")
    # The distinct dataset rows this sweep sends (cycled to each rate's count): what the gate compares.
    distinct = requests[:min(len(rows_used), len(requests))]
    fair_base = {"settings": fairness.requested_settings(cfg, "serving"),
                 "requests_sha256": fairness.requests_sha256(distinct),
                 "row_limit": (cfg.get("dataset") or {}).get("limit"),
                 "max_tokens_cap": settings.max_tokens_cap,
                 "scale_note": settings.reduced_scale_note(cfg)}  # the default; with_manifest: per rate

    def with_manifest(row: dict) -> dict:
        eff = fair_base["settings"]
        row.update(requests_sha256=fair_base["requests_sha256"], row_limit=fair_base["row_limit"],
                   max_tokens_cap=fair_base["max_tokens_cap"], exact=row.get("status") == "ok",
                   scale_note=(settings.reduced_scale_note(cfg, row["n_requests"]) if row.get("n_requests")
                               else fair_base["scale_note"]),
                   prefix_caching=eff.get("prefix_caching"), sampling=eff.get("sampling"),
                   prompt_route=eff.get("prompt_route"), engine_settings=json.dumps(eff, sort_keys=True, default=str))
        return row

    model_name = spec.served_name(cfg, files)

    def body_for(r: Request) -> dict:
        return spec.body(r, model_name, texts.get(r.id))

    log_path = run_dir / "server.log"
    record["server_log"] = str(log_path)
    server: ServerProcess | None = None
    with terminate_on_sigterm():
        try:
            server = start_server(lambda port: _in_env(spec.command(cfg, files, settings.host, port, settings.api_key),
                                                       spec.python),
                                  log_path, host=settings.host, port=settings.port, health_path=spec.health_path,
                                  health_timeout_s=settings.health_timeout_s, api_key=settings.api_key,
                                  tag=f"ie-sweep-{uuid.uuid4().hex[:12]}")
            raise_if_terminated()
            record["server_command"] = server.argv_logged
            resolved = spec.resolved_settings(_read_log(log_path))
            if resolved:
                fair_base["settings"] = {**fair_base["settings"], **resolved}
            record["fairness"] = fairness.manifest(
                cfg, "serving", distinct, exact=None, resolved=resolved,
                resolved_source="the server's start-up log" if resolved else "",
                dataset_manifest=read_manifest_or_empty(rows_path),
                extra={"num_requests": settings.num_requests, "rates": settings.rates,
                       "min_rate_duration_s": settings.min_rate_duration_s,
                       "max_requests": settings.most_requests() if settings.min_rate_duration_s else None,
                       "cycled": len(requests) > len(distinct)})
            load = LoadSettings(url=server.base_url + spec.completions_path,
                                request_timeout_s=settings.request_timeout_s, max_concurrency=settings.max_concurrency,
                                api_key=settings.api_key, length_from_finish_reason=spec.length_from_finish_reason)
            # The warm-up sends the *last* request's prompt: the first measured request then follows a
            # different prompt, as at every later rate, and a server that reuses the previous request's
            # prefix (llama-cpp-python's) gets no head start on it.
            last = requests[settings.num_requests - 1]  # the last request of the shortest schedule
            _warm_up(last, lambda probe: spec.body(probe, model_name, texts.get(last.id)), load,
                     settings.warmup_timeout_s, server)

            def run_rate(rate: float, phase: str) -> dict:
                row = with_manifest(measure_rate(rate, requests[:settings.requests_at(rate)], body_for, load, settings,
                                              server, run_dir, ident, (spec, settings.api_key), slo))
                row["search_phase"] = phase
                row["within_goodput_share"] = bool(row["goodput_tok_s"] >= goodput_share * row["token_throughput_tok_s"])
                rows.append(row)
                raise_if_terminated()
                return row

            for rate in settings.rates:
                run_rate(rate, "fixed")
            if search.enabled:  # beyond the configured rates, to the peak and the inf point
                state, searched_from = SearchState(), time.monotonic()
                while (step := next_point(search_points(rows), search, state,
                                          time.monotonic() - searched_from)) is not None:
                    run_rate(*step)
                rows[-1]["search_note"] = state.stopped
                best = peak(search_points(rows))
                record["search"] = {**search.public(), "stopped": state.stopped, "bracket": state.bracket,
                                    "peak_rate": best.rate if best else None,
                                    "peak_token_throughput_tok_s": best.tok_s if best else None}
        except ServerError as exc:
            msg = str(exc).splitlines()[0]
            done = {r["rate"] for r in rows}
            rows.extend({**ident, "rate": rate, "status": "failed", "reason": f"server: {msg}"}
                        for rate in settings.rates if rate not in done)
            return finish("failed", f"server: {msg}")
        finally:
            if server is not None:
                server.stop()
    statuses = {r["status"] for r in rows}
    overall = "ok" if statuses == {"ok"} else ("failed" if statuses == {"failed"} else "invalid")
    if record.get("fairness"):
        record["fairness"]["exact"] = overall == "ok"
        record["fairness"]["prefix_cache_hit_rate_by_rate"] = {
            f"{r['rate']:g}": r.get("prefix_cache_hit_rate") for r in rows}
    reasons = "; ".join(f"rate {r['rate']:g}: {r['reason']}" for r in rows if r["reason"])
    return finish(overall, reasons)


def _in_env(cmd, python: str):
    """A server launched by another environment's interpreter gets that environment's PYTHONPATH (only
    the package's source), never the harness's (environments.child_env)."""
    if not environments.is_current(python):
        cmd.env = {"PYTHONPATH": environments.child_env(python, {})["PYTHONPATH"], **cmd.env}
    return cmd


def _warm_up(like: Request, body_for, load: LoadSettings, timeout_s: float, server: ServerProcess) -> None:
    """One short request before measuring: loads lazily-loaded models, fails fast on a broken server
    (one that errs inside a stream it never closes, as MII's did, is given ``timeout_s``, not the
    measured requests' timeout). The failure names the end of the server's log, where the cause is."""
    probe = Request(id="warmup", prompt_token_ids=like.prompt_token_ids,
                    max_tokens=min(WARMUP_TOKENS, like.max_tokens), prompt=like.prompt)
    warm_load = LoadSettings(url=load.url, request_timeout_s=min(load.request_timeout_s, timeout_s),
                             api_key=load.api_key, progress=False,
                             length_from_finish_reason=load.length_from_finish_reason)
    (c,) = run_load([probe], make_schedule(1, math.inf), body_for, warm_load)
    if not c.ok:
        tail = " | ".join(line.strip() for line in server.log_tail(600).splitlines() if line.strip())
        raise ServerError(f"warm-up request failed: {c.error or 'wrong length'}; server log ends: {tail[-400:]}")


def search_points(rows: Sequence[dict]) -> list[Point]:
    """The sweep's rows as the rate search sees them: a row counts as kept when it is ok within the SLO and
    the client did not set its pace (past a client-limited rate, a higher one measures the client)."""
    return [Point(rate=float(r["rate"]), phase=str(r.get("search_phase") or "fixed"),
                  tok_s=float(r.get("token_throughput_tok_s") or 0.0),
                  ok=r.get("status") == "ok" and bool(r.get("within_goodput_share", True))
                  and not r.get("client_limited", False)) for r in rows]


def _read_log(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
