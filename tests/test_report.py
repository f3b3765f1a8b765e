"""The Snakemake report: table pages, the generated summaries, and a report of a small real DAG opened in
headless Chromium (loads without console errors, lists every registered item, renders a non-blank page)."""

import asyncio
import csv
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from inference_eval.report import pages, summary

from test_pipeline import snakemake

REPO = Path(__file__).resolve().parents[1]

# One dataset, a library that runs (Transformers on the tiny model) and one that is missing (a failed row),
# batch only, with the theory tables and one profiled variant: every report category but serving.
REDUCED = ("matrix.datasets=[s2s] matrix.libraries=[transformers,trtllm] matrix.scenarios=[batch] "
           "profiling.libraries=[transformers-eager]")


def test_table_page_renders_every_cell_and_attaches_the_csv(tmp_path):
    src = tmp_path / "t.csv"
    pd.DataFrame({"library": ["vllm", "mii"], "time_s": [0.123456, float("nan")], "status": ["ok", "failed"],
                  "reason": ["", "ValueError <during> load"]}).to_csv(src, index=False)
    page = pages.table_page(src, "demo")
    assert "<th>time_s</th>" in page and "<td>0.1235</td>" in page
    assert "ValueError &lt;during&gt; load" in page  # escaped
    assert page.count('class="notok"') == 1  # the failed row is tinted
    assert 'download="t.csv"' in page and "data:text/csv;base64," in page


def test_summary_markdown_of_the_committed_h200_results_matches_its_file():
    folder = REPO / "results" / "h200"
    tables = summary.read_tables(folder / f"{d}_table.csv" for d in ("s2s", "s2l", "s16k", "l2s"))
    text = summary.summary_markdown("h200", tables, sorted((folder / "serving").glob("*.csv")),
                                    folder / "coefficients.csv")
    assert text == (folder / "SUMMARY.md").read_text(), "regenerate with scripts/write_summary.py results/h200"
    with open(folder / "s2s_table.csv") as fh:
        vllm = next(r for r in csv.DictReader(fh) if r["library"] == "vllm")
    assert f"| vLLM | llama2-7b | ok | {float(vllm['total_time_s']):,.3f} |" in text
    assert "## Serving peak per library" in text and "## Time-model coefficients" in text


def test_summary_rejects_a_file_that_is_not_a_dataset_table(tmp_path):
    with pytest.raises(ValueError, match="coefficients.csv"):
        summary.read_tables([tmp_path / "coefficients.csv"])


def caption_contexts():
    """Every caption in report/ with the wildcards and params.settings of a job that registers it, for the
    H200 profile (GPU serving and profiling settings; the CPU run in this file covers the CPU ones)."""
    from inference_eval.config import PipelineConfig
    from inference_eval.report import captions

    pipe = PipelineConfig.from_snakemake({"hardware": "h200", "model": "llama2-7b"})
    hw = {"hardware": "h200"}
    batch = captions.batch_settings(pipe.job(dataset="s2s", hardware="h200", scenario="batch"))
    serving = captions.serving_settings(pipe.job(dataset="l2s", library="vllm", model="llama2-7b", hardware="h200",
                                                 scenario="serving"))
    prof = captions.profiling_settings(pipe.job(hardware="h200"))
    return {
        "datasets_lengths.rst": ({"variant": "real"}, {}), "datasets_summary.rst": ({"variant": "real"}, {}),
        "batch_table.rst": ({**hw, "dataset": "s2s"}, batch), "batch_bound.rst": ({**hw, "dataset": "s2s"}, {}),
        "throughput.rst": (hw, {}), "serving_figure.rst": ({**hw, "dataset": "l2s"}, {}),
        "serving_table.rst": ({**hw, "library": "vllm", "model": "llama2-7b", "dataset": "l2s"}, serving),
        "theory_ops.rst": ({**hw, "model": "llama2-7b", "batch": "8", "seq": "512"}, {}),
        "theory_roofline.rst": ({**hw, "model": "llama2-7b"}, {}),
        "module_table.rst": ({**hw, "variant": "vllm", "stage": "decode", "sweep": "seq"}, prof),
        "module_shares.rst": (hw, {}), "coefficients.rst": (hw, prof), "time_model_points.rst": (hw, prof),
        "time_model_fit.rst": (hw, {}), "run_summary.rst": (hw, {}),
        "theory_ops_tp.rst": ({**hw, "model": "llama2-13b", "degree": "2"}, {}),
        "tensor_parallel_scaling.rst": ({**hw, "dataset": "s2s"}, {}), "tensor_parallel_figure.rst": (hw, {}),
        **{f"prediction_{kind}.rst": ({"target": "h100", "source": "h200"}, {})
           for kind in ("modules", "batch", "mape", "validation")},
    }


