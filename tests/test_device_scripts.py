"""The GPU campaign's shell scripts: they parse, and campaign.sh's background helpers behave.

The campaign runs only on the lent GPU; these checks run its pure-shell parts here, so a broken step is
found before it costs device time.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVICE_SCRIPTS = sorted((ROOT / "scripts" / "device").glob("*.sh"))


@pytest.mark.parametrize("script", DEVICE_SCRIPTS, ids=lambda p: p.name)
def test_device_script_parses(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _helpers(names=("background", "await")) -> str:
    """campaign.sh's functions ``names`` (default its background helpers), as text to source."""
    text = (ROOT / "scripts" / "device" / "campaign.sh").read_text()
    found = [re.search(rf"^{name}\(\) {{\n.*?^}}\n", text, re.S | re.M) for name in names]
    assert all(found), f"campaign.sh lost one of its functions {names}"
    return "".join(m.group(0) for m in found)


def _run(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    script = f"set -u\nCAMPAIGN={tmp_path}/campaign OUT={tmp_path}/out\nmkdir -p $CAMPAIGN $OUT\n{_helpers()}\n{body}"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)


def test_background_work_reports_its_exit_status_and_log(tmp_path):
    proc = _run(tmp_path, """
background ok bash -c 'sleep 1; echo built'
background bad bash -c 'echo broken; exit 4'
await ok 30; echo "ok=$?"
await bad 30; echo "bad=$?"
""")
    assert "ok=0" in proc.stdout and "bad=1" in proc.stdout, proc.stdout + proc.stderr
    assert "rc 0" in proc.stdout and "rc 4" in proc.stdout
    assert "built" in proc.stdout and "broken" in proc.stdout  # the log's tail is shown
    assert (tmp_path / "out" / "ok.log").read_text().strip() == "built"  # and returned under $OUT


def test_background_work_outlives_its_caller_in_its_own_session(tmp_path):
    # The device kills what a call leaves running unless it started a new process session.
    _run(tmp_path, "background late bash -c 'sleep 2; echo done'")
    proc = _run(tmp_path, "await late 30; echo \"late=$?\"")
    assert "late=0" in proc.stdout, proc.stdout + proc.stderr


def test_await_of_work_never_started_fails_at_once(tmp_path):
    proc = _run(tmp_path, "SECONDS=0; await nothing 30; echo \"rc=$? waited=$SECONDS\"")
    assert "never started" in proc.stdout
    rc, waited = re.search(r"rc=(\d+) waited=(\d+)", proc.stdout).groups()
    assert rc == "1" and int(waited) < 5


def test_await_gives_up_after_its_time(tmp_path):
    proc = _run(tmp_path, """
background slow sleep 12
SECONDS=0; await slow 5; echo "rc=$? waited=$SECONDS"
""")
    assert "not done" in proc.stdout
    rc, waited = re.search(r"rc=(\d+) waited=(\d+)", proc.stdout).groups()
    assert rc == "1" and 5 <= int(waited) < 15


# -- `run PART`: the part's calls come from the campaign config ------------------------------------------------
def _run_part(tmp_path: Path, body: str, sm_rc: str = "0", budget: int = 100) -> subprocess.CompletedProcess:
    """campaign.sh's run_part, quiet and background helpers with the machine's parts stubbed: Snakemake (sm)
    echoes its call and makes its targets (or returns ``sm_rc``), the engines and packing only say so."""
    import sys

    stubs = f"""
set -u
CAMPAIGN={tmp_path}/campaign OUT={tmp_path}/out RESULTS={tmp_path}/results HW=h200 CAMPAIGN_NAME=h200
mkdir -p $CAMPAIGN $OUT
arg_budget={budget} budget={budget} start=$(date +%s)
left() {{ echo $(( budget - ($(date +%s) - start) )); }}
campaign() {{ PYTHONPATH={ROOT / 'src'} {sys.executable} -m inference_eval.campaign "$1" "$CAMPAIGN_NAME" "${{@:2}}"; }}
setup_python() {{ :; }}
engine_env() {{ echo "engine $1"; }}
pack() {{ echo packed; }}
sm() {{
  echo "sm model=$1 ov=$2 targets=${{*:3}}"
  r={sm_rc}; [ "$r" = 0 ] || return "$r"
  for t in "${{@:3}}"; do mkdir -p "$(dirname "$t")"; : > "$t"; done
}}
"""
    script = stubs + _helpers(("background", "await", "quiet", "run_part")) + body
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)


def _calls(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("sm ")]


