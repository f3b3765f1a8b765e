#!/usr/bin/env python3
"""Run `snakemake --lint` on the workflow and compare what it reports with lint_allow.yaml.

    .venv/bin/python scripts/lint_check.py            exit 1 naming every warning the allow-list lacks
    .venv/bin/python scripts/lint_check.py --strict   also exit 1 for allow-list entries nothing matches

It asks for `--lint json`; Snakemake 9.27's command line prints the text form even then (it does not pass
the format on), so the text form is read too: "Lints for rule <name> (line <n>, <file>):" or "Lints for
snakefile <file>:", then one "    * <title>:" line per warning.

A warning is identified by what it is about (a rule's name, or for the lints of a whole file the file's path
relative to the repository) and its title. Titles that end in " in line <n>" are compared without that
part, so an entry stays valid when lines move; an entry's title that ends in "*" matches every title that
begins with what comes before the "*" (e.g. all of a file's 'Absolute path "..."' warnings). lint_allow.yaml lists the warnings that stay, each with a
one-line reason (docs/ARCHITECTURE.md, "Rule files and Snakemake lint"):

    allowed:
      - rules: [batch_run, serving_sweep]          # or rule: <name>, or snakefile: <path>
        title: Specify a conda environment or container for each rule.
        reason: the engines run in per-engine uv environments (docs/environments.md)

Exit status: 0 when every warning is allowed, 1 when one is not (or, with --strict, an entry is stale),
2 when the lint itself could not run (its output is shown).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ALLOW = REPO / "lint_allow.yaml"
_LINE_SUFFIX = re.compile(r" in line \d+\.?$")


class LintCheckError(Exception):
    """The lint could not run, or its output or the allow-list cannot be read."""


@dataclass(frozen=True)
class LintWarning:
    """One lint: ``kind`` is "rule" or "snakefile", ``name`` the rule's name or the file's path."""

    kind: str
    name: str
    title: str
    line: int | None = None

    def describe(self) -> str:
        where = f"rule {self.name}" if self.kind == "rule" else f"snakefile {self.name}"
        return f"{where}: {self.title}" + (f" (line {self.line})" if self.line else "")


@dataclass
class Entry:
    """One allow-list entry: the warning ``title`` for each of ``names`` (rules or snakefiles)."""

    kind: str
    names: list[str]
    title: str
    reason: str
    temporary: bool = False
    index: int = 0
    matched: set[str] = field(default_factory=set)


@dataclass
class Comparison:
    new: list[LintWarning]
    allowed: list[tuple[LintWarning, Entry]]
    stale: list[tuple[Entry, str]]  # (entry, the rule or snakefile it names that no warning matched)


def normalise_title(title: str) -> str:
    return _LINE_SUFFIX.sub("", title.strip())


def _relative(path: str, root: Path) -> str:
    p = Path(path)
    if not p.is_absolute():
        p = root / p
    try:
        return p.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return p.as_posix()


def parse_lint_json(text: str, root: Path = REPO) -> list[LintWarning]:
    """The warnings in `snakemake --lint json`'s output (the JSON object may follow other lines)."""
    start = text.find('{\n  "snakefiles"')
    if start < 0:
        start = text.find('{"snakefiles"')
    if start < 0:
        raise LintCheckError("no lint report (a JSON object with 'snakefiles' and 'rules') in snakemake's output")
    try:
        report, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as exc:
        raise LintCheckError(f"snakemake's lint report is not valid JSON: {exc}") from exc
    found = []
    for item in report.get("snakefiles") or []:
        name = _relative(item["for"]["snakefile"], root)
        found += [LintWarning("snakefile", name, lint["title"]) for lint in item["lints"]]
    for item in report.get("rules") or []:
        where = item["for"]
        found += [LintWarning("rule", where["rule"], lint["title"], where.get("line")) for lint in item["lints"]]
    return found


_TEXT_RULE = re.compile(r"^Lints for rule (?P<rule>\S+) \(line (?P<line>\d+|None), (?P<file>.*)\):$")
_TEXT_SNAKEFILE = re.compile(r"^Lints for snakefile (?P<file>.*):$")
_TEXT_TITLE = re.compile(r"^    \* (?P<title>.*):$")
_NO_LINTS = "Congratulations, your workflow is in a good condition!"


def parse_lint_text(text: str, root: Path = REPO) -> list[LintWarning]:
    """The warnings in `snakemake --lint`'s text output. Every title line must follow a "Lints for" line;
    an output with neither warnings nor Snakemake's all-clear line is an error (the lint did not run)."""
    found: list[LintWarning] = []
    current: tuple[str, str, int | None] | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if m := _TEXT_RULE.match(line):
            current = ("rule", m["rule"], int(m["line"]) if m["line"].isdigit() else None)
        elif m := _TEXT_SNAKEFILE.match(line):
            current = ("snakefile", _relative(m["file"], root), None)
        elif m := _TEXT_TITLE.match(line):
            if current is None:
                raise LintCheckError(f"lint output line {n}: a warning before any 'Lints for ...' line: {line!r}")
            found.append(LintWarning(current[0], current[1], m["title"], current[2]))
        elif line and not line.startswith("      "):
            current = None  # the body of a warning is indented by six spaces; anything else ends the block
    if not found and _NO_LINTS not in text:
        raise LintCheckError("no lint report in snakemake's output (neither warnings nor its all-clear line)")
    return found


def parse_lint_output(text: str, root: Path = REPO) -> list[LintWarning]:
    """The JSON report where the output has one, else the text form."""
    if '"snakefiles"' in text and '"rules"' in text:
        return parse_lint_json(text, root)
    return parse_lint_text(text, root)


