"""A measurement campaign as configuration: one hardware column's runs, split into parts.

``conf/campaign/<name>.yaml`` (schema ``conf/schema/campaign.yaml``) names the hardware, the models,
libraries and datasets with their seeded row limits, the batch repeats, the serving schedules and the
*parts*: named subsets (one library and model, one scenario, some datasets) that each take one or a few
device calls. This module loads and checks such a file and turns a part into what Snakemake needs: its
targets (the pipeline's own output paths, so Snakemake skips what exists) and the ``overrides=`` of one
Snakemake call per dataset. A dataset's built rows (``results/datasets/<task>/rows.jsonl``) do not name
the row limit in their path, so each call carries exactly one ``dataset.limit``.

    python -m inference_eval.campaign parts h200                   parts, estimated seconds, calls
    python -m inference_eval.campaign targets h200 PART [DATASET]  Snakemake targets (--results DIR)
    python -m inference_eval.campaign overrides h200 PART [DATASET] the overrides= of one call
    python -m inference_eval.campaign calls h200 PART              one line per Snakemake call (campaign.sh)
    python -m inference_eval.campaign files h200 PART              the model files the part's jobs read
    python -m inference_eval.campaign limit h200 DATASET           the rows of DATASET's seeded subset
    python -m inference_eval.campaign budget h200                  call_budget_s

What has run of a campaign, part by part: ``python -m inference_eval.campaign_progress h200``.

``scripts/device/campaign.sh run PART`` runs a part on the lent GPU; docs/campaign.md says how.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from inference_eval import config_roots, config_schema

CAMPAIGN_DIR = config_roots.PACKAGE_CONF / "campaign"
SCENARIOS = ("batch", "serving", "modules")


class CampaignError(ValueError):
    """A campaign file or request that cannot be used; the message names the file, key and value."""


@dataclass(frozen=True)
class Part:
    """One named subset of a campaign: one library (or profiled variant) and model in one scenario."""

    name: str
    scenario: str                   # batch | serving | modules
    library: str                    # a library; for modules, a profiled variant (module_profiling)
    model: str
    datasets: tuple[str, ...]       # one Snakemake call each; empty for modules
    estimate_s: int
    schedule: str | None = None     # serving: a campaign schedule
    repeats: int | None = None      # batch: scenario.repeats (None: the campaign's)
    warmup_repeats: int | None = None
    overrides: tuple[str, ...] = ()
    background: bool = False
    note: str = ""


@dataclass(frozen=True)
class Campaign:
    name: str
    path: Path
    hardware: str
    dataset_variant: str
    models: tuple[str, ...]
    libraries: tuple[str, ...]
    limits: Mapping[str, int]       # task key -> rows of its seeded subset
    repeats: int
    call_budget_s: int
    schedules: Mapping[str, Mapping[str, Any]]
    parts: Mapping[str, Part]

    def part(self, name: str) -> Part:
        if name not in self.parts:
            raise CampaignError(f"{self.path}: no part {name!r}; parts: {', '.join(self.parts)}")
        return self.parts[name]

    def limit(self, dataset: str) -> int:
        if dataset not in self.limits:
            raise CampaignError(f"{self.path}: no dataset {dataset!r}; datasets: {', '.join(self.limits)}")
        return self.limits[dataset]

    def calls(self, part: str) -> list[str | None]:
        """The Snakemake calls of a part: one per dataset (``None``: the one call of a modules part)."""
        p = self.part(part)
        return list(p.datasets) if p.datasets else [None]

    def _dataset(self, p: Part, dataset: str | None) -> None:
        if dataset is None and p.datasets:
            raise CampaignError(f"part {p.name!r} runs one Snakemake call per dataset (each has its own "
                                f"dataset.limit): name one of {', '.join(p.datasets)}")
        if dataset is not None and dataset not in p.datasets:
            raise CampaignError(f"part {p.name!r} has no dataset {dataset!r}; its datasets: "
                                f"{', '.join(p.datasets) or 'none (a modules part is one call)'}")

    def targets(self, part: str, dataset: str | None = None, results: str = "results") -> list[str]:
        """The part's outputs as rules/batch.smk, rules/serving.smk and rules/profiling.smk name them; all
        datasets' when ``dataset`` is None."""
        p = self.part(part)
        if dataset is not None:
            self._dataset(p, dataset)
        hw, lib, model = self.hardware, p.library, p.model
        if p.scenario == "modules":
            return [f"{results}/{hw}/modules/{lib}.json"]
        out = []
        for d in ([dataset] if dataset else p.datasets):
            if p.scenario == "batch":
                out.append(f"{results}/{hw}/batch/{lib}/{model}/{d}.json")
            else:
                out.append(f"{results}/{hw}/serving/{lib}_{model}_{d}.csv")
        return out

    def overrides(self, part: str, dataset: str | None = None) -> list[str]:
        """The Hydra overrides of the Snakemake call for ``dataset`` of ``part`` (its row limit, the
        repeats or schedule, the part's own), without the machine's paths (data_root, results_dir)."""
        p = self.part(part)
        self._dataset(p, dataset)
        out = [f"matrix.dataset_variant={self.dataset_variant}"]
        if dataset is not None:
            out.append(f"dataset.limit={self.limits[dataset]}")
        if p.scenario == "batch":
            out.append(f"scenario.repeats={p.repeats or self.repeats}")
            if p.warmup_repeats is not None:
                out.append(f"scenario.warmup_repeats={p.warmup_repeats}")
        elif p.scenario == "serving":
            out += [f"scenario.{key}={hydra_value(value)}" for key, value in self.schedules[p.schedule].items()]
        else:
            out.append(f"profiling.model={p.model}")
        return out + list(p.overrides)

    def model_files(self, part: str, results: str = "results") -> list[str]:
        """The models rules' outputs (rules/models.smk) the part's jobs read: what a background step can
        write while the GPU measures something else."""
        from inference_eval import libraries

        p = self.part(part)
        if p.scenario == "modules":
            artifacts = libraries.profiled_variant(p.library).model_files
            lib_name = libraries.profiled_variant(p.library).library
        else:
            lib = libraries.library(p.library)
            artifacts = lib.server.model_files if p.scenario == "serving" and lib.server else lib.model_files
            lib_name = lib.name
        base = f"{results}/models/{p.model}"
        out = []
        for artifact in artifacts:
            if artifact == "hf":
                out.append(f"{base}/hf/config.json")
            elif artifact == "safetensors":
                out.append(f"{base}/weights/model.safetensors")
            elif artifact == "gguf":
                out.append(f"{base}/gguf/{_library_key(lib_name, 'gguf_dtype') or 'f16'}.gguf")
            # trt_engine: built per hardware by its own rule when the job runs
        return out


