"""scripts/device/unpack_results.py (report.sh's first step): an archive from the lent GPU replaces committed
records; one made before the fair defaults moves to before-fairness/ with its companions, others are named."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

from inference_eval.records.batch import BatchRecord
from inference_eval.records.serving import ServingRow, rows_frame

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device" / "unpack_results.py"
MANIFEST = {"settings": {"prefix_caching": False}}


def _record(total: float, fairness=None) -> bytes:
    rec = BatchRecord(library="mii", model="llama2-7b", dataset="s2s", hardware="h200", status="ok",
                      total_time_s=total, fairness=fairness)
    return json.dumps(rec.to_dict()).encode()


def _sweep(tok_s: float, manifest: bool) -> bytes:
    row = ServingRow(library="mii", model="llama2-7b", dataset="l2s", hardware="h200", rate=2.0, status="ok",
                     token_throughput_tok_s=tok_s, prefix_caching="False" if manifest else None,
                     requests_sha256="ab" if manifest else None)
    return rows_frame([row]).to_csv(index=False).encode()


def _write(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _archive(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _unpack(cwd: Path, *archives: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "h200", *map(str, archives)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_records_before_the_fair_defaults_are_kept_and_replacements_named(tmp_path):
    batch = "results/h200/batch/mii/llama2-7b/s2s"
    _write(tmp_path, {f"{batch}.json": _record(1.08), f"{batch}.log": b"old log", f"{batch}.requests.csv": b"old",
                      "results/h200/batch/vllm/llama2-7b/s2s.json": _record(0.56, MANIFEST),
                      "results/h200/serving/mii_llama2-7b_l2s.csv": _sweep(513.0, manifest=False),
                      "results/h200/serving/runs/mii_llama2-7b_l2s/server.log": b"old server"})
    new = {f"{batch}.json": _record(0.80, MANIFEST), f"{batch}.log": b"new log",
           "results/h200/batch/vllm/llama2-7b/s2s.json": _record(0.55, MANIFEST),
           "results/h200/serving/mii_llama2-7b_l2s.csv": _sweep(700.0, manifest=True),
           "results/h200/serving/runs/mii_llama2-7b_l2s/server.log": b"new server",
           "results/datasets/s2s/rows.jsonl": b"{}\n"}
    done = _unpack(tmp_path, _archive(tmp_path / "results-h200.tgz", new))
    assert done.returncode == 0, done.stderr
    hw = tmp_path / "results" / "h200"
    before = hw / "before-fairness"
    assert BatchRecord.load(before / "batch/mii/llama2-7b/s2s.json").total_time_s == 1.08
    assert (before / "batch/mii/llama2-7b/s2s.log").read_bytes() == b"old log"
    assert (before / "batch/mii/llama2-7b/s2s.requests.csv").read_bytes() == b"old"
    assert (before / "serving/runs/mii_llama2-7b_l2s/server.log").read_bytes() == b"old server"
    assert "513" in (before / "serving/mii_llama2-7b_l2s.csv").read_text()
    assert BatchRecord.load(hw / "batch/mii/llama2-7b/s2s.json").total_time_s == 0.80
    assert not (hw / "batch/mii/llama2-7b/s2s.requests.csv").exists()      # the old run's, moved with it
    assert (hw / "serving/runs/mii_llama2-7b_l2s/server.log").read_bytes() == b"new server"
    assert not (before / "batch/vllm").exists()                           # it had a manifest
    assert "kept" in done.stderr and "before-fairness/batch/mii/llama2-7b/s2s.json" in done.stderr
    assert "replaces" in done.stderr and "results/h200/batch/vllm/llama2-7b/s2s.json" in done.stderr
    assert "datasets" not in done.stderr

    # a second re-run of a run whose "before" is kept: the first "before" stays, the replacement is named
    _write(tmp_path, {"results/h200/serving/mii_llama2-7b_l2s.csv": _sweep(600.0, manifest=False)})
    again = _unpack(tmp_path, _archive(tmp_path / "again.tgz",
                                       {"results/h200/serving/mii_llama2-7b_l2s.csv": _sweep(710.0, manifest=True)}))
    assert again.returncode == 0, again.stderr
    assert "513" in (before / "serving/mii_llama2-7b_l2s.csv").read_text()
    assert "already holds an earlier run" in again.stderr
    assert "710" in (hw / "serving/mii_llama2-7b_l2s.csv").read_text()


def test_an_unsafe_or_missing_archive_is_refused(tmp_path):
    bad = _unpack(tmp_path, _archive(tmp_path / "bad.tgz", {"../outside.txt": b"x"}))
    assert bad.returncode == 1 and "unpack:" in bad.stderr
    assert not (tmp_path.parent / "outside.txt").exists()
    missing = _unpack(tmp_path, tmp_path / "nope.tgz")
    assert missing.returncode == 2 and "no archive" in missing.stderr and "nope.tgz" in missing.stderr


def test_fairness_summary_reads_mii_before_and_after_its_re_run(tmp_path):
    """Once MII's re-run arrives, the kept rows give FAIRNESS.md MII's own before beside its after: its batch
    row, and the MII / vLLM ratios before from the old rows and after from the new ones."""
    import shutil

    import pandas as pd

    hw = tmp_path / "results" / "h200"
    shutil.copytree(ROOT / "results" / "h200", hw, ignore=shutil.ignore_patterns("*.png", "*.html"))
    old_mii = pd.read_csv(hw / "serving" / "mii_llama2-7b_l2s.csv")
    new_mii = old_mii.assign(tpot_s_mean=old_mii["tpot_s_mean"] * 0.5, prefix_caching="False",
                             requests_sha256="ab")
    old_batch = BatchRecord.load(hw / "batch" / "mii" / "llama2-7b" / "s2s.json")
    new_batch = BatchRecord.from_dict({**old_batch.to_dict(), "total_time_s": 0.9, "repeats": 3,
                                       "repeat_times_s": [0.9, 0.9, 0.9], "fairness": MANIFEST})
    archive = _archive(tmp_path / "results-h200.tgz", {
        "results/h200/serving/mii_llama2-7b_l2s.csv": new_mii.to_csv(index=False).encode(),
        "results/h200/batch/mii/llama2-7b/s2s.json": json.dumps(new_batch.to_dict()).encode()})
    assert _unpack(tmp_path, archive).returncode == 0

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "device" / "fairness_summary.py"), str(hw)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "MII's rows before and after its own re-run with the fair defaults" in out
    vllm_before = pd.read_csv(hw / "before-fairness" / "serving" / "vllm_llama2-7b_l2s.csv").set_index("rate")
    vllm_after = pd.read_csv(hw / "serving" / "vllm_llama2-7b_l2s.csv").set_index("rate")
    mii_before, mii_after = old_mii.set_index("rate"), new_mii.set_index("rate")
    before = mii_before.loc[32.0, "tpot_s_mean"] / vllm_before.loc[32.0, "tpot_s_mean"]
    after = mii_after.loc[32.0, "tpot_s_mean"] / vllm_after.loc[32.0, "tpot_s_mean"]
    assert f"| 32 | {before:.2f}x -> {after:.2f}x |" in out
    row = next(line for line in out.splitlines() if line.startswith("| mii | s2s |"))
    assert f"| mii | s2s | {old_batch.total_time_s:.3g} s" in row and "(no manifest)" in row and "| 0.9 s" in row