def test_run_part_makes_one_snakemake_call_per_dataset_with_its_limit_and_schedule(tmp_path):
    proc = _run_part(tmp_path, 'SERVE_EXTRA="scenario.port=8000" run_part vllm-7b-serving; echo "rc=$?"')
    calls = _calls(proc.stdout)
    assert "rc=0" in proc.stdout and "engine vllm" in proc.stdout, proc.stdout + proc.stderr
    assert len(calls) == 2
    assert "dataset.limit=200 scenario.num_requests=160 scenario.rates=[2.0,8.0,32.0]" in calls[0]
    assert calls[0].endswith(f"scenario.port=8000 targets={tmp_path}/results/h200/serving/vllm_llama2-7b_s2s.csv")
    assert "dataset.limit=64" in calls[1] and calls[1].endswith("vllm_llama2-7b_l2s.csv")
    assert proc.stdout.count("packed") == 2  # after each dataset
    # the same call again: the targets exist now, and Snakemake (not the script) skips them
    again = _run_part(tmp_path, "DATASETS=l2s run_part vllm-7b-serving; echo \"rc=$?\"")
    assert len(_calls(again.stdout)) == 1 and "dataset.limit=64" in _calls(again.stdout)[0]


def test_run_part_batch_calls_carry_the_repeats_and_its_warmup_setting(tmp_path):
    proc = _run_part(tmp_path, 'run_part llamacpp-7b-batch; echo "rc=$?"')
    calls = _calls(proc.stdout)
    assert [c.split("targets=")[1].rsplit("/", 1)[1] for c in calls] == ["s2s.json", "l2s.json", "s2l.json"]
    assert all("scenario.repeats=3 scenario.warmup_repeats=0" in c for c in calls) and "rc=0" in proc.stdout


def test_run_part_stops_with_rc_124_when_its_budget_runs_out(tmp_path):
    """rc 124 (Snakemake stopped by the budget's timeout) means: send the same call again."""
    proc = _run_part(tmp_path, 'run_part vllm-13b-batch; echo "rc=$?"', sm_rc="124")
    assert len(_calls(proc.stdout)) == 1 and "rc=124" in proc.stdout
    spent = _run_part(tmp_path, 'run_part vllm-13b-batch; echo "rc=$?"', budget=20)
    assert not _calls(spent.stdout) and "rc=124" in spent.stdout and "no time left" in spent.stdout


def test_run_part_goes_on_after_a_failed_dataset_and_returns_its_rc(tmp_path):
    proc = _run_part(tmp_path, 'run_part trf-13b-batch; echo "rc=$?"', sm_rc="1")
    assert len(_calls(proc.stdout)) == 3 and "rc=1" in proc.stdout


def test_run_part_waits_for_background_work_before_timed_runs(tmp_path):
    proc = _run_part(tmp_path, """
background build bash -c 'sleep 2; echo built > {out}/built'
sm() {{ [ -f {out}/built ] && echo "sm after the build: $3"; }}
run_part trtllm-7b-batch; echo "rc=$?"
""".format(out=tmp_path))
    assert proc.stdout.count("sm after the build") == 3 and "rc=0" in proc.stdout, proc.stdout + proc.stderr
    late = _run_part(tmp_path, """
background slow sleep 30
run_part trtllm-7b-batch; echo "rc=$?"
""", budget=5)
    assert not _calls(late.stdout) and "rc=124" in late.stdout and "slow still running" in late.stdout


def test_a_modules_part_runs_beside_background_work(tmp_path):
    """Per-op profiles time device kernels, which CPU work does not change: they need not wait."""
    proc = _run_part(tmp_path, """
SECONDS=0; background slow sleep 20
run_part vllm-modules; echo "rc=$? waited=$SECONDS"
""")
    calls = _calls(proc.stdout)
    assert len(calls) == 1 and "profiling.model=llama2-7b" in calls[0] and "rc=0" in proc.stdout
    assert calls[0].endswith("/results/h200/modules/vllm.json")
    assert int(re.search(r"waited=(\d+)", proc.stdout).group(1)) < 15


def test_run_part_starts_a_part_longer_than_a_call_in_the_background(tmp_path):
    body = """
tree_copy() { echo "$CAMPAIGN/tree-$1"; }
background() { echo "background $*"; : > "$CAMPAIGN/$1.log"; echo 0 > "$CAMPAIGN/$1.rc"; }
run_part trf-vicuna7b-s16k; echo "rc=$?"
"""
    proc = _run_part(tmp_path, body)
    assert "rc=0" in proc.stdout, proc.stdout + proc.stderr
    started = next(line for line in proc.stdout.splitlines() if line.startswith("background run-trf-vicuna7b-s16k"))
    assert "BG_SELF=run-trf-vicuna7b-s16k" in started and "campaign.sh run trf-vicuna7b-s16k 3000" in started
    assert not _calls(proc.stdout)  # the background call runs the part itself


