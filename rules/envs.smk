# Per-engine environments as nodes of the DAG (inference_eval.environments, docs/environments.md).
# A library whose `library.env` is auto or a lock name runs its jobs with the interpreter of
# <envs_dir>/<lock>-<sha12>/, built here from envs/<lock>.txt; the folder is keyed by the lock's hash, so
# a changed lock is a new folder, built again. The build always writes env.json (status ok or failed with
# the installer's last lines): a failed build gives that library's rows `env_failed`, the run goes on.
#   snakemake --cores 8 envs      builds only the environments (e.g. once on a cluster's login node)
from inference_eval import environments as _environments  # noqa: E402

ENVS_DIR = str(PIPELINE.root.get("envs_dir") or _environments.DEFAULT_ENVS_DIR)

include: "envs_functions.smk"


rule env_build:
    input:
        lock=env_lock_file,
    output:
        f"{ENVS_DIR}/{{lock,[A-Za-z0-9_.]+-(?:cpu|cuda)}}-{{env_sha,[0-9a-f]{{12}}}}/{_environments.STATUS_FILE}",
    log:
        f"{ENVS_DIR}/logs/{{lock}}-{{env_sha}}.log",
    params:
        envs_dir=envs_root,
    localrule: True
    script:
        "../workflow_scripts/build_env.py"


rule envs:
    input:
        env_targets(PIPELINE.hardware),
    localrule: True
