"""The fairness module: engine settings per library, the manifest, and the comparability gate, on
batch tables built from records and on serving rows."""
import copy
import json
import math

import pandas as pd
import pytest

from inference_eval import fairness
from inference_eval.config import compose
from inference_eval.report.tables import dataset_table
from inference_eval.report.uncertainty import coefficient_of_variation, mean_ci95, t975
from inference_eval.requests import Request

REQUESTS = [Request(f"r{i}", (1, 100 + i, 200 + i), 4 + i) for i in range(5)]


def _cfg(library="vllm", **over):
    cfg = compose([f"library={library}", "model=tiny-llama", "hardware=cpu", "dataset=s2s-synthetic"])
    for dotted, value in over.items():
        group, key = dotted.split("__")
        cfg[group][key] = value
    return cfg


def _record(tmp_path, name, manifest, status="ok", total=2.0, library="vllm", model=None):
    rec = {"kind": "batch", "library": library, "model": model or manifest.get("model", "tiny-llama"), "dataset": "s2s",
           "hardware": manifest.get("hardware", "cpu"), "status": status, "reason": "", "total_time_s": total,
           "token_throughput_tok_s": 10.0 / total, "repeats": 3, "fairness": manifest}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(rec))
    return path


def _manifest(library="vllm"):
    return fairness.manifest(_cfg(library), "batch", REQUESTS, exact=True, n_exact=len(REQUESTS))


# -- settings ------------------------------------------------------------------------------------
def test_every_library_states_every_setting_and_prefix_caching_is_off_by_default():
    for library in ("vllm", "transformers", "llamacpp", "mii", "trtllm"):
        for scenario in ("batch", "serving"):
            settings = fairness.requested_settings(_cfg(library), scenario)
            assert set(settings) == set(fairness.SETTING_KEYS), (library, scenario)
            if library != "llamacpp" or scenario == "batch":
                assert settings["prefix_caching"] is False, (library, scenario)
    # llama-cpp-python's server reuses the previous prompt's prefix: said, not hidden
    assert "previous prompt" in fairness.requested_settings(_cfg("llamacpp"), "serving")["prefix_caching"]
    assert "forces do_sample" in fairness.requested_settings(_cfg("mii"), "serving")["sampling"]


def test_prefix_caching_config_is_checked_and_applied_to_backend_and_server():
    from inference_eval.backends.vllm_backend import VllmBackend
    from inference_eval.models.files import ModelFiles
    from inference_eval.serving.servers import server_spec

    files = ModelFiles(hf_dir="/tmp/hf")
    off = VllmBackend(_cfg(), files).engine_args()
    on = VllmBackend(_cfg(library__prefix_caching=True, library__chunked_prefill=False), files).engine_args()
    assert off["enable_prefix_caching"] is False and "enable_chunked_prefill" not in off
    assert on["enable_prefix_caching"] is True and on["enable_chunked_prefill"] is False
    argv = server_spec("vllm").command(_cfg(), files, "127.0.0.1", 8000, None).argv
    assert "--no-enable-prefix-caching" in argv and "--enable-prefix-caching" not in argv
    argv = server_spec("vllm").command(_cfg(library__prefix_caching=True), files, "127.0.0.1", 8000, None).argv
    assert "--enable-prefix-caching" in argv
    with pytest.raises(ValueError, match="library.prefix_caching"):
        fairness.prefix_caching_setting(_cfg(library__prefix_caching="yes"))
    lcp = server_spec("llamacpp").command(_cfg("llamacpp"), ModelFiles(gguf_path="/tmp/m.gguf"), "127.0.0.1", 1, None).argv
    assert lcp[lcp.index("--cache") + 1] == "False" and lcp[lcp.index("--verbose") + 1] == "True"


