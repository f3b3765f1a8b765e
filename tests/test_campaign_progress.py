"""A campaign's progress (inference_eval.campaign_progress): each part's dataset is ran, recorded, stale
or missing by what its record says, the estimate of what is left follows, and the committed H100 column
reads as its records are."""

from __future__ import annotations

from pathlib import Path

from inference_eval import campaign, campaign_progress
from inference_eval.records.batch import BatchRecord
from inference_eval.records.serving import ServingRow, rows_frame

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = {"settings": {"prefix_caching": False}, "rows_sha256": "ab", "row_limit": 200}


def _batch(results: Path, lib: str, dataset: str, **fields) -> None:
    values = dict(kind="batch", library=lib, model="llama2-7b", dataset=dataset, hardware="h200", status="ok",
                  n_requests=10, n_exact=10, repeats=3, row_limit={"s2s": 200, "l2s": 64, "s2l": 16}[dataset],
                  fairness=MANIFEST, harness_wall_s=40.0)
    values.update(fields)
    BatchRecord(**values).save(results / "h200" / "batch" / lib / "llama2-7b" / f"{dataset}.json")


def _sweep(results: Path, dataset: str, phases: list[str], note: str = "", lib: str = "vllm",
           manifest: bool = True) -> None:
    rows = [ServingRow(library=lib, model="llama2-7b", dataset=dataset, hardware="h200", rate=float(2 ** i),
                       status="ok", duration_s=10.0, search_phase=phase, prefix_caching="False" if manifest else None,
                       requests_sha256="ab" if manifest else None,
                       row_limit={"s2s": 200, "l2s": 64}[dataset], search_note=note if i == len(phases) - 1 else "")
            for i, phase in enumerate(phases)]
    path = results / "h200" / "serving" / f"{lib}_llama2-7b_{dataset}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows_frame(rows).to_csv(path, index=False)


def _by_key(rows):
    return {(e.part, e.dataset): e for e in rows}


def test_each_state_from_its_record(tmp_path):
    c = campaign.load("h200")
    _batch(tmp_path, "vllm", "s2s")
    _batch(tmp_path, "vllm", "l2s", fairness=None)
    _batch(tmp_path, "vllm", "s2l", repeats=1, row_limit=8)
    _batch(tmp_path, "trtllm", "s2s", status="not_installed", reason="tensorrt_llm not installed", repeats=None)
    _batch(tmp_path, "mii", "s2s", status="invalid", reason="3 requests short", n_exact=7)
    bad = tmp_path / "h200" / "batch" / "mii" / "llama2-7b" / "l2s.json"
    bad.write_text("{not json", encoding="utf-8")
    _sweep(tmp_path, "s2s", ["fixed", "fixed", "fixed"])
    _sweep(tmp_path, "l2s", ["fixed", "grow", "bisect", "inf"], note="throughput flat over 2 steps")
    _sweep(tmp_path, "l2s", ["fixed", "grow", "inf"], lib="mii", manifest=False)   # empty manifest cells

    rows = campaign_progress.entries(c, tmp_path)
    got = _by_key(rows)
    assert len(rows) == sum(len(c.calls(p)) for p in c.parts)
    assert got[("vllm-7b-batch", "s2s")].state == "ran"
    assert got[("vllm-7b-batch", "s2s")].detail == "10/10 exact, 3 repeat(s)"
    assert got[("vllm-7b-batch", "s2s")].seconds == 40.0
    assert (got[("vllm-7b-batch", "l2s")].state, got[("vllm-7b-batch", "l2s")].detail) == (
        "stale", "no fairness manifest")
    assert got[("vllm-7b-batch", "s2l")].detail == "row limit 8, the campaign's 16; 1 timed repeat(s), the campaign's 3"
    assert (got[("trtllm-7b-batch", "s2s")].state, got[("trtllm-7b-batch", "s2s")].detail) == (
        "recorded", "not_installed: tensorrt_llm not installed")
    assert got[("mii-7b-batch", "s2s")].state == "stale" and "invalid: 3 requests short" in got[("mii-7b-batch", "s2s")].detail
    assert got[("mii-7b-batch", "l2s")].state == "stale" and got[("mii-7b-batch", "l2s")].detail.startswith("unreadable record")
    assert (got[("vllm-7b-serving", "s2s")].state, got[("vllm-7b-serving", "s2s")].detail) == (
        "stale", "3 fixed rates, no rate search")
    served = got[("vllm-7b-serving", "l2s")]
    assert served.state == "ran" and served.seconds == 40.0
    assert served.detail == "4/4 rates ran, inf point; search: throughput flat over 2 steps"
    assert (got[("mii-7b-serving", "l2s")].state, got[("mii-7b-serving", "l2s")].detail) == (
        "stale", "no fairness manifest")
    assert got[("vllm-modules", None)].state == "missing" and got[("mii-13b-batch", "s2l")].state == "missing"

    # what is left: each part's estimate over its datasets still stale or missing
    todo = {p: sum(e.state in ("stale", "missing") for e in rows if e.part == p) for p in c.parts}
    assert todo["vllm-7b-batch"] == 2 and todo["trtllm-7b-batch"] == 2 and todo["vllm-7b-serving"] == 1
    assert todo["mii-7b-serving"] == 2
    want = sum(c.parts[p].estimate_s * n / len(c.calls(p)) for p, n in todo.items())
    assert campaign_progress.remaining_s(c, rows) == round(want)

    left = {part: (ds, sec) for part, ds, sec in campaign_progress.todo(c, rows)}
    assert left["vllm-7b-batch"] == (("l2s", "s2l"), 200) and "trf-7b-batch" in left
    assert "vllm-7b-serving" in left and "trtllm-7b-batch" in left    # l2s and s2l have no record
    assert left["vllm-modules"] == ((), c.parts["vllm-modules"].estimate_s)
    assert campaign_progress.run_command(c, "vllm-7b-batch", ("l2s", "s2l")) == (
        'DATASETS="l2s s2l" bash scripts/device/campaign.sh run vllm-7b-batch')
    assert campaign_progress.run_command(c, "trf-7b-batch", ("s2s", "l2s", "s2l")) == (
        "bash scripts/device/campaign.sh run trf-7b-batch")

    text = campaign_progress.render(c, rows, markdown=True)
    assert "\n## Left to run\n" in text
    assert '- `vllm-7b-batch` (l2s, s2l; about 200 s): `DATASETS="l2s s2l" bash scripts/device/campaign.sh' in text
    assert text.startswith("# What has run of campaign h200 on h200\n")
    first = next(line for line in text.splitlines() if line.startswith("Campaign "))
    assert first.startswith(f"Campaign h200 on h200: {len(rows)} part datasets; 2 ran, 1 recorded, 6 stale, ")
    assert f"left to run: about {round(want)} s" in first
    assert "| vllm-7b-serving | s2s | stale | 30 | 3 fixed rates, no rate search |" in text
    plain = campaign_progress.render(c, rows)
    assert "vllm-7b-batch" in plain and "|" not in plain.splitlines()[2]
    assert '    200 s  DATASETS="l2s s2l" bash scripts/device/campaign.sh run vllm-7b-batch' in plain.splitlines()