def hydra_value(value: Any) -> str:
    """``value`` as a Hydra override's right-hand side: ``[2.0,8.0]``, ``{enabled:true,max_points:10}``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    text = str(value)
    return text if text.replace("_", "").replace("-", "").replace(".", "").isalnum() else repr(text)


def override_string(overrides: Sequence[str]) -> str:
    """Overrides as one ``--config overrides="..."`` value, which ``config.overrides_from_snakemake`` splits
    like a shell: an override with a space or quote is quoted, the rest (``scenario.rates=[2.0,8.0]``) left
    as they are, so the string reads as the overrides one would type."""
    return " ".join(shlex.quote(o) if re.search(r"[\s'\"\\]", o) else o for o in overrides)


def _library_key(library: str, key: str) -> Any:
    import yaml

    path = config_roots.group_members("library").get(library)
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get(key) if path else None


def names() -> list[str]:
    return sorted(p.stem for p in CAMPAIGN_DIR.glob("*.yaml"))


def campaign_path(name: str | Path) -> Path:
    """A campaign by name (``conf/campaign/<name>.yaml``) or by path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise CampaignError(f"no campaign file {path}")
        return path
    path = CAMPAIGN_DIR / f"{name}.yaml"
    if not path.is_file():
        raise CampaignError(f"no campaign {name!r}; campaigns (conf/campaign/*.yaml): {', '.join(names()) or 'none'}")
    return path