def load_allow_list(path: Path) -> list[Entry]:
    """The entries of ``path``; a malformed entry is an error naming it."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise LintCheckError(f"{path}: allow-list not found") from exc
    except yaml.YAMLError as exc:
        raise LintCheckError(f"{path}: not valid YAML: {exc}") from exc
    raw = data.get("allowed") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        raise LintCheckError(f"{path}: expected a top-level key 'allowed' with a list of entries")
    entries = []
    for i, item in enumerate(raw, 1):
        where = f"{path}: entry {i}"
        if not isinstance(item, dict):
            raise LintCheckError(f"{where}: expected a mapping, got {item!r}")
        unknown = set(item) - {"rule", "rules", "snakefile", "title", "reason", "temporary"}
        if unknown:
            raise LintCheckError(f"{where}: unknown keys {sorted(unknown)}; valid: rule, rules, snakefile, title, "
                                 "reason, temporary")
        targets = [k for k in ("rule", "rules", "snakefile") if k in item]
        if len(targets) != 1:
            raise LintCheckError(f"{where}: name exactly one of rule, rules or snakefile (got {targets or 'none'})")
        names = item[targets[0]]
        names = names if isinstance(names, list) else [names]
        if not names or not all(isinstance(n, str) and n for n in names):
            raise LintCheckError(f"{where}: {targets[0]} must be a non-empty name or list of names, got {names!r}")
        for key in ("title", "reason"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                raise LintCheckError(f"{where}: '{key}' must be a non-empty string")
        if "\n" in item["reason"].strip():
            raise LintCheckError(f"{where}: 'reason' must be one line")
        entries.append(Entry("snakefile" if targets[0] == "snakefile" else "rule", names, item["title"],
                             item["reason"].strip(), bool(item.get("temporary", False)), i))
    return entries


def _matches(entry: Entry, warning: LintWarning) -> bool:
    if entry.kind != warning.kind or warning.name not in entry.names:
        return False
    want, got = normalise_title(entry.title), normalise_title(warning.title)
    return got.startswith(want[:-1]) if want.endswith("*") else got == want


def compare(warnings: list[LintWarning], entries: list[Entry]) -> Comparison:
    """Split ``warnings`` into those no entry allows and those one does (the first that matches); list the
    entries' names that matched no warning (stale: the warning is gone, the entry can go)."""
    new, allowed = [], []
    for warning in warnings:
        entry = next((e for e in entries if _matches(e, warning)), None)
        if entry is None:
            new.append(warning)
        else:
            entry.matched.add(warning.name)
            allowed.append((warning, entry))
    stale = [(entry, name) for entry in entries for name in entry.names if name not in entry.matched]
    return Comparison(new, allowed, stale)


def snakemake_command() -> list[str]:
    exe = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")
    return [exe] if exe else [sys.executable, "-m", "snakemake"]


def run_lint(root: Path = REPO, timeout: int = 300) -> list[LintWarning]:
    cmd = snakemake_command() + ["--lint", "json", "--snakefile", str(root / "Snakefile"), "--directory", str(root)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root / "src"), env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root, env=env)
    except FileNotFoundError as exc:
        raise LintCheckError(f"cannot run snakemake ({cmd[0]}): {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise LintCheckError(f"`{' '.join(cmd)}` did not finish in {timeout} s") from exc
    try:
        return parse_lint_output(proc.stdout + "\n" + proc.stderr, root)
    except LintCheckError as exc:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise LintCheckError(f"{exc}\n`{' '.join(cmd)}` exited {proc.returncode}:\n{tail}") from exc


def summary(result: Comparison, warnings: list[LintWarning], strict: bool) -> str:
    lines = [f"snakemake --lint: {len(warnings)} warnings, {len(result.allowed)} allowed by the allow-list, "
             f"{len(result.new)} new"]
    by_title: dict[str, int] = {}
    for _, entry in result.allowed:  # grouped by the entry's title (a "*" title counts as one group)
        by_title[entry.title] = by_title.get(entry.title, 0) + 1
    for title, count in sorted(by_title.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  allowed {count:3d} x {title}")
    temporary = [w for w, e in result.allowed if e.temporary]
    if temporary:
        names = sorted({w.name for w in temporary})
        lines.append(f"  {len(temporary)} of them by temporary entries (temporary: true), for {len(names)} "
                     f"rules or files: {', '.join(names)}")
    if result.new:
        lines.append("New warnings (fix them, or add an entry with a reason to lint_allow.yaml):")
        lines += [f"  {w.describe()}" for w in result.new]
    if result.stale:
        lines.append(("Stale" if strict else "Note: stale") + " allow-list entries (no such warning any more; "
                     "remove them from lint_allow.yaml):")
        lines += [f"  entry {e.index}: {e.kind} {name}: {e.title}" for e, name in result.stale]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allow", type=Path, default=DEFAULT_ALLOW, help="the allow-list (default: lint_allow.yaml)")
    parser.add_argument("--lint-output", type=Path,
                        help="read a saved `snakemake --lint` output (text or JSON) instead of running it")
    parser.add_argument("--strict", action="store_true", help="also fail on allow-list entries that match no warning")
    args = parser.parse_args(argv)
    try:
        entries = load_allow_list(args.allow)
        warnings = (parse_lint_output(args.lint_output.read_text(encoding="utf-8")) if args.lint_output
                    else run_lint())
    except (LintCheckError, OSError) as exc:
        print(f"lint_check: {exc}", file=sys.stderr)
        return 2
    result = compare(warnings, entries)
    print(summary(result, warnings, args.strict))
    return 1 if result.new or (args.strict and result.stale) else 0


if __name__ == "__main__":
    sys.exit(main())
