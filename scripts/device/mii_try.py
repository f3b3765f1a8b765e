"""Try DeepSpeed-MII on the lent GPU: JIT-build its ops, write a random-weight Llama-2-7B, generate exact lengths.

Run on the device once MII's kit is installed (its two halves, scripts/device/mii-kit.sh):

    python3 scripts/device/mii_try.py precompile --logs $OUT          # JIT-builds the three v2 op libraries
    python3 scripts/device/mii_try.py write-model /tmp/llama2-7b --tokenizer /root/miikit/tokenizer
    python3 scripts/device/mii_try.py run /tmp/llama2-7b --out $OUT
    python3 scripts/device/mii_try.py serve /tmp/llama2-7b --out $OUT     # MII's OpenAI-compatible server

``run`` builds ``mii.pipeline`` on the folder, asks for several exact lengths with ``ignore_eos=True`` and
checks the number of generated token ids (counted from the ids MII hands to the tokenizer's decode, not
from text), then times a batch. Results go to ``<out>/mii_result.json``; a failure prints its traceback
and is recorded there too. ``serve`` starts ``python -m mii.entrypoints.openai_api_server`` on loopback, asks for
exact lengths (``max_tokens`` with a huge ``min_tokens``) and times concurrent requests (``<out>/mii_serve_result.json``); note
that server's ``usage.completion_tokens`` re-tokenizes the returned text (BOS included), so it is not an id count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

# MII compares min_new_tokens with prompt + generated tokens (Request.is_done), and its OpenAI server cannot
# pass ignore_eos: a min_tokens far above any sequence keeps EOS from ending a request, so max_tokens alone
# ends it, with finish_reason "length" exactly when max_tokens ids were generated.
EOS_NEVER = 1_000_000

# The FastGen (inference v2) op libraries MII's pipeline loads; each JIT-compiles on first use.
V2_BUILDERS = ("InferenceCoreBuilder", "RaggedOpsBuilder", "RaggedUtilsBuilder")

LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                 initializer_range=0.02, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


def _atomic_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def environment() -> dict:
    import torch
    import transformers

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "transformers": transformers.__version__,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for mod in ("deepspeed", "mii", "pydantic"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as exc:  # a missing package is itself a finding
            env[mod] = f"import failed: {exc!r}"
    try:
        env["nvcc"] = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    except OSError as exc:
        env["nvcc"] = f"not runnable: {exc}"
    return env


def precompile(logs: Path) -> int:
    """JIT-build each op library in its own process, in parallel; print nvcc's error lines of any that fail."""
    logs.mkdir(parents=True, exist_ok=True)
    jobs = max(1, (os.cpu_count() or 3) // len(V2_BUILDERS))
    procs = {}
    t0 = time.perf_counter()
    for name in V2_BUILDERS:
        code = (f"import time; t=time.perf_counter(); from deepspeed.ops.op_builder import {name}; "
                f"b={name}(); print('compatible:', b.is_compatible(verbose=True)); b.load(verbose=True); "
                f"print('{name} built in %.1f s' % (time.perf_counter()-t))")
        log = open(logs / f"jit_{name}.log", "w")
        procs[name] = (subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "MAX_JOBS": str(jobs)}), log)
    failed = 0
    for name, (proc, log) in procs.items():
        rc = proc.wait()
        log.close()
        text = (logs / f"jit_{name}.log").read_text(errors="replace")
        if rc == 0:
            print(f"[precompile] {name}: ok ({text.strip().splitlines()[-1]})")
            continue
        failed += 1
        errors = [ln for ln in text.splitlines() if "error" in ln.lower()]
        print(f"[precompile] {name}: FAILED rc={rc}; {len(errors)} error lines, first 40:")
        print("\n".join(errors[:40]) or text[-4000:])
        print(f"[precompile] {name}: last lines:\n" + "\n".join(text.splitlines()[-15:]))
    print(f"[precompile] done in {time.perf_counter() - t0:.1f} s, {failed} failed")
    return failed


