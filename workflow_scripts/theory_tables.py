"""Rule theory_ops / theory_roofline: the paper's Tables 4 and 5 (CSV) or the roofline figure (PNG)."""
from inference_eval.rule_log import tee_to_log
from inference_eval.theory.workflow import write_op_table, write_roofline

with tee_to_log(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    if snakemake.rule == "theory_roofline":  # noqa: F821
        write_roofline(snakemake.input.table, snakemake.output.figure, snakemake.params.cfg)  # noqa: F821
    else:
        degree = int(snakemake.wildcards.get("degree", 1))  # noqa: F821 (theory_ops_tp: ..._tp<degree>.csv)
        write_op_table(snakemake.output.table, snakemake.params.cfg, int(snakemake.wildcards.batch),  # noqa: F821
                       int(snakemake.wildcards.seq), causal=bool(snakemake.params.causal),  # noqa: F821
                       tensor_parallel=degree)
