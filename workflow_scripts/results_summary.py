# results/<hw>/SUMMARY.md and the report front page's run summary, from the tables (rules/report_pages.smk).
from inference_eval.io import write_text
from inference_eval.report.pages import run_summary_fragment
from inference_eval.report.summary import read_tables, summary_markdown

tables = read_tables(snakemake.input.get("tables", []))
serving = list(snakemake.input.get("serving", []))
coefficients = snakemake.input.get("coefficients") or None
hardware = snakemake.wildcards.hardware
write_text(snakemake.output.summary, summary_markdown(hardware, tables, serving, coefficients))
write_text(snakemake.output.fragment, run_summary_fragment(hardware, tables, serving, coefficients))
