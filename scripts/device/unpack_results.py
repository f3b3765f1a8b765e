"""Unpack campaign archives (results-<hw>.tgz from the lent GPU) into results/, keeping what they replace.

    python scripts/device/unpack_results.py HW results-HW.tgz [more.tgz ...]     (report.sh runs it)

An archive holds results/<hw>/ as the machine had it, so a record in it replaces the committed record of the
same run. A committed record made before the fair defaults (a batch record without a fairness manifest, a
sweep whose rows have none) is the "before" of results/<hw>/FAIRNESS.md: it moves, with the files beside it
(a batch record's .log and .requests.csv; a sweep's serving/runs/<name>/ folder), to
results/<hw>/before-fairness/ before the archive is unpacked, unless a "before" copy of that run is already
there (the first one made is kept). Every other file an archive changes is named on stderr; git keeps the
committed version. Later archives win, as with tar; members with unsafe paths (absolute, ``..``, links out of
the tree) are refused by tarfile's data filter.
"""

from __future__ import annotations

import re
import shutil
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from inference_eval.records import BatchRecord  # noqa: E402
from inference_eval.records.serving import read_sweep, sweep_made_before_manifest  # noqa: E402

BEFORE = "before-fairness"


def made_before_the_fair_defaults(path: Path) -> bool:
    """Whether a committed batch record or sweep CSV has no fairness manifest."""
    if path.suffix == ".json":
        return BatchRecord.load(path).fairness is None
    return sweep_made_before_manifest(read_sweep(path))


def _companions(root: Path, hw: str, rel: str) -> list[str]:
    """The record at ``rel`` (under results/<hw>/) with the files that belong to its run."""
    if rel.startswith("batch/"):
        stem = rel[: -len(".json")]
        return [rel] + [f"{stem}{ext}" for ext in (".log", ".requests.csv") if (root / hw / f"{stem}{ext}").exists()]
    name = Path(rel).stem
    return [rel] + ([f"serving/runs/{name}"] if (root / hw / "serving" / "runs" / name).is_dir() else [])


RECORD = re.compile(r"^results/(?P<hw>[^/]+)/(?P<rel>batch/[^/]+/[^/]+/[^/]+\.json|serving/[^/]+\.csv)$")


def keep_before(root: Path, hw: str, members: list[str], log=print) -> list[str]:
    """Move each committed record of ``hw`` that ``members`` replace and that predates the fair defaults to
    ``<hw>/before-fairness/`` (with its companions); return the paths moved (relative to ``<hw>/``)."""
    moved = []
    for member in members:
        m = RECORD.match(member)
        if not m or m["hw"] != hw:
            continue
        rel = m["rel"]
        committed = root / hw / rel
        if not committed.is_file() or not made_before_the_fair_defaults(committed):
            continue
        if (root / hw / BEFORE / rel).exists():
            log(f"unpack: {committed} is replaced; {hw}/{BEFORE}/{rel} already holds an earlier run")
            continue
        for part in _companions(root, hw, rel):
            dest = root / hw / BEFORE / part
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(root / hw / part), str(dest))
            moved.append(part)
        log(f"unpack: kept {committed} (made before the fair defaults) in {hw}/{BEFORE}/{rel}")
    return moved


def unpack(hw: str, archives: list[Path], root: Path = Path("results"), log=print) -> None:
    """Unpack ``archives`` into the parent of ``root`` (their members start with ``results/``)."""
    for archive in archives:
        with tarfile.open(archive) as tar:
            files = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
            keep_before(root, hw, list(files), log)
            for name, member in files.items():
                target = root.parent / name
                if RECORD.match(name) and target.is_file() and target.read_bytes() != tar.extractfile(member).read():
                    log(f"unpack: {archive.name} replaces {target} (git keeps the committed version)")
            tar.extractall(root.parent, filter="data")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    hw, archives = argv[0], [Path(a) for a in argv[1:]]
    missing = [str(a) for a in archives if not a.is_file()]
    if missing:
        print(f"unpack: no archive {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        unpack(hw, archives, log=lambda message: print(message, file=sys.stderr))
    except (tarfile.TarError, OSError, ValueError) as exc:   # ValueError: a committed record unreadable
        print(f"unpack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
