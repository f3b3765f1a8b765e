"""Per-engine environments (inference_eval.environments, rules/envs.smk, envs/): which interpreter a
library's jobs get, the env_failed rows of a failed build, the locks being current, and one engine
(llama.cpp CPU) built from its lockfile and running its batch row there through Snakemake."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tomllib
from batch_fixtures import job_config, tiny_model_dir, write_rows

from inference_eval import environments
from inference_eval.environments import LOCKS, EnvironmentFailed

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _uv() -> str | None:
    try:
        return environments.find_uv()
    except EnvironmentFailed:
        return None


def _snakemake(args, workdir: Path, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, INFERENCE_EVAL_HARDWARE="cpu")
    env.pop("SLURM_JOB_ID", None)
    return subprocess.run(SNAKEMAKE + ["--cores", "2", "--nolock", "--snakefile", str(REPO / "Snakefile"),
                                       "--directory", str(workdir), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def _ok_env(cfg) -> environments.LibraryEnv:
    """Make the environment folder of ``cfg``'s lock look built: env.json ok and bin/python a real
    interpreter (a script that runs this one, with its packages)."""
    env = environments.resolve(cfg)
    (Path(env.dir) / "bin").mkdir(parents=True)
    python = Path(env.dir) / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    (Path(env.dir) / "env.json").write_text(json.dumps({"status": "ok", "lock": env.lock}))
    return env


# -- the files in envs/ ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LOCKS))
def test_every_lock_has_its_inputs_and_pins_or_says_why(name):
    spec = LOCKS[name]
    source = environments.ENVS_SOURCE / spec.source
    assert source.is_file(), source
    assert "-r harness.in" in source.read_text().splitlines()
    text = environments.lock_path(name).read_text()
    if environments.lock_is_resolved(text):
        assert text.splitlines()[1].strip() == f"#    python scripts/lock_envs.py {name}"
        pins = {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==", text, re.MULTILINE)}
        assert {"snakemake", "hydra-core", "numpy"} <= pins, name  # the harness's own needs come along
    else:
        assert text.startswith(f"# envs/{name}.txt: {environments.NOT_RESOLVED}")
        assert "cause:" in text or "Result:" in text  # uv's error is kept


def test_resolved_locks_pin_their_engine():
    expected = {"transformers-cpu": ("transformers==5.19.0", "torch==2.13.0"),
                "transformers-cuda": ("transformers==5.19.0", "torch==2.13.0"),
                "vllm-cuda": ("vllm==0.24.0",),
                "mii-cuda": ("deepspeed-mii==0.3.3", "deepspeed==0.19.8", "torch==2.11.0"),
                "llamacpp-cpu": ("llama-cpp-python==0.3.36",), "llamacpp-cuda": ("llama-cpp-python==0.3.36",)}
    for name, pins in expected.items():
        lines = environments.lock_path(name).read_text().splitlines()
        for pin in pins:
            assert pin in lines, (name, pin)


def test_harness_in_names_every_runtime_dependency_of_the_package():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~;\[ ]", d, 1)[0].lower() for d in deps}
    listed = {re.split(r"[<>=!~;\[ ]", ln, 1)[0].lower()
              for ln in (environments.ENVS_SOURCE / "harness.in").read_text().splitlines()
              if ln.strip() and not ln.startswith(("#", "-"))}
    assert names <= listed, names - listed


# -- library.env -> interpreter --------------------------------------------------------------------
def test_none_is_the_current_interpreter():
    cfg = job_config("llamacpp")
    assert cfg["library"]["env"] == "none"  # the embedded CPU default: no environment to build
    assert environments.library_python(cfg) == sys.executable
    assert environments.status_path(cfg) is None


def test_auto_picks_the_lock_of_the_hardware_kind(tmp_path):
    cfg = job_config("llamacpp", env="auto")
    cfg["envs_dir"] = str(tmp_path)
    env = environments.resolve(cfg)
    sha = environments.lock_sha("llamacpp-cpu")
    assert (env.lock, env.sha) == ("llamacpp-cpu", sha)
    assert env.dir == str(tmp_path / f"llamacpp-cpu-{sha}") and env.python == str(tmp_path / f"llamacpp-cpu-{sha}/bin/python")
    gpu = dict(cfg, hardware={**cfg["hardware"], "kind": "gpu"})
    assert environments.resolve(gpu).lock == "llamacpp-cuda"
    # no CPU build of DeepSpeed-MII: auto falls back to this interpreter and says so
    mii = environments.resolve(dict(job_config("mii", env="auto"), envs_dir=str(tmp_path)))
    assert mii.lock is None and mii.python == sys.executable and "mii-cpu" in mii.note


def test_a_lock_name_and_a_path_and_a_bad_value(tmp_path):
    cfg = dict(job_config("transformers", env="llamacpp-cpu"), envs_dir=str(tmp_path))
    assert environments.resolve(cfg).lock == "llamacpp-cpu"  # any lock, whatever the library
    path = dict(job_config("transformers", env=sys.executable))
    assert environments.library_python(path) == os.path.abspath(sys.executable)
    with pytest.raises(ValueError, match=r"library.env 'llamacpp-gpu'.*llamacpp-cpu"):
        environments.resolve(job_config("llamacpp", env="llamacpp-gpu"))
    missing = job_config("llamacpp", env=str(tmp_path / "no" / "python"))
    with pytest.raises(EnvironmentFailed, match="does not exist"):
        environments.library_python(missing)


def test_the_folder_follows_the_lock(tmp_path, monkeypatch):
    src = tmp_path / "envs"
    shutil.copytree(environments.ENVS_SOURCE, src)
    monkeypatch.setattr(environments.locks, "ENVS_SOURCE", src)  # where lock_path reads the locks
    before = environments.lock_sha("llamacpp-cpu")
    assert re.fullmatch(r"[0-9a-f]{12}", before)
    with (src / "llamacpp-cpu.txt").open("a") as fh:
        fh.write("six==1.17.0\n")
    assert environments.lock_sha("llamacpp-cpu") != before


def test_library_python_of_a_lock_reads_its_status(tmp_path):
    cfg = dict(job_config("llamacpp", env="llamacpp-cpu"), envs_dir=str(tmp_path))
    with pytest.raises(EnvironmentFailed, match="is not built.*snakemake envs"):
        environments.library_python(cfg)
    env = environments.resolve(cfg)
    Path(env.dir).mkdir(parents=True)
    (Path(env.dir) / "env.json").write_text(json.dumps({"status": "failed", "reason": "sync exited with 2; last lines: x"}))
    with pytest.raises(EnvironmentFailed, match="sync exited with 2"):
        environments.library_python(cfg)
    (Path(env.dir) / "env.json").write_text(json.dumps({"status": "ok"}))
    with pytest.raises(EnvironmentFailed, match="does not exist.*remove"):
        environments.library_python(cfg)
    shutil.rmtree(env.dir)
    _ok_env(cfg)
    assert environments.library_python(cfg) == env.python
    # another interpreter's children get only the package's source on their path
    assert environments.child_env(env.python, {"PYTHONPATH": "/elsewhere"})["PYTHONPATH"] == str(REPO / "src")
    assert "/elsewhere" in environments.child_env(sys.executable, {"PYTHONPATH": "/elsewhere"})["PYTHONPATH"]


# -- failed builds -----------------------------------------------------------------------------------
def test_an_unresolved_lock_fails_its_build_with_the_reason(tmp_path):
    sha = environments.lock_sha("trtllm-cuda")
    out = tmp_path / f"trtllm-cuda-{sha}" / "env.json"
    status = environments.build_env("trtllm-cuda", sha, out, tmp_path / "build.log")
    assert status["status"] == "failed" and "NOT RESOLVED" in status["reason"]
    assert json.loads(out.read_text())["status"] == "failed"


def test_a_failing_installer_is_a_status_with_its_last_lines(tmp_path, monkeypatch):
    # a real subprocess that fails like an installer: the status keeps its last 12 lines
    script = tmp_path / "uv"
    script.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'uv 0'; exit 0; fi\n"
                      "for i in $(seq 1 30); do echo \"installer line $i\"; done\nexit 3\n")
    script.chmod(0o755)
    monkeypatch.setattr(environments.build, "find_uv", lambda: str(script))  # what build_env calls
    sha = environments.lock_sha("llamacpp-cpu")
    status = environments.build_env("llamacpp-cpu", sha, tmp_path / f"llamacpp-cpu-{sha}" / "env.json")
    assert status["status"] == "failed"
    assert "step venv" in status["reason"] and "exited with 3" in status["reason"]
    assert status["log_tail"] == [f"installer line {i}" for i in range(19, 31)]
    stale = environments.build_env("llamacpp-cpu", "0" * 12, tmp_path / "x" / "env.json")
    assert stale["status"] == "failed" and "changed since the DAG was planned" in stale["reason"]


def test_batch_row_of_a_failed_environment_is_env_failed(tmp_path):
    from inference_eval.batch import run_batch
    from inference_eval.models.files import ModelFiles

    cfg = dict(job_config("llamacpp", env="llamacpp-cpu"), envs_dir=str(tmp_path / "envs"))
    env = environments.resolve(cfg)
    Path(env.dir).mkdir(parents=True)
    reason = "environment llamacpp-cpu did not build: step sync exited with 2; last lines: no network"
    (Path(env.dir) / "env.json").write_text(json.dumps({"status": "failed", "reason": reason}))
    rows = write_rows(tmp_path / "ds", manifest={"source": "synthetic"})
    t0 = time.perf_counter()
    record = run_batch(cfg, rows, ModelFiles(hf_dir=str(tiny_model_dir(tmp_path / "hf"))), tmp_path / "r.json",
                       tmp_path / "r.csv", log_path=tmp_path / "r.log", echo=False)
    assert time.perf_counter() - t0 < 30  # no worker was started
    assert record["status"] == "env_failed" and record["reason"] == reason
    assert record["provenance"]["environment"]["lock"] == "llamacpp-cpu"
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "env_failed"
    assert "no network" in (tmp_path / "r.log").read_text()


def test_serving_row_of_a_failed_environment_is_env_failed(tmp_path):
    from inference_eval.config import compose
    from inference_eval.models.files import ModelFiles
    from inference_eval.serving.sweep import run_sweep

    cfg = compose(["library=llamacpp", "model=tiny-llama", "hardware=cpu", "dataset=s2s-synthetic",
                   "scenario=serving", "library.env=llamacpp-cpu", f"envs_dir={tmp_path / 'envs'}"])
    rows = write_rows(tmp_path / "ds", manifest={"source": "synthetic"})
    frame = run_sweep(cfg, rows, ModelFiles(hf_dir=str(tmp_path)), tmp_path / "s.csv", tmp_path / "run")
    assert list(frame["status"]) == ["env_failed"] and "is not built" in frame["reason"][0]


def test_a_server_runs_with_the_environments_interpreter(tmp_path):
    """The launcher's command names the library's interpreter, and the sweep runs the server with it
    (the project's loopback server, from an environment whose bin/python links to this interpreter)."""
    from inference_eval.config import compose
    from inference_eval.models.files import ModelFiles
    from inference_eval.serving.servers import LoopbackServer, server_spec
    from inference_eval.serving.sweep import run_sweep

    cfg = compose(["library=llamacpp", "model=tiny-llama", "hardware=cpu", "dataset=s2s-synthetic",
                   "scenario=serving", "library.env=llamacpp-cpu", f"envs_dir={tmp_path / 'envs'}",
                   "scenario.num_requests=4", "scenario.rates=[4.0]", "scenario.drop_first=0",
                   "scenario.drop_last=0"])
    env = _ok_env(cfg)
    spec = server_spec("llamacpp")
    spec.python = env.python
    argv = spec.command(cfg, ModelFiles(gguf_path="m.gguf"), "127.0.0.1", 1, None).argv
    assert argv[:3] == [env.python, "-m", "llama_cpp.server"]
    rows = write_rows(tmp_path / "ds", lengths=((3, 2), (4, 3)), manifest={"source": "synthetic"})
    frame = run_sweep(cfg, rows, ModelFiles(hf_dir=str(tmp_path)), tmp_path / "s.csv", tmp_path / "run",
                      spec=LoopbackServer())
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["server_command"][0] == env.python, record["server_command"]
    assert set(frame["status"]) == {"ok"}, frame[["status", "reason"]]
    assert record["provenance"]["environment"]["lock"] == "llamacpp-cpu"


# -- the DAG -----------------------------------------------------------------------------------------
def test_dry_run_plans_the_environment_before_the_batch_row(tmp_path):
    ov = f"overrides=library.env=llamacpp-cpu envs_dir={tmp_path}/envs"
    sha = environments.lock_sha("llamacpp-cpu")
    proc = _snakemake(["-n", "results/cpu/batch/llamacpp/tiny-llama/s2s.json", "--config", ov], tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "rule env_build:" in out and f"{tmp_path}/envs/llamacpp-cpu-{sha}/env.json" in out
    # `envs` builds only environments: llama.cpp's lock under auto; none for MII (no CPU build)
    ov = f"overrides=library.env=auto envs_dir={tmp_path}/envs matrix.libraries=[llamacpp,mii]"
    proc = _snakemake(["-n", "envs", "--config", ov], tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert out.count("rule env_build:") == 1 and "llamacpp-cpu-" in out and "batch_run" not in out
    # the default (library.env none) plans no environment at all
    proc = _snakemake(["-n", "all"], tmp_path)
    assert proc.returncode == 0 and "env_build" not in proc.stdout + proc.stderr


# -- the locks are current ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LOCKS))
def test_lock_is_current(name):
    """Re-resolving the lock's inputs, starting from its pins, gives the committed lock: every pin still
    satisfies the inputs at the cutoff (network: PyPI and the lock's index). A fresh resolution is not
    compared: two of them an hour apart picked different releases of one package, both uploaded before the
    cutoff, as the registry's cached index pages changed."""
    uv = _uv()
    if uv is None:
        pytest.skip("uv is not installed (scripts/setup.sh installs it)")
    sys.path.insert(0, str(REPO / "scripts"))
    import lock_envs

    committed = environments.lock_path(name).read_text()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.txt"
        proc = lock_envs.compile_lock(name, uv, out, prefer=environments.lock_path(name))
        made = out.read_text() if proc.returncode == 0 else None
    unreachable = re.search(r"Failed to fetch: (https?://[^/\s]+)", proc.stderr or "")
    if made is None and unreachable:
        if environments.lock_is_resolved(committed):
            pytest.skip(f"registry unreachable ({unreachable.group(1)}): cannot re-resolve {name}")
        pytest.skip(f"{name} needs {unreachable.group(1)}, unreachable here; envs/{name}.txt says why")
    assert made is not None, f"{name} did not resolve: {proc.stderr[-2000:]}"
    assert environments.lock_is_resolved(committed), f"{name} resolves now: run python scripts/lock_envs.py {name}"
    version = subprocess.run([uv, "--version"], capture_output=True, text=True).stdout.strip()
    assert made == committed, (f"envs/{name}.txt is not what its inputs resolve to ({version}; the locks were "
                               f"made with uv {environments.UV_VERSION}): run python scripts/lock_envs.py {name}")


# -- one engine in its own environment, end to end ---------------------------------------------------
@pytest.mark.slow
def test_llamacpp_cpu_builds_from_its_lock_and_runs_its_batch_row_there(tmp_path):
    """Snakemake builds envs/llamacpp-cpu.txt's environment (from the wheel scripts/setup.sh built, so it
    does not compile llama-cpp-python again) and runs llama.cpp's batch row with that interpreter."""
    if _uv() is None:
        pytest.skip("uv is not installed (scripts/setup.sh installs it)")
    if not list((REPO / ".envs" / "wheels").glob("llama_cpp_python-*.whl")):
        if os.environ.get("CI"):
            pytest.fail("no llama-cpp-python wheel in .envs/wheels: scripts/setup.sh builds it")
        pytest.skip("no llama-cpp-python wheel in .envs/wheels (scripts/setup.sh builds it)")
    envs = tmp_path / "envs"
    target = "results/cpu/batch/llamacpp/tiny-llama/s2s.json"
    ov = f"overrides=library.env=llamacpp-cpu envs_dir={envs} dataset.limit=3 dataset.max_tokens_cap=4"
    t0 = time.perf_counter()
    proc = _snakemake([target, "--config", ov], tmp_path, timeout=1500)
    wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    sha = environments.lock_sha("llamacpp-cpu")
    status = json.loads((envs / f"llamacpp-cpu-{sha}" / "env.json").read_text())
    assert status["status"] == "ok", status
    record = json.loads((tmp_path / target).read_text())
    assert record["status"] == "ok", record["reason"]
    assert record["output_tokens"] == record["requested_output_tokens"] > 0
    prov = record["provenance"]["environment"]
    python = str(envs / f"llamacpp-cpu-{sha}" / "bin" / "python")
    assert (prov["lock"], prov["lock_sha"], prov["python"]) == ("llamacpp-cpu", sha, python)
    assert record["provenance"]["versions"]["llama_cpp_python"] == "0.3.36"
    print(f"env build {status['build_time_s']:.1f} s (steps {status['steps']}); whole run {wall:.1f} s")
    # the lock unchanged: nothing to do again
    again = _snakemake(["-n", target, "--config", ov], tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
