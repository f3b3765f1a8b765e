# One registered table's HTML rendering for the report (rules/report_pages.smk).
from inference_eval.io import write_text
from inference_eval.report.pages import table_page

write_text(snakemake.output.html, table_page(snakemake.input.csv, snakemake.params.title))
