"""What a serving sweep sends: its settings (``ServingSettings``, from ``cfg['scenario']`` with the
hardware's scale as fallback), the requests (the dataset's rows cycled to ``num_requests``, or per rate to
``requests_at(rate)`` where ``min_rate_duration_s`` lengthens the schedule at high rates), the text
prompts of servers that take only text, and where the dataset came from."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from inference_eval.datasets.manifest import read_manifest_or_empty
from inference_eval.requests import Request, run_limits


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
    min_rate_duration_s: float | None = None  # at rate r: max(num_requests, ceil(r x this)), up to max_requests
    max_requests: int | None = None

    def requests_at(self, rate: float) -> int:
        """How many requests rate ``rate`` sends: ``num_requests``, or with ``min_rate_duration_s`` enough
        for that long a schedule at this rate (``max_requests`` at most; rate inf: ``max_requests``)."""
        if not self.min_rate_duration_s:
            return self.num_requests
        cap = self.most_requests()
        if math.isinf(rate):
            return cap
        return min(cap, max(self.num_requests, math.ceil(rate * self.min_rate_duration_s)))

    def most_requests(self) -> int:
        """The longest schedule any rate can send (the requests are built once, to this count): the cap,
        ``max_requests`` or 8 x ``num_requests``, where ``min_rate_duration_s`` is set."""
        return (self.max_requests or 8 * self.num_requests) if self.min_rate_duration_s else self.num_requests

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
        min_duration = sc.get("min_rate_duration_s")
        if min_duration is not None and not float(min_duration) > 0:
            raise ServingConfigError(f"scenario.min_rate_duration_s must be > 0 or null, got {min_duration!r}")
        max_requests = sc.get("max_requests")
        if max_requests is not None and int(max_requests) < int(num):
            raise ServingConfigError(f"scenario.max_requests ({max_requests}) must be >= num_requests ({num})")
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
                   gpu=(cfg.get("hardware") or {}).get("kind") == "gpu",
                   min_rate_duration_s=float(min_duration) if min_duration is not None else None,
                   max_requests=int(max_requests) if max_requests is not None else None)

    def reduced_scale_note(self, cfg: dict, n_requests: int | None = None) -> str | None:
        """Why this sweep is smaller than the hardware profile's serving scale (``hardware.scale``:
        ``serving_requests`` per rate, ``drop_warmup`` dropped at each end), or None when it is not: a
        reduced schedule is allowed (e.g. where one call's time forces it) but every row must say so.
        ``n_requests``: what one rate sent (``requests_at``), default ``num_requests``."""
        scale = (cfg.get("hardware") or {}).get("scale") or {}
        full = scale.get("serving_requests")
        n = self.num_requests if n_requests is None else int(n_requests)
        if full is None or n >= int(full):
            return None
        warm = int(scale.get("drop_warmup") or 0)
        return (f"reduced scale: {n} requests per rate (first {self.drop_first} and last "
                f"{self.drop_last} dropped), below the hardware profile's {int(full)} (drop {warm} + {warm})")

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
