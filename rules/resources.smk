# Per-rule resources derived from the Hydra hardware profile of the job's {hardware} wildcard.
# GPU rules use `resources: **hardware_resources`; the SLURM executor reads slurm_partition,
# constraint, gpu, mem_mb, runtime and cpus_per_task; a local run ignores what it does not know.


def _hw(wildcards):
    return PIPELINE.job(hardware=wildcards.hardware)["hardware"]


def _slurm(wildcards, key, default=None):
    value = _hw(wildcards).get("slurm", {}).get(key)
    return default if value is None else value


hardware_resources = dict(
    slurm_partition=lambda wc: _slurm(wc, "partition", ""),
    constraint=lambda wc: _slurm(wc, "constraint", ""),
    gpu=lambda wc: int(_slurm(wc, "gpus", 0)),
    mem_mb=lambda wc: int(_slurm(wc, "mem_mb", 4000)),
    cpus_per_task=lambda wc: int(_slurm(wc, "cpus_per_task", 1)),
    runtime=lambda wc: int(_slurm(wc, "runtime_min", 60)),
)
