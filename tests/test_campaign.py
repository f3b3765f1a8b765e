"""The campaign configuration (conf/campaign/*.yaml, inference_eval.campaign): the real file loads and its
parts are plannable, a bad file fails naming what is wrong, and the row limits live only there."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inference_eval import campaign, config

ROOT = Path(__file__).resolve().parents[1]
H200 = ROOT / "conf" / "campaign" / "h200.yaml"
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")


def test_the_h200_campaign_loads_with_the_paper_matrix():
    c = campaign.load("h200")
    assert c.hardware == "h200" and c.limits == {"s2s": 200, "l2s": 64, "s2l": 16, "s16k": 2}
    covered = {(p.scenario, p.library, p.model, d) for p in c.parts.values() for d in p.datasets}
    for model in ("llama2-7b", "llama2-13b"):
        for lib in ("transformers", "vllm", "mii", "llamacpp"):
            assert {("batch", lib, model, d) for d in ("s2s", "l2s", "s2l")} <= covered, (lib, model)
    for lib in ("vllm", "mii", "transformers", "llamacpp"):
        assert {("batch", lib, "mistral-7b", d) for d in ("s2s", "l2s", "s2l")} <= covered, lib
    assert {("batch", lib, "vicuna-13b-16k", "s16k") for lib in ("vllm", "llamacpp", "mii")} <= covered
    assert ("batch", "transformers", "vicuna-7b-16k", "s16k") in covered
    for lib in ("vllm", "mii", "llamacpp"):
        assert {("serving", lib, "llama2-7b", d) for d in ("s2s", "l2s")} <= covered, lib
    assert {("serving", lib, "llama2-13b", "l2s") for lib in ("vllm", "mii")} <= covered
    assert c.schedules["engines"]["rates"] == [2.0, 8.0, 32.0] and c.schedules["llamacpp"]["num_requests"] == 40


def test_targets_and_overrides_of_a_part():
    c = campaign.load("h200")
    assert c.targets("vllm-7b-serving") == ["results/h200/serving/vllm_llama2-7b_s2s.csv",
                                            "results/h200/serving/vllm_llama2-7b_l2s.csv"]
    assert c.targets("mii-13b-batch", "l2s", results="/r") == ["/r/h200/batch/mii/llama2-13b/l2s.json"]
    assert c.targets("vllm-modules") == ["results/h200/modules/vllm.json"]
    ov = c.overrides("llamacpp-7b-batch", "s2l")
    assert ov == ["matrix.dataset_variant=real", "dataset.limit=16", "scenario.repeats=3", "scenario.warmup_repeats=0"]
    serve = campaign.override_string(c.overrides("vllm-7b-serving", "l2s"))
    assert "dataset.limit=64 scenario.num_requests=160 scenario.rates=[2.0,8.0,32.0] scenario.drop_first=10" in serve
    assert "scenario.search={enabled:true," in serve
    with pytest.raises(campaign.CampaignError, match="one Snakemake call per dataset"):
        c.overrides("vllm-7b-serving")
    with pytest.raises(campaign.CampaignError, match="no dataset 's2l'.*s2s, l2s"):
        c.targets("vllm-7b-serving", "s2l")
    with pytest.raises(campaign.CampaignError, match="no part 'nope'"):
        c.part("nope")
    assert c.model_files("llamacpp-13b-batch") == ["results/models/llama2-13b/hf/config.json",
                                                   "results/models/llama2-13b/gguf/f16.gguf"]
    assert "results/models/llama2-7b/weights/model.safetensors" in c.model_files("mii-7b-serving")


def test_every_call_of_every_part_composes_to_its_settings():
    """Each call's overrides are valid Hydra overrides, and the job they compose has the limit, repeats and
    schedule the campaign names (what the Snakemake jobs of that call are passed)."""
    c = campaign.load("h200")
    for p in c.parts.values():
        for d in c.calls(p.name):
            ov = shlex.split(campaign.override_string(c.overrides(p.name, d)))
            if p.scenario == "modules":
                cfg = config.compose(ov + [f"hardware={c.hardware}"])
                assert cfg["profiling"]["model"] == p.model
                continue
            cfg = config.compose(ov + [f"hardware={c.hardware}", f"library={p.library}", f"model={p.model}",
                                       f"scenario={p.scenario}", f"dataset={d}"])
            assert cfg["dataset"]["limit"] == c.limits[d], (p.name, d)
            if p.scenario == "batch":
                assert cfg["scenario"]["repeats"] == (p.repeats or c.repeats)
            else:
                for key, value in c.schedules[p.schedule].items():
                    assert cfg["scenario"][key] == value, (p.name, key)


@pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed")
def test_the_snakefile_plans_a_batch_and_a_serving_part(tmp_path):
    """`snakemake -n` on one dataset's targets of two parts, with the overrides campaign.sh passes."""
    c = campaign.load("h200")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), INFERENCE_EVAL_HARDWARE="cpu")
    env.pop("SLURM_JOB_ID", None)
    for part, dataset in (("vllm-13b-batch", "s2l"), ("llamacpp-7b-serving", "s2s")):
        ov = campaign.override_string(c.overrides(part, dataset)) + f" results_dir={tmp_path}/results"
        targets = c.targets(part, dataset, results=f"{tmp_path}/results")
        proc = subprocess.run([SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
                               "--cores", "2", "-n", "--config", f"model={c.part(part).model}", "hardware=h200",
                               f"overrides={ov}", "--", *targets], capture_output=True, text=True, timeout=300, env=env)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        rule = "batch_run" if c.part(part).scenario == "batch" else "serving_sweep"
        assert f"rule {rule}:" in out and targets[0] in out
        assert f"results/datasets/{dataset}/rows.jsonl" in out  # the real dataset, built with the call's limit


