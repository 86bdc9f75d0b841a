"""The README's main command end to end: the whole demo (worlds, fake services, crawl, orthophotos,
cells, training, embedding, indexes, evaluation, reports) in a fresh directory, timed.

``--seed S`` adds S to every demo world's seed (and the photos' seed), so the figures can be
checked on worlds nobody tuned on. Figures: ``wall_s``, the trained experiment's R@1/R@10<50m on
the test region, the untrained baseline's and the chance level from the same run, and each
stage's share of the time (from Snakemake's benchmark files).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from vglpipe.bench._workflow import demo_config, prepare, read_recall, region_under_test, run_workflow, stage_seconds


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="added to every demo world's seed (0: the shipped demo)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--experiment", default="demo", help="the trained experiment")
    p.add_argument("--baseline", default="untrained", help="the untrained experiment")
    p.add_argument("--keep", help="run in (and keep) this directory instead of a temporary one")


def run(args: argparse.Namespace) -> dict:
    tmp = tempfile.TemporaryDirectory(prefix="vgl-bench-demo-") if args.keep is None else None
    wd = Path(args.keep or tmp.name)
    cfg = demo_config(args.seed)
    prepare(wd, cfg, "demo.yaml")
    wall = run_workflow(wd, "demo.yaml", args.cores, "the demo")
    test = region_under_test(cfg)
    trained = read_recall(wd, args.experiment, test)
    untrained = read_recall(wd, args.baseline, test)
    stages = stage_seconds(wd)
    total = sum(stages.values())
    print(f"demo (world seed offset {args.seed}) in {wall / 60:.1f} min on {args.cores} cores; test region {test}, "
          f"{trained['n_queries']} photos, {trained['n_cells']} cells")
    for key in ("R@1<50m", "R@10<50m"):
        print(f"  {key}: trained {100 * trained[key]:.1f} %, untrained {100 * untrained[key]:.1f} %, "
              f"chance {100 * trained['chance'][key]:.1f} %")
    print("  job time by stage: " + ", ".join(f"{k} {v:.0f} s ({100 * v / total:.0f} %)" for k, v in stages.items()))
    return {
        "wall_s": round(wall, 1), "R@1<50m": round(trained["R@1<50m"], 4), "R@10<50m": round(trained["R@10<50m"], 4),
        "untrained_R@1<50m": round(untrained["R@1<50m"], 4), "untrained_R@10<50m": round(untrained["R@10<50m"], 4),
        "chance_R@1<50m": round(trained["chance"]["R@1<50m"], 4), "chance_R@10<50m": round(trained["chance"]["R@10<50m"], 4),
        "true_positions_R@1<50m": round(trained.get("true_positions", {}).get("R@1<50m", float("nan")), 4),
        "seed": args.seed, "cores": args.cores, "queries": trained["n_queries"], "cells": trained["n_cells"],
        "stage_s": {k: round(v, 1) for k, v in stages.items()},
    }
