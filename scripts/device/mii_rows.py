"""MII's batch and serving rows on a fresh GPU machine without Snakemake: the package's own harness
(``batch.run_batch``, ``serving.sweep.run_sweep``) on job configs composed beforehand by the pipeline
(``PipelineConfig.job``), so each record's config is the one Snakemake would have passed.

    here:    .venv/bin/python scripts/device/mii_rows.py prepare .miirun   (configs + built dataset rows)
    device (after campaign.sh's steps mii1 and miiprep installed the kit):
             PYTHONPATH=$PWD/src:/tmp/miisite:$PYTHONPATH python3 scripts/device/mii_rows.py run .miirun $OUT [--budget S]

``run`` builds DeepSpeed's ops while the random-weight model folder is written (mii_try.py), then runs
the jobs in ``.miirun/jobs.json`` in order, skipping what would not finish inside ``--budget`` seconds,
and after each job packs what exists into ``$OUT/mii.tgz`` (so a call stopped at its limit still returns
the finished rows).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

HW, MODEL = "h200", "llama2-7b"
# The vLLM rows' schedule at the two rates that fit one short call: the same requests and arrivals.
SERVE = ["scenario.num_requests=160", "scenario.rates=[8.0,32.0]", "scenario.drop_first=10", "scenario.drop_last=10"]
# (kind, dataset, seconds it needs at least: load + run, as measured on the H200)
JOBS = [("batch", "s2s", 40), ("serving", "s2s", 100), ("batch", "l2s", 50), ("batch", "s2l", 90)]
RESULTS = "/root/campaign/results"


def prepare(out: Path) -> None:
    from inference_eval.campaign import load
    from inference_eval.config import PipelineConfig

    limits = load(HW).limits  # the campaign's seeded subsets (conf/campaign/h200.yaml)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for kind, dataset, need in JOBS:
        overrides = ["matrix.dataset_variant=real", "data_root=/root/campaign/data", f"results_dir={RESULTS}",
                     f"dataset.limit={limits[dataset]}"] + (SERVE if kind == "serving" else [])
        pipe = PipelineConfig.from_snakemake({"model": MODEL, "hardware": HW, "overrides": " ".join(overrides)})
        cfg = pipe.job(dataset=dataset, library="mii", model=MODEL, hardware=HW, scenario=kind)
        built = REPO / "results" / "datasets" / dataset
        (out / dataset).mkdir(exist_ok=True)
        for name in ("rows.jsonl", "manifest.json"):
            shutil.copy(built / name, out / dataset / name)
        jobs.append({"kind": kind, "dataset": dataset, "need_s": need, "cfg": dict(cfg)})
    (out / "jobs.json").write_text(json.dumps(jobs, indent=1))
    print(f"{len(jobs)} jobs -> {out}")


def pack(out: Path) -> None:
    tmp = out / "mii.tgz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(RESULTS + f"/{HW}", arcname=f"results/{HW}")
    tmp.replace(out / "mii.tgz")


def run(folder: Path, out: Path, budget: float) -> int:
    from inference_eval.batch import run_batch
    from inference_eval.models.files import ModelFiles
    from inference_eval.serving.sweep import run_sweep

    t0 = time.monotonic()
    model_dir = Path("/tmp/llama2-7b")
    try_script = REPO / "scripts" / "device" / "mii_try.py"
    jit = subprocess.Popen([sys.executable, str(try_script), "precompile", "--logs", "/tmp/jitlogs"])
    subprocess.run([sys.executable, str(try_script), "write-model", str(model_dir), "--tokenizer",
                    "/root/miikit/tokenizer"], check=True)
    if jit.wait() != 0:
        print("DeepSpeed op build failed: see /tmp/jitlogs", flush=True)
    print(f"[mii_rows] ops and model ready after {time.monotonic() - t0:.0f} s", flush=True)
    files = ModelFiles(hf_dir=str(model_dir), weights_dir=str(model_dir))
    base = Path(RESULTS) / HW
    for job in json.loads((folder / "jobs.json").read_text()):
        left = budget - (time.monotonic() - t0)
        name = f"{job['kind']} {job['dataset']}"
        if left < job["need_s"]:
            print(f"[mii_rows] skipped {name}: {left:.0f} s left, needs {job['need_s']}", flush=True)
            continue
        t = time.monotonic()
        rows = folder / job["dataset"] / "rows.jsonl"
        if job["kind"] == "batch":
            d = base / "batch" / "mii" / MODEL
            d.mkdir(parents=True, exist_ok=True)
            rec = run_batch(job["cfg"], rows, files, d / f"{job['dataset']}.json", d / f"{job['dataset']}.requests.csv",
                            d / f"{job['dataset']}.log", echo=False)
            print(f"[mii_rows] {name}: {rec['status']} {rec.get('reason', '')[:200]} n_exact={rec.get('n_exact')} "
                  f"total={rec.get('total_time_s')} stats={rec.get('backend_stats', {}).get('submission')}", flush=True)
        else:
            csv = base / "serving" / f"mii_{MODEL}_{job['dataset']}.csv"
            frame = run_sweep(job["cfg"], rows, files, csv, base / "serving" / "runs" / f"mii_{MODEL}_{job['dataset']}",
                              dataset=job["dataset"])
            print(f"[mii_rows] {name}:", frame[["rate", "status", "n_ok", "n_failed", "token_throughput_tok_s"]]
                  .to_string(index=False), flush=True)
        print(f"[mii_rows] {name} took {time.monotonic() - t:.0f} s", flush=True)
        pack(out)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("folder", type=Path)
    r = sub.add_parser("run")
    r.add_argument("folder", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--budget", type=float, default=240.0)
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.folder)
        return 0
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run(args.folder, args.out, args.budget)


if __name__ == "__main__":
    sys.exit(main())
