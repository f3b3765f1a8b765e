#!/usr/bin/env python3
"""Failure records for jobs SLURM killed: `python scripts/slurm_failures.py collect|list|clear` (docs/slurm.md)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from inference_eval.slurm_failures import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
