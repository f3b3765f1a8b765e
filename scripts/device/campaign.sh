#!/usr/bin/env bash
# One step of a campaign on the lent GPU machine, one device call each (docs/campaign.md):
#   HW=h200 bash scripts/device/campaign.sh STEP [ARG] [BUDGET_S]
# What the campaign is (models, libraries, row limits, repeats, serving schedules, parts) lives in
# conf/campaign/$CAMPAIGN_NAME.yaml (default: conf/campaign/$HW.yaml, else h200.yaml's parts run on $HW),
# read by inference_eval.campaign. Only what is specific to the lent machine is here, and why:
# - It has no package index and no network: the engines and Snakemake travel as kits in carried folders
#   that are unpacked here (.vk1/.vk2/.vk3 vLLM, three calls because a call carries at most 64 MiB; .pk
#   Snakemake and the harness's wheels; .lcp llama.cpp's sources, compiled here in about 5 minutes; .mii1
#   and .mii2 DeepSpeed-MII, two calls for the same reason), the dataset sources as .data and the Llama-2
#   tokenizer as .tokcache (HF_HUB_OFFLINE).
#   The kits come from ../shared/device/*-kit.sh and scripts/device/mii-kit.sh.
# - A call runs at most 600 s: each step has a time budget (BUDGET_S, default the campaign's call_budget_s),
#   stops its Snakemake run cleanly when it is spent and then exits 124, meaning "send the same call
#   again": Snakemake skips what finished. The results are packed under $OUT after each dataset, so a call
#   cut off by the device still returns what finished.
# - The machine goes back after about 30 s idle, and each call re-sends the working tree: the results
#   stay outside the checkout (/root/campaign/results), and work longer than a call (builds, model files,
#   a run that outlasts one call) runs in the background in its own process session, from a copy of the
#   tree, across calls. End-to-end timed runs start only once that work has ended (a quiet CPU and GPU).
# Steps (carry what each names):
#   run PART [BUDGET_S]  the part's Snakemake calls, one per dataset (DATASETS="l2s" runs only those);
#                        vLLM parts carry .vk3 the first time on a machine, MII parts need miiprep, llama.cpp .lcp
#                        unless lcpbuild ran; the first call on a machine also .pk .data .tokcache
#   vk1 | vllm2          vLLM's kit parts 1 and 2 onto the machine (carry .vk1, then .vk2)
#   ceilings             the copy bandwidth and bf16 matmul peak (scripts/device/ceilings.py)
#   lcpbuild             llama.cpp's CUDA build, in the background (carry .lcp)
#   mii1                 MII's kit, first half, staged on the machine (carry .mii1)
#   miiprep              MII installed now (carry .mii2, after mii1), its FastGen ops JIT-built in the background
#   files PART           the model files PART reads (GGUF, safetensors), written in the background
#   await NAME...        wait for background work (lcpbuild, miijit, files-<model>, run-<part>)
#   trfprobe             Transformers' decode step at contexts up to 16k (scripts/device/trf_step_probe.py)
#   tp DATASET...        tensor parallel on a multi-GPU kind (GPUS, default 2; docs/tensor-parallel.md)
set -uo pipefail
step=${1:?step}
CAMPAIGN=${CAMPAIGN_DIR:-/root/campaign}   # on the machine, outside the re-sent checkout
RESULTS=$CAMPAIGN/results
mkdir -p "$CAMPAIGN"
# The sources and tokenizer are copied once per machine: a fresh copy each call would date the sources after
# the datasets built from them, and Snakemake would build the datasets and rerun every run again.
[ -d .data ] && [ ! -d "$CAMPAIGN/data" ] && cp -a .data "$CAMPAIGN/data"
[ -d .tokcache ] && [ ! -d "$CAMPAIGN/tokcache" ] && cp -a .tokcache "$CAMPAIGN/tokcache"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 INFERENCE_EVAL_CACHE=$CAMPAIGN/tokcache VLLM_USE_FLASHINFER_SAMPLER=0
HW=${HW:-$(PYTHONPATH=src python3 -c 'from inference_eval.hardware import detect_hardware; print(detect_hardware())')}
# The campaign of this hardware, else the H200's parts run on this hardware (the lent GPU is an H100 or an
# H200, whichever is free): the same rows and schedules, so the two columns compare.
if [ -z "${CAMPAIGN_NAME:-}" ]; then
  CAMPAIGN_NAME=$HW
  [ -f "conf/campaign/$HW.yaml" ] || { CAMPAIGN_NAME=h200; echo "campaign: no conf/campaign/$HW.yaml: h200's parts on $HW" >&2; }
