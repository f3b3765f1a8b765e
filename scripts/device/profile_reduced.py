import sys, time, yaml, json, os
sys.path.insert(0, "src")
from inference_eval.profiling import workflow
variants = sys.argv[1].split(",")
out = os.environ["OUT"]
cfg = {"model": yaml.safe_load(open("conf/model/llama2-7b.yaml")), "hardware": yaml.safe_load(open("conf/hardware/h100.yaml")),
       "seed": 0, "profiling": {"seq": {"b": 8, "s": [128, 512, 1024]}, "batch": {"s": 512, "b": [1, 4, 8]},
       "extra": [[2, 256]], "heldout": [[4, 128]], "warmup": 1, "repeats": 3, "ncu": {"enabled": sys.argv[2] == "ncu", "layer": 1}}}
paths = []
for v in variants:
    t = time.time()
    p = workflow.module_paths(out, "h100", v)
    rec = workflow.profile_library(cfg, v, p, progress=False)
    paths.append(p)
    print(v, rec["status"], rec["reason"][:300], rec["ncu"], round(time.time() - t, 1), flush=True)
workflow.fit_coefficients([p["points"] for p in paths], f"{out}/h100/coefficients.csv", f"{out}/h100/fit_points.csv")
