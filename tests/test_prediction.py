"""Predictions for unmeasured hardware (profiling/prediction.py, rules/prediction.smk) on hand-made numbers."""

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inference_eval.opnames import OPS, OTHER
from inference_eval.profiling import prediction as P
from inference_eval.theory.hardware import Ceilings

REPO = Path(__file__).resolve().parents[1]

# source ridge 100 FLOP/B, target ridge 200 FLOP/B; the target has 4x the FLOP/s and 2x the bandwidth
SRC = Ceilings("srchw", peak_flops=100e12, bandwidth=1e12, memory_bytes=80e9, source="test source")
TGT = Ceilings("tgthw", peak_flops=400e12, bandwidth=2e12, memory_bytes=40e9, source="test target")


def test_compute_bound_op_scales_with_peak_flops():
    out = P.op_scale([1000e9], [1e9], SRC, TGT)  # intensity 1000: above both ridges
    assert out["regime"][0] == "compute"
    assert out["scale"][0] == pytest.approx(100 / 400)


def test_memory_bound_op_scales_with_bandwidth():
    out = P.op_scale([1e9, 0.0], [1e9, 4e6], SRC, TGT)  # intensity 1 and 0 (a copy): below both ridges
    assert list(out["regime"]) == ["memory", "memory"]
    assert out["scale"] == pytest.approx([0.5, 0.5])


def test_op_between_the_ridges_takes_the_target_binding_ceiling_and_stays_within_both_scalings():
    # intensity 150: compute-bound on the source (ridge 100), memory-bound on the target (ridge 200)
    out = P.op_scale([150e9], [1e9], SRC, TGT)
    assert out["regime"][0] == "compute->memory"
    # source roofline 150e9/100e12 = 1.5 ms, target 1e9/2e12 = 0.5 ms
    assert out["source_roofline_time_s"][0] == pytest.approx(1.5e-3)
    assert out["target_roofline_time_s"][0] == pytest.approx(0.5e-3)
    assert out["scale"][0] == pytest.approx(1 / 3)
    assert 0.25 < out["scale"][0] < 0.5
    back = P.op_scale([150e9], [1e9], TGT, SRC)  # and the other way round
    assert back["regime"][0] == "memory->compute"
    assert back["scale"][0] == pytest.approx(3.0)


def test_op_scale_rejects_an_op_without_bytes():
    with pytest.raises(P.PredictionError, match="bytes > 0"):
        P.op_scale([1e9], [0.0], SRC, TGT)


def module_frame(hardware="srchw", layers=2, time_per_op=1e-3):
    """One stage at one shape: the ten ops (qkv_proj compute-bound, the others memory-bound) and other."""
    rows = []
    for op in (*OPS, OTHER):
        flops, nbytes = (1000e9, 1e9) if op == "qkv_proj" else (1e6, 1e6)
        theory = {} if op == OTHER else {"theory_flops": flops, "theory_bytes": nbytes, "byte_model": "fused"}
        rows.append({"library": "vllm", "model": "m", "hardware": hardware, "b": 4, "s": 64, "stage": "prefill",
                     "op": op, "time_median_s": time_per_op, "layers": layers, "sweep": "seq", "status": "ok",
                     "reason": "", **theory})
    return pd.DataFrame(rows)


def test_predict_modules_keeps_each_ops_fraction_and_labels_every_row():
    out = P.predict_modules(module_frame(), SRC, TGT)
    assert (out["kind"] == "prediction").all()
    assert (out["method"] == "roofline_fraction").all()
    assert (out["source_hardware"] == "srchw").all() and (out["hardware"] == "tgthw").all()
    ops = out[out["level"] == "op"].set_index("op")
    assert ops.loc["qkv_proj", "predicted_time_s"] == pytest.approx(1e-3 * 0.25)
    assert ops.loc["rope", "predicted_time_s"] == pytest.approx(1e-3 * 0.5)
    # the fraction of the roofline is the same on both: target roofline / predicted time per layer
    q = ops.loc["qkv_proj"]
    assert q["target_roofline_time_s"] / q["predicted_time_per_layer_s"] == pytest.approx(q["source_fraction"])
    assert q["source_fraction"] == pytest.approx((1000e9 / 100e12) / (1e-3 / 2))
    assert q["compute_scaled_time_s"] == pytest.approx(0.25e-3) and q["memory_scaled_time_s"] == pytest.approx(0.5e-3)
    assert ops.loc[OTHER, "status"] == "not_predicted" and math.isnan(ops.loc[OTHER, "predicted_time_s"])
    stage = out[out["level"] == "stage"].iloc[0]
    assert stage["op"] == "decoder_layers" and stage["status"] == "ok"
    assert stage["predicted_time_s"] == pytest.approx(1e-3 * (0.25 + 9 * 0.5))
    assert stage["source_time_s"] == pytest.approx(10e-3)  # other is outside the decoder layers
    assert not stage["crosses_ridge"]


