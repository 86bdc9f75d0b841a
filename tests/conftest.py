"""Shared fixtures: repository paths, the reference rasters, and real Snakemake runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REFERENCE_DATA = SHARED / "reference-data"
WORKFLOW_FILES = ["Snakefile", "rules", "workflow_config.yaml", "profiles"]


@pytest.fixture
def reference_data() -> Path:
    if not REFERENCE_DATA.is_dir():
        pytest.skip(f"reference rasters not found at {REFERENCE_DATA} (../shared beside the checkout)")
    return REFERENCE_DATA


def tool_env() -> dict[str, str]:
    """Environment whose PATH starts with this interpreter's bin/ (as `make` sets it up)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture
def workflow_dir(tmp_path: Path) -> Path:
    """A fresh working copy of the workflow (Snakefile, rules, config, profiles)."""
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name)
        else:
            shutil.copy2(src, tmp_path / name)
    return tmp_path


def run_snakemake(
    workdir: Path, *args: str, check: bool = True, profile: str = "profiles/local"
) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--profile", profile, *args]
    proc = subprocess.run(cmd, cwd=workdir, env=tool_env(), capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc
