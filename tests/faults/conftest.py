import pytest

from inference_eval.serving.launch import TAG_ENV
from inference_eval.serving.procaudit import ProcessAudit


@pytest.fixture(autouse=True)
def no_survivors(monkeypatch):
    """Counts tagged processes and our children before and after every case; fails on any survivor."""
    audit = ProcessAudit()
    assert audit.tagged_before == [], f"tagged processes before the case: {audit.tagged_before}"
    monkeypatch.setenv(TAG_ENV, audit.tag)
    yield audit
    survivors = audit.survivors()
    assert not survivors, f"processes survived the case: {survivors}"
