#!/usr/bin/env bash
# Tables and figures of a GPU campaign, made here (no GPU needed) from what its steps brought back:
#   bash scripts/device/report.sh HW results-HW.tgz [more.tgz ...]
# Unpacks each step's results-<hw>.tgz (later ones win) into results/, then runs the report rules
# (tables, bounds, theory, figures) with `--rerun-triggers mtime`: the runs were made on the GPU with
# that machine's paths in their configs, and must not be planned again here.
set -euo pipefail
cd "$(dirname "$0")/../.."
hw=${1:?hardware key}; shift
for tgz in "$@"; do tar xzf "$tgz" -C .; done
limit() { case $1 in s2s) echo 200;; l2s) echo 64;; s2l) echo 16;; s16k) echo 2;; esac; }
sm() {
  local model=$1 ov=$2; shift 2
  .venv/bin/snakemake --cores 2 --keep-going --rerun-triggers mtime --config model="$model" hardware="$hw" \
    overrides="matrix.dataset_variant=real $ov" -- "$@"
}
# The libraries with a run record (ok or failed) for a model and dataset: a library the campaign did not
# reach has no record and is left out of that table (results/<hw>/README.md says which, and why).
ran() { ls results/$hw/batch/*/$1/$2.json 2>/dev/null | awk -F/ '{print $4}' | paste -sd, - || true; }
tables=()
for d in s2s l2s s2l; do
  libs=$(ran llama2-7b $d); [ -n "$libs" ] || continue
  sm llama2-7b "dataset.limit=$(limit $d) matrix.libraries=[$libs]" "results/$hw/${d}_table.csv"; tables+=("$d")
done
libs=$(ran vicuna-7b-16k s16k)
[ -z "$libs" ] || sm vicuna-7b-16k "dataset.limit=2 matrix.libraries=[$libs]" "results/$hw/s16k_table.csv"
sm llama2-7b "" "results/$hw/theory/llama2-7b_ops_b8_s512.csv" "results/$hw/theory/llama2-7b_roofline.png"
# The throughput figure over the tables made above (its rule reads only the tables).
all=$(IFS=,; echo "${tables[*]}")
sm llama2-7b "matrix.datasets=[$all] matrix.libraries=[$(ran llama2-7b s2s)]" "results/$hw/figures/throughput.png"
for d in s2s l2s; do
  served=$(ls results/$hw/serving/*_llama2-7b_$d.csv 2>/dev/null | sed "s#.*/##; s#_llama2-7b_$d.csv##" | paste -sd, -)
  [ -z "$served" ] || sm llama2-7b "dataset.limit=$(limit $d) matrix.libraries=[$served]" "results/$hw/figures/serving_$d.png"
done
# The fitted time model and the module figures over the libraries the campaign profiled (a modules record each).
profiled=$(ls results/$hw/modules/*.json 2>/dev/null | sed 's#.*/##; s#\.json$##' | paste -sd, -)
if [ -n "$profiled" ]; then
  sm llama2-7b "profiling.libraries=[$profiled]" "results/$hw/coefficients.csv" "results/$hw/figures/module_shares.png" \
    "results/$hw/figures/time_model_fit.png"
fi
