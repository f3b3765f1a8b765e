"""The DAG's shape (dry runs) and an end-to-end run of a reduced embedded default."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(args, results, env_extra=None, timeout=600):
    env = dict(os.environ, INFERENCE_EVAL_HARDWARE="cpu", **(env_extra or {}))
    cmd = SNAKEMAKE + ["--cores", "2", "--nolock", "--directory", str(REPO), "--snakefile", str(REPO / "Snakefile")] + list(args)
    cmd = _with_results(cmd, results)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def _with_results(cmd, results):
    """Put results under a temp dir: results_dir joins any overrides already given."""
    if "--config" in cmd:
        i = cmd.index("--config")
        j = i + 1
        while j < len(cmd) and not cmd[j].startswith("-"):
            if cmd[j].startswith("overrides="):
                cmd[j] = f"{cmd[j]} results_dir={results}"
                return cmd
            j += 1
        cmd.insert(j, f"overrides=results_dir={results}")
        return cmd
    return cmd + ["--config", f"overrides=results_dir={results}"]


def job_counts(output: str) -> dict[str, int]:
    counts = {}
    if "Job stats" not in output:
        return counts
    block = output.split("Job stats:", 1)[1]
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)\s*$", line)
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def dry_run_inputs(target: str, results, rule: str) -> tuple[str, str]:
    """A dry run of ``target`` with the matrix's model Llama-2-7B: its whole output, and the `input:` line
    of the first job of ``rule`` in it."""
    out = snakemake(["-n", target, "--config", "model=llama2-7b"], results)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    block = next(b for b in re.split(r"\n(?=\[|localrule |rule )", text) if f"rule {rule}:" in b)
    return text, next(line for line in block.splitlines() if line.strip().startswith("input:"))


def test_dry_run_all_plans_the_whole_matrix(tmp_path):
    out = snakemake(["-n", "all"], tmp_path / "results")
    assert out.returncode == 0, out.stderr[-3000:]
    counts = job_counts(out.stdout + out.stderr)
    assert counts.get("build_dataset") == 4, counts
    assert counts.get("batch_run") == 5 * 4, counts  # 5 libraries x 4 datasets x 1 model
    assert counts.get("dataset_table") == 4, counts
    for rule in ("prepare_model", "gguf", "trtllm_engine", "throughput_figure"):
        assert counts.get(rule, 0) >= 1, (rule, counts)
    assert any(r.startswith("serving") for r in counts), counts
    assert any("theory" in r or "bound" in r for r in counts), counts
    assert any("profil" in r or "module" in r for r in counts), counts
    assert any("coeff" in r or "fit" in r for r in counts), counts


def test_dry_run_a100_table_plans_every_library(tmp_path):
    target = f"{tmp_path}/results/a100/s2s_table.csv"
    out = snakemake(["-n", target, "--config", "model=llama2-7b"], tmp_path / "results")
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    for lib in ("transformers", "vllm", "llamacpp", "mii", "trtllm"):
        assert f"a100/batch/{lib}/llama2-7b/s2s.json" in text, lib
    assert job_counts(text).get("batch_run") == 5


def test_dry_run_table_reads_another_models_records_without_planning_its_other_libraries(tmp_path):
    """A model outside the matrix joins the table (rules/report.smk, table_models) through the records it
    has; its other libraries are not planned, and tensor-parallel rows stay out of the table."""
    results = tmp_path / "results"
    for lib in ("vllm", "vllm-tp2"):
        rec = results / "a100" / "batch" / lib / "mistral-7b" / "s2s.json"
        rec.parent.mkdir(parents=True)
        rec.write_text("{}")
    text, inputs = dry_run_inputs(f"{results}/a100/s2s_table.csv", results, "dataset_table")
    for lib in ("transformers", "vllm", "llamacpp", "mii", "trtllm"):
        assert f"a100/batch/{lib}/llama2-7b/s2s.json" in inputs, lib
    assert "a100/batch/vllm/mistral-7b/s2s.json" in inputs
    assert "vllm-tp2" not in inputs and "transformers/mistral-7b" not in text
    assert inputs.index("llama2-7b") < inputs.index("mistral-7b")  # the matrix's model first


def test_dry_run_serving_figure_reads_another_models_sweeps_without_planning_its_other_libraries(tmp_path):
    """A model outside the matrix joins the serving figure (rules/serving_functions.smk,
    recorded_serving_pairs) through the sweeps it has; its other libraries' sweeps are not planned."""
    results = tmp_path / "results"
    sweep = results / "a100" / "serving" / "vllm_llama2-13b_l2s.csv"
    sweep.parent.mkdir(parents=True)
    sweep.write_text("library,model\n")
    (results / "a100" / "serving" / "vllm_llama2-13b_s2s.csv").write_text("library,model\n")  # another dataset
    text, inputs = dry_run_inputs(f"{results}/a100/figures/serving_l2s.png", results, "serving_figure")
    for lib in ("transformers", "vllm", "llamacpp", "mii", "trtllm"):
        assert f"a100/serving/{lib}_llama2-7b_l2s.csv" in inputs, lib
    assert "a100/serving/vllm_llama2-13b_l2s.csv" in inputs and "_s2s.csv" not in inputs
    assert "mii_llama2-13b" not in text
    assert inputs.index("llama2-7b") < inputs.index("llama2-13b")  # the matrix's model first


