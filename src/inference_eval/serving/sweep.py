"""A serving sweep: one server for a (library, model, dataset), the load generator at each request rate,
one CSV row per rate plus, under the run folder, per-rate request CSVs, the server log and a JSON
record with provenance. A library that is missing or fails still writes its CSV (one row with status
and reason) and its record: never a silent gap.

Row status: ``ok`` (every request returned exactly its tokens), ``invalid`` (some failed or came back
with the wrong length: the row's numbers are not comparable), ``failed`` (none succeeded, or the server
failed), ``not_installed``, ``unsupported`` (the library's registry entry has no server), ``env_failed`` (the
library's environment, ``library.env``, gave no interpreter).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from inference_eval import environments, fairness
from inference_eval.datasets.manifest import read_manifest_or_empty
from inference_eval.io import write_csv, write_json
from inference_eval.models.files import ModelFiles
from inference_eval.records.base import VERSION_KEY
from inference_eval.records.serving import ServingRow, rows_frame
from inference_eval.report.provenance import provenance, utc_now
from inference_eval.requests import Request, completion_to_row, load_requests, run_limits
from inference_eval.serving.client import LoadSettings, ServedCompletion, run_load
from inference_eval.serving.launch import ServerError, ServerProcess, start_server
from inference_eval.serving.metrics import (CI_COLUMNS, CLIENT_COLUMNS, GOODPUT_COLUMNS, client_certificate,
                                            goodput_knee, goodput_metrics, rate_metrics, slo_for)
from inference_eval.serving.rate_search import Point, SearchSettings, SearchState, next_point, peak
from inference_eval.serving.schedule import make_schedule
from inference_eval.serving.servers import ServerSpec, server_spec
from inference_eval.telemetry import ENERGY_COLUMNS, GpuTelemetry, TelemetryWindow, energy_summary
from inference_eval.termination import raise_if_terminated, terminate_on_sigterm

IDENTITY = ("library", "model", "dataset", "dataset_source", "hardware", "rate", "status", "reason")
METRIC_COLUMNS = (
    "requested_rate", "scheduled_rate", "achieved_rate", "achieved_over_requested", "n_requests", "n_measured", "n_ok", "n_failed",
    "n_failed_total", "failures", "first_error", "duration_s", "output_tokens", "sequence_throughput_req_s",
    "token_throughput_tok_s", "mean_latency_per_output_token_s",
    *(f"{m}_{s}" for m in ("ttft_s", "tpot_s", "itl_s", "e2e_s") for s in ("mean", "p50", "p90", "p99")),
    "send_lag_mean_s", "send_lag_p50_s", "send_lag_p99_s", "send_lag_max_s", *CI_COLUMNS, *GOODPUT_COLUMNS,
    "within_goodput_share", "search_phase", "search_note", *CLIENT_COLUMNS, *ENERGY_COLUMNS)
# The fairness manifest of each row (inference_eval.fairness): what the gate compares across libraries,
# the measured prefix-cache reuse of this rate, and the engine settings as one JSON column.
FAIRNESS_COLUMNS = ("requests_sha256", "row_limit", "max_tokens_cap", "exact", "prefix_caching",
                    "prefix_cache_hit_rate", "prefix_cache_hit_tokens", "prefix_cache_query_tokens",
                    "prefix_cache_source", "sampling", "prompt_route", "engine_settings")
# The CSV's columns: the fields of records.ServingRow, in this order, then its schema version.
COLUMNS = IDENTITY + METRIC_COLUMNS + FAIRNESS_COLUMNS + (VERSION_KEY,)
WARMUP_TOKENS = 4


class ServingConfigError(ValueError):
    pass


@dataclass
class ServingSettings:
    rates: list[float]
    num_requests: int
    arrival: str
    burstiness: float
    max_concurrency: int | None
    drop_first: int
    drop_last: int
    request_timeout_s: float
    warmup_timeout_s: float
    health_timeout_s: float
    host: str
    port: int | None
    api_key: str | None
    seed: int
    max_tokens_cap: int | None
    gpu: bool = False  # the hardware is a GPU: each rate records NVML energy and telemetry

    @classmethod
    def from_cfg(cls, cfg: dict) -> "ServingSettings":
        """``cfg['scenario']`` (conf/scenario/serving.yaml); nulls fall back to ``cfg['hardware']['scale']``."""
        sc, scale = cfg.get("scenario") or {}, (cfg.get("hardware") or {}).get("scale") or {}

        def pick(key, fallback_key, default=None):
            v = sc.get(key)
            return scale.get(fallback_key, default) if v is None else v

        rates = pick("rates", "serving_rates")
        if not rates:
            raise ServingConfigError("no request rates: set scenario.rates or hardware.scale.serving_rates")
        try:
            rates = [float(r) for r in (rates if isinstance(rates, (list, tuple)) else [rates])]
        except (TypeError, ValueError):
            raise ServingConfigError(f"scenario.rates must be numbers, got {rates!r}") from None
        if any(not r > 0 for r in rates):
            raise ServingConfigError(f"scenario.rates must be > 0, got {rates}")
        warm = int(scale.get("drop_warmup") or 0)
        num = pick("num_requests", "serving_requests")
        if num is None or int(num) < 1:
            raise ServingConfigError(f"scenario.num_requests must be >= 1, got {num!r}")
        drop_first = int(sc["drop_first"]) if sc.get("drop_first") is not None else warm
        drop_last = int(sc["drop_last"]) if sc.get("drop_last") is not None else warm
        if drop_first + drop_last >= int(num):
            raise ServingConfigError(f"drop_first ({drop_first}) + drop_last ({drop_last}) must be below "
                                     f"num_requests ({num})")
        host = str(sc.get("host") or "127.0.0.1")
        return cls(rates=rates, num_requests=int(num), arrival=str(sc.get("arrival") or "poisson"),
                   burstiness=float(sc.get("burstiness") or 1.0),
                   max_concurrency=int(sc["max_concurrency"]) if sc.get("max_concurrency") else None,
                   drop_first=drop_first, drop_last=drop_last,
                   request_timeout_s=float(sc.get("request_timeout_s") or 600),
                   warmup_timeout_s=float(sc.get("warmup_timeout_s") or 300),
                   health_timeout_s=float(sc.get("health_timeout_s") or 300), host=host,
                   port=int(sc["port"]) if sc.get("port") else None, api_key=sc.get("api_key") or None,
                   seed=int(cfg.get("seed") or 0),
                   max_tokens_cap=run_limits(cfg)[1],
                   gpu=(cfg.get("hardware") or {}).get("kind") == "gpu")

    def public(self) -> dict:
        d = dict(self.__dict__)
        d["api_key"] = "<redacted>" if self.api_key else None
        return d


def build_requests(rows: Sequence[Request], n: int, max_tokens_cap: int | None = None) -> list[Request]:
    """``n`` requests in dataset order, cycling the rows when the dataset is shorter than ``n``
    (ids get a ``#k`` suffix on later passes); ``max_tokens`` capped by ``dataset.max_tokens_cap``, as in
    batch runs."""
    if not rows:
        raise ValueError("no dataset rows to build requests from")
    out = []
    for i in range(n):
        r = rows[i % len(rows)]
        mt = min(r.max_tokens, max_tokens_cap) if max_tokens_cap else r.max_tokens
        rid = r.id if i < len(rows) else f"{r.id}#{i // len(rows)}"
        out.append(Request(id=rid, prompt_token_ids=r.prompt_token_ids, max_tokens=mt, prompt=r.prompt))
    return out


def prompt_texts(requests: Sequence[Request], hf_dir: str | None) -> dict[str, str]:
    """Text prompts for servers that take only text: the row's own text, else its ids decoded with the
    model's tokenizer. (The server tokenizes this again; its count is recorded as server_prompt_tokens.)"""
    texts = {r.id: r.text for r in requests if r.text}
    missing = [r for r in requests if not r.text]
    if missing:
        if not hf_dir:
            raise ValueError("requests have no prompt text and no tokenizer folder was given to decode their ids")
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(hf_dir)
        for r in missing:
            texts[r.id] = tok.decode(list(r.prompt_token_ids), skip_special_tokens=True)
    return texts


def dataset_source(cfg: dict, rows_path: str | Path | None) -> tuple[str, bool | None]:
    ds = cfg.get("dataset") or {}
    source, synthetic = ds.get("source") or ds.get("name") or "", ds.get("synthetic")
    m = read_manifest_or_empty(rows_path)
    source = m.get("source") or source
    synthetic = m.get("synthetic", synthetic)
    if isinstance(source, dict):
        source = source.get("name") or json.dumps(source, sort_keys=True)
    return str(source), synthetic


def _request_rows(completions: Sequence[ServedCompletion], rate: float) -> pd.DataFrame:
    rows = []
    for c in completions:
        row = completion_to_row(c)
        row["rate"] = rate
        row["send_lag_s"] = c.sent_s - c.scheduled_s if c.sent_s else float("nan")
        row["token_times_s"] = " ".join(f"{t:.6f}" for t in c.token_times_s)
        rows.append(row)
    return pd.DataFrame(rows)


def _rate_status(completions: Sequence[ServedCompletion]) -> tuple[str, str]:
    bad = [c for c in completions if not c.ok]
    if not bad:
        return "ok", ""
    status = "failed" if len(bad) == len(completions) else "invalid"
    first = next((c.error for c in bad if c.error), "wrong length")
    return status, f"{len(bad)}/{len(completions)} requests failed or had the wrong length; first: {first}"


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
        requests = build_requests(rows_used, settings.num_requests, settings.max_tokens_cap)
        texts = prompt_texts(requests, files.hf_dir) if spec.prompt_as_text else {}
    except (FileNotFoundError, ValueError, OSError) as exc:
        return finish("failed", f"cannot prepare the run: {exc}")
    # The distinct dataset rows this sweep sends (cycled to num_requests): what the gate compares.
    distinct = requests[:min(len(rows_used), len(requests))]
    fair_base = {"settings": fairness.requested_settings(cfg, "serving"),
                 "requests_sha256": fairness.requests_sha256(distinct),
                 "row_limit": (cfg.get("dataset") or {}).get("limit"),
                 "max_tokens_cap": settings.max_tokens_cap}

    def with_manifest(row: dict) -> dict:
        eff = fair_base["settings"]
        row.update(requests_sha256=fair_base["requests_sha256"], row_limit=fair_base["row_limit"],
                   max_tokens_cap=fair_base["max_tokens_cap"], exact=row.get("status") == "ok",
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
                       "cycled": len(requests) > len(distinct)})
            load = LoadSettings(url=server.base_url + spec.completions_path,
                                request_timeout_s=settings.request_timeout_s, max_concurrency=settings.max_concurrency,
                                api_key=settings.api_key, length_from_finish_reason=spec.length_from_finish_reason)
            # The warm-up sends the *last* request's prompt: the first measured request then follows a
            # different prompt, as at every later rate, and a server that reuses the previous request's
            # prefix (llama-cpp-python's) gets no head start on it.
            last = requests[-1]
            _warm_up(last, lambda probe: spec.body(probe, model_name, texts.get(last.id)), load,
                     settings.warmup_timeout_s, server)

            def run_rate(rate: float, phase: str) -> dict:
                row = with_manifest(_one_rate(rate, requests, body_for, load, settings, server, run_dir, ident,
                                              (spec, settings.api_key), slo))
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


