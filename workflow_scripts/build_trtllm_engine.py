# Thin entry of rule trtllm_engine (rules/models.smk): build the engine or record why not.
from pathlib import Path

from inference_eval.models.prepare import prepare_trtllm_engine
from inference_eval.report.provenance import utc_now
from inference_eval.rule_log import tee_to_log

started = utc_now()
with tee_to_log(snakemake.log[0]):
    hf_dir = Path(snakemake.input.hf).parent
    # The weights are an input only where TensorRT-LLM is importable (rules/models.smk); the folder is
    # results/models/<model>/weights either way.
    weights_dir = (Path(snakemake.input.weights).parent if "weights" in snakemake.input.keys()
                   else hf_dir.parent / "weights")
    prepare_trtllm_engine(snakemake.params.cfg, snakemake.output.record, weights_dir, hf_dir, started=started)
