# Functions of rules/envs.smk (which includes this file).


def env_targets(hardware):
    """The env.json of every matrix library's environment on `hardware` (none where library.env is none)."""
    try:
        return _environments.env_targets(PIPELINE.job(library=lib, hardware=hardware) for lib in PIPELINE.libraries)
    except ValueError as exc:
        raise WorkflowError(f"configuration error: {exc}")


def env_lock_file(wildcards):
    """The lock file (envs/<lock>.txt) the environment is built from."""
    return str(_environments.lock_path(wildcards.lock))


def envs_root(wildcards, output):
    """The envs folder, from the job's output (<envs_dir>/<lock>-<sha12>/env.json)."""
    return str(Path(output[0]).parent.parent)
