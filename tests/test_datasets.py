"""Datasets without the Llama-2 tokenizer: synthetic builds, build rules (word-count encoder as a
test double for the tokenizer), readers, sources, atomic writes, figures, CLI and the Snakemake rule."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from inference_eval.config import ConfigError, compose
from inference_eval.datasets import readers, rules
from inference_eval.datasets.build import build_and_write, build_dataset, write_dataset
from inference_eval.datasets.sources import download, local_source_paths, resolve_file, source_file_specs
from inference_eval.requests import DatasetError, load_requests

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
TASKS = ("s2s", "s2l", "s16k", "l2s")


def word_encoder(texts):
    """Test double for the tokenizer: one token per whitespace-separated word."""
    return [[100 + len(w) for w in t.split()] for t in texts]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERENCE_EVAL_CACHE", str(tmp_path / "cache"))


# --- synthetic -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASKS)
def test_synthetic_member_is_small_labelled_and_follows_profile(task):
    cfg = compose([f"dataset={task}-synthetic"])
    built = build_dataset(cfg)
    m = built.manifest
    assert built.member == f"{task}-synthetic"
    assert (m["synthetic"], m["source"], m["tokenizer"], m["source_files"]) == (True, "synthetic", None, [])
    assert m["rows"] == len(built.rows) == 16
    assert all(1 <= r.max_tokens <= 32 for r in built.rows)
    assert all(259 <= t <= 31999 for r in built.rows for t in r.prompt_token_ids)
    assert all(r.prompt.startswith("<synthetic") for r in built.rows)
    lengths = [len(r.prompt_token_ids) for r in built.rows]
    bounds = {"s2s": (11, 97), "s2l": (11, 50), "s16k": (9, 40), "l2s": (1100, 1500)}[task]
    assert bounds[0] <= min(lengths) and max(lengths) <= bounds[1]
    assert m["input_tokens"]["sum"] == sum(lengths)
    if task == "s16k":
        assert {r.max_tokens for r in built.rows} == {32}  # 16,000 capped


def test_synthetic_is_seeded():
    a = build_dataset(compose(["dataset=s2s-synthetic", "seed=1"])).rows
    b = build_dataset(compose(["dataset=s2s-synthetic", "seed=1"])).rows
    c = build_dataset(compose(["dataset=s2s-synthetic", "seed=2"])).rows
    assert a == b
    assert a != c


def test_limit_and_cap_overrides():
    built = build_dataset(compose(["dataset=s2l-synthetic", "dataset.limit=100", "dataset.max_tokens_cap=500"]))
    assert len(built.rows) == 100 and built.manifest["rows_before_limit"] == 1000
    assert max(r.max_tokens for r in built.rows) == 500
    with pytest.raises(ConfigError, match=r"dataset.limit = 0 is not allowed; expected an integer >= 1 or null"):
        compose(["dataset=s2l-synthetic", "dataset.limit=0"])  # the schema stops it when composing
    bad = compose(["dataset=s2l-synthetic"])
    bad["dataset"]["limit"] = 0  # a config that bypassed composition still fails in the builder
    with pytest.raises(DatasetError, match="limit must be a positive integer"):
        build_dataset(bad)


def test_write_dataset_rows_and_manifest(tmp_path):
    cfg = compose(["dataset=l2s-synthetic"])
    rows_path, manifest_path = tmp_path / "l2s-synthetic" / "rows.jsonl", tmp_path / "l2s-synthetic" / "manifest.json"
    manifest = build_and_write(cfg, rows_path, manifest_path)
    on_disk = json.loads(manifest_path.read_text())
    assert on_disk["rows_sha256"] == hashlib.sha256(rows_path.read_bytes()).hexdigest() == manifest["rows_sha256"]
    assert on_disk["provenance"]["config"]["dataset"]["name"] == "l2s"
    requests = load_requests(rows_path)
    assert len(requests) == on_disk["rows"] == 16
    first = json.loads(rows_path.read_text().splitlines()[0])
    assert set(first) == {"id", "prompt", "prompt_token_ids", "max_tokens"}
    assert sorted(p.name for p in rows_path.parent.iterdir()) == ["manifest.json", "rows.jsonl"]  # no temp files


# --- build rules -----------------------------------------------------------------------------------------

def test_llama2_chat_template():
    assert rules.llama2_chat("Name a color.") == "[INST] Name a color. [/INST]"
    assert rules.llama2_chat("Translate.", "The cat.") == "[INST] Translate.\n\nThe cat. [/INST]"


def test_paper_rows_keep_max_tokens_and_default():
    s2s = rules.from_paper(readers.read_paper(FIXTURES / "paper_s2s.json"), word_encoder, "s2s", "f", None)
    assert [r.max_tokens for r in s2s.rows] == [5, 9, 7]
    assert s2s.rows[0].id == "s2s-00000" and s2s.rows[0].prompt_token_ids == tuple(word_encoder([s2s.rows[0].prompt])[0])
    s16k = rules.from_paper(readers.read_paper(FIXTURES / "paper_s16k.json", require_max_tokens=False),
                            word_encoder, "s16k", "f", 16000)
    assert {r.max_tokens for r in s16k.rows} == {16000}
    with pytest.raises(DatasetError, match=r"row 0: missing field 'max_tokens'"):
        rules.from_paper(readers.read_paper(FIXTURES / "paper_s16k.json", require_max_tokens=False),
                         word_encoder, "s16k", "paper_s16k.json", None)


def test_alpaca_reference_rule_filters_and_is_seeded():
    rows = readers.read_alpaca(FIXTURES / "alpaca.json")
    rule = {"rows": 4, "input_tokens": [1, 12], "output": "reference", "output_tokens": [2, 8]}
    a = rules.from_alpaca(rows, word_encoder, rule, seed=0, where="alpaca.json")
    b = rules.from_alpaca(rows, word_encoder, rule, seed=0, where="alpaca.json")
    assert a.rows == b.rows and len(a.rows) == 4
    for r in a.rows:
        src = rows[int(r.id.split("-")[1])]
        assert r.prompt == rules.llama2_chat(src.instruction, src.input)
        assert 1 <= len(r.prompt_token_ids) <= 12
        assert r.max_tokens == len(src.output.split()) and 2 <= r.max_tokens <= 8
    assert "reference answer" in a.rule["description"]


def test_alpaca_uniform_rule_and_short_result():
    rows = readers.read_alpaca(FIXTURES / "alpaca.json")
    rule = {"rows": 100, "input_tokens": [1, 50], "output": "uniform", "output_tokens": [10, 20]}
    res = rules.from_alpaca(rows, word_encoder, rule, seed=3, where="alpaca.json")
    assert len(res.rows) == len(rows) and res.details["rows_short"] == 100 - len(rows)
    assert all(10 <= r.max_tokens <= 20 for r in res.rows)


def test_empty_after_filtering_is_an_error():
    rows = readers.read_alpaca(FIXTURES / "alpaca.json")
    rule = {"rows": 4, "input_tokens": [1000, 2000], "output": "reference", "output_tokens": [2, 8]}
    with pytest.raises(DatasetError, match=r"alpaca\.json: no rows left after filtering"):
        rules.from_alpaca(rows, word_encoder, rule, seed=0, where="alpaca.json")


def test_sharegpt_natural_and_stitched_rows():
    prompts = readers.read_sharegpt(FIXTURES / "sharegpt.json")
    assert "sys1" not in {p.id for p in prompts}  # only human first turns
    rule = {"rows": 6, "input_tokens": [40, 60], "output_tokens": [3, 12], "stitch": True, "stitch_separator": "\n\n"}
    res = rules.from_sharegpt(prompts, word_encoder, rule, seed=0, where="sharegpt.json")
    again = rules.from_sharegpt(prompts, word_encoder, rule, seed=0, where="sharegpt.json")
    assert res.rows == again.rows
    assert len(res.rows) == 6
    assert res.details["natural_rows"] == 1 and res.rows[0].id == "sharegpt-long1"
    assert res.details["stitched_rows"] == 5 and res.details["duplicates_dropped"] == 1
    for r in res.rows:
        assert 40 <= len(r.prompt_token_ids) <= 60 and 3 <= r.max_tokens <= 12
        assert r.prompt_token_ids == tuple(word_encoder([r.prompt])[0])
    used = [p for s in res.details["stitched"] for p in s["parts"]]
    assert len(used) == len(set(used))  # each short prompt used once
    by_id = {p.id: p.text for p in prompts}
    first = res.details["stitched"][0]
    assert res.rows[1].prompt == "\n\n".join(by_id[p] for p in first["parts"])
    no_stitch = rules.from_sharegpt(prompts, word_encoder, dict(rule, stitch=False), seed=0, where="x")
    assert len(no_stitch.rows) == 1


# --- readers and bad input -------------------------------------------------------------------------------

def test_malformed_json_names_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('[{"prompt": "a", "max_tokens": 3},')
    with pytest.raises(DatasetError, match=r"broken\.json: malformed JSON at line 1"):
        readers.read_paper(bad)


@pytest.mark.parametrize("rows,match", [
    ([{"prompt": "a", "max_tokens": 3}, {"prompt": "b"}], r"row 1: missing field 'max_tokens'"),
    ([{"prompt": 5, "max_tokens": 3}], r"row 0: field 'prompt' must be str"),
    ([{"prompt": "a", "max_tokens": 0}], r"row 0: max_tokens must be >= 1"),
    ({"prompt": "a"}, r"expected a JSON array"),
])
def test_bad_paper_rows_name_file_and_row(tmp_path, rows, match):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(DatasetError, match=match) as err:
        readers.read_paper(path)
    assert str(path) in str(err.value)


def test_bad_sharegpt_and_vicuna_rows(tmp_path):
    share = tmp_path / "sg.json"
    share.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "hi"}]},
                                 {"id": "b", "conversations": [{"from": "human"}]}]))
    with pytest.raises(DatasetError, match=r"sg\.json: row 1: missing field 'value'"):
        readers.read_sharegpt(share)
    vic = tmp_path / "q.jsonl"
    vic.write_text('{"question_id": 1, "turns": ["ok"]}\n{"question_id": 2, "turns": [\n')
    with pytest.raises(DatasetError, match=r"q\.jsonl: line 2: malformed JSON"):
        readers.read_vicuna(vic)
    assert [p.text for p in readers.read_vicuna(FIXTURES / "vicuna_question.jsonl")][0].startswith("Write a story")


# --- sources ---------------------------------------------------------------------------------------------

def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resolve_path_data_root_and_checksum(tmp_path):
    src = FIXTURES / "paper_s2s.json"
    got = resolve_file({"path": str(src), "sha256": _sha(src)}, None)
    assert got.path == src and got.origin == "path" and got.sha256 == _sha(src)
    root = tmp_path / "root"
    (root / "seed-datasets").mkdir(parents=True)
    shutil.copy(src, root / "seed-datasets" / "short2short.json")
    got = resolve_file({"data_root_path": "seed-datasets/short2short.json", "url": "http://127.0.0.1:9/x"}, str(root))
    assert got.origin == "data_root"
    with pytest.raises(DatasetError, match=r"paper_s2s\.json: checksum mismatch .* expected 00ff"):
        resolve_file({"path": str(src), "sha256": "00ff"}, None)
    with pytest.raises(DatasetError, match="not found"):
        resolve_file({"path": str(tmp_path / "nope.json")}, None)


def test_top_level_path_replaces_the_default_file():
    cfg = compose(["dataset=s2s", "dataset.path=/data/mine.json"])
    specs = source_file_specs(cfg["dataset"])
    assert specs == [{"path": "/data/mine.json", "url": None, "sha256": None, "data_root_path": None}]
    assert len(source_file_specs(compose(["dataset=l2s", "dataset.url=http://x/y.json"])["dataset"])) == 1
    cfg = compose(["dataset=s2s", f"data_root={FIXTURES}"])
    assert local_source_paths(cfg) == []  # not under the fixture root: would be downloaded
    with pytest.raises(ConfigError, match="dataset.source = 'alpacca' is not allowed"):
        compose(["dataset=s2s", "dataset.source=alpacca"])  # the schema stops it when composing
    bad = compose(["dataset=s2s"])["dataset"]
    bad["source"] = "alpacca"
    with pytest.raises(DatasetError, match="unknown source 'alpacca'"):
        source_file_specs(bad)


@pytest.fixture()
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_verifies_checksum_and_leaves_nothing_on_failure(http_server, tmp_path):
    root, base = http_server
    shutil.copy(FIXTURES / "paper_s2s.json", root / "s2s.json")
    good = _sha(root / "s2s.json")
    path = download(f"{base}/s2s.json", good, dest_dir=tmp_path / "dl")
    assert _sha(path) == good
    with pytest.raises(DatasetError, match=r"checksum mismatch"):
        download(f"{base}/s2s.json", "0" * 64, dest_dir=tmp_path / "dl2")
    assert list((tmp_path / "dl2").iterdir()) == []
    with pytest.raises(DatasetError, match=rf"cannot download dataset source {base}/missing\.json"):
        download(f"{base}/missing.json", None, dest_dir=tmp_path / "dl3")
    assert list((tmp_path / "dl3").iterdir()) == []


def test_unreachable_url_fails_build_and_writes_nothing(tmp_path):
    cfg = compose(["dataset=s2s", "dataset.url=http://127.0.0.1:9/short2short.json"])
    out = tmp_path / "s2s"
    with pytest.raises(DatasetError, match=r"cannot download dataset source http://127\.0\.0\.1:9/short2short\.json"):
        build_and_write(cfg, out / "rows.jsonl", out / "manifest.json")
    assert not (out / "rows.jsonl").exists() and not (out / "manifest.json").exists()


def test_failed_manifest_write_removes_rows(tmp_path, monkeypatch):
    built = build_dataset(compose(["dataset=s16k-synthetic"]))
    import inference_eval.datasets.build as build_mod

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(build_mod, "write_json", boom)
    with pytest.raises(OSError):
        write_dataset(built, tmp_path / "rows.jsonl", tmp_path / "manifest.json")
    assert list(tmp_path.iterdir()) == []


# --- figures, CLI, Snakemake -----------------------------------------------------------------------------

def test_figures_and_summary(tmp_path):
    from inference_eval.datasets.figures import write_figures

    rows, manifests = [], []
    for task in TASKS:
        d = tmp_path / f"{task}-synthetic"
        build_and_write(compose([f"dataset={task}-synthetic"]), d / "rows.jsonl", d / "manifest.json")
        rows.append(d / "rows.jsonl")
        manifests.append(d / "manifest.json")
    summary = write_figures(rows, manifests, "synthetic", tmp_path / "fig.png", tmp_path / "summary.csv")
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(summary["dataset"]) == list(TASKS) and summary["synthetic"].all()
    assert (summary["output_tokens_max"] <= 32).all()
    with pytest.raises(DatasetError, match="does not belong to variant 'real'"):
        write_figures(rows, manifests, "real", tmp_path / "f2.png", tmp_path / "s2.csv")


def test_cli_build_and_describe(tmp_path, capsys):
    from inference_eval.cli import main

    assert main(["dataset", "build", "s2s-synthetic", "--out", str(tmp_path), "-o", "seed=4"]) == 0
    assert "16 rows (SYNTHETIC)" in capsys.readouterr().out
    assert main(["dataset", "describe", str(tmp_path / "s2s-synthetic" / "rows.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 16
    bad = tmp_path / "bad.json"
    bad.write_text('[{"prompt": "x"}]')
    assert main(["dataset", "build", "s2s", "--out", str(tmp_path), "-o", f"dataset.path={bad}"]) == 2
    assert "row 0: missing field 'max_tokens'" in capsys.readouterr().err
    assert not (tmp_path / "s2s").exists()


def test_snakemake_builds_synthetic_member_and_figure(tmp_path, repo_root):
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text("".join(f'include: "{repo_root}/rules/{name}.smk"\n'
                                 for name in ("common", "datasets")))
    target = "results/datasets/figures/synthetic_lengths.png"
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(snakefile), "--cores", "1", target],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "results/datasets/l2s-synthetic/manifest.json").read_text())
    assert manifest["synthetic"] is True and manifest["rows"] == 16
    assert (tmp_path / "results/datasets/synthetic_summary.csv").read_text().count("\n") == 5
