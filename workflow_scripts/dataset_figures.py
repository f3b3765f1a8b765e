from inference_eval.datasets.figures import write_figures

write_figures(snakemake.input.rows, snakemake.input.manifests, snakemake.wildcards.variant,
              snakemake.output.figure, snakemake.output.summary)
