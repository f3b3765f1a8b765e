"""Per-engine Python environments: which interpreter runs a library's jobs, and how its environment is built.

The engines cannot share one environment on a GPU (vLLM, DeepSpeed-MII and TensorRT-LLM each pin their own
torch/CUDA stack), so each engine family has its inputs in ``envs/<engine>.in`` (top-level pins, plus
``envs/harness.in``: what the harness itself needs there) and a lockfile per target made by
``uv pip compile`` (``envs/<engine>-cuda.txt``, ``envs/<engine>-cpu.txt``; ``scripts/lock_envs.py`` remakes
them). ``LOCKS`` below is the recipe of each lock: what it is compiled from and for which Python, and what its
build needs (environment variables, config settings, prebuilt wheels).

``library.env`` picks a library's interpreter (``library_python`` is the one place that decides):

- ``none``: the interpreter running the harness (the CPU default; machines with the engines preinstalled
  or carried into the harness's own environment);
- ``auto``: the lock for this hardware kind, ``<library>-cuda`` on GPUs and ``<library>-cpu`` on a CPU;
  where no such lock exists (there is no CPU build of DeepSpeed-MII or TensorRT-LLM), the current
  interpreter, with a note in the record;
- a lock name (``llamacpp-cpu``, ...): that lock;
- a path (anything with a ``/``): that interpreter, as it is.

A lock's environment is a node of the DAG (``rules/envs.smk``): ``<envs_dir>/<lock>-<sha12>/`` built by
``uv venv`` + ``uv pip sync`` of the lock, the package itself added with ``--no-deps`` (editable, so the
environment runs this checkout's code), where sha12 is over the lock and its recipe: a changed lock is a new
folder, built again. Its ``env.json`` says whether the build worked; a failed build gives the library's
rows ``status: env_failed`` with the installer's last lines, never a crash of the whole run.
"""

from inference_eval.environments.build import TAIL_LINES, base_python, build_env, build_steps, find_uv, wheel_dirs
from inference_eval.environments.interpreter import (
    STATUS_FILE,
    EnvironmentFailed,
    LibraryEnv,
    child_env,
    describe,
    env_targets,
    envs_dir,
    hardware_kind,
    interpreter_versions,
    is_current,
    library_has_module,
    library_python,
    module_available,
    read_status,
    resolve,
    status_path,
)
from inference_eval.environments.locks import (
    DEFAULT_ENVS_DIR,
    ENVS_SOURCE,
    EXCLUDE_NEWER,
    LOCKS,
    NOT_RESOLVED,
    PLATFORM,
    REPO,
    UV_VERSION,
    LockSpec,
    compile_command,
    lock_is_resolved,
    lock_path,
    lock_sha,
    lock_spec,
    spec_dict,
)

# The package's interface: locks (environments.locks), which interpreter (environments.interpreter) and
# building an environment (environments.build).
__all__ = ["DEFAULT_ENVS_DIR", "ENVS_SOURCE", "EXCLUDE_NEWER", "LOCKS", "NOT_RESOLVED", "PLATFORM", "REPO",
           "STATUS_FILE", "TAIL_LINES", "UV_VERSION", "EnvironmentFailed", "LibraryEnv", "LockSpec", "base_python",
           "build_env", "build_steps", "child_env", "compile_command", "describe", "env_targets", "envs_dir",
           "find_uv", "hardware_kind", "interpreter_versions", "is_current", "library_has_module",
           "library_python", "lock_is_resolved", "lock_path", "lock_sha", "lock_spec", "module_available",
           "read_status", "resolve", "spec_dict", "status_path", "wheel_dirs"]
