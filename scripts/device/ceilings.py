"""Measures the two roofline ceilings of the GPU at hand (METHOD.md's "two numbers first"):
a device-to-device copy (bytes read + bytes written over time) and a bf16 8192^3 matmul on random
data. Median of timed repeats after warm-up, CUDA events. Prints one JSON line and writes it to argv[1].

    python3 scripts/device/ceilings.py $OUT/ceilings.json
"""

import json
import statistics
import sys

import torch


def timed(fn, warmup: int = 3, repeats: int = 10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main() -> None:
    dev = torch.device("cuda")
    n_bytes = 4 << 30
    src = torch.randint(0, 255, (n_bytes,), dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    t_copy = timed(lambda: dst.copy_(src))
    del src, dst
    n = 8192
    a = torch.randn(n, n, dtype=torch.bfloat16, device=dev)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=dev)
    t_mm = timed(lambda: a @ b)
    out = {"gpu": torch.cuda.get_device_name(0),
           "copy_bandwidth_gbs": round(2 * n_bytes / t_copy / 1e9, 1),
           "matmul_bf16_tflops": round(2 * n**3 / t_mm / 1e12, 1),
           "method": "median of 10 after 3 warm-ups (CUDA events); copy counts bytes read + written, 4 GiB; "
                     "matmul 8192^3 bf16 on randn"}
    print(json.dumps(out), flush=True)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
