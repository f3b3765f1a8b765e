# results/<hw>/SUMMARY.md and the report front page's run summary, from the tables (rules/report_pages.smk).
from inference_eval.io import write_text
from inference_eval.report.pages import run_summary_fragment
from inference_eval.report.summary import read_tables, summary_markdown
from inference_eval.rule_log import tee_to_log

with tee_to_log(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    tables = read_tables(snakemake.input.get("tables", []))  # noqa: F821
    serving = list(snakemake.input.get("serving", []))  # noqa: F821
    coefficients = snakemake.input.get("coefficients") or None  # noqa: F821
    hardware = snakemake.wildcards.hardware  # noqa: F821
    write_text(snakemake.output.summary, summary_markdown(hardware, tables, serving, coefficients))  # noqa: F821
    write_text(snakemake.output.fragment, run_summary_fragment(hardware, tables, serving, coefficients))  # noqa: F821
