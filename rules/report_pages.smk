# The Snakemake report (`snakemake --report report.html`): an HTML rendering beside each registered CSV
# (the report shows HTML and images inline but a CSV only as a download), the run summary that the
# front page (report/workflow.rst) embeds, and results/<hw>/SUMMARY.md. Captions: report/*.rst.
#   <table>.html beside <table>.csv      for every table kind in REPORT_TABLES
#   results/{hardware}/report/run_summary.html   what ran, hardware, versions, failed rows (front page)
#   results/{hardware}/SUMMARY.md                the tables' numbers in Markdown
#   results/{hardware}/logs/<rule>/..., results/datasets/logs/<rule>/...   the jobs' logs (report_html_log)
include: "report_pages_functions.smk"


for _kind, (_base, _caption, _category, _subcategory, _label, _settings) in REPORT_TABLES.items():

    rule:
        name:
            f"report_html_{_kind}"
        input:
            csv=f"{_base}.csv",
        output:
            html=report(f"{_base}.html", caption=f"../report/{_caption}", category=_category,
                        subcategory=_subcategory, labels={"shows": _label}),
        log:
            report_html_log(_kind, _base),
        params:
            title=_label.replace(" (table)", ""),
            settings=caption_settings(_settings),
        wildcard_constraints:
            variant="synthetic|real" if _kind == "dataset_summary" else PROFILED_VARIANTS,
            stage="prefill|decode",
            sweep="seq|batch",
            degree="[0-9]+",
        localrule: True
        script:
            "../workflow_scripts/table_html.py"


rule results_summary:
    input:
        unpack(summary_inputs),
    output:
        summary=f"{RESULTS}/{{hardware}}/SUMMARY.md",
        fragment=report(f"{RESULTS}/{{hardware}}/report/run_summary.html", caption="../report/run_summary.rst",
                        category="Run", subcategory="summary", labels={"shows": "what ran, versions, failed rows"}),
    log:
        f"{RESULTS}/{{hardware}}/logs/results_summary.log",
    localrule: True
    script:
        "../workflow_scripts/results_summary.py"
