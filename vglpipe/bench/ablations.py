"""The paper's ablations on the demo world, each variant at two seeds: multi-LOD vs single-LOD
aerial input, attention (MHA) vs mean pooling, with vs without hard example mining (experiments of
one workflow, config/ablations.yaml), and the consistent vs the Mercator cell layout (a second
workflow: the layout is global, not an experiment).

    python -m vglpipe.bench ablations [--keep DIR] [--cores 2] [--seed 0] [--layouts consistent,mercator]

Writes the demo config with config/ablations.yaml merged on (its experiments replace the demo's;
the mining variant is the opposite of the demo's train.mining.enabled) to a fresh directory, runs
the workflow there exactly as ``bench demo`` does, then, with more than one ``--layouts``, a second
workflow in a sibling directory (``DIR-mercator``) with that layout and only the reference
experiments. Prints per factor each variant's R@1/R@10<50m per seed, their mean and spread, and the
verdict on the paper's direction (:func:`vglpipe.report.ablations.verdict`, as the report's
"Ablations" section), then the figures as one JSON line. ``--seed S`` adds S to the demo worlds'
seeds, as in ``bench demo``.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Mapping
from pathlib import Path

import yaml

from vglpipe.bench._workflow import REPO, demo_config, prepare, read_recall, region_under_test, run_workflow, stage_seconds
from vglpipe.errors import ConfigError
from vglpipe.settings import Settings, _merge, _plain

ABLATIONS_FILE = REPO / "config" / "ablations.yaml"
LODS, POOLING, MINING, LAYOUT = "aerial LODs", "pooling", "hard example mining", "layout"
#: The paper's LOD count (§4.3): the LOD factor's other variant when the demo itself has one LOD.
PAPER_N_LODS = 4
#: Per factor, the only settings (paths in an experiment's effective settings) its variants change.
FACTOR_SETTINGS = {LODS: {"lods.n_lods"}, POOLING: {"model.args.pooling"}, MINING: {"train.mining.enabled"}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="added to every demo world's seed (0: the shipped demo)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--keep", help="run in (and keep) this directory instead of a temporary one; the other layouts' "
                                  "runs go to DIR-<layout> beside it")
    p.add_argument("--layouts", default="consistent,mercator",
                   help="cell layouts compared as the 'layout' factor (comma-separated; the demo's own is the "
                        "main run, each other one a second workflow with the reference experiments only; one "
                        "layout: no layout factor)")
    p.add_argument("--ablations", default=str(ABLATIONS_FILE), help="the ablation set merged onto the demo config")


def _hem(on: bool) -> str:
    return "HEM on" if on else "HEM off"


def _lods(n: int) -> str:
    return f"{n} LOD" if n == 1 else f"{n} LODs"


def ablation_config(demo: Mapping, ablations: Mapping) -> dict:
    """The demo config with the ablation set merged on: its ``experiments`` replace the demo's, its
    ``report`` is merged into the demo's. Variants relative to the demo's settings follow them: the
    mining variant is the opposite of the demo's ``train.mining.enabled``, the LOD variant has one
    LOD when the demo has several and the paper's four when the demo has one, and the reference's
    variant names say what the demo does (its LOD count, mining on or off). Raises ConfigError when
    the result is invalid or a variant has the reference's settings."""
    unknown = sorted(set(ablations) - {"experiments", "report"})
    if unknown:
        raise ConfigError(f"an ablation set holds only experiments and report, not {', '.join(unknown)}")
    cfg = copy.deepcopy(dict(demo))
    cfg["experiments"] = copy.deepcopy(dict(ablations.get("experiments") or {}))
    cfg["report"] = _merge(cfg.get("report") or {}, copy.deepcopy(dict(ablations.get("report") or {})))
    ref = Settings(copy.deepcopy(dict(demo)), source="the demo config")
    mining, n_lods = ref.train.mining.enabled, ref.lods.n_lods
    other_lods = 1 if n_lods > 1 else PAPER_N_LODS
    for exp in cfg["experiments"].values():
        a = exp.get("ablation") or {}
        if a.get("factor") == LODS:
            exp.setdefault("aerial", {})["n_lods"] = other_lods
            a["variant"] = _lods(other_lods)
            exp["description"] = (f"the demo model {'on the finest LOD only' if other_lods == 1 else f'with {other_lods} LODs'}, "
                                  f"seed {exp.get('train', {}).get('seed', ref.train.seed)}")
        if a.get("factor") == MINING:
            exp.setdefault("train", {}).setdefault("mining", {})["enabled"] = not mining
            a["variant"] = _hem(not mining)
            exp["description"] = (f"the demo model {'with' if not mining else 'without'} hard example mining, "
                                  f"seed {exp['train'].get('seed', ref.train.seed)}")
        reference = a.get("reference") or {}
        if MINING in reference:
            reference[MINING] = _hem(mining)
        if LODS in reference:
            reference[LODS] = _lods(n_lods)
    findings = cfg["report"].get("ablations") or {}
    if LODS in findings:
        findings[LODS]["better"] = _lods(max(n_lods, other_lods))  # the paper: several LODs beat one
    settings = Settings(cfg, source=f"the demo config with {ABLATIONS_FILE.name}")
    settings.check()
    for factor, variant, other, ref_name in variant_references(settings):
        if effective(settings, other) == effective(settings, ref_name):
            raise ConfigError(f"experiment {other} ({factor}: {variant}) has the settings of the reference {ref_name} "
                              "on this demo config: nothing is ablated")
    return cfg


