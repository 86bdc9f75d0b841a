"""What the whole-workflow benchmarks share (``bench demo``, ``bench ablations``): a fresh directory
with the workflow's files and a config, one ``snakemake --profile profiles/local`` run in it, and
the job time per stage from Snakemake's benchmark files."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
#: What a run directory needs of the repository (the config is written beside them).
WORKFLOW_FILES = ["Snakefile", "rules", "workflow_config.yaml", "profiles", "envs", "docs"]


def demo_config(seed: int = 0) -> dict:
    """The shipped demo config, with ``seed`` added to every demo world's seed and the photos' seed
    (0: the shipped demo)."""
    cfg = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
    for r in cfg["demo"]["regions"].values():
        r["seed"] += seed
    cfg["demo"].setdefault("streetview", {})["seed"] = cfg["demo"].get("streetview", {}).get("seed", 0) + seed
    return cfg


def copy_workflow(workdir: Path) -> Path:
    """Copy the workflow's files (WORKFLOW_FILES) into ``workdir``, made if missing; returns it."""
    workdir.mkdir(parents=True, exist_ok=True)
    for f in WORKFLOW_FILES:
        src = REPO / f
        if src.is_dir():
            shutil.copytree(src, workdir / f, dirs_exist_ok=True)
        else:
            shutil.copy2(src, workdir / f)
    return workdir


def prepare(workdir: Path, config: dict, name: str) -> Path:
    """``workdir`` with the workflow's files and ``config`` written as ``name``; returns the config's path."""
    copy_workflow(workdir)
    path = workdir / name
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def run_workflow(workdir: Path, configfile: str, cores: int, what: str) -> float:
    """``snakemake --profile profiles/local --cores N --configfile F`` in ``workdir`` with this
    interpreter's venv on PATH; returns the wall seconds, exits naming the directory on failure."""
    snakemake = Path(sys.executable).parent / "snakemake"
    # the rules' `python` must be this interpreter (the venv's), activated or not
    env = {**os.environ, "PATH": f"{snakemake.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    t0 = time.perf_counter()
    proc = subprocess.run([str(snakemake), "--profile", "profiles/local", "--cores", str(cores),
                           "--configfile", configfile], cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
        raise SystemExit(f"{what} failed (exit {proc.returncode}) in {workdir}")
    return wall


def read_recall(workdir: Path, experiment: str, region: str) -> dict:
    """An experiment's ``recall.json`` on a test region."""
    return json.loads((workdir / f"results/eval/{experiment}/{region}/recall.json").read_text())


def region_under_test(config: dict) -> str:
    """The first region with role: test."""
    return next(r for r, v in config["regions"].items() if v.get("role") == "test")


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
