"""The cluster conda envs pin the same versions as pyproject.toml; the demo workflow runs."""

from __future__ import annotations

import tomllib

import pytest
import yaml

from conftest import REPO


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        name, _, version = dep.partition("==")
        assert version, f"pyproject dependency {dep!r} is not pinned"
        pins[name.lower()] = version
    return pins


@pytest.mark.parametrize("env", sorted(p.name for p in (REPO / "envs").glob("*.yaml")))
def test_conda_env_pins_match_pyproject(env):
    pins = pyproject_pins()
    spec = yaml.safe_load((REPO / "envs" / env).read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    for line in pip:
        name, _, version = line.partition("==")
        assert pins.get(name.lower()) == version, f"{env}: {line} differs from pyproject.toml"


def test_torch_env_has_everything():
    spec = yaml.safe_load((REPO / "envs" / "torch.yaml").read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert {line.partition("==")[0].lower() for line in pip} == set(pyproject_pins())
