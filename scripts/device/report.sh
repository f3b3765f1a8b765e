#!/usr/bin/env bash
# Tables and figures of a GPU campaign, made here (no GPU needed) from what its steps brought back:
#   bash scripts/device/report.sh HW results-HW.tgz [more.tgz ...]
# Unpacks each step's results-<hw>.tgz (later ones win) into results/ (scripts/device/unpack_results.py: a
# committed record made before the fair defaults that an archive replaces moves to results/<hw>/before-fairness/
# first, and every other replaced record is named), then runs only the report rules
# (tables, bounds, theory, figures, the fit: REPORT_RULES below), never a run: the records came from the GPU,
# and a run planned here would start on the wrong hardware.
set -euo pipefail
cd "$(dirname "$0")/../.."
hw=${1:?hardware key}; shift
[ $# -eq 0 ] || .venv/bin/python scripts/device/unpack_results.py "$hw" "$@"
# The seeded subsets' rows per dataset: the campaign's (conf/campaign/<CAMPAIGN_NAME>.yaml, default the hardware
# key; the H100 column ran the same subsets: CAMPAIGN_NAME=h200 for it).
limit() { PYTHONPATH=src .venv/bin/python -m inference_eval.campaign limit "${CAMPAIGN_NAME:-$hw}" "$1"; }
# The campaign's datasets are git-ignored: a fresh clone builds those the step archives did not bring
# (the same seeded subsets from the same sources, so the same rows; DATA_ROOT: the sources' folder).
for d in s2s l2s s2l s16k; do
  [ -f "results/datasets/$d/rows.jsonl" ] && continue
  .venv/bin/snakemake --cores 2 --quiet all --config hardware="$hw" \
    overrides="matrix.dataset_variant=real data_root=${DATA_ROOT:-$(realpath ../shared/data)} dataset.limit=$(limit $d)" \
    -- "results/datasets/$d/rows.jsonl"
done
# Only the rules that read records (tables, bounds, theory, figures, the fit) are allowed (Snakemake's
# --allowed-rules): the records, datasets and model configs are then inputs that no rule here makes, so
# their dates (the GPU machine's clock, a fresh clone's checkout) cannot plan a run, and a missing record
# stops with Snakemake's missing-input error naming it instead of starting that run on this machine.
# --rerun-triggers mtime: the calls below carry different overrides (each dataset's row limit, the libraries
# that ran), so a params trigger would remake the same tables and bounds in every call; they depend on files.
# The bounds and the serving figures take their models from the records present (a second model's records
# join a table and a figure without being planned), and mtime cannot see a set of inputs grow: those made
# below are made again every time (fresh), so a model that arrived since gets its bound row and its panels.
fresh() { rm -f "$@"; }
REPORT_RULES="dataset_table dataset_bound theory_ops theory_roofline throughput_figure serving_figure fit_coefficients module_figures"
sm() {
  local model=$1 ov=$2; shift 2
  # shellcheck disable=SC2086  # REPORT_RULES is a list of rule names
  .venv/bin/snakemake --cores 2 --keep-going --rerun-triggers mtime --allowed-rules $REPORT_RULES \
    --config model="$model" hardware="$hw" overrides="matrix.dataset_variant=real $ov" -- "$@"
}
# The libraries with a run record (ok or failed) for a model and dataset: a library the campaign did not
# reach has no record and is left out of that table (results/<hw>/README.md says which, and why).
# Records of other models for the same dataset (a second model that only some libraries ran, e.g.
# Mistral-7B) join each table as their own group of rows without being planned (rules/report.smk,
# table_models); their roofline bound is the <dataset>_bound.csv row of their model.
ran() { ls results/$hw/batch/*/$1/$2.json 2>/dev/null | awk -F/ '{print $4}' | paste -sd, - || true; }
tables=()
for d in s2s l2s s2l; do
  libs=$(ran llama2-7b $d); [ -n "$libs" ] || continue
  fresh "results/$hw/${d}_bound.csv"
  sm llama2-7b "dataset.limit=$(limit $d) matrix.libraries=[$libs]" "results/$hw/${d}_bound.csv" \
    "results/$hw/${d}_table.csv"; tables+=("$d")
done
libs=$(ran vicuna-7b-16k s16k)
if [ -n "$libs" ]; then
  fresh "results/$hw/s16k_bound.csv"
  sm vicuna-7b-16k "dataset.limit=$(limit s16k) matrix.libraries=[$libs]" "results/$hw/s16k_bound.csv" \
    "results/$hw/s16k_table.csv"
fi
sm llama2-7b "" "results/$hw/theory/llama2-7b_ops_b8_s512.csv" "results/$hw/theory/llama2-7b_roofline.png"
# The throughput figure over the tables made above (its rule reads only the tables).
all=$(IFS=,; echo "${tables[*]}")
sm llama2-7b "matrix.datasets=[$all] matrix.libraries=[$(ran llama2-7b s2s)]" "results/$hw/figures/throughput.png"
for d in s2s l2s; do
  served=$(ls results/$hw/serving/*_llama2-7b_$d.csv 2>/dev/null | sed "s#.*/##; s#_llama2-7b_$d.csv##" | paste -sd, -)
  [ -z "$served" ] || { fresh "results/$hw/figures/serving_$d.png"
    sm llama2-7b "dataset.limit=$(limit $d) matrix.libraries=[$served]" "results/$hw/figures/serving_$d.png"; }
done
# The fitted time model and the module figures over the libraries the campaign profiled (a modules record each).
profiled=$(ls results/$hw/modules/*.json 2>/dev/null | sed 's#.*/##; s#\.json$##' | paste -sd, -)
if [ -n "$profiled" ]; then
  sm llama2-7b "profiling.libraries=[$profiled]" "results/$hw/coefficients.csv" "results/$hw/figures/module_shares.png" \
    "results/$hw/figures/time_model_fit.png"
fi
# The rows kept from before the fair defaults beside their re-runs (results/<hw>/FAIRNESS.md).
if [ -d "results/$hw/before-fairness" ]; then
  .venv/bin/python scripts/device/fairness_summary.py "results/$hw" > "results/$hw/.FAIRNESS.md.tmp" &&
    mv "results/$hw/.FAIRNESS.md.tmp" "results/$hw/FAIRNESS.md"
fi
# What the campaign has run on this column and what is left, part by part (results/<hw>/CAMPAIGN.md).
PYTHONPATH=src .venv/bin/python -m inference_eval.campaign_progress "${CAMPAIGN_NAME:-$hw}" --hardware "$hw" \
  --markdown > "results/$hw/.CAMPAIGN.md.tmp" && mv "results/$hw/.CAMPAIGN.md.tmp" "results/$hw/CAMPAIGN.md"
# The column's SUMMARY.md and the README's teaser tables, both generated from the tables made above.
.venv/bin/python scripts/write_summary.py "results/$hw"
.venv/bin/python scripts/write_teaser.py
