"""The pipeline on SLURM: the SLURM profile's resources, kill reasons as rows, and real runs on a
one-node cluster started by scripts/local_slurm.sh (Debian slurm-wlm + munge; needs root or an
installed SLURM).

Fast tests read the kill-reason collector (inference_eval.slurm_failures) on log text and plan the DAG with
the cluster profile. Tests marked `slurm` start the local cluster once per module and stop it at the end.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from inference_eval import slurm_failures

REPO = Path(__file__).resolve().parents[1]
LOCAL_SLURM = REPO / "scripts" / "local_slurm.sh"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def run_snakemake(args, workdir, snakefile=REPO / "Snakefile", timeout=300, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), INFERENCE_EVAL_HARDWARE="cpu", **(env_extra or {}))
    env.pop("SLURM_CONF", None)
    cmd = SNAKEMAKE + ["--snakefile", str(snakefile), "--directory", str(workdir)] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir)


def _out(proc) -> str:
    return proc.stdout + proc.stderr


# ---------------------------------------------------------------- the collector, on log text

# The shape of Snakemake 9.27's log for a SLURM job killed at its memory limit (abridged).
MAIN_LOG = textwrap.dedent("""\
    [Wed Nov 25 04:56:00 2026]
    rule batch_run:
        input: results/datasets/s2s-synthetic/rows.jsonl
        output: results/cpu/batch/transformers/tiny-llama/s2s.json, results/cpu/batch/transformers/tiny-llama/s2s.requests.csv
        jobid: 3
        reason: Missing output files: results/cpu/batch/transformers/tiny-llama/s2s.json
        wildcards: hardware=cpu, library=transformers, model=tiny-llama, dataset=s2s
        resources: tmpdir=<TBD>, runtime=60, mem_mb=300
    Job 3 has been submitted with SLURM jobid 6 (log: /w/.snakemake/slurm_logs/rule_batch_run/cpu_transformers_tiny-llama_s2s/6.log).
    [Wed Nov 25 04:56:20 2026]
    Error in rule batch_run:
        message: SLURM-job '6' failed, SLURM status is: 'FAILED'. Detailed failure reason unavailable (status command is not 'sacct').
        jobid: 3
        output: results/cpu/batch/transformers/tiny-llama/s2s.json, results/cpu/batch/transformers/tiny-llama/s2s.requests.csv
        log: results/cpu/batch/transformers/tiny-llama/s2s.log, /w/.snakemake/slurm_logs/rule_batch_run/cpu_transformers_tiny-llama_s2s/6.log (check log file(s) for error details)
        external_jobid: 6
    Error in rule dataset_table:
        jobid: 5
        output: results/cpu/s2s_table.csv
    """)
OOM_LOG = "slurmstepd-vm: error: StepId=6.0 exceeded memory limit (989749248 > 314572800), being killed\n"
TIME_LOG = "slurmstepd-vm: error: *** JOB 2 ON vm CANCELLED AT 2026-11-25T04:54:22 DUE TO TIME LIMIT ***\n"


def test_collector_reads_failed_slurm_jobs_with_outputs_and_wildcards():
    jobs = slurm_failures.parse_failed_slurm_jobs(MAIN_LOG)
    assert len(jobs) == 1, jobs  # the local rule's error has no SLURM job
    job = jobs[0]
    assert (job.rule, job.slurm_job_id, job.jobid) == ("batch_run", "6", "3")
    assert job.outputs == ["results/cpu/batch/transformers/tiny-llama/s2s.json",
                           "results/cpu/batch/transformers/tiny-llama/s2s.requests.csv"]
    assert job.slurm_log.endswith("cpu_transformers_tiny-llama_s2s/6.log")
    assert job.wildcards == {"hardware": "cpu", "library": "transformers", "model": "tiny-llama", "dataset": "s2s"}


def test_collector_names_the_limit_slurm_enforced():
    job = slurm_failures.parse_failed_slurm_jobs(MAIN_LOG)[0]
    status, reason = slurm_failures.kill_reason(job, OOM_LOG, "FAILED")
    assert status == "oom" and "SLURM job 6" in reason and "944 MiB used > 300 MiB" in reason
    status, reason = slurm_failures.kill_reason(job, TIME_LOG, None)
    assert status == "timeout" and "time limit" in reason and "state FAILED" in reason  # state from message
    assert slurm_failures.kill_reason(job, "", "OUT_OF_MEMORY")[0] == "oom"
    assert slurm_failures.kill_reason(job, "", "TIMEOUT")[0] == "timeout"
    # a script error or a node failure is no SLURM kill: rerun, no failure record
    assert slurm_failures.kill_reason(job, "Traceback (most recent call last):\n", "FAILED") is None
    assert slurm_failures.kill_reason(job, "", "NODE_FAIL") is None


def test_failure_record_stands_for_a_missing_record_only(tmp_path):
    record = tmp_path / "cpu/batch/vllm/tiny-llama/s2s.json"
    failure = slurm_failures.failure_path(record)
    assert failure == tmp_path / "cpu/batch/vllm/tiny-llama/s2s.slurm.json"
    assert slurm_failures.record_or_failure(record) == str(record)  # neither exists: ask for the record
    failure.parent.mkdir(parents=True)
    failure.write_text("{}")
    assert slurm_failures.record_or_failure(record) == str(failure)
    record.write_text("{}")  # a later run succeeded: the record wins
    assert slurm_failures.record_or_failure(record) == str(record)


def test_collect_writes_a_record_shaped_failure_for_the_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job_log = tmp_path / "6.log"
    job_log.write_text(OOM_LOG)
    log = tmp_path / "run.log"
    log.write_text(MAIN_LOG.replace("/w/.snakemake/slurm_logs/rule_batch_run/cpu_transformers_tiny-llama_s2s/6.log",
                                    str(job_log)))
    monkeypatch.setattr(slurm_failures, "slurm_state", lambda job_id: None)
    written = slurm_failures.collect([log])
    assert written == [Path("results/cpu/batch/transformers/tiny-llama/s2s.slurm.json")]
    rec = json.loads(written[0].read_text())
    assert rec["status"] == "oom" and rec["library"] == "transformers" and rec["dataset"] == "s2s"
    assert rec["slurm"]["job_id"] == "6" and rec["slurm"]["log"] == str(job_log)
    from inference_eval.report.tables import record_row
    row = record_row(written[0])
    assert (row["library"], row["model"], row["status"]) == ("transformers", "tiny-llama", "oom")
    assert "exceeded its memory limit" in row["reason"]


# ---------------------------------------------------------------- the cluster profile plans the DAG

def _dag_exists() -> bool:
    return all((REPO / "rules" / f).exists() for f in ("batch.smk", "serving.smk", "profiling.smk"))


def test_slurm_profile_plans_the_a100_column(tmp_path):
    if not _dag_exists():
        pytest.skip("rules/batch.smk, serving.smk or profiling.smk not written yet")
    out = run_snakemake(["--profile", str(REPO / "profiles" / "slurm"), "-n", "--nolock",
                         "results/a100/s2s_table.csv"], tmp_path, timeout=180)
    assert out.returncode == 0, _out(out)[-3000:]
    text = _out(out)
    # GPU jobs carry the a100 profile's SLURM block; the CPU rules are local
    batch_blocks = [b for b in re.split(r"\n(?=\[|localrule |rule )", text) if b.startswith("rule batch_run:")]
    assert batch_blocks, text[-3000:]
    for block in batch_blocks:
        assert "wildcards: hardware=a100" in block
        assert "slurm_partition=gpu" in block and "constraint=a100" in block and "gpu=1" in block, block
        assert "mem_mb=64000" in block and "runtime=240" in block and "cpus_per_task=8" in block, block
    # CPU rules carry no GPU request (they run on the login node: `localrule: True`)
    table_block = next(b for b in re.split(r"\n(?=\[|localrule |rule )", text) if "rule dataset_table:" in b)
    assert "gpu=" not in table_block and "slurm_partition" not in table_block, table_block


# ---------------------------------------------------------------- a real one-node SLURM

def _no_slurm(reason: str):
    # .ci/run starts the cluster itself and sets INFERENCE_EVAL_REQUIRE_SLURM: there a missing
    # cluster is a failure, not a skip
    if os.environ.get("INFERENCE_EVAL_REQUIRE_SLURM"):
        pytest.fail(f"a local SLURM is required here (INFERENCE_EVAL_REQUIRE_SLURM): {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def local_slurm():
    running = subprocess.run([str(LOCAL_SLURM), "status"], capture_output=True, text=True).returncode == 0
    if not running:
        if not shutil.which("slurmctld") and (os.geteuid() != 0 or not shutil.which("apt-get")):
            _no_slurm("no SLURM installed and installing it needs root and apt-get")
        if Path("/etc/slurm/slurm.conf").exists() and not Path("/etc/slurm/slurm.conf").is_symlink():
            _no_slurm("/etc/slurm/slurm.conf belongs to a real SLURM here; the test cluster would replace it")
        start = subprocess.run([str(LOCAL_SLURM), "start"], capture_output=True, text=True, timeout=300)
        if start.returncode != 0:
            _no_slurm(f"local SLURM did not start (rc {start.returncode}): {start.stderr.strip()[-800:]}")
    try:
        yield
    finally:
        if not running:  # leave a cluster someone else started alone
            subprocess.run([str(LOCAL_SLURM), "stop"], capture_output=True, text=True, timeout=120)


LOCAL_PROFILE = ["--profile", str(REPO / "profiles" / "local-slurm")]

# A two-rule workflow on the real resources.smk: probes report the allocation SLURM gave them, a
# hog exceeds its memory limit, a sleeper its time limit, and a local summary reads records or failures.
SMOKE_SNAKEFILE = r"""
include: "@REPO@/rules/common.smk"
include: "@REPO@/rules/resources.smk"

