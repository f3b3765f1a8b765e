"""The Llama-2 tokenizer, offline: the real vocabulary from a file on the package index.

llama.cpp ships the Llama-2 SentencePiece vocabulary as ``models/ggml-vocab-llama-spm.gguf``, together
with its own reference tokenizations (``.gguf.inp`` / ``.gguf.out``); the llama-cpp-python 0.3.36
source archive on PyPI vendors that folder. So with only PyPI reachable we can:

1. ``pip download --no-binary :all: --no-deps llama-cpp-python==0.3.36`` into a cache folder,
2. pull the vocabulary and the reference files out of the archive,
3. load it with ``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` and fix what transformers'
   GGUF converter gets wrong for SentencePiece-BPE: the normalizer must prepend "▁" and turn spaces
   into "▁" (no Metaspace pre-tokenizer, which splits on spaces and loses the merges across runs of
   spaces). Without the fix 32 of llama.cpp's 47 reference cases match; with it all 47 do.

Everything is cached under ``${INFERENCE_EVAL_CACHE:-~/.cache/inference_eval}``: the archive is fetched
once, and the fixed tokenizer is saved as HF files so later loads skip the GGUF conversion.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
VOCAB_MEMBER = "vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf"
VOCAB_NAME = Path(VOCAB_MEMBER).name
REFERENCE_SUFFIXES = (".inp", ".out")
# The separator llama.cpp's test-tokenizer-0 uses between cases in the .inp file.
REFERENCE_SEPARATOR = "\n__ggml_vocab_test__\n"
# Config value that means "the offline Llama-2 tokenizer above" (anything else: HF hub id or local folder).
OFFLINE_LLAMA2 = "llama2"
BOS_ID, EOS_ID, UNK_ID = 1, 2, 0
_HF_MARKER = "inference_eval_source.json"


class TokenizerUnavailable(RuntimeError):
    """The tokenizer could not be obtained (no package index, bad archive, ...); the message says why."""


def cache_dir() -> Path:
    """``${INFERENCE_EVAL_CACHE:-~/.cache/inference_eval}`` (created on demand)."""
    root = os.environ.get("INFERENCE_EVAL_CACHE") or Path.home() / ".cache" / "inference_eval"
    return Path(root).expanduser()


def _vocab_dir() -> Path:
    return cache_dir() / "llama2-spm" / LLAMA_CPP_PYTHON.replace("==", "-")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive file lock, so parallel jobs download and convert only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _vocab_files(folder: Path) -> list[Path]:
    gguf = folder / VOCAB_NAME
    return [gguf] + [gguf.with_name(gguf.name + s) for s in REFERENCE_SUFFIXES]


def _download_sdist(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--disable-pip-version-check",
           "--dest", str(dest), LLAMA_CPP_PYTHON]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TokenizerUnavailable(f"cannot run {' '.join(cmd)}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise TokenizerUnavailable(
            f"`{' '.join(cmd[2:])}` failed (exit {proc.returncode}); the offline Llama-2 tokenizer needs the "
            f"package index once. Last lines: {' | '.join(tail)}")
    archives = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if not archives:
        raise TokenizerUnavailable(f"pip download left no llama_cpp_python-*.tar.gz in {dest}")
    return archives[0]


def _extract_vocab(archive: Path, folder: Path) -> None:
    wanted = {VOCAB_MEMBER + s: VOCAB_NAME + s for s in ("",) + REFERENCE_SUFFIXES}
    found: set[str] = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                rel = member.name.split("/", 1)[-1]  # drop the "llama_cpp_python-0.3.36/" prefix
                if rel in wanted and member.isfile():
                    src = tar.extractfile(member)
                    assert src is not None
                    target = folder / wanted[rel]
                    tmp = target.with_name(f".{target.name}.part")
                    with src, open(tmp, "wb") as out:
                        shutil.copyfileobj(src, out)
                    os.replace(tmp, target)
                    found.add(rel)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise TokenizerUnavailable(f"cannot read {archive}: {exc}") from exc
    missing = sorted(set(wanted) - found)
    if missing:
        raise TokenizerUnavailable(f"{archive} lacks {', '.join(missing)}")


def llama2_vocab_gguf() -> Path:
    """Path to llama.cpp's Llama-2 vocabulary GGUF (reference ``.inp``/``.out`` files beside it).

    Downloads the llama-cpp-python source archive from the package index on first use.
    """
    folder = _vocab_dir()
    files = _vocab_files(folder)
    if all(f.is_file() for f in files):
        return files[0]
    with _locked(folder / ".lock"):
        if all(f.is_file() for f in files):
            return files[0]
        with tempfile.TemporaryDirectory(prefix="sdist-", dir=folder) as tmp:
            archive = _download_sdist(Path(tmp))
            _extract_vocab(archive, folder)
    return files[0]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fix_normalizer(tok) -> None:
    """SentencePiece-BPE behaviour for the GGUF-converted tokenizer: prepend "▁" and map spaces to "▁", no
    pre-tokenizer. Without it the converted tokenizer disagrees with llama.cpp's reference tokenizations
    (docs/datasets.md; tests/test_tokenizer.py checks them)."""
    from tokenizers import normalizers, processors

    backend = tok.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    # Llama-2's HF tokenizer adds BOS (add_bos_token=True) and no EOS; count lengths with
    # add_special_tokens=False.
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)])


def _convert_from_gguf(gguf: Path):
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:  # pragma: no cover - transformers is a core dependency of the engines
        raise TokenizerUnavailable(f"transformers is needed to load the Llama-2 tokenizer: {exc}") from exc
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    _fix_normalizer(tok)
    return tok


def _hf_cache_dir() -> Path:
    return _vocab_dir() / "hf"


@functools.lru_cache(maxsize=1)
def load_llama2_tokenizer():
    """The Llama-2 tokenizer (transformers) built from llama.cpp's vocabulary; cached on disk and in memory."""
    from transformers import AutoTokenizer

    gguf = llama2_vocab_gguf()
    hf_dir = _hf_cache_dir()
    marker = hf_dir / _HF_MARKER
    digest = sha256_file(gguf)
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("gguf_sha256") == digest:
                return AutoTokenizer.from_pretrained(str(hf_dir))
        except (OSError, ValueError):
            pass  # a damaged cache: rebuild it below
    tok = _convert_from_gguf(gguf)
    with _locked(_vocab_dir() / ".hf.lock"):
        tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=_vocab_dir()))
        try:
            tok.save_pretrained(str(tmp))
            (tmp / _HF_MARKER).write_text(json.dumps(_source_record(gguf, digest), indent=2) + "\n")
            tmp.chmod(0o755)
            if hf_dir.exists():
                shutil.rmtree(hf_dir)
            os.replace(tmp, hf_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return tok


def _source_record(gguf: Path, digest: str | None = None) -> dict:
    return {"source": f"{LLAMA_CPP_PYTHON} sdist: {VOCAB_MEMBER}", "gguf_sha256": digest or sha256_file(gguf),
            "normalizer": "Sequence([Prepend('▁'), Replace(' ', '▁')])", "pre_tokenizer": None}


def save_llama2_tokenizer(out_dir: str | Path) -> list[Path]:
    """Write the Llama-2 tokenizer as HF files (``tokenizer.json``, ``tokenizer_config.json``) into a model folder.

    Returns the files written. The folder may already hold a model ``config.json``; it is left alone.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = load_llama2_tokenizer()
    saved = tok.save_pretrained(str(out_dir))
    return [Path(p) for p in saved if Path(p).is_file()]


def tokenizer_id(spec: str = OFFLINE_LLAMA2) -> str:
    """A stable name for the tokenizer a dataset was built with (recorded in the manifest)."""
    if spec == OFFLINE_LLAMA2:
        return f"llama2-spm ({LLAMA_CPP_PYTHON} sdist {VOCAB_MEMBER}, sha256 {sha256_file(llama2_vocab_gguf())[:16]})"
    return spec


@functools.lru_cache(maxsize=4)
def load_tokenizer(spec: str = OFFLINE_LLAMA2):
    """``llama2``: the offline tokenizer above; otherwise an HF hub id or a local folder (needs network for a hub id)."""
    if spec == OFFLINE_LLAMA2:
        return load_llama2_tokenizer()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        raise TokenizerUnavailable(f"cannot load tokenizer {spec!r} (hub id or folder): {exc}") from exc


@dataclass(frozen=True)
class ReferenceCase:
    text: str
    token_ids: tuple[int, ...]


def reference_cases(gguf: str | Path | None = None) -> list[ReferenceCase]:
    """llama.cpp's reference tokenizations (``<vocab>.inp`` / ``<vocab>.out``) as (text, ids) pairs."""
    gguf = Path(gguf) if gguf else llama2_vocab_gguf()
    texts = gguf.with_name(gguf.name + ".inp").read_text(encoding="utf-8").split(REFERENCE_SEPARATOR)
    lines = gguf.with_name(gguf.name + ".out").read_text(encoding="utf-8").split("\n")
    if len(texts) != len(lines):
        raise TokenizerUnavailable(f"{gguf}: {len(texts)} reference inputs but {len(lines)} outputs")
    return [ReferenceCase(t, tuple(int(x) for x in line.split())) for t, line in zip(texts, lines)]


def encode(tok, text: str) -> list[int]:
    """Token ids of ``text`` without BOS/EOS: how every dataset length is counted."""
    return list(tok.encode(text, add_special_tokens=False))
