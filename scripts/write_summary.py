"""Write results/<hw>/SUMMARY.md from a results folder's committed tables, without running anything.

    .venv/bin/python scripts/write_summary.py results/h200 [results/h100 ...]

The same Markdown as the pipeline's `results_summary` rule (inference_eval.report.summary).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from inference_eval.io import write_text  # noqa: E402
from inference_eval.report.summary import read_tables, summary_markdown  # noqa: E402

DATASET_ORDER = ("s2s", "s2l", "s16k", "l2s")


def main(folders: list[str]) -> int:
    if not folders:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for folder in map(Path, folders):
        tables = sorted(folder.glob("*_table.csv"),
                        key=lambda p: (DATASET_ORDER + (p.name,)).index(p.name.split("_")[0])
                        if p.name.split("_")[0] in DATASET_ORDER else len(DATASET_ORDER))
        if not tables:
            print(f"{folder}: no <dataset>_table.csv here", file=sys.stderr)
            return 1
        coef = folder / "coefficients.csv"
        text = summary_markdown(folder.name, read_tables(tables), sorted((folder / "serving").glob("*.csv")),
                                coef if coef.is_file() else None)
        write_text(folder / "SUMMARY.md", text)
        print(f"wrote {folder / 'SUMMARY.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