def effective(settings: Settings, name: str) -> dict:
    """An experiment's effective settings as plain data, without its name and description."""
    d = _plain(settings.experiment(name))
    d.pop("name")
    d.pop("description")
    return d


def variant_references(settings: Settings) -> list[tuple[str, str, str, str]]:
    """(factor, variant, experiment, reference experiment with the same seed) for every run of a
    factor's variant that is not the reference."""
    refs = {(r.factor, r.seed): r.experiment for r in settings.ablation_runs
            if settings.ablation(r.experiment).reference}
    return [(r.factor, r.variant, r.experiment, refs[(r.factor, r.seed)]) for r in settings.ablation_runs
            if not settings.ablation(r.experiment).reference and (r.factor, r.seed) in refs]


def reference_experiments(settings: Settings) -> list[str]:
    """The experiments with the reference settings (``ablation.reference``)."""
    return [e for e in settings.experiments if settings.ablation(e).reference]


def layout_config(cfg: Mapping, kind: str) -> dict:
    """``cfg`` with the cell layout ``kind`` and only its reference experiments and the report's
    baseline. Their ablation labels are dropped: the run has one variant of nothing but the layout,
    which the bench compares across runs. A Mercator layout measures the configured cell size at
    the test region's latitude (``mercator_reference_lat``, unless the config sets it), as the
    paper's baseline had cells of about 30 m in Massachusetts: the layouts then differ in how
    cells are laid out, not in their size where the photos are searched."""
    out = copy.deepcopy(dict(cfg))
    layout = out.setdefault("layout", {})
    layout["kind"] = kind
    test = region_under_test(out)
    if kind == "mercator" and "mercator_reference_lat" not in layout and test in (out.get("demo") or {}).get("regions", {}):
        layout["mercator_reference_lat"] = out["demo"]["regions"][test]["center_lat"]
    baseline = (out.get("report") or {}).get("baseline", "")
    refs = set(reference_experiments(Settings(copy.deepcopy(dict(cfg)))))
    out["experiments"] = {name: {**exp, "ablation": {}} for name, exp in out["experiments"].items()
                          if name in refs or name == baseline}
    Settings(out, source=f"the ablation config with layout {kind}").check()
    return out


def run_figures(recall: Mapping[str, Mapping], baseline: str, keys) -> dict:
    """A run's test cells, its untrained baseline's and the chance level's figures ``keys``, from its
    experiments' ``recall.json`` documents. Each layout's run has its own cells (a Mercator grid
    covers the region with another count), so each trained figure has the baseline and chance of
    its own run beside it."""
    doc = recall[baseline] if baseline else next(iter(recall.values()))
    return {"cells": doc["n_cells"], "queries": doc["n_queries"],
            "baseline": {baseline: {k: recall[baseline][k] for k in keys}} if baseline else {},
            "chance": {k: doc["chance"][k] for k in keys}}


def _rounded(figures: Mapping) -> dict:
    """``run_figures``' baseline and chance rounded for the JSON line (printed lines round the exact ones)."""
    return {"baseline": {b: {k: round(v, 4) for k, v in f.items()} for b, f in figures["baseline"].items()},
            "chance": {k: round(v, 4) for k, v in figures["chance"].items()}}


def _line(v, keys) -> str:
    parts = []
    for k in keys:
        vals = v.values.get(k, ())
        mean, spread = v.mean(k), v.spread(k)
        per = " · ".join("–" if x is None else f"{100 * x:.1f}" for x in vals)
        parts.append(f"{k} {per} (mean {'–' if mean is None else f'{100 * mean:.1f}'}"
                     + ("" if spread is None else f", {100 * spread[0]:.1f}–{100 * spread[1]:.1f}") + ")")
    return f"    {v.variant:<14} seeds {', '.join(map(str, v.seeds)):<6} " + "   ".join(parts)


