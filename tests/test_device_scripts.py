"""The GPU campaign's shell scripts: they parse, and campaign.sh's background helpers behave.

The campaign runs only on the lent GPU; these checks run its pure-shell parts here, so a broken step is
found before it costs device time.
"""

from __future__ import annotations

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


def _helpers() -> str:
    """campaign.sh's `background` and `await` functions, as text to source."""
    text = (ROOT / "scripts" / "device" / "campaign.sh").read_text()
    found = [re.search(rf"^{name}\(\) {{\n.*?^}}\n", text, re.S | re.M) for name in ("background", "await")]
    assert all(found), "campaign.sh lost its background/await helpers"
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