def test_bound_bounds_every_table_model_and_report_jobs_write_their_logs(tmp_path):
    """Rule dataset_bound makes a row for every model of the dataset's table (table_models: the matrix's
    model and one with only a record), and the report and figure rules each write their log (CPU jobs)."""
    results = tmp_path / "results"
    rec = results / "cpu" / "batch" / "vllm" / "mistral-7b" / "s2s.json"
    rec.parent.mkdir(parents=True)
    rec.write_text("{}")
    out = snakemake([f"{results}/cpu/s2s_bound.html", f"{results}/datasets/synthetic_summary.html"], results)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(results / "cpu" / "s2s_bound.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["status"]) for r in rows] == [("tiny-llama", "ok"), ("mistral-7b", "ok")], rows
    for log in ("cpu/logs/dataset_bound/s2s.log", "cpu/logs/report_html_batch_bound/s2s_bound.log",
                "datasets/logs/dataset_figures/synthetic.log",
                "datasets/logs/report_html_dataset_summary/synthetic_summary.log"):
        assert (results / log).is_file(), log


def test_unknown_config_value_stops_with_valid_choices(tmp_path):
    out = snakemake(["-n", "all", "--config", "model=llama-99b"], tmp_path / "results")
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "llama2-7b" in text and "llama-99b" in text


def test_unknown_config_key_stops(tmp_path):
    out = snakemake(["-n", "all", "--config", "modle=tiny-llama"], tmp_path / "results")
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "modle" in text and "valid keys" in text


def test_wrong_config_value_stops_before_any_job(tmp_path):
    # a root key: the parse-time compose stops (common.smk), naming the key, the value and what is allowed
    # (the target's one job is build_dataset, the consumer of dataset.limit: the error comes before it)
    results = tmp_path / "results"
    out = snakemake([f"{results}/datasets/s2s-synthetic/manifest.json", "--config", "overrides=dataset.limit=abc"],
                    results)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "configuration error" in text and "dataset.limit = 'abc'" in text and "an integer >= 1 or null" in text
    assert "Job stats" not in text and not results.exists()
    # a key of one library's member (llama.cpp's): every member of the matrix is composed at parse time too
    out = snakemake(["-n", "all", "--config", "overrides=library.gguf_dtype=q4"], results)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "configuration error" in text and "library.gguf_dtype = 'q4'" in text and "one of 'f32', 'f16', 'bf16'" in text
    assert "Job stats" not in text and not results.exists()


@pytest.mark.slow
def test_reduced_default_end_to_end_and_rerun_is_noop(tmp_path):
    results = tmp_path / "results"
    reduced = ("matrix.libraries=[transformers,llamacpp,mii,trtllm] matrix.scenarios=[batch] "
               "matrix.fine_grain=false")
    out = snakemake(["all", "--config", f"overrides={reduced}"], results, timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]
    for task in ("s2s", "s2l", "s16k", "l2s"):
        with open(results / "cpu" / f"{task}_table.csv") as fh:
            rows = {r["library"]: r for r in csv.DictReader(fh)}
        assert set(rows) == {"transformers", "llamacpp", "mii", "trtllm"}
        for lib in ("transformers", "llamacpp"):
            assert rows[lib]["status"] == "ok", rows[lib]
            assert rows[lib]["output_tokens"] == rows[lib]["requested_output_tokens"]
            assert float(rows[lib]["token_throughput_tok_s"]) > 0
            assert rows[lib]["dataset_source"] == "synthetic"
        for lib in ("mii", "trtllm"):
            assert rows[lib]["status"] == "not_installed" and rows[lib]["reason"]
    assert (results / "cpu" / "figures" / "throughput.png").stat().st_size > 1000
    again = snakemake(["-n", "all", "--config", f"overrides={reduced}"], results)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
