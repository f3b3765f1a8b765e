# Predictions for hardware that was not measured: from one hardware's (the source's) measured per-op times
# and batch rows and both hardwares' roofline ceilings (conf/hardware/<hw>.yaml), per-op, per-stage and
# per-dataset times on another (the target); where the target measured the same things, the errors.
# CPU-only, from the source's result files: local rules, no GPU. Method and assumptions: docs/theory.md,
# "Predicting hardware you do not have" (src/inference_eval/profiling/prediction.py).
#   results/{target}/predicted/modules_from_{source}.csv          per op and per stage (decoder layers)
#   results/{target}/predicted/batch_from_{source}.csv            per dataset x library: the source's
#       measured datasets whose <dataset>_bound.csv exists on the target, or all of them when none does
#       (rule dataset_bound then makes the target's bounds from the dataset rows: same rows, same limits)
#   results/{target}/predicted/validation_{modules,batch,mape}_from_{source}.csv, validation_from_{source}.png
#       predicted against what the target measured, and the MAPE per op, stage and library
# `snakemake predictions`: every prediction the result files allow (module predictions for every GPU
# profile; batch predictions where the target's bounds exist; validations where the target measured).
# From committed results only, so that no rule that measures or rebuilds what they came from is planned
# (`--allowed-rules`: the names in PREDICTION_RULES below; the pages' rules only for prediction_pages):
#   snakemake --cores 1 predictions --allowed-rules predict_modules predict_batch validate_predictions predictions
# Logs: results/{target}/logs/<rule>/from_{source}.log.

include: "prediction_functions.smk"


# name of the CSV (without _from_{source}.csv): caption, label in the report
PREDICTION_TABLES = {
    "modules": ("prediction_modules.rst", "per-op and per-stage prediction (table)"),
    "batch": ("prediction_batch.rst", "per-dataset prediction (table)"),
    "validation_mape": ("prediction_mape.rst", "prediction error per op, stage, library (table)"),
}


rule predict_modules:
    input:
        modules=module_prediction_inputs,
    output:
        predicted=f"{RESULTS}/{{target}}/predicted/modules_from_{{source}}.csv",
    log:
        f"{RESULTS}/{{target}}/logs/predict_modules/from_{{source}}.log",
    params:
        source=lambda wc: prediction_cfg(wc.source),
        target=lambda wc: prediction_cfg(wc.target),
    wildcard_constraints:
        target=HARDWARE_CHOICES,
        source=HARDWARE_CHOICES,
    localrule: True
    script:
        "../workflow_scripts/predict.py"


rule predict_batch:
    input:
        unpack(batch_prediction_inputs),
    output:
        predicted=f"{RESULTS}/{{target}}/predicted/batch_from_{{source}}.csv",
    log:
        f"{RESULTS}/{{target}}/logs/predict_batch/from_{{source}}.log",
    params:
        source=lambda wc: prediction_cfg(wc.source),
        target=lambda wc: prediction_cfg(wc.target),
    wildcard_constraints:
        target=HARDWARE_CHOICES,
        source=HARDWARE_CHOICES,
    localrule: True
    script:
        "../workflow_scripts/predict.py"


rule validate_predictions:
    input:
        unpack(validation_inputs),
    output:
        modules=f"{RESULTS}/{{target}}/predicted/validation_modules_from_{{source}}.csv",
        batch=f"{RESULTS}/{{target}}/predicted/validation_batch_from_{{source}}.csv",
        mape=f"{RESULTS}/{{target}}/predicted/validation_mape_from_{{source}}.csv",
        figure=report(f"{RESULTS}/{{target}}/predicted/validation_from_{{source}}.png",
                      caption="../report/prediction_validation.rst", category="Prediction",
                      subcategory="{target} from {source}", labels={"shows": "predicted vs measured (figure)"}),
    log:
        f"{RESULTS}/{{target}}/logs/validate_predictions/from_{{source}}.log",
    wildcard_constraints:
        target=HARDWARE_CHOICES,
        source=HARDWARE_CHOICES,
    localrule: True
    script:
        "../workflow_scripts/predict.py"


for _table, (_caption, _label) in PREDICTION_TABLES.items():

    rule:
        name:
            f"prediction_html_{_table}"
        input:
            csv=f"{RESULTS}/{{target}}/predicted/{_table}_from_{{source}}.csv",
        output:
            html=report(f"{RESULTS}/{{target}}/predicted/{_table}_from_{{source}}.html",
                        caption=f"../report/{_caption}", category="Prediction", subcategory="{target} from {source}",
                        labels={"shows": _label}),
        log:
            f"{RESULTS}/{{target}}/logs/prediction_html_{_table}/from_{{source}}.log",
        params:
            title=_label.replace(" (table)", ""),
        wildcard_constraints:
            target=HARDWARE_CHOICES,
            source=HARDWARE_CHOICES,
        localrule: True
        script:
            "../workflow_scripts/table_html.py"


rule predictions:
    input:
        prediction_targets(),
    localrule: True


# The report of the predictions: `snakemake --report report.html prediction_pages` (after `predictions`).
rule prediction_pages:
    input:
        prediction_targets(pages=True),
    localrule: True


# Every rule of this file, for `--allowed-rules` (the command above).
PREDICTION_RULES = ["predict_modules", "predict_batch", "validate_predictions", "predictions", "prediction_pages",
                    *[f"prediction_html_{t}" for t in PREDICTION_TABLES]]