def run(args: argparse.Namespace) -> dict:
    from vglpipe.report.ablations import summarize_factor

    tmp = tempfile.TemporaryDirectory(prefix="vgl-bench-ablations-") if args.keep is None else None
    wd = Path(args.keep) if args.keep else Path(tmp.name) / "ablations"
    demo = demo_config(args.seed)
    cfg = ablation_config(demo, yaml.safe_load(Path(args.ablations).read_text()))
    settings = Settings(cfg)
    main_kind = settings.layout.kind
    layouts = list(dict.fromkeys(k.strip() for k in args.layouts.split(",") if k.strip()))
    others = [k for k in layouts if k != main_kind] if len(layouts) > 1 else []
    test = region_under_test(cfg)
    n_trained = sum(1 for e in settings.experiments if settings.experiment(e).train.steps)
    print(f"ablations (world seed offset {args.seed}) on {args.cores} cores: {len(settings.experiments)} experiments "
          f"({n_trained} trained) with layout {main_kind} in {wd}", flush=True)

    layout_cfgs = {kind: layout_config(cfg, kind) for kind in others}  # checked before anything runs
    refs = reference_experiments(settings)

    prepare(wd, cfg, "ablations.yaml")
    runs = {main_kind: {"dir": wd, "settings": settings,
                        "wall_s": run_workflow(wd, "ablations.yaml", args.cores, "the ablations' workflow")}}
    for kind, lcfg in layout_cfgs.items():
        lwd = wd.with_name(f"{wd.name}-{kind}")
        lset = Settings(lcfg)
        print(f"layout {kind}: {len(lset.experiments)} experiments in {lwd}", flush=True)
        prepare(lwd, lcfg, "ablations.yaml")
        runs[kind] = {"dir": lwd, "settings": lset,
                      "wall_s": run_workflow(lwd, "ablations.yaml", args.cores, f"the {kind} layout's workflow")}

    radius = settings.report.radius_m
    metric, keys = f"R@1<{radius:g}m", (f"R@1<{radius:g}m", f"R@10<{radius:g}m")
    findings = settings.report.ablations
    for run_ in runs.values():
        run_["recall"] = {e: read_recall(run_["dir"], e, test) for e in run_["settings"].experiments}
    recall = runs[main_kind]["recall"]
    by_factor: dict[str, list] = {}
    for r in settings.ablation_runs:
        by_factor.setdefault(r.factor, []).append((r.variant, r.seed, r.experiment, recall[r.experiment]))
    if others:
        by_factor[LAYOUT] = [
            (kind, settings.experiment(name).train.seed, name if kind == main_kind else f"{name} ({kind} run)",
             run_["recall"][name])
            for kind, run_ in runs.items() for name in refs]
    summaries = []
    for factor, items in by_factor.items():
        f = findings.get(factor)
        summaries.append(summarize_factor(factor, items, better=f.better if f else "", source=f.source if f else "",
                                          metric=metric, keys=keys))

    base = settings.report.baseline
    wall = sum(r["wall_s"] for r in runs.values())
    for run_ in runs.values():
        run_["figures"] = run_figures(run_["recall"], base, keys)
    main = runs[main_kind]["figures"]
    print(f"ablations in {wall / 60:.1f} min on {args.cores} cores; test region {test}, {main['queries']} photos, "
          f"{main['cells']} cells" + _baseline_text(main, base, metric))
    for s in summaries:
        print(f"  {s.factor}" + (f" (paper: {s.better} better; {s.source})" if s.better else ""))
        for v in s.variants:
            print(_line(v, s.keys))
        for c in s.comparisons:
            print(f"    {c.text}")
        if not s.comparisons:
            print(f"    {s.note}")
    for kind in others:
        fig = runs[kind]["figures"]
        print(f"  the {kind} layout's run: {fig['cells']} cells" + _baseline_text(fig, base, metric))
    stages = {kind: stage_seconds(r["dir"]) for kind, r in runs.items()}
    print("  job time by stage: " + "; ".join(
        f"{kind}: " + ", ".join(f"{k} {v:.0f} s" for k, v in st.items()) for kind, st in stages.items()))
    print(f"  reports (section Ablations): {wd}/results/reports/<experiment>/{test}/index.html")
    return {
        "wall_s": round(wall, 1), "seed": args.seed, "cores": args.cores, "queries": main["queries"],
        "cells": main["cells"], "metric": metric, **_rounded(main),
        "factors": {s.factor: s.to_dict() for s in summaries},
        "runs": {kind: {"experiments": len(r["settings"].experiments), "wall_s": round(r["wall_s"], 1),
                        "cells": r["figures"]["cells"], **_rounded(r["figures"]),
                        "stage_s": {k: round(v, 1) for k, v in stages[kind].items()}} for kind, r in runs.items()},
    }


def _baseline_text(fig: Mapping, base: str, metric: str) -> str:
    return ((f"; {base} {metric} {100 * fig['baseline'][base][metric]:.1f} %" if base else "")
            + f", chance {100 * fig['chance'][metric]:.1f} %")
