"""Helpers shared by the batch harness and backend tests: job configs, dataset rows, tiny model folders."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Iterable, Sequence

# (prompt tokens, max_tokens): mixed lengths, so a static batch must cut rows to their own length.
MIXED = ((3, 1), (11, 3), (5, 8), (20, 13), (7, 2), (9, 5))


@functools.lru_cache(maxsize=None)
def _composed(library: str) -> dict:
    from inference_eval.config import compose

    return compose([f"library={library}", "model=tiny-llama", "hardware=cpu", "dataset=s2s-synthetic",
                    "scenario=batch"])


def job_config(library: str = "transformers", **library_overrides) -> dict:
    """The resolved CPU job config for ``library`` (tiny-llama, s2s-synthetic), ``library.*`` overridden."""
    cfg = copy.deepcopy(_composed(library))
    cfg["library"].update(library_overrides)
    return cfg


def write_rows(folder: Path, lengths: Iterable[tuple[int, int]] = MIXED, manifest: dict | None = None) -> Path:
    """``folder/rows.jsonl`` with random-looking token ids (no tokenizer) and optionally a manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "rows.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for i, (prompt_len, max_tokens) in enumerate(lengths):
            ids = [(259 + 7919 * (i + 1) * (j + 3)) % 31000 + 259 for j in range(prompt_len)]
            fh.write(json.dumps({"id": f"r{i}", "prompt": "", "prompt_token_ids": ids, "max_tokens": max_tokens}) + "\n")
    if manifest is not None:
        (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return path


def tiny_model_dir(folder: Path, model_cfg: dict | None = None) -> Path:
    """An HF folder with the model's config only (ids in, ids out: no tokenizer, no weights)."""
    from inference_eval.models.hf import generation_config_dict, hf_config_dict
    from inference_eval.models.spec import ModelSpec

    spec = ModelSpec.from_config(model_cfg or job_config()["model"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "generation_config.json").write_text(json.dumps(generation_config_dict(spec)), encoding="utf-8")
    (folder / "config.json").write_text(json.dumps(hf_config_dict(spec)), encoding="utf-8")
    return folder


def requests_from(lengths: Sequence[tuple[int, int]]):
    from inference_eval.requests import Request

    return [Request(id=f"r{i}", prompt_token_ids=tuple(range(300 + i, 300 + i + p)), max_tokens=m)
            for i, (p, m) in enumerate(lengths)]
