from pathlib import Path

from inference_eval.models.prepare import prepare_trtllm_engine
from inference_eval.report.provenance import utc_now

started = utc_now()
prepare_trtllm_engine(snakemake.params.cfg, snakemake.output.record, Path(snakemake.input.weights).parent,
                      Path(snakemake.input.hf).parent, started=started)