def test_vllm_settings_are_read_back_from_its_start_up_log_line():
    line = ("INFO 12-04 21:00:00 [core.py:134] Initializing a V1 LLM engine (v0.24.0) with config: model='/m', "
            "dtype=torch.bfloat16, enforce_eager=False, kv_cache_dtype=auto, device_config=cuda, seed=0, "
            "enable_prefix_caching=False, enable_chunked_prefill=True, pooler_config=None, "
            "compilation_config={'level': 3, 'cudagraph_mode': <CUDAGraphMode.FULL_AND_PIECEWISE: (2, 1)>}")
    got = fairness.vllm_settings_from_log("other line\n" + line + "\nmore")
    assert got == {"prefix_caching": False, "chunked_prefill": True, "kv_cache_dtype": "auto",
                   "cuda_graphs": "FULL_AND_PIECEWISE"}
    eager = line.replace("enforce_eager=False", "enforce_eager=True").replace("enable_prefix_caching=False",
                                                                               "enable_prefix_caching=True")
    assert fairness.vllm_settings_from_log(eager)["cuda_graphs"] is False
    assert fairness.vllm_settings_from_log(eager)["prefix_caching"] is True
    assert fairness.vllm_settings_from_log("no config here") == {}


def test_manifest_identifies_the_workload_and_prefers_what_the_engine_resolved():
    m = fairness.manifest(_cfg(), "batch", REQUESTS, exact=True, resolved={"prefix_caching": True},
                          resolved_source="engine")
    assert m["requested"]["prefix_caching"] is False and m["settings"]["prefix_caching"] is True
    assert m["requests_sha256"] == fairness.requests_sha256(REQUESTS) and len(m["requests_sha256"]) == 64
    changed = REQUESTS[:-1] + [Request("r4", (1, 104, 204), 9)]
    assert fairness.requests_sha256(changed) != m["requests_sha256"]
    assert m["row_limit"] == 16 and m["max_tokens_cap"] == 32 and m["exact"] is True  # s2s-synthetic


# -- the gate --------------------------------------------------------------------------------------
# (key, how to change a manifest in that key alone)
ONE_KEY_CHANGES = {
    "hardware": lambda m: m.update(hardware="h200"),
    "model": lambda m: m.update(model="llama2-7b"),
    "dataset": lambda m: m.update(dataset="l2s"),
    "requests_sha256": lambda m: m.update(requests_sha256="f" * 64),
    "row_limit": lambda m: m.update(row_limit=64),
    "max_tokens_cap": lambda m: m.update(max_tokens_cap=128),
    "exact": lambda m: m.update(exact=False),
    "prefix_caching": lambda m: m["settings"].update(prefix_caching=True),
}


@pytest.mark.parametrize("key", fairness.COMPARABILITY_KEYS)
def test_table_flags_the_row_that_differs_in_one_key_and_names_it(tmp_path, key):
    assert set(ONE_KEY_CHANGES) == set(fairness.COMPARABILITY_KEYS)
    base = _manifest()
    odd = copy.deepcopy(base)
    ONE_KEY_CHANGES[key](odd)
    paths = [_record(tmp_path, "a", base, library="vllm"), _record(tmp_path, "b", base, library="transformers"),
             # the record is of the others' model (the table groups rows by it); only its manifest differs
             _record(tmp_path, "c", odd, library="llamacpp", model=base["model"],
                     status="invalid" if key == "exact" else "ok")]
    table = dataset_table(paths).set_index("library")
    assert table.columns[0] == "comparable"
    assert bool(table.loc["vllm", "comparable"]) and bool(table.loc["transformers", "comparable"])
    assert table.loc["llamacpp", "comparable"] is False or table.loc["llamacpp", "comparable"] == False  # noqa: E712
    reason = table.loc["llamacpp", "comparability_reason"]
    assert reason.startswith(f"{key}="), reason
    assert table.loc["vllm", "comparability_reason"] == ""


def test_rows_without_manifest_or_result(tmp_path):
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"library": "mii", "model": "tiny-llama", "status": "ok", "total_time_s": 1.0}))
    failed = _record(tmp_path, "f", _manifest(), status="failed", library="trtllm")
    table = dataset_table([_record(tmp_path, "a", _manifest()), legacy, failed]).set_index("library")
    assert table.loc["mii", "comparable"] == False and "no fairness manifest" in table.loc["mii", "comparability_reason"]  # noqa: E712
    assert table.loc["mii", "repeats"] == 1  # made before repeats existed: one run
    assert pd.isna(table.loc["trtllm", "comparable"]) and table.loc["trtllm", "comparability_reason"] == "no result"


