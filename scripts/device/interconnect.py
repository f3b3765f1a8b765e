"""Measures the interconnect ceiling of the tensor-parallel bound: the bus bandwidth of an all-reduce over
the GPUs at hand (one process per GPU, torch.distributed with NCCL), what ``measured.interconnect_gbs``
of conf/hardware/<hw>.yaml holds (docs/tensor-parallel.md).

The bound charges an all-reduce of N bytes 2(t-1)/t x N / interconnect seconds (theory.parallel), so the
number to measure is the bus bandwidth busbw = 2(t-1)/t x N / time (nccl-tests' definition), per size:
the layer's all-reduce is b x T x h x 2 bytes (Llama-2-13B decode at b = 64: 640 KiB; prefill of 2,048
tokens: 20 MiB), so small sizes are timed as well as large ones. Median of timed repeats after warm-up.

    python3 scripts/device/interconnect.py $OUT/interconnect.json          # every visible GPU
    python3 scripts/device/interconnect.py out.json --gpus 2 --backend gloo --device cpu   # the logic, on a CPU

NVLink multicast (NVLS) stays off: NCCL_NVLS_ENABLE=0 is set here unless the environment sets it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

SIZES = (1 << 20, 16 << 20, 256 << 20)   # bytes per all-reduce


def _worker(rank: int, world: int, args: argparse.Namespace, port: int, queue) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(args.backend, rank=rank, world_size=world)
    device = torch.device(f"cuda:{rank}") if args.device == "cuda" else torch.device("cpu")
    if args.device == "cuda":
        torch.cuda.set_device(device)
    rows = []
    for size in args.sizes:
        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32  # gloo has no bf16 sum
        x = torch.ones(size // torch.finfo(dtype).bits * 8, dtype=dtype, device=device)
        nbytes = x.numel() * x.element_size()

        def sync():
            if args.device == "cuda":
                torch.cuda.synchronize(device)

        for _ in range(args.warmup):
            dist.all_reduce(x)
        sync()
        dist.barrier()
        times = []
        for _ in range(args.repeats):
            x.fill_(1.0)
            sync()
            start = time.perf_counter()
            dist.all_reduce(x)
            sync()
            times.append(time.perf_counter() - start)
        ok = bool(torch.all(x == world).item())  # every rank's ones summed
        t = statistics.median(times)
        rows.append({"bytes": nbytes, "time_s": t, "algbw_gbs": nbytes / t / 1e9,
                     "busbw_gbs": 2 * (world - 1) / world * nbytes / t / 1e9, "sum_ok": ok})
    if rank == 0:
        queue.put(rows)
    dist.barrier()
    dist.destroy_process_group()


def measure(gpus: int, backend: str, device: str, sizes=SIZES, warmup: int = 5, repeats: int = 20) -> dict:
    import socket

    import torch.multiprocessing as mp

    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = argparse.Namespace(backend=backend, device=device, sizes=list(sizes), warmup=warmup, repeats=repeats)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_worker, args=(gpus, args, port, queue), nprocs=gpus, join=True, start_method="spawn")
    rows = queue.get(timeout=60)
    return {"gpus": gpus, "backend": backend, "device": device, "sizes": rows,
            "interconnect_gbs": max(r["busbw_gbs"] for r in rows),
            "note": "interconnect_gbs = the largest bus bandwidth over the sizes (2(t-1)/t x bytes / time)"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="JSON file to write")
    parser.add_argument("--gpus", type=int, default=None, help="processes (default: every visible GPU)")
    parser.add_argument("--backend", default="nccl")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES), help="bytes per all-reduce")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    gpus = args.gpus
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    if gpus < 2:
        print(f"interconnect.py: needs 2 or more processes, got {gpus}", file=sys.stderr)
        return 2
    result = measure(gpus, args.backend, args.device, args.sizes, repeats=args.repeats)
    text = json.dumps(result)
    print(text)
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    return 0 if all(r["sum_ok"] for r in result["sizes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
