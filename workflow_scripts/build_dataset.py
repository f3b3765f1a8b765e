from inference_eval.datasets.build import build_and_write

build_and_write(snakemake.params.cfg, snakemake.output.rows, snakemake.output.manifest)