fi
campaign() { PYTHONPATH=$PWD/src:/tmp/pksite python3 -m inference_eval.campaign "$1" "$CAMPAIGN_NAME" --hardware "$HW" "${@:2}"; }
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log=$OUT/$step.log
# BUDGET_S (or run's and files' third argument); run's default is the campaign's call_budget_s
case $step in run|files) arg_budget=${3:-${BUDGET_S:-}} ;; *) arg_budget=${BUDGET_S:-} ;; esac
budget=${arg_budget:-540}
start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }

setup_python() {
  if [ ! -d /tmp/pksite/snakemake ]; then
    [ -d .pk ] || { echo "no Snakemake here: carry .pk in this call"; return 1; }
    source .pk/pk-install.sh || return 1
  fi
  export PYTHONPATH=$PWD/src:/tmp/site:/tmp/lcpsite:/tmp/miisite:/tmp/pksite PATH=/tmp/pksite/bin:/tmp/miisite/bin:$PATH
}

# MII's kit from whichever half this call carries (.mii1, .mii2: scripts/device/mii-kit.sh); it is installed
# once both halves are staged on the machine.
mii_kit() {
  local h
  for h in .mii1 .mii2; do [ -d "$h" ] && source "$h/mii-install.sh"; done
  [ -d /tmp/miisite/mii ] || { echo "MII is not installed on this machine: send mii1 (carry .mii1), then miiprep (carry .mii2)"; return 3; }
}

# MII's own packages first and vLLM's kit (/tmp/site) off the path, so that MII's server runs on the
# packages its kit was checked with (docs/mii.md).
mii_env() { export TORCH_CUDA_ARCH_LIST=9.0 PYTHONPATH=$PWD/src:/tmp/miisite:/tmp/pksite; }

# The engine a library (or profiled variant) runs on, installed from its carried kit or found on the machine.
engine_env() {
  case $1 in
    vllm*)
      [ -d .vk3 ] && { source .vk3/vk-install.sh || return 3; }
      [ -d /tmp/site/vllm ] || { echo "vLLM is not installed on this machine: send vk1, vllm2, then this call with .vk3"; return 3; }
      setup_python ;;
    mii*) mii_kit && setup_python && mii_env ;;
    llamacpp*)
      if [ ! -d /tmp/lcpsite/llama_cpp ]; then
        if [ -d .lcp ]; then source .lcp/lcp-install.sh || return 3; else await lcpbuild "$(left)" || return 3; fi
      fi
      setup_python ;;
    *) setup_python ;;
  esac
}

# Snakemake on $HW targets: sm MODEL OVERRIDES TARGET...; stopped cleanly (SIGINT) when the budget is spent.
sm() {
  local model=$1 ov=$2; shift 2
  local t; t=$(left)
  echo "== $(date +%T) snakemake ($t s left): $ov :: $*"
  timeout -s INT "$t" python3 -m snakemake --cores "$(nproc)" --keep-going --nolock ${SM_EXTRA:-} \
    --config model="$model" overrides="$ov data_root=$CAMPAIGN/data results_dir=$RESULTS" -- "$@"
}

