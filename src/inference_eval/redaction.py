"""Secrets in a config (api keys, tokens, passwords) hidden for logs, records and Snakemake's metadata.

``redact`` replaces each secret with ``<redacted>`` (run records' provenance, ``report/provenance.py``);
``redact_with_digest`` with a short digest of it, so a changed secret still reads as changed (job params,
``config.JobConfig``).
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

SECRET_KEYS = {"api_key", "apikey", "token", "hf_token", "access_token", "auth_token", "password", "secret",
               "authorization"}


def is_secret(key: Any) -> bool:
    k = str(key).lower()
    return k in SECRET_KEYS or k.endswith("_api_key") or k.endswith("_password")


def redact(obj: Any) -> Any:
    """Copy of a config with secrets (api keys, tokens) replaced, for logs and records."""
    if isinstance(obj, Mapping):
        return {k: ("<redacted>" if is_secret(k) and v else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def redact_with_digest(obj: Any) -> Any:
    """Like ``redact``, but each secret becomes a digest of itself: a changed key still looks changed
    (Snakemake reruns a job whose params changed) without the key being readable."""
    if isinstance(obj, Mapping):
        return {k: (f"<secret sha256:{hashlib.sha256(str(v).encode()).hexdigest()[:12]}>" if is_secret(k) and v
                    else redact_with_digest(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_with_digest(v) for v in obj]
    return obj
