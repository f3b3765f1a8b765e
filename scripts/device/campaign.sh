#!/usr/bin/env bash
# One step of the GPU campaign, run on a GPU machine that has no package index (the kits carry the engines):
#   HW=h200 bash scripts/device/campaign.sh STEP [BUDGET_S]
# HW is the hardware key whose results the step makes (h100, h200; default: detected by the package).
# Steps, each one device call, back to back on one warm machine (results/<hw>/README.md says what ran):
#   vllm1 (carry .vk1; also measures the copy/matmul ceilings) | vk1 (the same, no ceilings) | vllm2 (carry .vk2)
#   batch (carry .vk3 .pk .data .tokcache) | trf (carry .pk .data .tokcache) | serve | fine | fine2 | llamacpp (carry .lcp)
#   weights (Llama-2-7B's random safetensors, for MII: about 165 s on the CPU)
#   mii (carry .mii: batch) | miiserve (serving, after mii or miiprep on the same machine)
# An order that keeps the GPU measuring while the CPU builds (background work runs in its own
# process session, which outlives its call; each leaves $CAMPAIGN/<name>.rc when done):
#   lcpbuild (carry .lcp: llama.cpp's CUDA build, background) | miiprep (carry .mii: install, and the JIT
#   ops in the background) | vk1 | vllm2 | vfine (carry .vk3 .pk .data .tokcache: GGUF and safetensors
#   writers in the background; vLLM eager fine grain, then vLLM s16k on a quiet machine) | llamacpp | miiserve
#   (s16k, which ran short of time in vfine, then ran as its own step: s16k)
# s16k for llama.cpp and MII, then Mistral-7B: trfprobe + s16kprep (carry .pk .data .tokcache)
#   | lcpbuild (carry .lcp) | miiprep (carry .mii) | a call that waits for the three | S16K_LIBS=llamacpp s16kmore
#   | S16K_LIBS=mii s16kmore | gqa-lcp | gqa-trf (after lcpbuild and s16kprep on this machine)
# The fairness re-run (prefix caching off, repeats 3, Transformers' automatic batch size): vk1 | vllm2
#   (carry .vk2 .data .tokcache) | fair-serve (carry .vk3 .pk, after `source .vk3/vk-install.sh`) | fair-batch;
#   fair-trf (carry .pk .data .tokcache: Transformers again with the GPU profile's untimed warm-up pass);
#   MII and llama.cpp with the fair defaults and repeats: fair-trf, then lcpbuild and modelprep (carry .lcp)
#   | mii + miiserve (carry .mii .pk; AWAIT="lcpbuild modelfiles" await before the timed runs) | llamacpp
#   (LCP_BATCH="hardware.scale.batch_warmup_repeats=0": llama.cpp resets its KV cache before every
#   request, so the untimed pass over the whole dataset is left out and the record says so)
# Tensor parallel on a multi-GPU kind (nvidia-h200-x2 / -x4): vk1 | vllm2 (carry .vk2 .data .tokcache)
#   | tp (carry .vk3 .pk, after `source .vk3/vk-install.sh`; GPUS=4 on four GPUs) (docs/tensor-parallel.md)
# Transformers on s16k does not fit one call: trfprobe measured 54.6-59.2 ms a decode step at batch 2 over contexts
# 2,048-16,000 (results/h200/probes/), so its 16,000 steps take about 941 s; a call may run 10 minutes.
# .vk*/.lcp/.pk come from ../shared/device/*-kit.sh, .mii from scripts/device/mii-kit.sh; .data is a
# copy of ../shared/data (the sources, used through data_root); .tokcache a copy of
# ~/.cache/inference_eval (the Llama-2 tokenizer, which the GPU machine cannot download).
# A lent machine may go back after a short idle time, and with it what was installed: send the next call at
# once. Steps chain in one call: `bash campaign.sh vk1 && bash campaign.sh fine`.
# On a fresh machine, a step whose DAG has prepare_model (fine2, batch, serve, llamacpp) needs .tokcache.
# What a step installs (/tmp/site, /tmp/pksite, /tmp/lcpsite, /tmp/miisite) and the sources and
# results (/root/campaign) stay on the warm machine, so later steps carry only their own kit.
# Results live outside the checkout (/root/campaign/results): each call re-sends the working tree,
# which drops ignored paths a call does not carry, so a results folder inside the checkout would not
# survive from one call to the next. Every step returns results-<hw>.tgz and its log under $OUT.
set -uo pipefail
step=${1:?step}
budget=${2:-540}   # seconds this step's Snakemake runs may take before they are stopped
CAMPAIGN=/root/campaign
mkdir -p "$CAMPAIGN"
case $step in bg-*) ;; *)  # a background step reads what its parent call copied
  [ -d .data ] && { rm -rf "$CAMPAIGN/data"; cp -r .data "$CAMPAIGN/data"; }
  [ -d .tokcache ] && { rm -rf "$CAMPAIGN/tokcache"; cp -r .tokcache "$CAMPAIGN/tokcache"; } ;;