def test_the_command_line_lists_parts_and_prints_one_call(capsys):
    assert campaign.main(["parts", "h200"]) == 0
    table = capsys.readouterr().out
    assert "vllm-7b-serving" in table and "background" in table and "device minutes" in table
    assert campaign.main(["calls", "h200", "vllm-7b-serving", "--results", "/r"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    ds, model, lib, scen, bg, ov, targets = lines[1].split("\t")
    assert (ds, model, lib, scen, bg, targets) == ("l2s", "llama2-7b", "vllm", "serving", "0",
                                                   "/r/h200/serving/vllm_llama2-7b_l2s.csv")
    assert campaign.main(["overrides", "h200", "vllm-7b-serving"]) == 2
    assert "name one of s2s, l2s" in capsys.readouterr().err
    assert campaign.main(["limit", "h200", "s16k"]) == 0 and capsys.readouterr().out.strip() == "2"


def test_a_campaign_runs_on_other_hardware_with_the_same_rows_and_schedules(capsys):
    """The lent GPU is sometimes another model: --hardware moves the targets, keeps the overrides."""
    assert campaign.main(["overrides", "h200", "vllm-7b-serving", "s2s"]) == 0
    own = capsys.readouterr().out
    assert campaign.main(["targets", "h200", "vllm-7b-serving", "s2s", "--hardware", "h100"]) == 0
    assert capsys.readouterr().out.strip() == "results/h100/serving/vllm_llama2-7b_s2s.csv"
    assert campaign.main(["overrides", "h200", "vllm-7b-serving", "s2s", "--hardware", "h100"]) == 0
    assert capsys.readouterr().out == own
    assert campaign.main(["targets", "h200", "vllm-7b-serving", "--hardware", "h9"]) == 2
    assert "--hardware 'h9' is not a conf/hardware member" in capsys.readouterr().err


# -- bad files -------------------------------------------------------------------------------------------
def _write(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load(H200.read_text())
    edit(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("edit, expected", [
    (lambda r: r["datasets"].update(s2s="200"), r"campaign\.datasets\.s2s = '200' is not allowed; expected an integer >= 1"),
    (lambda r: r["datasets"].update(s4k=8), r"unknown config key campaign\.datasets\.s4k.*allowed: one of 's2s'"),
    (lambda r: r.update(repeat=3), r"unknown config key campaign\.repeat.*valid campaign keys: .*repeats"),
    (lambda r: r["parts"]["vllm-7b-batch"].update(estimate_s=1.5), r"parts\.vllm-7b-batch\.estimate_s = 1\.5"),
    (lambda r: r["parts"]["vllm-7b-batch"].update(librar="vllm"), r"unknown config key campaign\.parts\.vllm-7b-batch\.librar"),
    (lambda r: r["parts"]["vllm-7b-batch"].update(scenario="offline"), r"scenario = 'offline' is not allowed; expected one of 'batch', 'serving', 'modules'"),
    (lambda r: r.update(libraries=r["libraries"] + ["vllmm"]), r"libraries = 'vllmm' is not a conf/library member; valid: .*vllm"),
    (lambda r: r.update(models=r["models"] + ["llama3-8b"]), r"models = 'llama3-8b' is not a conf/model member"),
    (lambda r: r.update(hardware="b200"), r"hardware = 'b200' is not a conf/hardware member"),
    (lambda r: r["libraries"].remove("mii"), r"parts\.mii-7b-batch\.library = 'mii' is not a campaign library; valid: transformers, vllm, llamacpp, trtllm"),
    (lambda r: r["parts"]["vllm-7b-batch"].update(model="llama2-70b"), r"parts\.vllm-7b-batch\.model = 'llama2-70b' is not a campaign model"),
    (lambda r: r["parts"]["vllm-13b-serving"].update(datasets=["l2s", "s16"]), r"datasets\[1\] = 's16' is not allowed"),
    (lambda r: (r["datasets"].pop("s2l"), None), r"parts\.llamacpp-7b-batch\.datasets = 's2l' is not a campaign dataset; valid: \S+, \S+, \S+ \["),
    (lambda r: r["parts"]["vllm-7b-serving"].update(schedule="fast"), r"parts\.vllm-7b-serving\.schedule = 'fast' is not a campaign schedule"),
    (lambda r: r["parts"]["vllm-7b-serving"].pop("schedule"), r"parts\.vllm-7b-serving\.schedule is missing"),
    (lambda r: r["parts"]["vllm-7b-batch"].update(schedule="engines"), r"only serving parts have one"),
    (lambda r: r["parts"]["vllm-modules"].update(library="vllm-eager"), r"vllm-modules\.library = 'vllm-eager' is not a profiled variant"),
    (lambda r: r["schedules"]["engines"].update(rates="fast"), r"campaign\.schedules\.engines\.rates = 'fast' is not allowed"),
    (lambda r: r["schedules"]["engines"].update(repeats=3), r"unknown config key campaign\.schedules\.engines\.repeats"),
    (lambda r: r["schedules"]["engines"]["search"].update(growth=0.5), r"campaign\.schedules\.engines\.search\.growth = 0\.5"),
    (lambda r: r["parts"]["vllm-vicuna7b-s16k"].update(estimate_s=900), r"estimate_s = 900 is over call_budget_s = 540"),
])
def test_a_bad_campaign_names_the_key_value_and_what_is_allowed(tmp_path, edit, expected):
    path = _write(tmp_path, edit)
    with pytest.raises(campaign.CampaignError) as err:
        campaign.load(path)
    assert re.search(expected, str(err.value)), str(err.value)
    assert str(path) in str(err.value)


def test_an_unknown_campaign_lists_the_known_ones():
    with pytest.raises(campaign.CampaignError, match=r"no campaign 'b200'.*h200"):
        campaign.load("b200")


# -- one place for the subset sizes -------------------------------------------------------------------------
def test_the_subset_sizes_are_written_only_in_the_campaign_config():
    """No script or module under scripts/ or src/ spells a row limit of the campaign (``dataset.limit=200``,
    ``s2s: 200``, ``s2s) echo 200``, ``"s2s": 200``): they read it from conf/campaign/."""
    limits = campaign.load("h200").limits
    values = "|".join(str(n) for n in sorted(set(limits.values())))
    patterns = [re.compile(rf"dataset\.limit=(?:{values})\b")]
    patterns += [re.compile(rf"\b{d}\b[\"')]?\s*(?:[:=]|\)\s*echo)\s*{n}\b") for d, n in limits.items()]
    found = []
    for base in ("scripts", "src"):
        for path in sorted((ROOT / base).rglob("*")):
            if not path.is_file() or path.suffix not in (".py", ".sh", ".smk", ".yaml", ".md", ".txt", ""):
                continue
            if any(part.endswith(".egg-info") or part == "__pycache__" for part in path.parts):
                continue  # made by the install from README.md and the sources, not written here
            for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if any(p.search(line) for p in patterns):
                    found.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not found, "row limits written outside conf/campaign/:\n" + "\n".join(found)
    # and the patterns do find them where they are
    assert any(p.search(line) for p in patterns for line in H200.read_text().splitlines())
    assert patterns[1].search('limit() { case $1 in s2s) echo 200;; esac; }')
    assert patterns[1].search('LIMITS = {"s2s": 200}') and patterns[0].search('sm "dataset.limit=2 matrix')


def test_copy_of_the_campaign_round_trips(tmp_path):
    """A campaign file under another path loads the same (the CLI and load take a path too)."""
    path = tmp_path / "mine.yaml"
    path.write_text(H200.read_text())
    a, b = campaign.load("h200"), campaign.load(path)
    assert b.name == "mine" and a.parts == b.parts and a.limits == b.limits
