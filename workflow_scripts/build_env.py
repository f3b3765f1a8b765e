# Thin entry of rule env_build (rules/envs.smk): build one lock's environment, write its env.json.
# A failed build is a status (env_failed rows for the library), not a failed job.
from inference_eval.environments import build_env

status = build_env(snakemake.wildcards.lock, snakemake.wildcards.env_sha, snakemake.output[0],
                   snakemake.log[0] if snakemake.log else None, root=snakemake.params.envs_dir)
print(f"environment {status['lock']}: {status['status']}" + (f" ({status['reason']})" if status.get("reason") else ""))
