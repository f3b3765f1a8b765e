#!/usr/bin/env bash
# One step of the H100 campaign (issue 10), run on the lent GPU by the `device` tool:
#   bash scripts/device/campaign.sh STEP
# Steps, each one device call, back to back on one warm machine (see results/h100/README.md):
#   vllm1 (carry .vk1) | vllm2 (carry .vk2) | batch (carry .vk3 .pk .data .tokcache)
#   serve | llamacpp (carry .lcp) | fine | report   (each carrying .data .tokcache too: an ignored
#   path a call does not carry is gone there)
# .vk*/.lcp/.pk come from ../shared/device/*-kit.sh; .data is a copy of ../shared/data (the
# sources, used through data_root=.data); .tokcache a copy of ~/.cache/inference_eval (the Llama-2
# tokenizer, which the GPU machine cannot download). Logs and results/h100 come back under $OUT.
# Results live outside the checkout (/root/campaign/results): each call re-sends the working tree,
# which replaces an un-ignored results/h100 there and drops ignored paths a call does not carry, so
# a results folder inside the checkout does not survive from one call to the next.
set -uo pipefail
step=${1:?step}
budget=${2:-520}   # seconds this step's Snakemake runs may take before they are stopped
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 INFERENCE_EVAL_CACHE=$PWD/.tokcache VLLM_USE_FLASHINFER_SAMPLER=0
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log=$OUT/$step.log
start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }

setup_python() {
  [ -d /tmp/pksite/snakemake ] || { source .pk/pk-install.sh || return 1; }
  export PYTHONPATH=$PWD/src:/tmp/site:/tmp/lcpsite:/tmp/pksite PATH=/tmp/pksite/bin:$PATH
}

# Snakemake on h100 targets; $1 = overrides, rest = targets. Stops cleanly when the step's time is up.
sm() {
  local ov=$1; shift
  local t; t=$(left); [ "$t" -gt 30 ] || { echo "skipped (no time left): $*"; return 0; }
  timeout -s INT "$t" python3 -m snakemake --cores 16 --keep-going --nolock \
    --config model="${MODEL:-llama2-7b}" overrides="matrix.dataset_variant=real data_root=.data results_dir=$RESULTS $ov" -- "$@"
}

RESULTS=/root/campaign/results
REAL="$RESULTS/h100"
case $step in
  vllm1) mkdir -p /root/vk && cp .vk1/* /root/vk/ && ls -la /root/vk ;;
  vllm2) cp .vk2/* /root/vk/ && ls -la /root/vk ;;
  batch)
    { source .vk3/vk-install.sh && setup_python && nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
      sm "dataset.limit=200" $REAL/batch/{vllm,transformers,mii,trtllm}/llama2-7b/s2s.json
      sm "dataset.limit=64" $REAL/batch/{vllm,transformers,mii,trtllm}/llama2-7b/l2s.json
      sm "dataset.limit=16" $REAL/batch/{vllm,transformers,mii,trtllm}/llama2-7b/s2l.json
      MODEL=vicuna-7b-16k sm "dataset.limit=2" $REAL/batch/vllm/vicuna-7b-16k/s16k.json
    } 2>&1 | tee "$log" ;;
  serve)
    { test -d /tmp/site/vllm && setup_python
      SERVE="scenario.num_requests=240 scenario.rates=[2.0,8.0,32.0] scenario.drop_first=20 scenario.drop_last=20"
      sm "dataset.limit=200 $SERVE" $REAL/serving/vllm_llama2-7b_s2s.csv
      sm "dataset.limit=64 $SERVE" $REAL/serving/vllm_llama2-7b_l2s.csv
    } 2>&1 | tee "$log" ;;
  llamacpp)
    { source .lcp/lcp-install.sh && setup_python
      sm "dataset.limit=200" $REAL/batch/llamacpp/llama2-7b/s2s.json
      sm "dataset.limit=64" $REAL/batch/llamacpp/llama2-7b/l2s.json
      sm "dataset.limit=16" $REAL/batch/llamacpp/llama2-7b/s2l.json
    } 2>&1 | tee "$log" ;;
  fine)
    { setup_python && export PATH=$PATH:/usr/local/cuda/bin:/opt/nvidia/nsight-compute/2025.3.1
      sm "" $REAL/coefficients.csv $REAL/figures/module_shares.png $REAL/figures/time_model_fit.png
    } 2>&1 | tee "$log" ;;
  report)
    { setup_python
      for d in s2s l2s s2l; do
        lim=$(case $d in s2s) echo 200;; l2s) echo 64;; s2l) echo 16;; esac)
        sm "dataset.limit=$lim ${REPORT_EXTRA:-}" $REAL/${d}_table.csv $REAL/theory/llama2-7b_ops_b8_s512.csv $REAL/theory/llama2-7b_roofline.png
      done
      MODEL=vicuna-7b-16k sm "dataset.limit=2 matrix.libraries=[vllm]" $REAL/s16k_table.csv
    } 2>&1 | tee "$log" ;;
  *) echo "unknown step $step"; exit 2 ;;
esac
rc=$?
[ -d "$REAL" ] && tar czf "$OUT/results-h100.tgz" -C /root/campaign results/h100 $(cd /root/campaign && ls results/datasets/*/manifest.json 2>/dev/null)
ls -la "$OUT"
exit $rc