# Work that outlives its call (own process session): `background NAME CMD...`; NAME.rc appears when done.
background() {
  local name=$1; shift
  rm -f "$CAMPAIGN/$name.rc"
  : > "$CAMPAIGN/$name.log"  # here, not in the child: `await` reads a missing log as "never started"
  setsid nohup bash -c '"$@"; echo $? > '"$CAMPAIGN/$name.rc" _ "$@" >> "$CAMPAIGN/$name.log" 2>&1 < /dev/null &
  echo "background $name started (log $CAMPAIGN/$name.log)"
}
# Wait up to $2 s for background NAME; print its rc and log tail. Returns 1 if it failed or is not done.
await() {
  local name=$1 t=$2 waited=0
  [ -f "$CAMPAIGN/$name.log" ] || { echo "== background $name: never started on this machine"; return 1; }
  while [ ! -f "$CAMPAIGN/$name.rc" ] && [ "$waited" -lt "$t" ]; do sleep 5; waited=$((waited + 5)); done
  echo "== background $name: rc $(cat "$CAMPAIGN/$name.rc" 2>/dev/null || echo 'not done') after waiting ${waited} s"
  tail -5 "$CAMPAIGN/$name.log" 2>/dev/null; cp "$CAMPAIGN/$name.log" "$OUT/" 2>/dev/null
  [ "$(cat "$CAMPAIGN/$name.rc" 2>/dev/null)" = 0 ]
}
# Timed runs start once every background job on this machine has ended (but $BG_SELF, the caller's own).
# Returns 124 when the budget ran out first.
quiet() {
  local f name
  for f in "$CAMPAIGN"/*.log; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .log)
    [ "$name" = "${BG_SELF:-}" ] || [ -f "$CAMPAIGN/$name.rc" ] && continue
    await "$name" "$(left)" >/dev/null || true
    [ -f "$CAMPAIGN/$name.rc" ] || { echo "== background $name still running after the budget"; return 124; }
  done
}
# A copy of the tree for background work (later calls re-send the checkout under it); IN_DIR DIR CMD... runs there.
IN_DIR=(bash -c 'cd "$0" && exec "$@"')
tree_copy() {
  rm -rf "$CAMPAIGN/tree-$1" && mkdir -p "$CAMPAIGN/tree-$1" &&
    tar cf - --exclude=./results --exclude='./.[!.]*' . | tar xf - -C "$CAMPAIGN/tree-$1" && echo "$CAMPAIGN/tree-$1"
}
# This hardware's results back under $OUT now (also after each dataset: a call stopped at its time limit still
# returns what finished), with the built datasets and the model configs (no weights, no GGUF).
pack() { [ -d "$RESULTS/$HW" ] && tar czf "$OUT/results-$HW.tgz" --exclude='*.safetensors' --exclude='*.gguf' -C "$CAMPAIGN" \
  "results/$HW" results/datasets $(cd "$CAMPAIGN" && ls -d results/models/*/hf 2>/dev/null); }

