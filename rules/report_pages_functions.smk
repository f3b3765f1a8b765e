# Functions and the table kinds of rules/report_pages.smk (which includes this file); report_targets is
# called by rule all (Snakefile).
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
    "dataset_summary": (f"{RESULTS}/datasets/{{variant}}_summary", "datasets_summary.rst", "Datasets",
                        "{variant}", "length summary (table)", None),
    "batch_table": (f"{RESULTS}/{{hardware}}/{{dataset}}_table", "batch_table.rst", "Batch", "{dataset}",
                    "results per library (table)", batch_settings),
    "batch_bound": (f"{RESULTS}/{{hardware}}/{{dataset}}_bound", "batch_bound.rst", "Batch", "{dataset}",
                    "roofline bound (table)", None),
    "serving_table": (f"{RESULTS}/{{hardware}}/serving/{{library}}_{{model}}_{{dataset}}", "serving_table.rst",
                      "Serving", "{dataset}", "sweep {library} {model} (table)", serving_settings),
    "theory_ops": (f"{RESULTS}/{{hardware}}/theory/{{model}}_ops_b{THEORY_BATCH}_s{THEORY_SEQ}", "theory_ops.rst",
                   "Theory", "{model}", "per-op FLOPs, bytes, intensity (table)", None),
    "module_table": (f"{RESULTS}/{{hardware}}/modules/{{variant}}_{{stage}}_{{sweep}}", "module_table.rst",
                     "Modules", "{variant}", "{stage}, {sweep} sweep (table)", profiling_caption_settings),
    "coefficients": (f"{RESULTS}/{{hardware}}/coefficients", "coefficients.rst", "Time model", "fit",
                     "coefficients (table)", profiling_caption_settings),
    "time_model_points": (f"{RESULTS}/{{hardware}}/modules/time_model_points", "time_model_points.rst",
                          "Time model", "fit", "measured vs predicted per point (table)",
                          profiling_caption_settings),
    # planned only with matrix.tensor_parallel beyond [1] (rules/tensor_parallel.smk)
    "theory_ops_tp": (f"{RESULTS}/{{hardware}}/theory/{{model}}_ops_b{THEORY_BATCH}_s{THEORY_SEQ}_tp{{degree}}",
                      "theory_ops_tp.rst", "Theory", "{model}", "per-op costs on one of {degree} GPUs (table)", None),
    "tp_scaling": (f"{RESULTS}/{{hardware}}/tensor_parallel/{{dataset}}_scaling", "tensor_parallel_scaling.rst",
                   "Tensor parallel", "{dataset}", "scaling over GPUs (table)", None),
}


def report_html_log(kind, base):
    """The log of one table kind's HTML rule: under the pattern's results root (``datasets`` or the
    ``{hardware}`` folder), ``logs/report_html_<kind>/<the CSV's name without .csv>.log``. Every wildcard
    of a pattern is in its file name (the folders between the root and the name have none), so each job
    has its own log."""
    prefix = f"{RESULTS}/"
    if not base.startswith(prefix):
        raise ValueError(f"report table pattern {base!r} ({kind}) is not under the results root {RESULTS!r}")
    root, _, rest = base[len(prefix):].partition("/")
    stem = rest.rsplit("/", 1)[-1]
    return f"{RESULTS}/{root}/logs/report_html_{kind}/{stem}.log"


def caption_settings(settings):
    """The params function of one table kind's HTML rule: its settings for the caption, or none."""
    def params(wildcards):
        return settings(wildcards) if settings else {}

    return params


def report_table_pages(hardware):
    """The HTML rendering of every CSV that all_targets (rules/common.smk) plans."""
    out = []
    for target in all_targets(hardware):
        if target.endswith(".csv"):
            out.append(target[: -len(".csv")] + ".html")
        if target == f"{RESULTS}/{hardware}/coefficients.csv":  # the fit also writes measured vs predicted per point
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
        files["serving"] = [p for d in serving_datasets() for p in serving_sweep_csvs(hw, d, failures=False)]
    if PIPELINE.matrix.get("fine_grain", True) and profiled_variants(hw):
        files["coefficients"] = f"{RESULTS}/{hw}/coefficients.csv"
    return files


def report_targets(hardware):
    """What the report needs beyond all_targets: the tables' HTML pages and the run summary."""
    return report_table_pages(hardware) + [f"{RESULTS}/{hardware}/SUMMARY.md",
                                           f"{RESULTS}/{hardware}/report/run_summary.html"]
