# Input functions and targets of rules/prediction.smk (which includes this file).


def prediction_hardware():
    """The GPU profiles (a CPU's nominal ceilings make no prediction worth reading)."""
    return [hw for hw in HARDWARE_CHOICES.split("|") if PIPELINE.job(hardware=hw)["hardware"].get("kind") == "gpu"]


def _checked_pair(wc):
    if wc.source == wc.target:
        raise WorkflowError(f"a prediction needs another hardware than its source, got {wc.source} for both")


def measured_module_files(hardware):
    """The module tables measured on ``hardware``: those of every profiled library whose four tables
    exist; when none does, all of them (so the DAG plans the profiling on that hardware)."""
    present, wanted = [], []
    for v in profiled_variants(hardware):
        files = module_files(hardware, v)
        wanted += files
        if all(Path(f).exists() for f in files):
            present += files
    return present or wanted


def measured_datasets(hardware):
    """The matrix datasets whose batch table exists on ``hardware`` (all of them when none does)."""
    present = [d for d in PIPELINE.datasets if Path(f"{RESULTS}/{hardware}/{d}_table.csv").exists()]
    return present or list(PIPELINE.datasets)


def batch_datasets(source, target):
    """The source's measured datasets whose bound exists on the target; all of them when none does
    (the DAG then plans the target's bounds, rule dataset_bound)."""
    measured = measured_datasets(source)
    bounded = [d for d in measured if Path(f"{RESULTS}/{target}/{d}_bound.csv").exists()]
    return bounded or measured


def prediction_cfg(hardware):
    """The resolved config whose hardware section gives the ceilings (and the profiled model's dtype)."""
    return PIPELINE.job(hardware=hardware, model=profiling_model(hardware))


def module_prediction_inputs(wc):
    _checked_pair(wc)
    return measured_module_files(wc.source)


def batch_prediction_inputs(wc):
    _checked_pair(wc)
    ds = batch_datasets(wc.source, wc.target)
    return {"tables": [f"{RESULTS}/{wc.source}/{d}_table.csv" for d in ds],
            "source_bounds": [f"{RESULTS}/{wc.source}/{d}_bound.csv" for d in ds],
            "target_bounds": [f"{RESULTS}/{wc.target}/{d}_bound.csv" for d in ds]}


def _present_modules(hardware):
    return [f for f in measured_module_files(hardware) if Path(f).exists()]


def _present_tables(hardware, datasets):
    return [f"{RESULTS}/{hardware}/{d}_table.csv" for d in datasets
            if Path(f"{RESULTS}/{hardware}/{d}_table.csv").exists()]


def _batch_predictable(source, target):
    return any(Path(f"{RESULTS}/{target}/{d}_bound.csv").exists() for d in measured_datasets(source))


def validation_inputs(wc):
    _checked_pair(wc)
    files = {"modules": [], "predicted_modules": [], "tables": [], "predicted_batch": []}
    target_modules = _present_modules(wc.target)
    if target_modules:
        files["modules"] = target_modules
        files["predicted_modules"] = [f"{RESULTS}/{wc.target}/predicted/modules_from_{wc.source}.csv"]
    target_tables = _present_tables(wc.target, batch_datasets(wc.source, wc.target))
    if target_tables and _batch_predictable(wc.source, wc.target):
        files["tables"] = target_tables
        files["predicted_batch"] = [f"{RESULTS}/{wc.target}/predicted/batch_from_{wc.source}.csv"]
    if not target_modules and not target_tables:
        raise WorkflowError(f"{wc.target} has no measured module tables or batch tables to validate "
                            f"predictions from {wc.source} against")
    return files


def prediction_targets(pages=False):
    """Every prediction the result files on disk allow (the `predictions` rule); with ``pages``, the
    HTML pages of those tables instead of the CSVs (the `prediction_pages` rule, for the report)."""
    out = []
    hws = prediction_hardware()
    sources = [hw for hw in hws if _present_modules(hw) or _present_tables(hw, PIPELINE.datasets)]
    for source in sources:
        for target in hws:
            if target == source:
                continue
            base = f"{RESULTS}/{target}/predicted"
            tables = []
            if _present_modules(source):
                tables.append("modules")
            batch = bool(_present_tables(source, PIPELINE.datasets)) and _batch_predictable(source, target)
            if batch:
                tables.append("batch")
            if ("modules" in tables and _present_modules(target)) or (
                    batch and _present_tables(target, batch_datasets(source, target))):
                out.append(f"{base}/validation_from_{source}.png")
                tables.append("validation_mape")
            out += [f"{base}/{t}_from_{source}.{'html' if pages else 'csv'}" for t in tables
                    if pages or t != "validation_mape"]
    return out
