# The Snakemake report (`snakemake --report report.html`): an HTML rendering beside each registered CSV
# (the report shows HTML and images inline but a CSV only as a download), the run summary that the
# front page (report/workflow.rst) embeds, and results/<hw>/SUMMARY.md. Captions: report/*.rst.
#   <table>.html beside <table>.csv      for every table kind in REPORT_TABLES
#   results/{hardware}/report/run_summary.html   what ran, hardware, versions, failed rows (front page)
#   results/{hardware}/SUMMARY.md                the tables' numbers in Markdown


from inference_eval.report import captions as report_captions  # noqa: E402


def batch_settings(wc):
    return report_captions.batch_settings(PIPELINE.job(dataset=wc.dataset, hardware=wc.hardware, scenario="batch"))


def serving_settings(wc):
    return report_captions.serving_settings(PIPELINE.job(dataset=wc.dataset, library=wc.library, model=wc.model,
                                                         hardware=wc.hardware, scenario="serving"))


def profiling_caption_settings(wc):
    return report_captions.profiling_settings(PIPELINE.job(hardware=wc.hardware))


# kind: (CSV pattern without .csv, caption, category, subcategory, label, settings function or None)
REPORT_TABLES = {
    "dataset_summary": (RESULTS + "/datasets/{variant}_summary", "datasets_summary.rst", "Datasets",
                        "{variant}", "length summary (table)", None),
    "batch_table": (RESULTS + "/{hardware}/{dataset}_table", "batch_table.rst", "Batch", "{dataset}",
                    "results per library (table)", batch_settings),
    "batch_bound": (RESULTS + "/{hardware}/{dataset}_bound", "batch_bound.rst", "Batch", "{dataset}",
                    "roofline bound (table)", None),
    "serving_table": (RESULTS + "/{hardware}/serving/{library}_{model}_{dataset}", "serving_table.rst",
                      "Serving", "{dataset}", "sweep {library} {model} (table)", serving_settings),
    "theory_ops": (RESULTS + f"/{{hardware}}/theory/{{model}}_ops_b{THEORY_BATCH}_s{THEORY_SEQ}", "theory_ops.rst",
                   "Theory", "{model}", "per-op FLOPs, bytes, intensity (table)", None),
    "module_table": (RESULTS + "/{hardware}/modules/{variant}_{stage}_{sweep}", "module_table.rst",
                     "Modules", "{variant}", "{stage}, {sweep} sweep (table)", profiling_caption_settings),
    "coefficients": (RESULTS + "/{hardware}/coefficients", "coefficients.rst", "Time model", "fit",
                     "coefficients (table)", profiling_caption_settings),
    "time_model_points": (RESULTS + "/{hardware}/modules/time_model_points", "time_model_points.rst",
                          "Time model", "fit", "measured vs predicted per point (table)",
                          profiling_caption_settings),
}


def caption_settings(settings):
    """The params function of one table kind's HTML rule: its settings for the caption, or none."""
    def params(wildcards):
        return settings(wildcards) if settings else {}

    return params


for _kind, (_base, _caption, _category, _subcategory, _label, _settings) in REPORT_TABLES.items():

    rule:
        name:
            f"report_html_{_kind}"
        input:
            csv=_base + ".csv",
        output:
            html=report(_base + ".html", caption=f"../report/{_caption}", category=_category,
                        subcategory=_subcategory, labels={"shows": _label}),
        params:
            title=_label.replace(" (table)", ""),
            settings=caption_settings(_settings),
        wildcard_constraints:
            variant="synthetic|real" if _kind == "dataset_summary" else PROFILED_VARIANTS,
            stage="prefill|decode",
            sweep="seq|batch",
        localrule: True
        script:
            "../workflow_scripts/table_html.py"


def report_table_pages(hardware):
    """The HTML rendering of every CSV that all_targets (rules/common.smk) plans."""
    out = []
    for target in all_targets(hardware):
        if target.endswith(".csv"):
            out.append(target[: -len(".csv")] + ".html")
        if target.endswith("/coefficients.csv"):  # the fit also writes measured vs predicted per point
            out.append(f"{RESULTS}/{hardware}/modules/time_model_points.html")
        if target.endswith("_lengths.png"):  # the datasets figure's rule also writes the summary table
            variant = Path(target).name[: -len("_lengths.png")]
            out.append(f"{RESULTS}/datasets/{variant}_summary.html")
    return out


def summary_inputs(wc):
    hw = wc.hardware
    files = {"tables": [f"{RESULTS}/{hw}/{d}_table.csv" for d in PIPELINE.datasets]
             if "batch" in PIPELINE.scenarios else []}
    if "serving" in PIPELINE.scenarios:
        files["serving"] = [serving_csv(hw, lib, m, d) for d in serving_datasets()
                            for lib in PIPELINE.libraries for m in PIPELINE.models]
    if PIPELINE.matrix.get("fine_grain", True) and profiled_variants(hw):
        files["coefficients"] = f"{RESULTS}/{hw}/coefficients.csv"
    return files


rule results_summary:
    input:
        unpack(summary_inputs),
    output:
        summary=RESULTS + "/{hardware}/SUMMARY.md",
        fragment=report(RESULTS + "/{hardware}/report/run_summary.html", caption="../report/run_summary.rst",
                        category="Run", subcategory="summary", labels={"shows": "what ran, versions, failed rows"}),
    localrule: True
    script:
        "../workflow_scripts/results_summary.py"


def report_targets(hardware):
    """What the report needs beyond all_targets: the tables' HTML pages and the run summary."""
    return report_table_pages(hardware) + [f"{RESULTS}/{hardware}/SUMMARY.md",
                                           f"{RESULTS}/{hardware}/report/run_summary.html"]
