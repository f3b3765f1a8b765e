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
# The datasets and model configs came from the GPU machine with its clock's times, often newer than records
# made there earlier; they are what those records were made from, so they are dated back: only newer
# records then make tables and figures again. The same for committed engine records (TensorRT-LLM's
# build rule), which a fresh clone may date after the batch records made from them.
find results/datasets results/models/*/hf "results/$hw/engines" -type f -exec touch -d '2000-01-01 00:00' {} + \
  2>/dev/null || true
# Rules that only read records (tables, bounds, theory, figures, the fit). Anything else planned here would
# be a GPU run on this machine: Snakemake would start it, see the wrong hardware, and delete that job's
# committed outputs as those of a failed job. So each call is dry-run first and stops if it plans more.
REPORT_RULES="dataset_table dataset_bound theory_ops theory_roofline throughput_figure serving_figure fit_coefficients module_figures"
sm() {
  local model=$1 ov=$2; shift 2
  local args=(--cores 2 --keep-going --rerun-triggers mtime --config model="$model" hardware="$hw"
              overrides="matrix.dataset_variant=real $ov")
  local planned
  planned=$(.venv/bin/snakemake "${args[@]}" -n --quiet rules -- "$@" 2>&1 | awk 'f && NF==2 && $2 ~ /^[0-9]+$/ {print $1} /^job +count/ {f=1}') || true
  for rule in $planned; do
    case " $REPORT_RULES total " in *" $rule "*) ;; *)
      echo "report.sh: $* would run rule '$rule' here (inputs newer than the records?); stopping before it deletes them." >&2
      echo "  Make the unpacked results older than the records (touch -d), or run that rule on its hardware." >&2
      return 1 ;;
    esac
  done
  .venv/bin/snakemake "${args[@]}" -- "$@"
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
  sm llama2-7b "dataset.limit=$(limit $d) matrix.libraries=[$libs]" "results/$hw/${d}_table.csv"; tables+=("$d")
done
libs=$(ran vicuna-7b-16k s16k)
[ -z "$libs" ] || sm vicuna-7b-16k "dataset.limit=$(limit s16k) matrix.libraries=[$libs]" "results/$hw/s16k_table.csv"
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
# The rows kept from before the fair defaults beside their re-runs (results/<hw>/FAIRNESS.md).
if [ -d "results/$hw/before-fairness" ]; then
  .venv/bin/python scripts/device/fairness_summary.py "results/$hw" > "results/$hw/.FAIRNESS.md.tmp" &&
    mv "results/$hw/.FAIRNESS.md.tmp" "results/$hw/FAIRNESS.md"
fi