def write_model(model_dir: Path, tokenizer_dir: Path) -> None:
    """Random-weight Llama-2-7B in bf16: initialized on the GPU, saved as safetensors shards, plus the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (model_dir / "model.safetensors.index.json").is_file():
        print(f"[write-model] {model_dir} already written")
        return
    tok_files = sorted(tokenizer_dir.glob("tokenizer*"))
    if not tok_files:
        raise FileNotFoundError(f"no tokenizer files in {tokenizer_dir} (run scripts/device/mii-kit.sh here first)")
    t0 = time.perf_counter()
    cfg = LlamaConfig(**LLAMA2_7B)
    cfg.dtype = torch.bfloat16
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    t1 = time.perf_counter()
    model.save_pretrained(str(model_dir), max_shard_size="5GB")
    for f in tok_files:
        shutil.copy(f, model_dir / f.name)
    del model
    torch.cuda.empty_cache()
    size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    print(f"[write-model] {n_params / 1e9:.2f} B params, init {t1 - t0:.1f} s, save {time.perf_counter() - t1:.1f} s, "
          f"{size / 2**30:.1f} GiB of safetensors in {model_dir}: {sorted(p.name for p in model_dir.iterdir())}")


def _count_generated_ids(pipe) -> dict:
    """Record, per request uid, how many token ids MII passes to the tokenizer for the response text."""
    counts: dict[int, int] = {}
    seen: list[int] = []
    decode = pipe.tokenizer.decode

    def counting_decode(tokens):
        seen.append(len(tokens))
        return decode(tokens)

    get_response = pipe._get_response

    def counting_get_response():
        seen.clear()
        uid, response = get_response()
        counts[uid] = seen[-1] if seen else None
        return uid, response

    pipe.tokenizer.decode = counting_decode
    pipe._get_response = counting_get_response
    return counts


def _prompts(tokenizer, n: int, approx_len: int, seed: int) -> list[str]:
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, 31000, (n, approx_len), generator=g)
    return [tokenizer.decode(row.tolist()) for row in ids]


def run(model_dir: Path, out: Path, lengths: list[int], batch: int, batch_in: int, batch_out: int) -> dict:
    import torch

    result: dict = {"env": environment(), "model_dir": str(model_dir), "steps": []}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "mii_result.json"
    try:
        import mii

        t0 = time.perf_counter()
        pipe = mii.pipeline(str(model_dir))
        result["pipeline_load_s"] = round(time.perf_counter() - t0, 2)
        print(f"[run] mii.pipeline ready in {result['pipeline_load_s']} s")
        counts = _count_generated_ids(pipe)
        prompts = ["DeepSpeed is", "The capital of France is", "Once upon a time, in a land far away,"]
        all_exact = True
        for n in lengths:
            counts.clear()
            torch.cuda.synchronize()
            t = time.perf_counter()
            responses = pipe(prompts, max_new_tokens=n, ignore_eos=True, do_sample=False)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            ids = [counts.get(uid) for uid in range(len(prompts))]
            reported = [r.generated_length for r in responses]
            exact = all(c == n for c in ids) and all(g == n for g in reported)
            all_exact &= exact
            step = {"max_new_tokens": n, "prompts": len(prompts), "generated_ids": ids, "generated_length": reported,
                    "prompt_length": [r.prompt_length for r in responses],
                    "finish_reason": [str(r.finish_reason) for r in responses], "exact": exact, "seconds": round(dt, 3)}
            result["steps"].append(step)
            print(f"[run] max_new_tokens={n}: ids {ids}, reported {reported}, exact={exact}, {dt:.2f} s")
        result["exact_lengths"] = all_exact
        _atomic_json(path, result)

        prompts = _prompts(pipe.tokenizer.tokenizer, batch, batch_in, seed=1)
        for label in ("warm-up", "timed"):
            counts.clear()
            torch.cuda.synchronize()
            t = time.perf_counter()
            responses = pipe(prompts, max_new_tokens=batch_out, ignore_eos=True, do_sample=False)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            gen = sum(counts.get(uid) or 0 for uid in range(batch))
            prompt_tokens = sum(r.prompt_length for r in responses)
            exact = all(counts.get(uid) == batch_out for uid in range(batch))
            print(f"[run] batch {label}: {batch} requests, {prompt_tokens} prompt tokens, {gen} generated ids "
                  f"(exact={exact}) in {dt:.2f} s -> {gen / dt:.0f} generated tok/s")
        result["batch"] = {"requests": batch, "prompt_tokens": prompt_tokens, "max_new_tokens": batch_out,
                           "generated_ids": gen, "exact": exact, "seconds": round(dt, 3),
                           "generated_tok_per_s": round(gen / dt, 1)}
        result["ok"] = all_exact and exact
        pipe.destroy()
    except BaseException as exc:  # record what broke, then let it show
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
        print(result["traceback"], flush=True)
    _atomic_json(path, result)
    print(f"[run] ok={result['ok']} -> {path}")
    return result


def _post_json(url: str, body: dict, timeout: float = 600) -> dict:
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _wait_ready(url: str, proc: subprocess.Popen, limit_s: float) -> float:
    import urllib.request

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with rc={proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return time.perf_counter() - t0
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {limit_s} s")


def serve(model_dir: Path, out: Path, lengths: list[int], batch: int, batch_in: int, batch_out: int, port: int) -> dict:
    """MII's OpenAI-compatible server (it starts mii.serve's gRPC deployment): exact lengths, then concurrent requests."""
    import signal
    from concurrent.futures import ThreadPoolExecutor

    out.mkdir(parents=True, exist_ok=True)
    path = out / "mii_serve_result.json"
    result: dict = {"env": environment(), "model_dir": str(model_dir), "steps": []}
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mii.entrypoints.openai_api_server", "--model", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--max-length", "4096"]
    result["command"] = " ".join(cmd)
    log = open(out / "mii_server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        result["ready_s"] = round(_wait_ready(f"{base}/v1/models", proc, 300), 1)
        print(f"[serve] OpenAI server ready in {result['ready_s']} s")
        all_exact = True
        for n in lengths:
            t = time.perf_counter()
            body = {"model": str(model_dir), "prompt": "The capital of France is", "max_tokens": n,
                    "min_tokens": EOS_NEVER}
            resp = _post_json(f"{base}/v1/completions", body)
            reason = resp["choices"][0].get("finish_reason")
            all_exact &= reason == "length"
            result["steps"].append({"max_tokens": n, "finish_reason": reason,
                                    "usage_retokenized": resp["usage"], "seconds": round(time.perf_counter() - t, 3)})
            print(f"[serve] max_tokens={n}: finish_reason={reason} (usage, re-tokenized text: {resp['usage']})")
        result["exact_lengths"] = all_exact
        import torch

        g = torch.Generator().manual_seed(2)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir))
        prompts = [tok.decode(row.tolist()) for row in torch.randint(100, 31000, (batch, batch_in), generator=g)]

        def one(prompt: str) -> dict:
            t = time.perf_counter()
            r = _post_json(f"{base}/v1/completions", {"model": str(model_dir), "prompt": prompt,
                                                      "max_tokens": batch_out, "min_tokens": EOS_NEVER})
            return {"latency_s": time.perf_counter() - t, "finish_reason": r["choices"][0].get("finish_reason"),
                    **r["usage"]}

        for label in ("warm-up", "timed"):
            t = time.perf_counter()
            with ThreadPoolExecutor(max_workers=batch) as pool:
                rows = list(pool.map(one, prompts))
            dt = time.perf_counter() - t
            # finish_reason "length" means exactly batch_out ids (see EOS_NEVER); others are not counted.
            exact = all(r["finish_reason"] == "length" for r in rows)
            gen = batch_out * sum(r["finish_reason"] == "length" for r in rows)
            lat = sorted(r["latency_s"] for r in rows)
            print(f"[serve] {label}: {batch} concurrent requests, {sum(r['prompt_tokens'] for r in rows)} prompt tokens, "
                  f"{gen} completion tokens counted by finish_reason (exact={exact}) in {dt:.2f} s -> {gen / dt:.0f} tok/s; "
                  f"latency median {lat[len(lat) // 2]:.2f} s, max {lat[-1]:.2f} s")
        result["concurrent"] = {"requests": batch, "completion_tokens": gen, "exact": exact, "seconds": round(dt, 3),
                                "completion_tok_per_s": round(gen / dt, 1), "latency_median_s": round(lat[len(lat) // 2], 3)}
        try:
            import mii

            client = mii.client("deepspeed-mii")
            responses = client.generate(["DeepSpeed is", "Hello"], max_new_tokens=32, ignore_eos=True)
            result["grpc_client_generated_length"] = [r.generated_length for r in responses]
            print(f"[serve] mii.client generate ignore_eos max_new_tokens=32: {result['grpc_client_generated_length']}")
        except Exception as exc:
            result["grpc_client_error"] = f"{type(exc).__name__}: {exc}"
            print(f"[serve] mii.client failed: {result['grpc_client_error']}")
        result["ok"] = all_exact and exact
    except BaseException as exc:
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
        print(result["traceback"], flush=True)
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()
        if not result.get("ok"):
            print("[serve] server log tail:\n" + "\n".join((out / "mii_server.log").read_text(errors="replace").splitlines()[-40:]))
    _atomic_json(path, result)
    print(f"[serve] ok={result['ok']} -> {path}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("precompile")
    p.add_argument("--logs", type=Path, required=True)
    p = sub.add_parser("write-model")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--tokenizer", type=Path, required=True)
    for cmd in ("run", "serve"):  # the same workload, through the pipeline or through MII's server
        p = sub.add_parser(cmd)
        p.add_argument("model_dir", type=Path)
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 128])
        p.add_argument("--batch", type=int, default=64)
        p.add_argument("--batch-in", type=int, default=128)
        p.add_argument("--batch-out", type=int, default=128)
        if cmd == "serve":
            p.add_argument("--port", type=int, default=8000)
    args = ap.parse_args(argv)
    if args.cmd == "precompile":
        return 1 if precompile(args.logs) else 0
    if args.cmd == "write-model":
        write_model(args.model_dir, args.tokenizer)
        return 0
    if args.cmd == "serve":
        return 0 if serve(args.model_dir, args.out, args.lengths, args.batch, args.batch_in, args.batch_out,
                          args.port)["ok"] else 1
    print(json.dumps(environment()))
    return 0 if run(args.model_dir, args.out, args.lengths, args.batch, args.batch_in, args.batch_out)["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