def test_measured_prefix_cache_hits_decide_over_the_setting():
    off = _manifest()
    hit = copy.deepcopy(off)
    hit["prefix_cache_hit_rate"] = 0.78            # setting said off, the engine cached anyway
    bos_only = copy.deepcopy(off)
    bos_only["settings"]["prefix_caching"] = "previous prompt's prefix (not switchable)"
    bos_only["prefix_cache_hit_rate"] = 0.036      # one shared BOS token of a 28-token prompt
    unmeasured = copy.deepcopy(bos_only)
    del unmeasured["prefix_cache_hit_rate"]
    flags = fairness.gate([off, hit, bos_only, unmeasured])
    assert [f[0] for f in flags] == [True, False, True, False]
    assert flags[1][1] == "prefix_caching=on (others off)"


def test_serving_rows_are_gated_from_their_csv_columns():
    base = {"status": "ok", "hardware": "cpu", "model": "tiny-llama", "dataset": "l2s", "requests_sha256": "a" * 64,
            "row_limit": 64.0, "max_tokens_cap": float("nan"), "exact": True, "prefix_caching": False,
            "prefix_cache_hit_rate": 0.0}
    frame = pd.DataFrame([{**base, "library": "vllm", "rate": 8.0, "prefix_cache_hit_rate": 0.993,
                           "prefix_caching": True},
                          {**base, "library": "mii", "rate": 8.0, "prefix_cache_hit_rate": float("nan")},
                          {**base, "library": "llamacpp", "rate": 1.0, "exact": "True", "prefix_cache_hit_rate": 0.02},
                          {"library": "trtllm", "status": "not_installed", "rate": float("nan")},
                          {"library": "old", "status": "ok", "rate": 2.0}])  # a CSV made before the manifest
    gated = fairness.gate_frame(frame).set_index("library")
    assert gated.loc["vllm", "comparable"] == False and "prefix_caching=on" in gated.loc["vllm", "comparability_reason"]  # noqa: E712
    assert gated.loc["mii", "comparable"] == True and gated.loc["llamacpp", "comparable"] == True  # noqa: E712
    assert gated.loc["trtllm", "comparable"] is None
    assert gated.loc["old", "comparable"] == False  # noqa: E712


def test_table_note_says_whether_a_table_can_be_read_side_by_side():
    assert fairness.table_note([(True, ""), (None, "no result")]) == "all rows with a result are comparable"
    assert fairness.table_note([(True, ""), (False, "model=x")]).startswith("1 of 2 rows are NOT comparable")


# -- repeats ---------------------------------------------------------------------------------------
def test_student_t_interval_and_cv():
    mean, lo, hi = mean_ci95([10.0, 11.0, 12.0])
    assert mean == pytest.approx(11.0)
    assert hi - mean == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-6)  # t(0.975, 2) * sd / sqrt(n)
    assert lo == pytest.approx(2 * mean - hi)
    assert coefficient_of_variation([10.0, 11.0, 12.0]) == pytest.approx(1.0 / 11.0)
    assert all(math.isnan(v) for v in mean_ci95([5.0])[1:]) and math.isnan(coefficient_of_variation([5.0]))
    assert t975(1) == 12.706 and t975(30) == 2.042 and t975(1000) == 1.96
    with pytest.raises(ValueError):
        t975(0)


def test_batch_repeats_come_from_scenario_then_hardware_and_are_checked():
    from inference_eval.batch_plan import batch_repeats

    assert batch_repeats(compose(["hardware=cpu"])) == 1
    assert batch_repeats(compose(["hardware=h200"])) == 3
    assert batch_repeats(compose(["hardware=h200", "scenario.repeats=5"])) == 5
    for bad in (0, -1, "abc", 2.5, True):
        cfg = compose(["hardware=cpu"])
        cfg["scenario"]["repeats"] = bad
        with pytest.raises(ValueError, match="scenario.repeats"):
            batch_repeats(cfg)


def test_unstable_repeats_are_called_out():
    from inference_eval.report.tables import repeat_note

    assert repeat_note([2.0]) == "" and repeat_note([2.0, 2.02, 1.99]) == ""
    note = repeat_note([11.15, 2.02, 1.69])  # Transformers' s2s repeats on the H200: a cold first run
    assert note.startswith("unstable: CV 108% over 3 repeats") and "first took 6.0x" in note
    assert "first took" not in repeat_note([1.0, 3.0, 1.1])
