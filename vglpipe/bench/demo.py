"""The README's main command end to end: the whole demo (worlds, fake services, crawl, orthophotos,
cells, training, embedding, indexes, evaluation, reports) in a fresh directory, timed.

``--seed S`` adds S to every demo world's seed (and the photos' seed), so the figures can be
checked on worlds nobody tuned on. Figures: ``wall_s``, the trained experiment's R@1/R@10<50m on
the test region, the untrained baseline's and the chance level from the same run, and each
stage's share of the time (from Snakemake's benchmark files).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW_FILES = ["Snakefile", "rules", "workflow_config.yaml", "profiles", "envs", "docs"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="added to every demo world's seed (0: the shipped demo)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--experiment", default="demo", help="the trained experiment")
    p.add_argument("--baseline", default="untrained", help="the untrained experiment")
    p.add_argument("--keep", help="run in (and keep) this directory instead of a temporary one")


def _config(seed: int) -> dict:
    cfg = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    for r in cfg["demo"]["regions"].values():
        r["seed"] += seed
    cfg["demo"].setdefault("streetview", {})["seed"] = cfg["demo"].get("streetview", {}).get("seed", 0) + seed
    return cfg


def stage_seconds(workdir: Path) -> dict[str, float]:
    """Summed job seconds per rule from Snakemake's benchmark files (benchmarks/<stage>/...)."""
    out: dict[str, float] = defaultdict(float)
    for tsv in (workdir / "benchmarks").rglob("*.tsv"):
        stage = tsv.relative_to(workdir / "benchmarks").parts[0]
        with open(tsv) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows:
            out[stage] += float(rows[-1]["s"])
    return dict(sorted(out.items()))


def run(args: argparse.Namespace) -> dict:
    tmp = tempfile.TemporaryDirectory(prefix="vgl-bench-demo-") if args.keep is None else None
    wd = Path(args.keep or tmp.name)
    wd.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, wd / name, dirs_exist_ok=True)
        else:
            shutil.copy2(src, wd / name)
    cfg = _config(args.seed)
    (wd / "demo.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakemake = Path(sys.executable).parent / "snakemake"
    # the rules' `python` must be this interpreter (the venv's), activated or not
    env = {**os.environ, "PATH": f"{snakemake.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    t0 = time.perf_counter()
    proc = subprocess.run([str(snakemake), "--profile", "profiles/local", "--cores", str(args.cores),
                           "--configfile", "demo.yaml"], cwd=wd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
        raise SystemExit(f"the demo failed (exit {proc.returncode}) in {wd}")
    test = next(r for r, v in cfg["regions"].items() if v.get("role") == "test")
    trained = json.loads((wd / f"results/eval/{args.experiment}/{test}/recall.json").read_text())
    untrained = json.loads((wd / f"results/eval/{args.baseline}/{test}/recall.json").read_text())
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
