"""Rule tensor_parallel_figure: results/{hardware}/figures/tensor_parallel.png."""
from inference_eval.report.tensor_parallel import write_scaling_figure

tables = dict(zip(snakemake.params.datasets, snakemake.input.tables))  # noqa: F821 (injected by Snakemake)
write_scaling_figure(snakemake.output[0], tables,  # noqa: F821
                     title=f"tensor parallel on {snakemake.wildcards.hardware}: scaling and efficiency")  # noqa: F821
