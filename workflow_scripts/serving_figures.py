"""Snakemake entry of rule serving_figure: throughput and latency vs request rate for one dataset.
The fairness gate marks the libraries whose rows cannot be read beside the others (and says why)."""
from inference_eval.fairness import gate_frame
from inference_eval.rule_log import tee_to_log
from inference_eval.serving.figures import load_sweeps, serving_figure

with tee_to_log(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    serving_figure(gate_frame(load_sweeps(snakemake.input.sweeps)), snakemake.output[0],  # noqa: F821
                   title=f"{snakemake.wildcards.dataset} on {snakemake.wildcards.hardware}: serving")  # noqa: F821