def load(name: str | Path) -> Campaign:
    """Read and check a campaign file; ``CampaignError`` lists every problem, each naming key and value."""
    import yaml

    path = campaign_path(name)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CampaignError(f"{path}: not YAML: {exc}") from None
    where = f" [{path}]"
    if not isinstance(raw, dict):
        raise CampaignError(f"{path}: a campaign is a mapping of keys, got {type(raw).__name__}")
    problems = config_schema.instance_errors("campaign", raw, where)
    if not problems:
        problems = _cross_key_errors(raw, where)
    if problems:
        raise CampaignError(f"invalid campaign {path}: " + "; ".join(problems))
    parts = {}
    for pname, p in raw["parts"].items():
        parts[pname] = Part(name=pname, scenario=p["scenario"], library=p["library"], model=p["model"],
                            datasets=tuple(p.get("datasets") or ()), estimate_s=p["estimate_s"],
                            schedule=p.get("schedule"), repeats=p.get("repeats"),
                            warmup_repeats=p.get("warmup_repeats"), overrides=tuple(p.get("overrides") or ()),
                            background=bool(p.get("background", False)), note=p.get("note", ""))
    return Campaign(name=path.stem, path=path, hardware=raw["hardware"], dataset_variant=raw["dataset_variant"],
                    models=tuple(raw["models"]), libraries=tuple(raw["libraries"]), limits=dict(raw["datasets"]),
                    repeats=raw["repeats"], call_budget_s=raw["call_budget_s"], schedules=raw["schedules"],
                    parts=parts)


def _cross_key_errors(raw: Mapping[str, Any], where: str) -> list[str]:
    """What the schema cannot check: members of conf/, and that each part names the campaign's own."""
    from inference_eval import libraries

    out = []

    def members(group: str) -> list[str]:
        return list(config_roots.group_members(group))

    def unknown(key: str, values: Sequence[str], valid: Sequence[str], what: str) -> None:
        bad = [v for v in values if v not in valid]
        if bad:
            out.append(f"campaign key {key} = {', '.join(map(repr, bad))} is not {what}; "
                       f"valid: {', '.join(valid) or 'none'}{where}")

    unknown("hardware", [raw["hardware"]], members("hardware"), "a conf/hardware member")
    unknown("models", raw["models"], members("model"), "a conf/model member")
    registry = libraries.registry()
    unknown("libraries", raw["libraries"], list(registry), "a conf/library member")
    for name, schedule in raw["schedules"].items():
        # a schedule's values are serving scenario values: the scenario schema says what each may be
        for message in config_schema.instance_errors("scenario", {"name": "serving", **schedule}, where):
            out.append(message.replace("scenario.", f"campaign.schedules.{name}.", 1))
    variants = {v.name: v.library for lib in registry.values() for v in lib.variants
                if lib.name in raw["libraries"]}
    for name, p in raw["parts"].items():
        key = f"parts.{name}"
        scenario = p["scenario"]
        if scenario == "modules":
            unknown(f"{key}.library", [p["library"]], list(variants),
                    "a profiled variant (module_profiling) of a campaign library")
            if p.get("datasets"):
                out.append(f"campaign key {key}.datasets: a modules part runs no datasets{where}")
        else:
            unknown(f"{key}.library", [p["library"]], list(raw["libraries"]), "a campaign library")
            if not p.get("datasets"):
                out.append(f"campaign key {key}.datasets is missing{where}: a {scenario} part names its datasets")
            unknown(f"{key}.datasets", p.get("datasets") or [], list(raw["datasets"]), "a campaign dataset")
        unknown(f"{key}.model", [p["model"]], list(raw["models"]), "a campaign model")
        if scenario == "serving":
            if "schedule" not in p:
                out.append(f"campaign key {key}.schedule is missing{where}: a serving part names a schedule "
                           f"({', '.join(raw['schedules']) or 'none defined'})")
            else:
                unknown(f"{key}.schedule", [p["schedule"]], list(raw["schedules"]), "a campaign schedule")
            lib = registry.get(p["library"])
            if lib is not None and not lib.serves:
                out.append(f"campaign key {key}.library = {p['library']!r} has no server{where}: {lib.unsupported_reason}")
        elif "schedule" in p:
            out.append(f"campaign key {key}.schedule = {p['schedule']!r}: only serving parts have one{where}")
        for k in ("repeats", "warmup_repeats"):
            if k in p and scenario != "batch":
                out.append(f"campaign key {key}.{k} = {p[k]!r}: only batch parts have one{where}")
        if p["estimate_s"] > raw["call_budget_s"] and len(p.get("datasets") or [None]) == 1 and not p.get("background"):
            out.append(f"campaign key {key}.estimate_s = {p['estimate_s']} is over call_budget_s = "
                       f"{raw['call_budget_s']} for a part of one Snakemake call{where}: set background: true "
                       "(it then runs across calls) or split it")
    return out