PROBES = ["a", "b", "hog"]

rule all:
    input: f"{RESULTS}/cpu/summary.csv"

rule probe:
    output: f"{RESULTS}/{{hardware}}/probe/{{name}}.json"
    wildcard_constraints: name="a|b"
    resources: **hardware_resources
    run:
        import json, os, subprocess
        # the allocation as the controller sees it: MinMemoryNode, NumCPUs, TimeLimit, Partition
        job = subprocess.run(["scontrol", "show", "job", "-o", os.environ["SLURM_JOB_ID"]],
                             capture_output=True, text=True, check=True).stdout.split()
        alloc = dict(f.split("=", 1) for f in job if "=" in f)
        json.dump({"status": "ok", **alloc}, open(output[0], "w"))

rule hog:
    output: f"{RESULTS}/{{hardware}}/probe/hog.json"
    resources: **hardware_resources
    shell: "python3 -c 'x = bytearray(1500 * 2**20); import time; time.sleep(10)' && echo '{{\"status\": \"ok\"}}' > {output}"

rule sleeper:
    output: f"{RESULTS}/{{hardware}}/probe/sleeper.json"
    resources: **hardware_resources
    shell: "sleep ${{SLEEP_S:-0}} && echo '{{\"status\": \"ok\"}}' > {output}"

