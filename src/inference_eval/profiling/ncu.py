"""Nsight Compute: per-kernel time and DRAM bytes, joined to the op ranges of ONE decoder layer.

Nsight Compute replays every kernel it profiles, so only one decoder layer's ops get NVTX ranges
(``RangeMarker(nvtx_layers={layer})``), named ``ie.b<b>.s<s>.<stage>.<op>``, and one regex
``--nvtx-include`` selects exactly those. The profiled program is this module run as a script
(``python -m inference_eval.profiling.ncu --spec spec.json``): it loads the library's model once,
and for every (b, s) point runs one unranged warm-up step, then one step with the ranges on.

The CSV (``--csv --print-units base``, details page) has one row per kernel and metric:
``"ID","Process ID","Process Name","Host Name","thread Domain:Push/Pop_Range:...","Id:Domain:Start/Stop_Range:...",
"Kernel Name",...,"Metric Name","Metric Unit","Metric Value"``; the push/pop column holds the
thread's range stack, e.g. ``551  "<default domain>:ie.b8.s512.prefill.qkv_proj:none:...:none" ``,
and values carry thousands separators (``"147,456"``); time is in ``ns``, bytes in ``byte``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Iterable

import pandas as pd

from inference_eval.opnames import OPS, STAGES
from inference_eval.processes import run_group

METRICS = ("gpu__time_duration.sum", "dram__bytes_read.sum", "dram__bytes_write.sum")
RANGE_RE = re.compile(r"ie\.b(\d+)\.s(\d+)\.(prefill|decode)\.([a-z_]+)")
NVTX_INCLUDE = r"regex:ie\.b[0-9]+\.s[0-9]+\.(prefill|decode)\.[a-z_]+/"
UNIT_SCALE = {"ns": 1e-9, "nsecond": 1e-9, "usecond": 1e-6, "us": 1e-6, "msecond": 1e-3, "ms": 1e-3,
              "second": 1.0, "s": 1.0, "byte": 1.0, "kbyte": 1e3, "mbyte": 1e6, "gbyte": 1e9, "": 1.0}


class NcuError(RuntimeError):
    """Nsight Compute failed or its output cannot be read; the message says which and why."""


def range_name(b: int, s: int, stage: str, op: str) -> str:
    return f"ie.b{b}.s{s}.{stage}.{op}"


def available() -> bool:
    return shutil.which("ncu") is not None


def command(program: list[str], log_file: str | Path, metrics: Iterable[str] = METRICS) -> list[str]:
    """The ncu command line that profiles ``program``'s ranged kernels into CSV ``log_file``."""
    return ["ncu", "--nvtx", "--nvtx-include", NVTX_INCLUDE, "--clock-control", "none",
            "--metrics", ",".join(metrics), "--csv", "--print-units", "base", "--target-processes", "all",
            "--log-file", str(log_file), *program]


def _number(text: str) -> float:
    text = (text or "").strip().replace(",", "")
    if text in ("", "n/a", "N/A"):
        return float("nan")
    return float(text)


