"""Shared fixtures: repository paths, the reference rasters, and real Snakemake runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vglpipe.bench._workflow import copy_workflow

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REFERENCE_DATA = SHARED / "reference-data"


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
    return copy_workflow(tmp_path)


def run_snakemake(
    workdir: Path, *args: str, check: bool = True, profile: str = "profiles/local"
) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--profile", profile, *args]
    proc = subprocess.run(cmd, cwd=workdir, env=tool_env(), capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def deep_merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for k, v in overrides.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def demo_config(overrides: dict | None = None, regions: list[str] | None = None) -> dict:
    """The shipped demo config with ``overrides`` merged in, optionally only some of its regions
    (a --configfile replaces workflow_config.yaml, so a test's config is complete)."""
    import yaml

    config = deep_merge(yaml.safe_load((REPO / "workflow_config.yaml").read_text()), overrides or {})
    if regions is not None:
        config["regions"] = {r: v for r, v in config["regions"].items() if r in regions}
        config["demo"]["regions"] = {r: v for r, v in config["demo"]["regions"].items() if r in regions}
        config["aerial"]["sources"] = {r: v for r, v in config["aerial"]["sources"].items() if r in regions}
        if not any(v.get("role") == "train" for v in config["regions"].values()):
            config["experiments"], config["report"] = {}, {}  # data stages only
    return config


def write_config(workdir: Path, name: str, config: dict) -> str:
    import yaml

    (workdir / name).write_text(yaml.safe_dump(config, sort_keys=False))
    return name


def wake_zero_init_branches(model) -> None:
    """Give zero-initialised norm scales (timm ResNet's ``zero_init_last``: each residual branch
    starts as the identity) the value 1, so that a gradient check at step 0 reaches the layers
    inside those branches; without this they get no gradient at initialisation by design."""
    import torch

    norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm,
             torch.nn.GroupNorm, torch.nn.LayerNorm)  # timm's norm layers subclass these
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, norms) and weight is not None and not weight.any():
                weight.fill_(1.0)
