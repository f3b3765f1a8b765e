"""The README's results teaser (inference_eval.report.teaser, scripts/write_teaser.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from inference_eval.report.teaser import TeaserError, rewrite_blocks, start_marker, teaser_table

REPO = Path(__file__).resolve().parents[1]


def _row(library, dataset, status="ok", tok_s=None, time_s=None, comparable=True, reason="", model="llama2-7b"):
    return {"library": library, "model": model, "dataset": dataset, "status": status, "n_requests": 200,
            "output_tokens": 5172, "total_time_s": time_s, "token_throughput_tok_s": tok_s, "repeats": 3.0,
            "bound_s": 0.361, "efficiency": 0.361 / time_s if time_s else None,
            "comparable": comparable if status == "ok" else None, "comparability_reason": reason}


def _tables():
    s2s = pd.DataFrame([
        _row("vllm", "s2s", tok_s=8884.07, time_s=0.5822),
        _row("mii", "s2s", tok_s=4791.66, time_s=1.0794, comparable=False, reason="no fairness manifest"),
        _row("trtllm", "s2s", status="not_installed"),
        _row("vllm", "s2s", tok_s=1.0, time_s=9.0, model="mistral-7b"),  # another model: not in this teaser
    ])
    l2s = pd.DataFrame([_row("vllm", "l2s", tok_s=1232.2, time_s=3.217),
                        _row("mii", "l2s", tok_s=934.9, time_s=4.24)])
    return {"l2s": l2s, "s2s": s2s}  # in file order; the teaser orders the datasets itself


def test_teaser_cells_marks_and_order():
    text = teaser_table(_tables(), "llama2-7b")
    lines = text.splitlines()
    assert lines[0] == ("| dataset | rows / output tokens | vLLM | DeepSpeed-MII | TensorRT-LLM | roofline bound "
                        "| highest efficiency |")
    assert lines[2].startswith("| s2s |") and lines[3].startswith("| l2s |")
    assert "| 8,884 tok/s (0.582 s) | 4,792 tok/s (1.08 s) * | not_installed | 0.361 s | 0.62 (vLLM) |" in lines[2]
    assert "| 1,232 tok/s (3.22 s) | 935 tok/s (4.24 s) | not run |" in lines[3]  # no TensorRT-LLM row for l2s
    assert "9.0 s" not in text  # the Mistral row stays out
    assert "mean over each row's timed repeats (3)" in text
    assert "`*` not comparable with the other cells, by the comparability gate: DeepSpeed-MII (s2s): " \
           "no fairness manifest." in text


def test_teaser_without_rows_for_the_model_names_it():
    with pytest.raises(TeaserError, match="'llama2-13b'"):
        teaser_table(_tables(), "llama2-13b")


def test_rewrite_blocks_replaces_only_between_the_markers(tmp_path):
    folder = tmp_path / "results" / "x"
    folder.mkdir(parents=True)
    for name, table in _tables().items():
        table.to_csv(folder / f"{name}_table.csv", index=False)
    text = f"before\n{start_marker('results/x', 'llama2-7b')}\nstale\n<!-- end of generated table -->\nafter\n"
    new = rewrite_blocks(text, tmp_path)
    assert new.startswith("before\n") and new.endswith("<!-- end of generated table -->\nafter\n")
    assert "stale" not in new and "| s2s | 200 / 5,172 |" in new
    assert rewrite_blocks(new, tmp_path) == new  # idempotent
    with pytest.raises(TeaserError, match="results/x"):
        rewrite_blocks(f"{start_marker('results/x', 'llama2-7b')}\nno end", tmp_path)


def test_committed_readme_teaser_matches_the_committed_tables():
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "write_teaser.py"), "--check"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (REPO / "README.md").read_text().count("<!-- end of generated table -->") == 2