# -- command line ---------------------------------------------------------------------------------------
def on_hardware(c: Campaign, hardware: str | None) -> Campaign:
    """The campaign's parts on another hardware (its targets under results/<hardware>/); ``None`` keeps it."""
    if hardware is None or hardware == c.hardware:
        return c
    known = list(config_roots.group_members("hardware"))
    if hardware not in known:
        raise CampaignError(f"--hardware {hardware!r} is not a conf/hardware member; known: {', '.join(known)}")
    return replace(c, hardware=hardware)


def _parts_table(c: Campaign) -> str:
    rows = [("part", "scenario", "library", "model", "datasets", "estimate_s", "calls")]
    for p in c.parts.values():
        calls = "background" if p.background else str(-(-p.estimate_s // c.call_budget_s))
        rows.append((p.name, p.scenario, p.library, p.model, ",".join(p.datasets) or "-", str(p.estimate_s), calls))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    total = sum(p.estimate_s for p in c.parts.values())
    lines.append(f"{len(c.parts)} parts, {total} s estimated ({total / 60:.0f} device minutes); "
                 f"one call runs at most {c.call_budget_s} s of Snakemake")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m inference_eval.campaign", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for cmd, helptext in (("parts", "the parts with their estimated seconds"),
                          ("targets", "the Snakemake targets of a part (all datasets, or one)"),
                          ("overrides", "the overrides= string of one Snakemake call"),
                          ("calls", "one tab-separated line per Snakemake call: dataset (- for none), model, library, "
                                    "scenario, background (1/0), overrides, targets"),
                          ("files", "the model files the part's jobs read"),
                          ("limit", "the rows of a dataset's seeded subset"),
                          ("budget", "the seconds one call's Snakemake runs may take (call_budget_s)")):
        p = sub.add_parser(cmd, help=helptext)
        p.add_argument("campaign", help="a conf/campaign member (h200) or a campaign file")
        p.add_argument("--hardware", help="run the campaign on this conf/hardware member instead of its own "
                                          "(the same rows and schedules, so the two columns compare)")
        if cmd == "limit":
            p.add_argument("dataset")
        elif cmd not in ("parts", "budget"):
            p.add_argument("part")
            if cmd in ("targets", "overrides"):
                p.add_argument("dataset", nargs="?")
        if cmd in ("targets", "files", "calls"):
            p.add_argument("--results", default="results", help="the results_dir of the Snakemake call")
    args = ap.parse_args(argv)
    try:
        c = on_hardware(load(args.campaign), args.hardware)
        if args.cmd == "parts":
            print(_parts_table(c))
        elif args.cmd == "budget":
            print(c.call_budget_s)
        elif args.cmd == "limit":
            print(c.limit(args.dataset))
        elif args.cmd == "targets":
            print("\n".join(c.targets(args.part, args.dataset, args.results)))
        elif args.cmd == "overrides":
            print(override_string(c.overrides(args.part, args.dataset)))
        elif args.cmd == "files":
            print("\n".join(c.model_files(args.part, args.results)))
        else:
            p = c.part(args.part)
            for d in c.calls(args.part):
                print("\t".join([d or "-", p.model, p.library, p.scenario, "1" if p.background else "0",
                                 override_string(c.overrides(args.part, d)), " ".join(c.targets(p.name, d, args.results))]))
    except CampaignError as exc:
        print(f"campaign: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
