"""Snakemake entry of rule serving_figure: throughput and latency vs request rate for one dataset."""
from inference_eval.serving.figures import load_sweeps, serving_figure

serving_figure(load_sweeps(snakemake.input.sweeps), snakemake.output[0],
               title=f"{snakemake.wildcards.dataset} on {snakemake.wildcards.hardware}: serving")
