# Per-engine environments as nodes of the DAG (inference_eval.environments, docs/environments.md).
# A library whose `library.env` is auto or a lock name runs its jobs with the interpreter of
# <envs_dir>/<lock>-<sha12>/, built here from envs/<lock>.txt; the folder is keyed by the lock's hash, so
# a changed lock is a new folder, built again. The build always writes env.json (status ok or failed with
# the installer's last lines): a failed build gives that library's rows `env_failed`, the run goes on.
#   snakemake --cores 8 envs      builds only the environments (e.g. once on a cluster's login node)
from inference_eval import environments as _environments  # noqa: E402

ENVS_DIR = str(PIPELINE.root.get("envs_dir") or _environments.DEFAULT_ENVS_DIR)


def env_targets(hardware):
    """The env.json of every matrix library's environment on `hardware` (none where library.env is none)."""
    try:
        return _environments.env_targets(PIPELINE.job(library=lib, hardware=hardware) for lib in PIPELINE.libraries)
    except ValueError as exc:
        raise WorkflowError(f"configuration error: {exc}")


rule env_build:
    input:
        lock=lambda wc: str(_environments.lock_path(wc.lock)),
    output:
        f"{ENVS_DIR}/{{lock,[A-Za-z0-9_.]+-(?:cpu|cuda)}}-{{env_sha,[0-9a-f]{{12}}}}/{_environments.STATUS_FILE}",
    log:
        f"{ENVS_DIR}/logs/{{lock}}-{{env_sha}}.log",
    params:
        envs_dir=ENVS_DIR,
    localrule: True
    script:
        "../workflow_scripts/build_env.py"


rule envs:
    input:
        env_targets(PIPELINE.hardware),
    localrule: True
