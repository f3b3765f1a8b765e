# The offline batch scenario: one run record + per-request CSV per hardware x library x model x dataset.
# The library runs in a fresh worker process (inference_eval.batch); a library that is missing, runs
# out of memory or crashes still writes its record (status + reason), so the table keeps its row.


rule batch_run:
    input:
        unpack(model_files),
        unpack(library_env),
        rows=dataset_rows,
    output:
        record=f"{RESULTS}/{{hardware}}/batch/{{library}}/{{model}}/{{dataset}}.json",
        requests=f"{RESULTS}/{{hardware}}/batch/{{library}}/{{model}}/{{dataset}}.requests.csv",
    log:
        f"{RESULTS}/{{hardware}}/batch/{{library}}/{{model}}/{{dataset}}.log",
    params:
        cfg=lambda wc: PIPELINE.job(dataset=wc.dataset, library=wc.library, model=wc.model,
                                    hardware=wc.hardware, scenario="batch"),
    threads: MEASURE_THREADS
    resources:
        **hardware_resources,
    script:
        "../workflow_scripts/run_batch.py"
