"""The settings the report's captions (``report/*.rst``) quote, from a job's resolved config: the captions
are Jinja templates that Snakemake renders with the job's wildcards, config and params, and the HTML rules
of ``rules/report_pages.smk`` pass these as ``params.settings``."""

from __future__ import annotations

from typing import Any


def batch_settings(cfg: dict) -> dict[str, Any]:
    """Row limit, timed repeats and untimed warm-up passes of a batch job."""
    from inference_eval.batch_plan import batch_repeats

    return {"limit": cfg["dataset"].get("limit"), "repeats": batch_repeats(cfg),
            "warmup_repeats": batch_repeats(cfg, warmup=True)}


def serving_settings(cfg: dict) -> dict[str, Any]:
    """Configured rates, arrivals, requests per rate and the requests dropped at each end of a sweep."""
    from inference_eval.serving.sweep import ServingSettings

    st = ServingSettings.from_cfg(cfg)
    count: int | str = st.num_requests
    if st.min_rate_duration_s:  # longer schedules at high rates (scenario.min_rate_duration_s)
        count = (f"{st.num_requests} or more (enough for {st.min_rate_duration_s:g} s of arrivals, "
                 f"up to {st.most_requests()})")
    return {"rates": ", ".join(f"{r:g}" for r in st.rates), "num_requests": count,
            "drop_first": st.drop_first, "drop_last": st.drop_last, "arrival": st.arrival}


def profiling_settings(cfg: dict) -> dict[str, Any]:
    """Profiled model, repeats and warm-ups of the per-op measurement on the job's hardware."""
    from inference_eval.profiling import sweep

    st = sweep.settings(cfg)
    return {"model": st["model"], "repeats": st["repeats"], "warmup": st["warmup"]}
