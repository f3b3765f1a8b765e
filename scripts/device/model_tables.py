"""Batch tables of a second model beside the campaign's main one, with its own roofline bound.

The pipeline's ``results/<hw>/<dataset>_table.csv`` crosses every model with every library, and the
campaign ran only some libraries on the second model (Mistral-7B, for GQA): its rows go to their own
folder instead, from the same record and bound functions the report rules use, one table per dataset,
plus a figure of both models for the libraries that ran both. report.sh runs it last (it needs the datasets
report.sh builds); by hand:

    .venv/bin/python scripts/device/model_tables.py h200 mistral-7b --main llama2-7b \
        --datasets s2s=ROWS l2s=ROWS s2l=ROWS --data-root ../shared/data
    (ROWS: each dataset's seeded subset, `python -m inference_eval.campaign limit h200 s2s`)
    -> results/h200/<model>/<dataset>_bound.csv, <dataset>_table.csv, figures/throughput_vs_<main>.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from inference_eval.config import PipelineConfig  # noqa: E402
from inference_eval.io import write_csv  # noqa: E402
from inference_eval.report.tables import dataset_table, throughput_figure  # noqa: E402
from inference_eval.theory.workflow import write_bound_table  # noqa: E402


def dataset_limit(text: str) -> tuple[str, int]:
    name, _, limit = text.partition("=")
    if not name or not limit.isdigit():
        raise argparse.ArgumentTypeError(f"expected DATASET=ROWS (a task key and its row limit), got {text!r}")
    return name, int(limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hardware")
    parser.add_argument("model")
    parser.add_argument("--main", required=True, help="the campaign's main model, drawn beside it in the figure")
    parser.add_argument("--datasets", nargs="+", type=dataset_limit, required=True, metavar="DATASET=ROWS")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--results", default=str(ROOT / "results"))
    args = parser.parse_args()

    results = Path(args.results)
    out = results / args.hardware / args.model
    both = {}
    for dataset, limit in args.datasets:
        records = sorted((results / args.hardware / "batch").glob(f"*/{args.model}/{dataset}.json"))
        if not records:
            sys.exit(f"model_tables: no {args.model} record for {dataset} under {results / args.hardware / 'batch'}")
        rows = results / "datasets" / dataset / "rows.jsonl"
        if not rows.exists():
            sys.exit(f"model_tables: {rows} is missing (report.sh builds the campaign's datasets)")
        pipeline = PipelineConfig.from_snakemake({
            "hardware": args.hardware, "model": args.model,
            "overrides": f"matrix.dataset_variant=real data_root={args.data_root} dataset.limit={limit} "
                         f"results_dir={results}"})
        cfg = pipeline.job(dataset=dataset, hardware=args.hardware, model=args.model)
        bound = out / f"{dataset}_bound.csv"
        write_bound_table(bound, rows, {args.model: cfg}, dataset)
        table = dataset_table(records, bound)
        write_csv(out / f"{dataset}_table.csv", table)
        main_records = [results / args.hardware / "batch" / lib / args.main / f"{dataset}.json"
                        for lib in table["library"]]
        both[dataset] = dataset_table([p for p in main_records if p.exists()] + records)
        print(table[["library", "model", "dataset", "n_exact", "n_requests", "total_time_s",
                     "token_throughput_tok_s", "bound_s", "efficiency", "status"]].to_string(index=False))
    figure = throughput_figure(both, f"{args.model} beside {args.main}, {args.hardware}")
    figure.axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # off the bars: 4 runs x 3 sets
    (out / "figures").mkdir(parents=True, exist_ok=True)
    figure.savefig(out / "figures" / f"throughput_vs_{args.main}.png", dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()
