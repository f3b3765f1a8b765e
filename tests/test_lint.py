"""scripts/lint_check.py: the workflow's `snakemake --lint` warnings are all in lint_allow.yaml, and the
comparison names a new warning by its rule (or file) and title."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "lint_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("lint_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["lint_check"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


lint_check = _load()

# What `snakemake --lint` prints (Snakemake 9.27's text form), trimmed to two rules and one file.
TEXT = textwrap.dedent(f"""\
    Lints for snakefile {REPO}/rules/report_pages.smk:
        * Absolute path "/{{hardware}}/SUMMARY.md" in line 107:
          Do not define absolute paths inside of the workflow, since this renders your workflow
          irreproducible on other machines.
        * Path composition with '+' in line 27:
          This becomes quickly unreadable.

    Lints for rule batch_run (line 6, {REPO}/rules/batch.smk):
        * Specify a conda environment or container for each rule.:
          This way, the used software for each specific step is documented.
          Also see:
          https://snakemake.readthedocs.io/en/latest/snakefiles/deployment.html

    Lints for rule new_rule (line 40, {REPO}/rules/serving.smk):
        * No log directive defined:
          Without a log directive, all output will be printed to the terminal.
        * Specify a conda environment or container for each rule.:
          This way, the used software for each specific step is documented.
""")

ALLOW = textwrap.dedent("""\
    allowed:
      - rules: [batch_run, new_rule]
        title: Specify a conda environment or container for each rule.
        reason: per-engine uv environments
      - snakefile: rules/report_pages.smk
        title: Absolute path "*
        reason: the paths are RESULTS + "/..."
      - snakefile: rules/report_pages.smk
        title: Path composition with '+'
        reason: report rules
      - rule: gone_rule
        title: No log directive defined
        reason: an entry whose warning was fixed
""")


def _allow(tmp_path: Path, text: str = ALLOW) -> Path:
    path = tmp_path / "lint_allow.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_text_output_is_parsed_per_rule_and_file():
    found = lint_check.parse_lint_text(TEXT, REPO)
    assert [(w.kind, w.name, w.title) for w in found] == [
        ("snakefile", "rules/report_pages.smk", 'Absolute path "/{hardware}/SUMMARY.md" in line 107'),
        ("snakefile", "rules/report_pages.smk", "Path composition with '+' in line 27"),
        ("rule", "batch_run", "Specify a conda environment or container for each rule."),
        ("rule", "new_rule", "No log directive defined"),
        ("rule", "new_rule", "Specify a conda environment or container for each rule."),
    ]
    assert found[3].line == 40


def test_json_output_is_parsed_like_the_text():
    report = {"snakefiles": [{"for": {"snakefile": str(REPO / "rules/report_pages.smk")},
                              "lints": [{"title": "Path composition with '+' in line 27", "body": "", "links": []}]}],
              "rules": [{"for": {"rule": "new_rule", "line": 40, "snakefile": str(REPO / "rules/serving.smk")},
                         "lints": [{"title": "No log directive defined", "body": "", "links": []}]}]}
    found = lint_check.parse_lint_output("Building DAG of jobs...\n" + json.dumps(report, indent=2), REPO)
    assert [(w.kind, w.name, w.title, w.line) for w in found] == [
        ("snakefile", "rules/report_pages.smk", "Path composition with '+' in line 27", None),
        ("rule", "new_rule", "No log directive defined", 40)]


def test_output_without_a_lint_report_is_an_error():
    with pytest.raises(lint_check.LintCheckError, match="no lint report"):
        lint_check.parse_lint_text("SyntaxError in file rules/batch.smk, line 3\n", REPO)
    assert lint_check.parse_lint_text("Congratulations, your workflow is in a good condition!\n", REPO) == []


def test_a_new_warning_is_reported_by_rule_and_title(tmp_path, capsys):
    result = lint_check.compare(lint_check.parse_lint_text(TEXT, REPO), lint_check.load_allow_list(_allow(tmp_path)))
    assert [(w.name, w.title) for w in result.new] == [("new_rule", "No log directive defined")]
    assert len(result.allowed) == 4  # the line numbers in titles do not matter; "*" matches the file's paths
    assert [(e.index, name) for e, name in result.stale] == [(4, "gone_rule")]
    # through main: exit 1, the new warning named; stale entries fail only with --strict
    saved = tmp_path / "lint.txt"
    saved.write_text(TEXT, encoding="utf-8")
    code = lint_check.main(["--allow", str(_allow(tmp_path)), "--lint-output", str(saved)])
    out = capsys.readouterr().out
    assert code == 1
    assert "5 warnings, 4 allowed by the allow-list, 1 new" in out
    assert "rule new_rule: No log directive defined (line 40)" in out
    assert "entry 4: rule gone_rule" in out


def test_allowed_warnings_exit_0_and_stale_entries_fail_only_with_strict(tmp_path, capsys):
    text = ALLOW.replace("title: No log directive defined\n        reason: an entry whose warning was fixed",
                         "title: No log directive defined\n        reason: x").replace("gone_rule", "new_rule")
    saved = tmp_path / "lint.txt"
    saved.write_text(TEXT, encoding="utf-8")
    assert lint_check.main(["--allow", str(_allow(tmp_path, text)), "--lint-output", str(saved)]) == 0
    assert "0 new" in capsys.readouterr().out
    assert lint_check.main(["--allow", str(_allow(tmp_path, ALLOW)), "--lint-output", str(saved), "--strict"]) == 1
    fixed = TEXT.split("Lints for rule new_rule")[0]  # new_rule's lints fixed: its conda entry is stale
    saved.write_text(fixed, encoding="utf-8")
    entries = lint_check.load_allow_list(_allow(tmp_path, text))
    result = lint_check.compare(lint_check.parse_lint_text(fixed, REPO), entries)
    assert not result.new and {name for _, name in result.stale} == {"new_rule"}
    assert lint_check.main(["--allow", str(_allow(tmp_path, text)), "--lint-output", str(saved)]) == 0
    assert lint_check.main(["--allow", str(_allow(tmp_path, text)), "--lint-output", str(saved), "--strict"]) == 1


@pytest.mark.parametrize("entry, message", [
    ("- title: t\n    reason: r", "exactly one of rule, rules or snakefile"),
    ("- rule: a\n    snakefile: b\n    title: t\n    reason: r", "exactly one of rule, rules or snakefile"),
    ("- rule: a\n    title: t", "'reason' must be a non-empty string"),
    ("- rule: a\n    title: t\n    reason: r\n    why: w", "unknown keys ['why']"),
    ("- rules: []\n    title: t\n    reason: r", "non-empty name or list"),
])
def test_a_malformed_entry_is_an_error_naming_it(tmp_path, entry, message):
    path = _allow(tmp_path, "allowed:\n  " + entry + "\n")
    with pytest.raises(lint_check.LintCheckError, match="entry 1") as err:
        lint_check.load_allow_list(path)
    assert message in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("snakemake") is None, reason="snakemake is not installed")
def test_the_workflow_has_no_warning_outside_the_allow_list():
    """The check CI runs: every warning of this workflow is allowed, and every entry still matches one
    (a fixed warning's entry must go with the fix)."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--strict"], capture_output=True, text=True, timeout=600,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "0 new" in proc.stdout