def test_predict_modules_names_the_ops_that_cross_the_ridge():
    frame = module_frame()
    frame.loc[frame["op"] == "o_proj", ["theory_flops", "theory_bytes"]] = [150e9, 1e9]
    out = P.predict_modules(frame, SRC, TGT)
    o = out[(out["level"] == "op") & (out["op"] == "o_proj")].iloc[0]
    assert o["regime"] == "compute->memory" and bool(o["crosses_ridge"])
    assert o["predicted_time_s"] == pytest.approx(1e-3 / 3)
    stage = out[out["level"] == "stage"].iloc[0]
    assert bool(stage["crosses_ridge"]) and stage["crossing_ops"] == "o_proj"


def test_predict_modules_stage_needs_every_op():
    frame = module_frame()
    frame = frame[frame["op"] != "rope"]
    stage = P.predict_modules(frame, SRC, TGT).query("level == 'stage'").iloc[0]
    assert stage["status"] == "not_predicted" and "every decoder-layer op" in stage["reason"]


def test_predict_modules_refuses_tables_of_another_hardware():
    with pytest.raises(P.PredictionError, match="measured on other.*'srchw'"):
        P.predict_modules(module_frame(hardware="other"), SRC, TGT)


def test_predict_modules_carries_a_failed_library_as_its_status():
    failed = pd.DataFrame([{"library": "vllm", "status": "not_installed", "reason": "no vllm here"}])
    out = P.predict_modules(pd.concat([module_frame(), failed], ignore_index=True), SRC, TGT)
    row = out[out["status"] == "not_installed"].iloc[0]
    assert row["reason"] == "no vllm here" and row["kind"] == "prediction"


def bound(hw, bound_s, batch=8, n=4, inp=100, out=40, status="ok", reason=""):
    return pd.DataFrame([{"model": "m", "status": status, "reason": reason, "bound_s": bound_s, "prefill_s": 0.1,
                          "decode_s": bound_s - 0.1, "n_requests": n, "input_tokens": inp, "output_tokens": out,
                          "batch_size": batch, "ceilings_source": f"{hw} ceilings"}])


def table(rows):
    base = {"model": "m", "n_requests": 4, "input_tokens": 100, "requested_output_tokens": 40, "output_tokens": 40,
            "reason": ""}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_predict_batch_keeps_the_fraction_of_the_bound():
    t = table([{"library": "vllm", "status": "ok", "total_time_s": 10.0, "total_time_ci95_lo_s": 9.0,
                "total_time_ci95_hi_s": 11.0, "record": "vllm.json"}])
    records = {"vllm.json": {"fairness": {"settings": {"batching": "continuous"}}}}
    out = P.predict_batch({"s2s": t}, {"s2s": bound("src", 2.0)}, {"s2s": bound("tgt", 1.0)}, "srchw", "tgthw",
                          records.get)
    r = out.iloc[0]
    assert r["kind"] == "prediction" and r["method"] == "bound_fraction" and r["source_hardware"] == "srchw"
    assert r["status"] == "ok" and r["predicted_total_time_s"] == pytest.approx(5.0)
    assert (r["predicted_ci95_lo_s"], r["predicted_ci95_hi_s"]) == pytest.approx((4.5, 5.5))
    assert r["source_efficiency"] == pytest.approx(0.2)
    assert r["predicted_token_throughput_tok_s"] == pytest.approx(8.0)
    assert r["source_batching"] == "continuous" and r["source_settings_from"] == "fairness manifest"
    assert r["note"] == ""


