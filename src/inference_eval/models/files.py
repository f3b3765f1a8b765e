"""The files the models rules (``rules/models.smk``) prepare for one run, as batch backends and serving
launchers receive them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ModelFiles:
    """What the models rules prepared for a run (paths may be None where a library needs none)."""

    hf_dir: str | None = None        # HF config + tokenizer (no weights)
    weights_dir: str | None = None   # HF folder with random weights written out
    gguf_path: str | None = None
    engine_record: str | None = None  # TensorRT-LLM engine build record (engine.json; names the engine)

    @classmethod
    def from_rule_inputs(cls, inputs) -> "ModelFiles":
        """From a batch or serving rule's named inputs (``hf``, ``weights``, ``gguf``, ``engine``)."""
        keys = set(inputs.keys())
        return cls(hf_dir=str(Path(inputs.hf).parent),
                   weights_dir=str(Path(inputs.weights).parent) if "weights" in keys else None,
                   gguf_path=str(inputs.gguf) if "gguf" in keys else None,
                   engine_record=str(inputs.engine) if "engine" in keys else None)