esac
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 INFERENCE_EVAL_CACHE=$CAMPAIGN/tokcache VLLM_USE_FLASHINFER_SAMPLER=0
HW=${HW:-$(PYTHONPATH=src python3 -c 'from inference_eval.hardware import detect_hardware; print(detect_hardware())')}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log=$OUT/$step.log
start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }

setup_python() {
  if [ ! -d /tmp/pksite/snakemake ]; then
    [ -d .pk ] || { echo "no Snakemake here: carry .pk in this call"; return 1; }
    source .pk/pk-install.sh || return 1
  fi
  [ -d /tmp/site/vllm ] && export VLLM_USE_FLASHINFER_SAMPLER=0
  export PYTHONPATH=$PWD/src:/tmp/site:/tmp/lcpsite:/tmp/miisite:/tmp/pksite PATH=/tmp/pksite/bin:/tmp/miisite/bin:$PATH
}

# MII's own packages first and vLLM's kit (/tmp/site) off the path, so that MII's server runs on the
# packages its kit was checked with (docs/mii.md).
mii_env() { export TORCH_CUDA_ARCH_LIST=9.0 PYTHONPATH=$PWD/src:/tmp/miisite:/tmp/pksite; }

# Snakemake on $HW targets; $1 = overrides, rest = targets. Stops cleanly when the step's time is up.
sm() {
  local ov=$1; shift
  local t; t=$(left); [ "$t" -gt 30 ] || { echo "skipped (no time left): $*"; return 0; }
  echo "== $(date +%T) snakemake ($t s left): $ov :: $*"
  timeout -s INT "$t" python3 -m snakemake --cores 16 --keep-going --nolock ${SM_EXTRA:-} \
    --config model="${MODEL:-llama2-7b}" \
    overrides="matrix.dataset_variant=real data_root=$CAMPAIGN/data results_dir=$RESULTS $ov" -- "$@"
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

RESULTS=$CAMPAIGN/results
REAL="$RESULTS/$HW"
# The seeded subsets (rows per dataset) the campaign runs: the same on every GPU, so columns compare.
limit() { case $1 in s2s) echo 200;; l2s) echo 64;; s2l) echo 16;; s16k) echo 2;; esac; }
# One serving schedule for vLLM and MII (the same requests, so their curves compare); llama.cpp serves one
# request at a time, so it gets fewer requests at lower rates.
SERVE="scenario.num_requests=160 scenario.rates=[2.0,8.0,32.0] scenario.drop_first=10 scenario.drop_last=10 ${SERVE_EXTRA:-}"
LCP_SERVE="scenario.num_requests=40 scenario.rates=[1.0,4.0] scenario.drop_first=5 scenario.drop_last=5 ${SERVE_EXTRA:-}"
# LIB on s16k (Vicuna-7B-16k shapes, the seeded rows of limit()).
s16k_run() { MODEL=vicuna-7b-16k sm "dataset.limit=$(limit s16k)" $REAL/batch/$1/vicuna-7b-16k/s16k.json; }
# MODEL's GGUF and safetensors (default llama2-7b), written in the background by the bg-modelfiles step.
model_files_in_background() {
  background modelfiles env OUT=$CAMPAIGN/bgout HW=$HW MODEL=${1:-llama2-7b} bash scripts/device/campaign.sh bg-modelfiles 900
}
# This hardware's results back under $OUT now (also after each dataset of a long step: a call stopped at
# its time limit still returns what finished).
pack() { [ -d "$REAL" ] && tar czf "$OUT/results-$HW.tgz" --exclude='*.safetensors' --exclude='*.gguf' -C "$CAMPAIGN" \
  "results/$HW" results/datasets $(cd "$CAMPAIGN" && ls -d results/models/*/hf 2>/dev/null); }
FINE="profiling.libraries=[transformers-eager,vllm] profiling.warmup=1 profiling.repeats=3 profiling.extra=[[2,256],[16,128]] profiling.ncu.timeout_s=240"

case $step in
  vllm1|vk1)
    { mkdir -p /root/vk && cp .vk1/* /root/vk/ && ls -la /root/vk
      [ "$step" = vk1 ] || { nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
        python3 scripts/device/ceilings.py "$OUT/ceilings.json"; }; } 2>&1 | tee "$log" ;;
  vllm2) cp .vk2/* /root/vk/ && ls -la /root/vk ;;
  weights)
    { setup_python && sm "" $RESULTS/models/llama2-7b/weights/model.safetensors; } 2>&1 | tee "$log" ;;
  batch)
    { source .vk3/vk-install.sh && setup_python && nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
      for d in s2s l2s; do
        sm "dataset.limit=$(limit $d)" $REAL/batch/{vllm,transformers,trtllm}/llama2-7b/$d.json
      done
      # the long ones last, Transformers' s2l (about 2 minutes on an H100) after vLLM's s16k
      sm "dataset.limit=$(limit s2l)" $REAL/batch/{vllm,trtllm}/llama2-7b/s2l.json
      s16k_run vllm
      sm "dataset.limit=$(limit s2l)" $REAL/batch/transformers/llama2-7b/s2l.json
    } 2>&1 | tee "$log" ;;
  s16k)  # vLLM on s16k alone (vLLM installed on this machine by an earlier step)
    { setup_python && s16k_run vllm; } 2>&1 | tee "$log" ;;
  trf)  # Transformers' s2l alone (for a call with little device time left)
    { setup_python && sm "dataset.limit=$(limit s2l)" $REAL/batch/transformers/llama2-7b/s2l.json; } 2>&1 | tee "$log" ;;
  serve)
    { setup_python && test -d /tmp/site/vllm || { echo "vLLM is not installed on this machine"; exit 3; }
      for d in ${SERVE_DATASETS:-s2s l2s}; do sm "dataset.limit=$(limit $d) $SERVE" $REAL/serving/vllm_llama2-7b_$d.csv; pack; done
    } 2>&1 | tee "$log" ;;
  fine)  # Transformers eager: the sweeps, then Nsight Compute over layer 1 (one call's worth)
    { setup_python && export PATH=$PATH:/usr/local/cuda/bin:/opt/nvidia/nsight-compute/2025.3.1
      sm "$FINE" $REAL/modules/transformers-eager.json
    } 2>&1 | tee "$log" ;;
  fine2)  # vLLM eager the same way (report.sh fits the time model of both here, from the records)
    { setup_python && export PATH=$PATH:/usr/local/cuda/bin:/opt/nvidia/nsight-compute/2025.3.1
      sm "$FINE" $REAL/modules/vllm.json
    } 2>&1 | tee "$log" ;;
  lcpbuild)  # the kit kept on the machine, built in the background (about 5 minutes of 16 cores)
    { rm -rf /root/lcpkit && mkdir -p /root/lcpkit && cp -r .lcp /root/lcpkit/
      background lcpbuild bash -c 'cd /root/lcpkit && source .lcp/lcp-install.sh'; } 2>&1 | tee "$log" ;;
  miiprep)  # MII installed now, its FastGen ops JIT-built in the background
    { source .mii/mii-install.sh && mii_env && mkdir -p "$CAMPAIGN" &&
      background miijit python3 scripts/device/mii_try.py precompile --logs "$CAMPAIGN/jitlogs"; } 2>&1 | tee "$log" ;;
  vfine)
    { source .vk3/vk-install.sh && setup_python && nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv
      export PATH=$PATH:/usr/local/cuda/bin:/opt/nvidia/nsight-compute/2025.3.1
      # The model files llama.cpp and MII load, written on the CPU while the GPU profiles (device-kernel times).
      model_files_in_background llama2-7b
      sm "$FINE" $REAL/modules/vllm.json
      # s16k is timed end to end: it waits for the CPU work above (and the builds) to end first.
      for b in modelfiles lcpbuild miijit; do await $b 240; done
      s16k_run vllm
    } 2>&1 | tee "$log" ;;
  bg-modelfiles)  # started by model_files_in_background
    { m=${MODEL:-llama2-7b}; setup_python && sm "" $RESULTS/models/$m/gguf/f16.gguf $RESULTS/models/$m/weights/model.safetensors; } 2>&1 ;;
  trfprobe)  # Transformers' decode step at contexts up to 16k, on a quiet GPU: does its s16k row fit a call?
    { PYTHONPATH=src python3 scripts/device/trf_step_probe.py conf/model/vicuna-7b-16k.yaml "$OUT/trf_step_probe.json"
    } 2>&1 | tee "$log" ;;
  modelprep)  # MODEL's model files for llama.cpp and MII (default Llama-2-7B), written in the background
    { setup_python && model_files_in_background "${MODEL:-llama2-7b}"; } 2>&1 | tee "$log" ;;
  await)  # wait for the background work AWAIT names (e.g. "lcpbuild modelfiles") before timed runs
    { for b in ${AWAIT:?names}; do await "$b" "$budget"; done; } 2>&1 | tee "$log" ;;
  s16kprep)  # Vicuna-7B-16k's model files for llama.cpp and MII, written in the background
    { setup_python && model_files_in_background vicuna-7b-16k; } 2>&1 | tee "$log" ;;
  s16kmore)  # llama.cpp and MII on s16k, after lcpbuild, miiprep and s16kprep on this machine
    { setup_python && mii_env && export PYTHONPATH=$PYTHONPATH:/tmp/lcpsite
      for b in lcpbuild miijit modelfiles; do await $b 400; done
      for lib in ${S16K_LIBS:-llamacpp mii}; do s16k_run $lib; done  # S16K_LIBS: one per call if need be
    } 2>&1 | tee "$log" ;;
  gqa-lcp|gqa-trf)  # Mistral-7B (GQA) batch rows: its GGUF then llama.cpp, or Transformers (one call each)
    { setup_python && export PYTHONPATH=$PYTHONPATH:/tmp/lcpsite; M=mistral-7b
      lib=llamacpp; [ "$step" = gqa-trf ] && lib=transformers
      for d in s2s l2s s2l; do MODEL=$M sm "dataset.limit=$(limit $d)" $REAL/batch/$lib/$M/$d.json; done
    } 2>&1 | tee "$log" ;;
  llamacpp)
    { if [ -d .lcp ]; then source .lcp/lcp-install.sh; else await lcpbuild 300; fi  # setup_python puts /tmp/lcpsite on the path
      setup_python && await modelfiles 300
      for d in s2s l2s s2l; do sm "dataset.limit=$(limit $d) ${LCP_BATCH:-}" $REAL/batch/llamacpp/llama2-7b/$d.json; done
      for d in ${LCP_SERVE_DATASETS:-s2s l2s}; do sm "dataset.limit=$(limit $d) $LCP_SERVE" $REAL/serving/llamacpp_llama2-7b_$d.csv; done
    } 2>&1 | tee "$log" ;;
  mii)
    { source .mii/mii-install.sh && setup_python && mii_env
      # DeepSpeed JIT-builds its FastGen ops on a fresh machine (about 2.5 min): build them while the
      # weights are written (unless the weights step wrote them already), so the timed runs find them ready.
      python3 scripts/device/mii_try.py precompile --logs "$CAMPAIGN/jitlogs" & jit=$!
      sm "" $RESULTS/models/llama2-7b/weights/model.safetensors
      wait $jit
      for d in s2s l2s s2l; do sm "dataset.limit=$(limit $d)" $REAL/batch/mii/llama2-7b/$d.json; done
    } 2>&1 | tee "$log" ;;
  miiserve)
    { [ -d /tmp/miisite/mii ] || { echo "run the mii or miiprep step first on this machine"; exit 3; }
      setup_python && mii_env
      [ -f "$CAMPAIGN/miijit.log" ] && await miijit 300  # miiprep's JIT build, where it ran on this machine
      for d in ${SERVE_DATASETS:-s2s l2s}; do sm "dataset.limit=$(limit $d) $SERVE" $REAL/serving/mii_llama2-7b_$d.csv; pack; done
    } 2>&1 | tee "$log" ;;
  fair-serve)  # vLLM's serving sweeps again with the fair defaults (prefix caching off), the old schedule
    { setup_python && test -d /tmp/site/vllm || { echo "vLLM is not installed on this machine"; exit 3; }
      for d in ${SERVE_DATASETS:-s2s l2s}; do sm "dataset.limit=$(limit $d) $SERVE" $REAL/serving/vllm_llama2-7b_$d.csv; pack; done
    } 2>&1 | tee "$log" ;;
  fair-batch)  # vLLM and Transformers (batch_size auto) batch rows with the H200's 3 repeats
    { setup_python && for d in s2s l2s s2l; do
        sm "dataset.limit=$(limit $d)" $REAL/batch/{vllm,transformers}/llama2-7b/$d.json; done
    } 2>&1 | tee "$log" ;;
  fair-trf)  # Transformers again with the GPU profile's untimed warm-up pass; results back after each dataset
    { setup_python && for d in ${TRF_DATASETS:-s2s l2s}; do
        sm "dataset.limit=$(limit $d)" $REAL/batch/transformers/llama2-7b/$d.json
        tar czf "$OUT/results-$HW.tgz" -C "$CAMPAIGN" "results/$HW"; done
    } 2>&1 | tee "$log" ;;
  tp)  # tensor parallel (docs/tensor-parallel.md), on a machine with GPUS (default 2) GPUs: vLLM at t = 1 and
       # GPUS on Llama-2-13B, and at GPUS on Llama-2-70B (t = 1 does not fit), the t-GPU bounds and the scaling
       # tables; TP_DATASETS (default s2s l2s) picks the datasets, one call each when time is short
    { setup_python && test -d /tmp/site/vllm || { echo "vLLM is not installed on this machine"; exit 3; }
      # NVLink multicast stays off (the lent machines' rule), also for vLLM's symmetric-memory all-reduce
      export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 VLLM_ALLREDUCE_USE_SYMM_MEM=0
      g=${GPUS:-2}
      python3 scripts/device/interconnect.py "$OUT/interconnect.json" --gpus "$g" || echo "interconnect: rc $?"
      TP="hardware.gpus=$g matrix.tensor_parallel=[1,$g] matrix.libraries=[${TP_LIBS:-vllm}] matrix.models=[llama2-13b,llama2-70b]"
      for d in ${TP_DATASETS:-s2s l2s}; do
        sm "dataset.limit=$(limit $d) $TP matrix.datasets=[$d]" $REAL/tensor_parallel/${d}_scaling.csv
        tar czf "$OUT/results-$HW.tgz" -C "$CAMPAIGN" "results/$HW"; done
    } 2>&1 | tee "$log" ;;
  *) echo "unknown step $step"; exit 2 ;;
esac
rc=$?
# Back: this hardware's results, the built datasets and the model configs (no weights, no GGUF), so the
# tables and figures can be made on any machine (`snakemake --rerun-triggers mtime ...`).
case $step in bg-*) exit $rc ;; esac  # its parent call's step returns the results
pack
ls -la "$OUT"
exit $rc