def test_predict_batch_writes_every_row_that_cannot_be_predicted_with_its_reason():
    t = table([{"library": "vllm", "status": "ok", "total_time_s": 10.0},
               {"library": "mii", "status": "not_installed", "total_time_s": np.nan, "reason": "no mii"}])
    out = P.predict_batch({"s2s": t}, {"s2s": bound("src", 2.0)}, {"s2s": bound("tgt", 1.0, n=5)}, "srchw", "tgthw")
    by = out.set_index("library")
    assert by.loc["vllm", "status"] == "rows_differ" and "n_requests 4 vs 5" in by.loc["vllm", "reason"]
    assert by.loc["mii", "status"] == "not_installed" and "no mii" in by.loc["mii", "reason"]
    assert by["predicted_total_time_s"].isna().all()
    nofit = P.predict_batch({"s2s": t.iloc[:1]}, {"s2s": bound("src", 2.0)},
                            {"s2s": bound("tgt", np.nan, batch=0, status="does_not_fit", reason="too big")},
                            "srchw", "tgthw")
    assert nofit.iloc[0]["status"] == "does_not_fit" and "too big" in nofit.iloc[0]["reason"]


def test_predict_batch_notes_a_target_that_holds_fewer_sequences_and_one_request_at_a_time():
    t = table([{"library": "llamacpp", "status": "ok", "total_time_s": 10.0, "record": "l.json"}])
    records = {"l.json": {"provenance": {"config": {"library": {"name": "llamacpp"}, "hardware": {"kind": "gpu"}}}}}
    out = P.predict_batch({"s2s": t}, {"s2s": bound("src", 2.0, batch=8)}, {"s2s": bound("tgt", 1.0, batch=3)},
                          "srchw", "tgthw", records.get)
    r = out.iloc[0]
    assert r["status"] == "ok" and r["source_settings_from"].startswith("recorded config")
    assert "holds 3 sequences" in r["note"] and "one request at a time" in r["note"]


def test_validation_scores_only_comparable_batch_rows():
    t = table([{"library": "vllm", "status": "ok", "total_time_s": 10.0, "record": "s_vllm.json"},
               {"library": "transformers", "status": "ok", "total_time_s": 20.0, "record": "s_trf.json"}])
    measured = table([{"library": "vllm", "status": "ok", "total_time_s": 4.0, "record": "t_vllm.json"},
                      {"library": "transformers", "status": "ok", "total_time_s": 2.0, "record": "t_trf.json"}])
    settings = lambda b: {"fairness": {"settings": {"batching": b}}}
    records = {"s_vllm.json": settings("continuous"), "t_vllm.json": settings("continuous"),
               "s_trf.json": settings("static batches of 8"), "t_trf.json": settings("static batches of 64")}
    pred = P.predict_batch({"s2s": t}, {"s2s": bound("src", 2.0)}, {"s2s": bound("tgt", 1.0)}, "srchw", "tgthw",
                           records.get)
    val = P.validate_batch(pred, {"s2s": measured}, records.get).set_index("library")
    assert bool(val.loc["vllm", "comparable"]) and val.loc["vllm", "error"] == pytest.approx(5.0 / 4.0 - 1)
    assert val.loc["vllm", "unchanged_ape"] == pytest.approx(1.5)
    assert not bool(val.loc["transformers", "comparable"])
    assert "batching differs" in val.loc["transformers", "comparability_reason"]
    mape = P.mape_table(pd.DataFrame(columns=P.VALIDATION_MODULE_COLUMNS), val.reset_index())
    assert list(mape["library"]) == ["vllm"] and mape.iloc[0]["mape"] == pytest.approx(0.25)


