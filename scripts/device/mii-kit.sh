#!/usr/bin/env bash
# Packs DeepSpeed-MII 0.3.3 (+ DeepSpeed 0.19.8, deepspeed-kernels) for the lent GPU, whose image has no
# package index. Only what the image lacks is packed (device KINDS.md lists the image's packages): torch,
# transformers, accelerate, safetensors, grpcio, protobuf, werkzeug, ninja, py-cpuinfo, msgpack, einops,
# psutil, nvidia-ml-py, pillow ... stay the image's own.
#
# Here, in the project's root:   bash scripts/device/mii-kit.sh   -> .mii1/ and .mii2/ (git-ignored, about
# 46 MB and 7 MB): the bundle is split in two because one device call carries at most 64 MiB with the
# project's tree (about 14 MiB), so the whole bundle no longer fits one call. deepspeed-kernels' wheel alone
# is 46 MB, so .mii1 holds it (and the tokenizer) and .mii2 the rest, which leaves room for .pk .data
# .tokcache in .mii2's call.
#   .mii1/whl/, .mii2/whl/  the wheels, split by size (deepspeed is built here from its source archive with
#                    DS_BUILD_OPS=0: a pure-Python wheel whose CUDA ops compile just in time on the GPU with
#                    nvcc + ninja)
#   .mii1/tokenizer/ the Llama-2 tokenizer as HF files (inference_eval.datasets.tokenizer.save_llama2_tokenizer)
#   .mii1/mii-install.sh, .mii2/mii-install.sh (the same script)
# On the device, one call carries [".mii1"], the next [".mii2"]; each sources its half's mii-install.sh, which
# stages the half in /root/miikit (outside the re-sent tree) and, once both halves are there, installs them
# into /tmp/miisite (scripts/device/campaign.sh: steps mii1, then miiprep). Then mii.pipeline / mii.serve /
# python3 -m mii.entrypoints.openai_api_server work (docs/mii.md); the tokenizer is /root/miikit/tokenizer.
# DeepSpeed's FastGen ops (inference_core_ops, ragged_device_ops, ragged_ops) JIT-compile on each fresh
# machine: about 105-140 s with the three built in parallel (mii_try.py precompile), TORCH_CUDA_ARCH_LIST=9.0.
# Their build folder is 365 MB (99 MB gzipped), too big to carry back and forth, so it is not packed.
#
# Left out on purpose: grpcio-tools (MII only ships generated *_pb2.py, it never imports grpc_tools),
# `asyncio` (a 2015 PyPI backport that would shadow the standard library), fschat's own needs (MII imports
# only fastchat.constants), deepspeed's "dev"/"inf" extras.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
work=${MK_WORK:-/tmp/mii-kit-build}
# A Python with torch to run DeepSpeed's setup.py (it records the accelerator name; ops are not built).
py=${MK_PY:-$root/.venv/bin/python}
"$py" -c "import torch" 2>/dev/null || { echo "mii-kit: $py has no torch; set MK_PY to a Python with torch" >&2; exit 1; }
rm -rf "$work" && mkdir -p "$work/whl" "$work/src"
pipdl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_26_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
  --platform manylinux1_x86_64 --platform any -d "$work/whl" "$@"; }
# typing-extensions is the image's own: the image's anyio imports typing_extensions.sentinel, which 4.15
# lacks (MII's OpenAI server fails at its first request with 4.15 packed).
# Versions: MII 0.3.3 is the last release; pydantic/fastapi pinned to releases of MII's era that need
# nothing beyond what the image has (fastapi >= 0.16x pulls in opentelemetry).
for p in deepspeed-mii==0.3.3 deepspeed-kernels==0.0.1.dev1698255861 \
  pydantic==2.11.7 pydantic-core==2.33.2 annotated-types==0.7.0 typing-inspection==0.4.1 \
  hjson==3.1.0 pyzmq==27.0.0 ujson==5.10.0 shortuuid==1.0.13 \
  fastapi==0.115.12 starlette==0.46.2 uvicorn==0.34.3 pydantic-settings==2.9.1 python-dotenv==1.1.0 \
  flask==3.1.1 flask-restful==0.3.10 aniso8601==10.0.1 pytz==2025.2 itsdangerous==2.2.0 blinker==1.9.0 \
  fschat==0.2.36; do
  pipdl "$p"
done
python3 -m pip download -q --no-deps --no-binary=:all: -d "$work/src" deepspeed==0.19.8
tar xzf "$work"/src/deepspeed-0.19.8.tar.gz -C "$work/src"
(cd "$work/src/deepspeed-0.19.8" && DS_BUILD_OPS=0 DS_ACCELERATOR=cuda "$py" -m pip wheel -q --no-deps --no-build-isolation \
  -w "$work/whl" . > "$work/deepspeed-build.log" 2>&1) || { tail -30 "$work/deepspeed-build.log"; exit 1; }
PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" "$py" -c \
  "import sys; from inference_eval.datasets.tokenizer import save_llama2_tokenizer; save_llama2_tokenizer(sys.argv[1])" "$work/tokenizer"
cd "$root"
for half in .mii1 .mii2; do
  grep -qx "/$half/" .git/info/exclude 2>/dev/null || echo "/$half/" >> .git/info/exclude
done
rm -rf .mii .mii1 .mii2 && mkdir -p .mii1/whl .mii2/whl && cp -r "$work/tokenizer" .mii1/tokenizer
# Largest wheel first, each into the half with fewer bytes so far (halves as equal as the wheels allow).
a=0; b=0
while read -r size path; do
  if [ "$a" -le "$b" ]; then cp "$path" .mii1/whl/; a=$((a + size)); else cp "$path" .mii2/whl/; b=$((b + size)); fi
done < <(find "$work/whl" -name '*.whl' -printf '%s %p\n' | sort -rn)
cat > .mii1/mii-install.sh <<'INNER'
# Sourced on the device from a carried half (.mii1 or .mii2): the half joins /root/miikit; once both halves
# are there, the wheels are installed into /tmp/miisite (once per machine). Returns 1 while a half is missing.
half_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p /root/miikit/whl && cp "$half_dir"/whl/*.whl /root/miikit/whl/ && touch "/root/miikit/$(basename "$half_dir").staged"
[ -d "$half_dir/tokenizer" ] && rm -rf /root/miikit/tokenizer && cp -r "$half_dir/tokenizer" /root/miikit/tokenizer
if [ ! -d /tmp/miisite/mii ]; then
  for h in .mii1 .mii2; do
    [ -f "/root/miikit/$h.staged" ] || { echo "mii kit: $h is not on this machine yet: carry it in a call"; return 1; }
  done
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/miisite /root/miikit/whl/*.whl \
    || { echo "mii kit: install failed"; return 1; }
fi
export PYTHONPATH=/tmp/miisite${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/miisite/bin:$PATH
python3 -c "import deepspeed, mii, dskernels; print('deepspeed', deepspeed.__version__, 'mii', mii.__version__, 'dskernels', dskernels.library_path())"
INNER
cp .mii1/mii-install.sh .mii2/mii-install.sh
du -sh .mii1 .mii2; ls .mii1/whl .mii2/whl | wc -l