def test_a_failure_a_second_run_may_change_is_listed_with_its_call(tmp_path):
    """A crash is recorded (its row states it, the left-to-run list does not plan it), and listed apart
    with its device call; a library missing from the machine is not."""
    c = campaign.load("h200")
    _batch(tmp_path, "llamacpp", "l2s", status="failed", reason="server exited (code -9)", repeats=None)
    _batch(tmp_path, "trtllm", "s2s", status="not_installed", reason="tensorrt_llm not installed", repeats=None)
    rows = campaign_progress.entries(c, tmp_path)
    got = _by_key(rows)
    assert got[("llamacpp-7b-batch", "l2s")].state == "recorded"
    assert [(e.part, e.dataset) for e in rows if campaign_progress.may_be_transient(e)] == [("llamacpp-7b-batch", "l2s")]
    left = {part: ds for part, ds, _ in campaign_progress.todo(c, rows)}
    assert left["llamacpp-7b-batch"] == ("s2s", "s2l")
    text = campaign_progress.render(c, rows, markdown=True)
    section = text.split("\n## Recorded failures a second run may change\n", 1)[1]
    assert ('- `llamacpp-7b-batch` (l2s): failed: server exited (code -9): '
            '`DATASETS="l2s" bash scripts/device/campaign.sh run llamacpp-7b-batch`') in section
    assert "trtllm" not in section
    plain = campaign_progress.render(c, rows)
    assert ('  DATASETS="l2s" bash scripts/device/campaign.sh run llamacpp-7b-batch  # failed: server exited (code -9)'
            in plain.splitlines())


def test_the_committed_h100_column_reads_as_its_records(capsys):
    c = campaign.on_hardware(campaign.load("h200"), "h100")
    got = _by_key(campaign_progress.entries(c, ROOT / "results"))
    assert got[("vllm-7b-batch", "s2s")].state == "ran"
    assert got[("mii-13b-batch", "s2s")].state == "ran" and got[("mii-13b-batch", "s2l")].state == "missing"
    assert got[("trtllm-7b-batch", "l2s")].state == "recorded"
    assert "tensorrt_llm not installed" in got[("trtllm-7b-batch", "l2s")].detail
    assert got[("vllm-13b-serving", "l2s")].state == "ran" and "inf point" in got[("vllm-13b-serving", "l2s")].detail
    assert got[("mii-7b-serving", "s2s")].detail.endswith("search: max_points (12) reached")
    # the H100's module sweep was a reduced one (scripts/device/profile_reduced.py): fewer fit points
    assert got[("trf-eager-modules", None)].state == "stale"
    assert got[("trf-eager-modules", None)].detail.startswith("profiling.extra = [[2, 256]], the campaign's")

    assert campaign_progress.main(["h200", "--hardware", "h100", "--results", str(ROOT / "results"),
                          "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "\nCampaign h200 on h100: " in out and "| part | dataset | state | seconds | detail |" in out


def test_the_h200_records_made_before_the_fair_defaults_are_stale():
    c = campaign.load("h200")
    got = _by_key(campaign_progress.entries(c, ROOT / "results"))
    assert got[("llamacpp-7b-batch", "s2s")].state == "stale"
    assert "no fairness manifest" in got[("llamacpp-7b-batch", "s2s")].detail
    assert got[("mii-vicuna7b-s16k", "s16k")].state == "recorded"      # MII refuses the RoPE scaling
    assert got[("mii-7b-serving", "l2s")].state == "stale"


def test_the_committed_campaign_pages_are_what_progress_generates():
    """results/<hw>/CAMPAIGN.md is generated (report.sh): a record added without regenerating it fails here."""
    for hw in ("h100", "h200"):
        c = campaign.on_hardware(campaign.load("h200"), hw)
        page = (ROOT / "results" / hw / "CAMPAIGN.md").read_text(encoding="utf-8")
        assert page == campaign_progress.render(c, campaign_progress.entries(c, ROOT / "results"), markdown=True), (
            f"results/{hw}/CAMPAIGN.md is out of date: run python -m inference_eval.campaign progress h200 "
            f"--hardware {hw} --markdown > results/{hw}/CAMPAIGN.md")


def test_an_unknown_campaign_is_named(capsys):
    assert campaign_progress.main(["nope"]) == 2
    assert "no campaign 'nope'" in capsys.readouterr().err