def test_validate_modules_compares_ops_and_stages_per_shape():
    pred = P.predict_modules(module_frame(), SRC, TGT)
    measured = module_frame(hardware="tgthw", time_per_op=0.5e-3)  # every op half as long on the target
    val = P.validate_modules(pred, measured)
    assert (val["kind"] == "validation").all()
    ops = val[val["level"] == "op"].set_index("op")
    assert set(ops.index) == set(OPS)  # other is never predicted, so never scored
    assert ops.loc["rope", "ape"] == pytest.approx(0.0)          # 1e-3 * 0.5 predicted, 0.5e-3 measured
    assert ops.loc["qkv_proj", "error"] == pytest.approx(-0.5)   # 0.25e-3 predicted
    stage = val[val["level"] == "stage"].iloc[0]
    assert stage["measured_time_s"] == pytest.approx(5e-3)
    assert stage["predicted_time_s"] == pytest.approx(4.75e-3)
    mape = P.mape_table(val, pd.DataFrame(columns=P.VALIDATION_BATCH_COLUMNS)).set_index(["scope", "op"])
    assert mape.loc[("op", "qkv_proj"), "mape"] == pytest.approx(0.5)
    assert mape.loc[("stage", "decoder_layers"), "mape"] == pytest.approx(0.05)
    assert mape.loc[("all_ops", "all"), "n"] == len(OPS)
    assert mape.loc[("regime", "compute"), "n"] == 1 and mape.loc[("regime", "memory"), "n"] == len(OPS) - 1
    # source fractions: qkv_proj 20 (a 10 ms roofline against 0.5 ms measured per layer; hand-made numbers
    # need not be physical), the others 1 us against 0.5 ms
    assert mape.loc[("source_fraction", "fraction >=0.6"), "n"] == 1
    assert mape.loc[("source_fraction", "fraction <0.1"), "n"] == len(OPS) - 1


def test_write_validation_writes_tables_and_figure(tmp_path):
    pred_csv = tmp_path / "modules_from_srchw.csv"
    P.predict_modules(module_frame(), SRC, TGT).to_csv(pred_csv, index=False)
    measured_csv = tmp_path / "vllm_prefill_seq.csv"
    module_frame(hardware="tgthw", time_per_op=0.5e-3).to_csv(measured_csv, index=False)
    outs = [tmp_path / n for n in ("vm.csv", "vb.csv", "mape.csv", "fig.png")]
    mape = P.write_validation(str(pred_csv), [str(measured_csv)], None, [], *map(str, outs))
    assert all(p.stat().st_size > 0 for p in outs)
    assert set(mape["scope"]) == {"op", "stage", "all_ops", "regime", "source_fraction"}


def test_the_committed_validation_holds_its_own_predictions():
    """The committed H100-from-H200 files: every row labelled, and each validation point is the committed
    prediction against the committed H100 measurement."""
    folder = REPO / "results" / "h100" / "predicted"
    pred = pd.read_csv(folder / "modules_from_h200.csv")
    assert (pred["kind"] == "prediction").all() and (pred["source_hardware"] == "h200").all()
    val = pd.read_csv(folder / "validation_modules_from_h200.csv")
    assert len(val) > 0
    measured = pd.concat([pd.read_csv(p) for p in sorted((REPO / "results/h100/modules").glob("*_*_*.csv"))
                          if not p.name.endswith("points.csv")])
    again = P.validate_modules(pred, measured)
    assert np.allclose(again["ape"].to_numpy(), val["ape"].to_numpy())


def snakemake_dry(args, results):
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--nolock", "-n", "--directory", str(REPO),
           "--snakefile", str(REPO / "Snakefile"), *args, "--config", f"overrides=results_dir={results}"]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
                               "PYTHONPATH": str(REPO / "src"), "INFERENCE_EVAL_HARDWARE": "cpu"})


def test_dag_plans_an_a100_prediction_without_any_gpu_job(tmp_path):
    """From a source's committed tables and bounds, the A100 batch prediction needs only CPU rules: the
    datasets, the A100's bounds and the prediction (`--allowed-rules` keeps the measured tables as they
    are instead of planning the runs they came from)."""
    results = tmp_path / "results"
    (results / "h200").mkdir(parents=True)
    for name in ("s2s_table.csv", "s2s_bound.csv"):
        shutil.copy(REPO / "results" / "h200" / name, results / "h200" / name)
    out = snakemake_dry([f"{results}/a100/predicted/batch_from_h200.csv", "--quiet", "rules",
                         "--allowed-rules", "predict_batch", "dataset_bound", "build_dataset"], results)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "predict_batch" in text and "dataset_bound" in text
    for gpu_rule in ("batch_run", "profile_modules", "serving"):
        assert gpu_rule not in text, text[-2000:]
