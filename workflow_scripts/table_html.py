# One registered table's HTML rendering for the report (rules report_html_<kind> of rules/report_pages.smk,
# prediction_html_<table> of rules/prediction.smk).
from inference_eval.io import write_text
from inference_eval.report.pages import table_page
from inference_eval.rule_log import tee_to_log

with tee_to_log(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    write_text(snakemake.output.html, table_page(snakemake.input.csv, snakemake.params.title))  # noqa: F821