rule summary:
    input: [record_or_slurm_failure(f"{RESULTS}/cpu/probe/{n}.json") for n in PROBES]
    output: f"{RESULTS}/cpu/summary.csv"
    localrule: True
    run:
        import json
        with open(output[0], "w") as fh:
            for path in input:
                rec = json.load(open(path))
                fh.write(f"{path},{rec['status']},{rec.get('reason', '')}\n")
"""


def _summary(workdir) -> dict[str, tuple[str, str]]:
    rows = list(csv.reader(open(workdir / "results" / "cpu" / "summary.csv")))
    return {Path(r[0]).name.split(".")[0]: (r[1], r[2]) for r in rows}


@pytest.mark.slurm
@pytest.mark.slow
def test_smoke_kill_becomes_a_row_and_resubmission_reruns_only_missing(local_slurm, tmp_path):
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(SMOKE_SNAKEFILE.replace("@REPO@", str(REPO)))
    # one CPU each so that the jobs run side by side; the hog gets a memory limit it exceeds
    small = ["--set-resources", "probe:cpus_per_task=1", "hog:cpus_per_task=1", "hog:mem_mb=300"]
    first = run_snakemake(LOCAL_PROFILE + small, tmp_path, snakefile, timeout=180)
    text = _out(first)
    assert first.returncode != 0, text[-3000:]  # the hog was killed
    probe_dir = tmp_path / "results" / "cpu" / "probe"
    a, b = (json.loads((probe_dir / f"{n}.json").read_text()) for n in "ab")
    assert a["JobId"] != b["JobId"], (a, b)  # each its own SLURM job
    # conf/hardware/cpu.yaml slurm: mem_mb 4000, runtime_min 60 (cpus_per_task set to 1 above)
    assert (a["MinMemoryNode"], a["TimeLimit"], a["NumCPUs"]) == ("4000M", "01:00:00", "1"), a
    assert a["Partition"] == "debug", a
    hog = json.loads((probe_dir / "hog.slurm.json").read_text())
    assert hog["status"] == "oom" and "exceeded its memory limit" in hog["reason"], hog
    assert hog["slurm"]["log"] and Path(hog["slurm"]["log"]).exists(), hog
    assert not (probe_dir / "hog.json").exists()
    assert "SLURM killed a job" in text, text[-3000:]

    # resubmitting: the summary gets the kill reason as a row; nothing is submitted again
    second = run_snakemake(LOCAL_PROFILE + small, tmp_path, snakefile, timeout=120)
    assert second.returncode == 0, _out(second)[-3000:]
    assert "submitted with SLURM jobid" not in _out(second), _out(second)[-3000:]
    rows = _summary(tmp_path)
    assert rows["a"][0] == "ok" and rows["b"][0] == "ok", rows
    assert rows["hog"][0] == "oom" and "SLURM job" in rows["hog"][1], rows
    assert json.loads((probe_dir / "a.json").read_text()) == a

    # retrying the killed job with enough memory reruns it and the summary, nothing else
    (probe_dir / "hog.slurm.json").unlink()
    third = run_snakemake(LOCAL_PROFILE + small[:-1] + ["hog:mem_mb=3000"], tmp_path, snakefile, timeout=120)
    assert third.returncode == 0, _out(third)[-3000:]
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid", _out(third))
    assert len(submitted) == 1, _out(third)[-3000:]
    assert _summary(tmp_path)["hog"][0] == "ok"
    assert json.loads((probe_dir / "a.json").read_text()) == a


@pytest.mark.slurm
@pytest.mark.slow
def test_smoke_time_limit_becomes_a_timeout_record(local_slurm, tmp_path):
    """SLURM enforces time limits in whole minutes, checked every 30 s: this test takes 2-4 minutes,
    so it runs only with INFERENCE_EVAL_SLURM_TIME_LIMIT_TEST=1 (the memory-limit kill above covers the
    same path from kill to row in a few seconds)."""
    if os.environ.get("INFERENCE_EVAL_SLURM_TIME_LIMIT_TEST") != "1":
        pytest.skip("about 2 minutes; set INFERENCE_EVAL_SLURM_TIME_LIMIT_TEST=1 to run it")
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(SMOKE_SNAKEFILE.replace("@REPO@", str(REPO)))
    target = "results/cpu/probe/sleeper.json"
    run = run_snakemake(LOCAL_PROFILE + ["--set-resources", "sleeper:runtime=1", "sleeper:cpus_per_task=1",
                                         "--slurm-init-seconds-before-status-checks", "120", target],
                        tmp_path, snakefile, timeout=420, env_extra={"SLEEP_S": "600"})
    assert run.returncode != 0, _out(run)[-3000:]
    record = json.loads((tmp_path / "results/cpu/probe/sleeper.slurm.json").read_text())
    assert record["status"] == "timeout" and "time limit" in record["reason"], record
    assert record["slurm"]["state"] == "TIMEOUT", record


# ---------------------------------------------------------------- the pipeline itself on SLURM

REDUCED = ("matrix.libraries=[transformers] matrix.scenarios=[batch] matrix.fine_grain=false "
           "matrix.datasets=[s2s]")
# Columns that measure this run (time, memory) and may differ between two runs of the same job.
TIMING_COLUMNS = {"total_time_s", "token_throughput_tok_s", "requests_per_s", "load_time_s",
                  "peak_memory_gb", "efficiency", "repeat_times_s", "repeat_note", "total_time_ci95_lo_s",
                  "total_time_ci95_hi_s", "total_time_cv", "token_throughput_ci95_lo_tok_s",
                  "token_throughput_ci95_hi_tok_s"}


def _table(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(open(path))]


@pytest.mark.slurm
@pytest.mark.slow
def test_pipeline_on_slurm_equals_local_run_and_kills_become_rows(local_slurm, tmp_path):
    if not (REPO / "rules" / "batch.smk").exists():
        pytest.skip("rules/batch.smk not written yet")
    config = ["--config", f"overrides={REDUCED}"]
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    local_dir.mkdir()
    slurm_dir.mkdir()
    local = run_snakemake(["--cores", "2"] + config, local_dir)
    assert local.returncode == 0, _out(local)[-3000:]
    on_slurm = run_snakemake(LOCAL_PROFILE + config, slurm_dir)
    text = _out(on_slurm)
    assert on_slurm.returncode == 0, text[-3000:]
    assert re.search(r"has been submitted with SLURM jobid \d+ \(log: \S+/rule_batch_run/", text), text[-3000:]
    assert "localrule dataset_table:" in text and "localrule build_dataset:" in text, text[-3000:]

    table = "results/cpu/s2s_table.csv"
    local_rows, slurm_rows = _table(local_dir / table), _table(slurm_dir / table)
    assert len(slurm_rows) == 1 and slurm_rows[0]["status"] == "ok", slurm_rows
    assert slurm_rows == local_rows
    requests = "results/cpu/batch/transformers/tiny-llama/s2s.requests.csv"
    assert (slurm_dir / requests).read_text() == (local_dir / requests).read_text()
    record = json.loads((slurm_dir / "results/cpu/batch/transformers/tiny-llama/s2s.json").read_text())
    assert record["status"] == "ok" and record["output_tokens"] == record["requested_output_tokens"], record

    # SLURM kills the batch job at its memory limit: the record is missing, its failure record says why
    killed = run_snakemake(LOCAL_PROFILE + [table, "--set-resources", "batch_run:mem_mb=300",
                                            "--forcerun", "batch_run"] + config, slurm_dir)
    assert killed.returncode != 0, _out(killed)[-3000:]
    failure = slurm_dir / "results/cpu/batch/transformers/tiny-llama/s2s.slurm.json"
    assert not (slurm_dir / "results/cpu/batch/transformers/tiny-llama/s2s.json").exists()
    assert json.loads(failure.read_text())["status"] == "oom", _out(killed)[-3000:]

    # resubmitting writes the table with the kill as the row's status and submits nothing
    again = run_snakemake(LOCAL_PROFILE + [table] + config, slurm_dir)
    assert again.returncode == 0, _out(again)[-3000:]
    assert "submitted with SLURM jobid" not in _out(again)
    row = _table(slurm_dir / table)[0]
    assert (row["library"], row["model"], row["status"]) == ("transformers", "tiny-llama", "oom"), row
    assert "exceeded its memory limit" in row["reason"] and "SLURM job" in row["reason"], row


def test_a_killed_serving_or_profiling_job_is_its_row(tmp_path):
    import pandas as pd

    from inference_eval.profiling.workflow import fit_coefficients
    from inference_eval.serving.figures import load_sweeps

    csv = tmp_path / "cpu/serving/vllm_tiny-llama_s2s.csv"
    failure = slurm_failures.failure_path(csv)
    failure.parent.mkdir(parents=True)
    failure.write_text(json.dumps({"kind": "slurm_failure", "hardware": "cpu", "library": "vllm", "model": "tiny-llama",
                                   "dataset": "s2s", "status": "timeout", "reason": "SLURM job 9: TIME LIMIT"}))
    assert slurm_failures.stand_in(csv) == str(failure)
    frame = load_sweeps([slurm_failures.stand_in(csv)])
    assert frame[["library", "status", "reason"]].values.tolist() == [["vllm", "timeout", "SLURM job 9: TIME LIMIT"]]
    # a profiling job's record lies beside its first output; every output it would make maps to it
    first = tmp_path / "cpu/modules/vllm_prefill_seq.csv"
    points = tmp_path / "cpu/modules/vllm_points.csv"
    pfail = slurm_failures.failure_path(first)
    pfail.parent.mkdir(parents=True)
    pfail.write_text(json.dumps({"kind": "slurm_failure", "hardware": "cpu", "variant": "vllm", "status": "oom",
                                 "reason": "SLURM job 10: memory limit"}))
    assert slurm_failures.stand_in(points, first) == str(pfail)
    table = fit_coefficients([slurm_failures.stand_in(points, first)], str(tmp_path / "coefficients.csv"))
    assert set(table["stage"]) == {"prefill", "decode"} and (table["status"] == "oom").all()
    assert (table["library"] == "vllm").all() and pd.read_csv(tmp_path / "coefficients.csv").shape[0] == 2
