"""inference_eval.records: typed, versioned batch records, serving rows and module rows."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from inference_eval.records import (SCHEMA_VERSION, BatchRecord, ModuleRow, RecordError, RecordVersionError,
                                    ServingRow, checked_table)
from inference_eval.records.modules import read_module_table
from inference_eval.records.modules import rows_frame as module_frame
from inference_eval.records.serving import read_sweep
from inference_eval.records.serving import rows_frame as serving_frame

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results"
BATCH_RECORDS = sorted(RESULTS.glob("*/batch/*/*/*.json")) + sorted(RESULTS.glob("*/before-fairness/batch/*/*/*.json"))
SWEEPS = sorted(RESULTS.glob("*/serving/*.csv")) + sorted(RESULTS.glob("*/before-fairness/serving/*.csv"))
MODULE_TABLES = sorted(p for p in RESULTS.glob("*/modules/*_*_*.csv")
                       if not p.name.endswith("_points.csv"))


def _batch() -> BatchRecord:
    return BatchRecord(library="vllm", model="llama2-7b", dataset="s2s", hardware="h200", status="ok",
                       n_requests=2, total_time_s=1.5, repeats=2, repeat_times_s=[1.4, 1.6],
                       fairness={"settings": {"prefix_caching": False, "batching": "continuous"}},
                       provenance={"config_hash": "abc"}, extra={"note": "kept"})


def test_batch_record_round_trip_writes_the_version_after_kind(tmp_path):
    rec = _batch()
    d = rec.to_dict()
    assert list(d)[:3] == ["kind", "schema_version", "library"] and d["schema_version"] == SCHEMA_VERSION
    assert d["note"] == "kept" and "extra" not in d
    assert BatchRecord.from_dict(d) == rec
    rec.save(tmp_path / "r.json")
    assert BatchRecord.load(tmp_path / "r.json") == rec
    assert rec.settings["batching"] == "continuous" and rec.has_result


def test_versionless_batch_record_is_version_1_and_loads():
    v1 = {"kind": "batch", "library": "mii", "status": "ok", "total_time_s": 2.0, "repeat_times_s": None}
    rec = BatchRecord.from_dict(v1)
    assert rec.repeats == 1  # made before repeats existed: it ran once
    assert rec.repeat_times_s == [] and rec.fairness is None and rec.extra == {}
    assert BatchRecord.from_dict({"kind": "batch", "status": "failed"}).repeats is None
    assert BatchRecord.from_dict({"library": "mii", "status": "ok"}).kind == "batch"  # the earliest had no kind
    with pytest.raises(RecordError, match="not a batch record"):
        BatchRecord.from_dict({"schema_version": 2, "library": "mii", "status": "ok"}, source="new.json")


@pytest.mark.parametrize("version", [3, 0, "2b", 1.5, True])
def test_unknown_version_names_the_file(tmp_path, version):
    path = tmp_path / "s2s.json"
    path.write_text(json.dumps({**_batch().to_dict(), "schema_version": version}))
    with pytest.raises(RecordVersionError, match=rf"{path}: unknown schema_version"):
        BatchRecord.load(path)


def test_a_record_of_another_kind_is_refused_with_its_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"kind": "serving", "status": "ok"}))
    with pytest.raises(RecordError, match=rf"{path}: not a batch record \(kind 'serving'"):
        BatchRecord.load(path)
    with pytest.raises(RecordError, match="mapping"):
        BatchRecord.from_dict([1, 2], source="y.json")


def test_a_slurm_failure_record_reads_as_a_batch_record_without_result():
    rec = BatchRecord.from_dict({"kind": "slurm_failure", "hardware": "a100", "library": "vllm", "model": "m",
                                 "dataset": "s2s", "status": "oom", "reason": "SLURM job 7 killed",
                                 "rule": "run_batch", "slurm": {"job_id": "7"}})
    assert rec.status == "oom" and not rec.has_result and rec.extra["slurm"] == {"job_id": "7"}


def test_serving_row_round_trip_and_columns_hold_every_group_the_sweep_writes():
    from inference_eval.serving.metrics import CI_COLUMNS, CLIENT_COLUMNS, GOODPUT_COLUMNS
    from inference_eval.serving.sweep import COLUMNS
    from inference_eval.telemetry import ENERGY_COLUMNS

    assert COLUMNS == ServingRow.columns() and len(set(COLUMNS)) == len(COLUMNS)
    for group in (CI_COLUMNS, GOODPUT_COLUMNS, CLIENT_COLUMNS, ENERGY_COLUMNS):  # each a run of fields, in order
        start = COLUMNS.index(group[0])
        assert COLUMNS[start:start + len(group)] == group
    row = ServingRow(library="vllm", rate=8.0, status="ok", token_throughput_tok_s=100.0, p99_reliable=False,
                     extra={"unlisted": 1})
    d = row.to_dict()
    assert list(d)[-2:] == ["schema_version", "unlisted"] and d["schema_version"] == SCHEMA_VERSION
    assert ServingRow.from_dict(d) == row
    failed = ServingRow.from_dict({"library": "mii", "status": "failed", "reason": "server: boom"})
    assert math.isnan(failed.rate) and math.isnan(failed.ttft_s_p50) and failed.exact is None
    with pytest.raises(RecordError, match="no status"):
        ServingRow.from_dict({"library": "x"}, source="s.csv row 1")


def test_module_row_round_trip_and_absent_columns_are_not_written():
    row = ModuleRow(library="vllm", b=2, s=64, stage="decode", op="attention", time_s=1e-3, status="ok", reason="")
    assert ModuleRow.from_dict(row.to_dict()) == row
    frame = module_frame([row, ModuleRow(library="vllm", status="failed", reason="no GPU")])
    assert list(frame.columns) == ["library", "b", "s", "stage", "op", "time_s", "status", "reason", "schema_version"]


def test_csv_rows_with_an_unknown_version_name_the_file_and_row(tmp_path):
    path = tmp_path / "vllm_m_s2s.csv"
    pd.DataFrame([{"library": "vllm", "status": "ok", "schema_version": 2},
                  {"library": "vllm", "status": "ok", "schema_version": 9}]).to_csv(path, index=False)
    with pytest.raises(RecordVersionError, match=rf"{path} row 2: unknown schema_version 9"):
        read_sweep(path)
    with pytest.raises(RecordVersionError, match="row 2"):
        checked_table(path)


# -- every committed record loads, and the CSV rows write back to the same files ----------------------
@pytest.mark.parametrize("path", BATCH_RECORDS, ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_committed_batch_record_loads(path):
    rec = BatchRecord.load(path)
    raw = json.loads(path.read_text())
    assert rec.kind == "batch" and rec.status == raw["status"] and rec.library == raw["library"]
    assert rec.extra == {}  # every key the writers used is a declared field
    assert {k: v for k, v in rec.to_dict().items() if k in raw} == raw


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_committed_sweep_loads_and_writes_back_identically(path):
    rows = read_sweep(path)
    assert rows and all(r.status for r in rows)
    buf = io.StringIO()
    serving_frame(rows)[list(pd.read_csv(path).columns)].to_csv(buf, index=False)
    assert buf.getvalue() == path.read_text()


@pytest.mark.parametrize("path", MODULE_TABLES, ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_committed_module_table_loads_and_writes_back_identically(path):
    rows = read_module_table(path)
    assert rows and {r.status for r in rows} == {"ok"}
    buf = io.StringIO()
    # the file's own columns: tables written before records had a version lack schema_version, newer ones
    # (e.g. results/cpu/ after the main job) have it
    module_frame(rows)[list(pd.read_csv(path).columns)].to_csv(buf, index=False)
    assert buf.getvalue() == path.read_text()


def test_the_committed_results_have_records_to_check():
    assert len(BATCH_RECORDS) >= 30 and len(SWEEPS) >= 6 and len(MODULE_TABLES) >= 8


@pytest.mark.parametrize("table", sorted((RESULTS / "h200").glob("*_table.csv")), ids=lambda p: p.name)
def test_committed_h200_tables_are_remade_identically_from_their_records(table, tmp_path, monkeypatch):
    """The tables read the records through BatchRecord; the committed H200 tables come back byte for byte."""
    import csv

    from inference_eval.io import write_csv
    from inference_eval.report.tables import dataset_table

    monkeypatch.chdir(REPO)  # the tables name their records relative to the repository
    records = [r["record"] for r in csv.DictReader(table.open())]
    write_csv(tmp_path / table.name, dataset_table(records, table.with_name(table.name.replace("_table", "_bound"))))
    assert (tmp_path / table.name).read_bytes() == table.read_bytes()
