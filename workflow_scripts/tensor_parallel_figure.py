"""Rule tensor_parallel_figure: results/{hardware}/figures/tensor_parallel.png."""
from inference_eval.report.tensor_parallel import write_scaling_figure
from inference_eval.rule_log import tee_to_log

with tee_to_log(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    tables = dict(zip(snakemake.params.datasets, snakemake.input.tables))  # noqa: F821
    write_scaling_figure(snakemake.output[0], tables,  # noqa: F821
                         title=f"tensor parallel on {snakemake.wildcards.hardware}: scaling and efficiency")  # noqa: F821