# One Snakemake call per dataset of PART (inference_eval.campaign calls). rc 0: every target exists;
# 124: the budget ran out first (send the same call again); else the first failing call's rc.
run_part() {
  local part=$1 lines line ds model lib scen bg ov targets rc=0 t
  setup_python || return 1  # Snakemake and the harness's packages, which inference_eval.campaign reads with
  [ -n "$arg_budget" ] || budget=$(campaign budget) || return 2
  mapfile -t lines < <(campaign calls "$part" --results "$RESULTS") && [ ${#lines[@]} -gt 0 ] || return 2
  IFS=$'\t' read -r ds model lib scen bg ov targets <<< "${lines[0]}"
  engine_env "$lib" || return $?
  [ "$scen" = modules ] && export PATH=$PATH:/usr/local/cuda/bin:/opt/nvidia/nsight-compute/2025.3.1
  if [ "$bg" = 1 ] && [ "${BG_SELF:-}" != "run-$part" ]; then  # one job outlasts a call: run it in the background
    if [ ! -f "$CAMPAIGN/run-$part.log" ] || { [ -f "$CAMPAIGN/run-$part.rc" ] && [ "$(cat "$CAMPAIGN/run-$part.rc")" != 0 ]; }; then
      quiet || return 124
      local tree; tree=$(tree_copy "$part") || return 1
      background "run-$part" "${IN_DIR[@]}" "$tree" env BG_SELF="run-$part" OUT="$CAMPAIGN/out-$part" HW="$HW" \
        CAMPAIGN_NAME="$CAMPAIGN_NAME" DATASETS="${DATASETS:-}" PYTHONPATH="${PYTHONPATH:-}" PATH="$PATH" \
        bash scripts/device/campaign.sh run "$part" 3000
    fi
    await "run-$part" "$(left)"; pack
    [ -f "$CAMPAIGN/run-$part.rc" ] || return 124
    return "$(cat "$CAMPAIGN/run-$part.rc")"
  fi
  # Module profiles time device kernels (torch.profiler, Nsight Compute), which CPU work does not change:
  # they may run beside the background builds; end-to-end timed runs wait for a quiet machine.
  [ "$scen" = modules ] || quiet || return 124
  for line in "${lines[@]}"; do
    IFS=$'\t' read -r ds model lib scen bg ov targets <<< "$line"
    [ -z "${DATASETS:-}" ] || [ "$ds" = - ] || [[ " $DATASETS " == *" $ds "* ]] || continue
    [ "$scen" = serving ] && ov="$ov ${SERVE_EXTRA:-}"
    t=$(left); [ "$t" -gt 30 ] || { echo "== no time left for $ds"; return 124; }
    sm "$model" "$ov" $targets; local r=$?
    pack
    if [ "$r" = 124 ]; then return 124; fi
    [ "$r" = 0 ] || [ "$rc" != 0 ] || rc=$r
  done
  return $rc
}

case $step in
  run) { run_part "${2:?part}"; } 2>&1 | tee "$log" ;;
  vk1) { mkdir -p /root/vk && cp .vk1/* /root/vk/ && ls -la /root/vk; } 2>&1 | tee "$log" ;;
  vllm2) { cp .vk2/* /root/vk/ && ls -la /root/vk; } 2>&1 | tee "$log" ;;
  ceilings)
    { nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
      python3 scripts/device/ceilings.py "$OUT/ceilings.json"; } 2>&1 | tee "$log" ;;
  lcpbuild)  # the kit kept on the machine (outside the re-sent tree), built in the background
    { rm -rf /root/lcpkit && mkdir -p /root/lcpkit && cp -r .lcp /root/lcpkit/
      background lcpbuild bash -c 'cd /root/lcpkit && source .lcp/lcp-install.sh'; } 2>&1 | tee "$log" ;;
  mii1) { source .mii1/mii-install.sh; ls /root/miikit/whl; [ -f /root/miikit/.mii1.staged ]; } 2>&1 | tee "$log" ;;
  miiprep)
    { mii_kit && mii_env &&
      background miijit python3 scripts/device/mii_try.py precompile --logs "$CAMPAIGN/jitlogs"; } 2>&1 | tee "$log" ;;
  files)  # PART's model files, written on the CPU while the GPU measures another part
    { setup_python && part=${2:?part} && model=$(campaign calls "$part" | head -1 | cut -f2) &&
      mapfile -t files < <(campaign files "$part" --results "$RESULTS") && tree=$(tree_copy "files-$model") &&
      background "files-$model" "${IN_DIR[@]}" "$tree" env PYTHONPATH="${PYTHONPATH:-}" PATH="$PATH" timeout -s INT 3000 \
        python3 -m snakemake --cores "$(nproc)" --nolock --config model="$model" \
        overrides="matrix.dataset_variant=real data_root=$CAMPAIGN/data results_dir=$RESULTS" -- "${files[@]}"
    } 2>&1 | tee "$log" ;;
  await) { rc=0; for b in "${@:2}"; do await "$b" "$(( $(left) > 0 ? $(left) : 0 ))" || rc=1; done; exit $rc; } 2>&1 | tee "$log" ;;
  trfprobe)
    { PYTHONPATH=src python3 scripts/device/trf_step_probe.py conf/model/vicuna-7b-16k.yaml "$OUT/trf_step_probe.json"
    } 2>&1 | tee "$log" ;;
  tp)  # vLLM at t = 1 and GPUS on Llama-2-13B, and at GPUS on Llama-2-70B, with the t-GPU bounds and scaling tables
    { engine_env vllm || exit $?
      # NVLink multicast stays off (the lent machines' rule), also for vLLM's symmetric-memory all-reduce
      export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 VLLM_ALLREDUCE_USE_SYMM_MEM=0
      g=${GPUS:-2}
      python3 scripts/device/interconnect.py "$OUT/interconnect.json" --gpus "$g" || echo "interconnect: rc $?"
      TP="hardware.gpus=$g matrix.tensor_parallel=[1,$g] matrix.libraries=[${TP_LIBS:-vllm}] matrix.models=[llama2-13b,llama2-70b]"
      ds=("${@:2}"); [ ${#ds[@]} -gt 0 ] || ds=(s2s l2s)
      for d in "${ds[@]}"; do
        sm llama2-7b "matrix.dataset_variant=real dataset.limit=$(campaign limit "$d") $TP matrix.datasets=[$d]" \
          "$RESULTS/$HW/tensor_parallel/${d}_scaling.csv"; pack; done
    } 2>&1 | tee "$log" ;;
  *) echo "unknown step $step (see the header of $0)"; exit 2 ;;
esac
rc=$?  # the step's own (pipefail: tee's is 0)
pack
ls -la "$OUT"
exit "$rc"