def parse_csv(text: str) -> pd.DataFrame:
    """Long kernel x metric rows -> one row per kernel: id, kernel, nvtx, and each metric in base SI units."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        raise NcuError("no CSV header (a line starting with \"ID\") in the Nsight Compute output")
    reader = csv.DictReader(io.StringIO("\n".join(lines[start:])))
    fields = reader.fieldnames or []
    nvtx_col = next((f for f in fields if "Push/Pop_Range" in f), None)
    for need in ("ID", "Kernel Name", "Metric Name", "Metric Unit", "Metric Value"):
        if need not in fields:
            raise NcuError(f"Nsight Compute CSV lacks column {need!r} (has {fields})")
    kernels: dict[int, dict] = {}
    for row in reader:
        if not row.get("ID") or not row["ID"].strip().isdigit():
            continue
        kid = int(row["ID"])
        k = kernels.setdefault(kid, {"id": kid, "kernel": row["Kernel Name"],
                                     "nvtx": row.get(nvtx_col, "") if nvtx_col else ""})
        unit = (row["Metric Unit"] or "").strip().lower()
        if unit not in UNIT_SCALE:
            raise NcuError(f"kernel {kid}: unknown unit {row['Metric Unit']!r} for {row['Metric Name']}")
        k[row["Metric Name"]] = _number(row["Metric Value"]) * UNIT_SCALE[unit]
    return pd.DataFrame(list(kernels.values()))


def join_ranges(kernels: pd.DataFrame, layer: int) -> pd.DataFrame:
    """Per (b, s, stage, op) of the profiled layer: DRAM bytes read/written, kernel time, kernel count."""
    from inference_eval.profiling.attribution import KV_CACHE_KERNEL

    cols = ["b", "s", "stage", "op", "dram_read_bytes", "dram_write_bytes", "dram_bytes", "ncu_time_s",
            "ncu_kernels", "ncu_layer"]
    if kernels.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for _, k in kernels.iterrows():
        found = RANGE_RE.findall(str(k.get("nvtx", "")))
        if not found:
            continue  # a kernel outside our ranges (the include filter should not let any through)
        b, s, stage, op = found[-1]  # innermost range on the stack
        if op == "attention" and KV_CACHE_KERNEL.search(str(k["kernel"])):
            op = "kv_cache"
        if op not in OPS or stage not in STAGES:
            raise NcuError(f"kernel {k['id']}: range op {op!r} / stage {stage!r} not in opnames")
        rows.append({"b": int(b), "s": int(s), "stage": stage, "op": op,
                     "dram_read_bytes": k.get("dram__bytes_read.sum", float("nan")),
                     "dram_write_bytes": k.get("dram__bytes_write.sum", float("nan")),
                     "ncu_time_s": k.get("gpu__time_duration.sum", float("nan"))})
    if not rows:
        return pd.DataFrame(columns=cols)
    frame = pd.DataFrame(rows)
    out = frame.groupby(["b", "s", "stage", "op"], sort=False).agg(
        dram_read_bytes=("dram_read_bytes", "sum"), dram_write_bytes=("dram_write_bytes", "sum"),
        ncu_time_s=("ncu_time_s", "sum"), ncu_kernels=("ncu_time_s", "size")).reset_index()
    out["dram_bytes"] = out["dram_read_bytes"] + out["dram_write_bytes"]
    out["ncu_layer"] = layer
    return out[cols]


def profile(spec: dict, workdir: str | Path, timeout_s: float) -> pd.DataFrame:
    """Run the library's points under Nsight Compute (a child process) and return ``join_ranges``."""
    if not available():
        raise NcuError("ncu is not on PATH")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / "ncu_spec.json"
    spec_path.write_text(json.dumps(spec, default=str))
    log = workdir / "ncu.csv"
    cmd = command([sys.executable, "-m", "inference_eval.profiling.ncu", "--spec", str(spec_path)], log)
    # the child must import this package even when it is not installed (PYTHONPATH=src checkouts)
    src_root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (src_root, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", PYTHONPATH=path)
    # its own process group: at the timeout (or when the job is cancelled) ncu and the program it
    # profiles are ended together, not ncu alone
    proc = run_group(cmd, timeout_s, capture_output=True, text=True, env=env)
    (workdir / "ncu_stdout.txt").write_text((proc.stdout or "") + "\n--- stderr ---\n" + (proc.stderr or ""))
    if proc.timed_out:
        raise NcuError(f"ncu ran past {timeout_s:.0f} s (its process group was {proc.ending.value}): "
                       f"{' '.join(cmd)}")
    if proc.returncode != 0 or not log.exists():
        raise NcuError(f"ncu exited with {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}")
    return join_ranges(parse_csv(log.read_text()), int(spec["layer"]))


def _target(spec: dict) -> None:
    """The program ncu profiles: one warm-up and one ranged run per point, one layer's NVTX only."""
    from inference_eval.profiling.attribution import RangeMarker
    from inference_eval.profiling.runners import make_runner

    state = {"point": (0, 0)}
    marker = RangeMarker(nvtx=True, nvtx_layers={int(spec["layer"])},
                         nvtx_name=lambda stage, op: range_name(*state["point"], stage, op))
    runner = make_runner(spec["variant"], spec["cfg"], marker, hf_dir=spec.get("hf_dir"),
                         max_tokens_per_step=int(spec["max_tokens_per_step"]), max_seqs=int(spec["max_seqs"]))
    for b, s in spec["shapes"]:
        state["point"] = (int(b), int(s))
        marker.nvtx = False
        runner.run(int(b), int(s), repeat=-1)
        marker.nvtx = True
        runner.run(int(b), int(s), repeat=0)
    runner.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="program profiled by Nsight Compute (internal)")
    parser.add_argument("--spec", required=True)
    args = parser.parse_args(argv)
    _target(json.loads(Path(args.spec).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