def test_every_caption_renders_with_its_jobs_wildcards_and_settings():
    from types import SimpleNamespace

    import jinja2
    from docutils.core import publish_parts

    contexts = caption_contexts()
    files = {p.name for p in (REPO / "report").glob("*.rst")} - {"workflow.rst"}
    assert files == set(contexts), files ^ set(contexts)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    for name, (wildcards, settings) in contexts.items():
        smk = SimpleNamespace(wildcards=SimpleNamespace(**wildcards), params=SimpleNamespace(settings=settings),
                              config={})
        text = env.from_string((REPO / "report" / name).read_text()).render(snakemake=smk)
        sentences = len(re.findall(r"[.!?](\s|$)", text.strip()))
        assert 2 <= sentences <= 6, (name, text)
        body = publish_parts(text, writer="html", settings_overrides={"halt_level": 2})["body"]
        assert "<p>" in body, name
    serving_text = env.from_string((REPO / "report" / "serving_table.rst").read_text()).render(
        snakemake=SimpleNamespace(wildcards=SimpleNamespace(**contexts["serving_table.rst"][0]),
                                  params=SimpleNamespace(settings=contexts["serving_table.rst"][1]), config={}))
    assert "1, 2, 4, 8, 16, 32 req/s" in serving_text and "1000 requests per rate" in serving_text


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    """`all` and `--report` for the reduced DAG in a temp results folder (about 2 minutes on 2 cores)."""
    tmp = tmp_path_factory.mktemp("report")
    results = tmp / "results"
    out = snakemake(["all", "--config", f"overrides={REDUCED}"], results, timeout=1200)
    assert out.returncode == 0, out.stderr[-4000:]
    report = tmp / "report.html"
    out = snakemake(["--report", str(report), "all", "--config", f"overrides={REDUCED}"], results)
    assert out.returncode == 0, out.stderr[-4000:]
    return results, report


def registered_files(results: Path) -> set[str]:
    """What the rules register for the reduced DAG: the figures and each table's HTML page."""
    cpu = results / "cpu"
    names = {results / "datasets" / "figures" / "synthetic_lengths.png", results / "datasets" / "synthetic_summary.html",
             cpu / "s2s_table.html", cpu / "s2s_bound.html", cpu / "figures" / "throughput.png",
             cpu / "theory" / "tiny-llama_ops_b8_s512.html", cpu / "theory" / "tiny-llama_roofline.png",
             cpu / "coefficients.html", cpu / "modules" / "time_model_points.html",
             cpu / "figures" / "module_shares.png", cpu / "figures" / "time_model_fit.png",
             cpu / "report" / "run_summary.html"}
    names |= {cpu / "modules" / f"transformers-eager_{st}_{sw}.html" for st in ("prefill", "decode")
              for sw in ("seq", "batch")}
    return {str(p) for p in names}


def test_small_dag_writes_summary_and_table_pages(small_report):
    results, _ = small_report
    text = (results / "cpu" / "SUMMARY.md").read_text()
    assert "### s2s" in text and "| TRT | tiny-llama | not_installed |" in text
    assert "## Time-model coefficients" in text
    fragment = (results / "cpu" / "report" / "run_summary.html").read_text()
    assert "transformers" in fragment and "not_installed" in fragment and "snakemake 9." in fragment
    for path in registered_files(results):
        assert Path(path).is_file(), path


def test_report_opens_in_chromium_and_lists_every_item(small_report, tmp_path):
    from inference_eval.report import browser

    try:
        browser.chromium_binary()
    except browser.BrowserError as exc:
        if os.environ.get("INFERENCE_EVAL_REQUIRE_CHROMIUM"):
            raise
        pytest.skip(str(exc))  # .ci/run installs Debian's chromium and sets INFERENCE_EVAL_REQUIRE_CHROMIUM
    results, report = small_report

    async def inspect():
        async with browser.open_page(report.resolve().as_uri()) as page:
            await page.wait_for("document.querySelector('#app') && document.querySelector('#app').innerText.length > 0")
            front = await page.evaluate("document.body.innerText")
            items = json.loads(await page.evaluate(browser.JS_ITEMS))
            listed = await browser.listed_items(page)
            await browser.show_item(page, "s2s_table.html")
            # the view is an iframe on the page's data URI (an opaque origin: read the URI, not the frame)
            frame_text = await page.evaluate("(() => { const f = document.querySelector('iframe'); return f ? "
                                             "atob(f.src.split('base64,')[1]) : ''; })()")
            shot = await page.screenshot(tmp_path / "report.png")
            return front, items, listed, frame_text, shot, page.console_errors()

    front, items, listed, frame_text, shot, errors = asyncio.run(inspect())
    assert errors == [], errors
    # the front page carries the generated run summary
    assert "Rows that did not run" in front and "not_installed" in front
    assert set(items["results"]) == registered_files(results)
    for path, item in items["results"].items():
        cat = next(c for c, subs in items["categories"].items() for s, paths in subs.items() if path in paths)
        sub = next(s for s, paths in items["categories"][cat].items() if path in paths)
        assert item["labels"]["shows"] in listed[cat][sub], (path, listed[cat][sub])
    assert {"Datasets", "Batch", "Theory", "Modules", "Time model", "Run"} <= set(items["categories"])
    # a table opens as a table (not a download)
    assert "results per library" in frame_text and "transformers" in frame_text
    from PIL import Image

    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert img.size[0] >= 800 and hi - lo > 100, (img.size, lo, hi)
    assert sum(1 for n in img.histogram() if n) > 20  # text and a table, not a blank page
