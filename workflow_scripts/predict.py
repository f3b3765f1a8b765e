# Thin entry of the rules in rules/prediction.smk: predict_modules, predict_batch, validate_predictions.
from inference_eval.profiling import prediction
from inference_eval.rule_log import tee_to_log
from inference_eval.theory.hardware import ceilings

rule = snakemake.rule  # noqa: F821
wc, params, inp, out = snakemake.wildcards, snakemake.params, snakemake.input, snakemake.output  # noqa: F821

with tee_to_log(snakemake.log[0]):  # noqa: F821
    if rule == "predict_modules":
        src = ceilings(params.source["hardware"], params.source["model"].get("dtype", "bfloat16"))
        tgt = ceilings(params.target["hardware"], params.target["model"].get("dtype", "bfloat16"))
        prediction.write_module_predictions(list(inp.modules), src, tgt, out.predicted, params.target)
    elif rule == "predict_batch":
        prediction.write_batch_predictions(list(inp.tables), list(inp.source_bounds), list(inp.target_bounds),
                                           wc.source, wc.target, out.predicted, params.target)
    elif rule == "validate_predictions":
        prediction.write_validation(inp.predicted_modules[0] if inp.predicted_modules else None, list(inp.modules),
                                    inp.predicted_batch[0] if inp.predicted_batch else None, list(inp.tables),
                                    out.modules, out.batch, out.mape, out.figure)
    else:
        raise ValueError(f"workflow_scripts/predict.py serves the prediction rules, not {rule!r}")