def prefix_cache_share(before, after, prompt_tokens_sent: int) -> dict:
    """This rate's prompt tokens served from the server's prefix cache, from cumulative counters read
    before and after it (the denominator: the server's own lookups, else the prompt tokens we sent)."""
    if before is None or after is None:
        return {"prefix_cache_hit_rate": float("nan"), "prefix_cache_hit_tokens": float("nan"),
                "prefix_cache_query_tokens": float("nan"), "prefix_cache_source": "not reported by this server"}
    hits = after.hit_tokens - before.hit_tokens
    queried = None
    if after.queried_tokens is not None and before.queried_tokens is not None:
        queried = after.queried_tokens - before.queried_tokens
    if not queried:  # hits only, or no lookups counted (vLLM with caching off): over the prompts sent
        queried = float(prompt_tokens_sent)
    return {"prefix_cache_hit_rate": hits / queried if queried > 0 else float("nan"),
            "prefix_cache_hit_tokens": hits, "prefix_cache_query_tokens": queried,
            "prefix_cache_source": after.source}


def _one_rate(rate: float, requests, body_for, load: LoadSettings, settings: ServingSettings,
              server: ServerProcess, run_dir: Path, ident: dict, counters=None, slo: dict | None = None) -> dict:
    if not server.alive():
        raise ServerError(f"server exited with code {server.returncode()} before rate {rate:g}: "
                          f"{server.log_tail(300)!r}")
    spec, api_key = counters if counters else (None, None)

    def read_counters():
        return spec.prefix_cache_counters(server.base_url, server.log_path, api_key) if spec else None

    schedule = make_schedule(len(requests), rate, settings.arrival, settings.burstiness, settings.seed)
    before = read_counters()
    cpu0, wall0 = time.process_time(), time.perf_counter()  # the client's own CPU (the server is another process)
    with GpuTelemetry(enabled=settings.gpu) as telemetry:  # the whole rate, every request of it
        completions = run_load(requests, schedule, body_for, load)
    client_cpu_s, client_wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    cache = prefix_cache_share(before, read_counters(), sum(r.prompt_len for r in requests))
    write_csv(run_dir / f"requests_rate{rate:g}.csv", _request_rows(completions, rate))
    status, reason = _rate_status(completions)
    if not server.alive():
        status = "failed" if status == "failed" else "invalid"
        reason = f"server exited with code {server.returncode()} during this rate; " + reason
    metrics = rate_metrics(completions, rate, settings.drop_first, settings.drop_last, seed=settings.seed)
    if slo is not None:
        metrics.update(goodput_metrics(completions, slo, settings.drop_first, settings.drop_last))
    metrics.update(client_certificate(metrics, client_cpu_s, client_wall_s))
    metrics.update(rate_energy(telemetry.window, sum(c.output_tokens for c in completions if c.ok)))
    return {**ident, "rate": rate, "status": status, "reason": reason, **metrics, **cache}


def rate_energy(window: TelemetryWindow, output_tokens: int) -> dict:
    """A rate's energy columns: the window spans every request of the rate (the dropped warm-up and
    cool-down ones too), so joules per token divide by every completed request's output tokens."""
    w = window.to_dict()
    out = energy_summary([w], output_tokens)
    out.update({"gpu_sm_clock_mhz_mean": w["sm_clock_mhz_mean"], "gpu_memory_used_gib_max": w["memory_used_gib_max"],
                "gpu_util_mean": w["gpu_util_mean"], "telemetry_samples": w["samples"]})
    return out