def _probe_module():
    import importlib.util

    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("trf_step_probe", ROOT / "scripts" / "device" / "trf_step_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_probe_forecast_integrates_step_times_between_and_beyond_the_points():
    forecast_s = _probe_module().forecast_s
    # linear from 0.05 s at context 16 to 0.1 s at 16,000, flat past the last point
    assert forecast_s([(16, 0.05), (16000, 0.1)], 16, 16000) == pytest.approx(0.075 * 15984)
    assert forecast_s([(16000, 0.1), (16, 0.05)], 16000, 16100) == pytest.approx(10.0)
    # flat before the first point, then two segments
    assert forecast_s([(100, 0.02), (200, 0.04), (300, 0.04)], 0, 300) == pytest.approx(2 + 3 + 4)


def test_fairness_summary_puts_the_committed_rows_side_by_side(tmp_path):
    """FAIRNESS.md's numbers are the CSVs' own: vLLM's l2s row at 32 req/s before and after, and the gap to MII."""
    import sys

    import pandas as pd

    script = str(ROOT / "scripts" / "device" / "fairness_summary.py")
    hw = ROOT / "results" / "h200"
    if not (hw / "before-fairness").is_dir():
        pytest.skip("results/h200/before-fairness is not in this checkout")
    proc = subprocess.run([sys.executable, script, str(hw)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    before = pd.read_csv(hw / "before-fairness" / "serving" / "vllm_llama2-7b_l2s.csv").set_index("rate")
    after = pd.read_csv(hw / "serving" / "vllm_llama2-7b_l2s.csv").set_index("rate")
    mii = pd.read_csv(hw / "serving" / "mii_llama2-7b_l2s.csv").set_index("rate")
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| 32 | 1,"))
    assert f"{before.loc[32.0, 'token_throughput_tok_s']:,.0f} / {after.loc[32.0, 'token_throughput_tok_s']:,.0f}" in row
    ratio = mii.loc[32.0, "tpot_s_mean"] / after.loc[32.0, "tpot_s_mean"]
    assert f"-> {ratio:.2f}x" in proc.stdout
    assert proc.stdout == (hw / "FAIRNESS.md").read_text()  # the committed file is current
    empty = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True)
    assert empty.returncode == 1 and "before-fairness" in empty.stderr


def test_fairness_summary_names_a_missing_vllm_sweep_instead_of_failing(tmp_path):
    """A column whose before-fairness folder holds only batch rows (as the H100's does) still gets its
    FAIRNESS.md: each dataset without both vLLM sweeps says which file is missing."""
    import sys

    (tmp_path / "before-fairness" / "batch").mkdir(parents=True)
    script = str(ROOT / "scripts" / "device" / "fairness_summary.py")
    proc = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for d in ("s2s", "l2s"):
        assert (f"Not compared: missing under {tmp_path.name}/: before-fairness/serving/vllm_llama2-7b_{d}.csv, "
                f"serving/vllm_llama2-7b_{d}.csv.") in proc.stdout


@pytest.mark.parametrize("hw, name", [("h200", "h200"), ("h100", "h200")])
def test_a_gpu_without_its_own_campaign_runs_the_h200_parts_on_its_hardware(tmp_path, hw, name):
    """The lent GPU is an H100 or an H200: campaign.sh's start picks conf/campaign/<hw>.yaml, else h200's
    parts with the targets under results/<hw>/."""
    import sys

    text = (ROOT / "scripts" / "device" / "campaign.sh").read_text()
    start = re.search(r"^set -uo pipefail\n.*?^campaign\(\) .*?\n", text, re.S | re.M).group(0)
    start = start.replace("python3 -m", f"{sys.executable} -m").replace("step=${1:?step}\n", "")
    script = start + 'echo "name=$CAMPAIGN_NAME"; campaign targets vllm-7b-serving s2s\n'
    env = dict(os.environ, HW=hw, CAMPAIGN_DIR=str(tmp_path / "c"), OUT=str(tmp_path / "o"))
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"name={name}" in proc.stdout
    assert f"results/{hw}/serving/vllm_llama2-7b_s2s.csv" in proc.stdout
    assert ("no conf/campaign/h100.yaml" in proc.stderr) == (hw == "h100")
