"""The package map holds: low-level packages import nothing from above them, production code
knows nothing of the demo, settings are defined once (schema <-> settings classes)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import vglpipe.settings as settings_module
from vglpipe.config import schema_node
from vglpipe.settings import Section

PKG = Path(__file__).resolve().parent.parent / "vglpipe"


def imports_of(path: Path) -> set[str]:
    """Every vglpipe module a file imports (also inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vglpipe")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vglpipe"):
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def files(*parts: str) -> list[Path]:
    root = PKG.joinpath(*parts)
    return sorted(root.rglob("*.py")) if root.is_dir() else [root.with_suffix(".py")]


@pytest.mark.parametrize("package", ["geo", "store"])
def test_low_level_packages_import_nothing_from_above(package):
    allowed = ("vglpipe.errors", "vglpipe.geo", "vglpipe.store")
    for f in files(package):
        bad = {m for m in imports_of(f) if not m.startswith(allowed)}
        assert not bad, f"{f.relative_to(PKG.parent)} imports {sorted(bad)}"


def test_config_and_settings_import_only_low_level_modules():
    allowed = ("vglpipe.errors", "vglpipe.geo", "vglpipe.config", "vglpipe.store")
    for f in files("config") + files("settings"):
        bad = {m for m in imports_of(f) if not m.startswith(allowed)}
        assert not bad, f"{f.relative_to(PKG.parent)} imports {sorted(bad)}"


def test_production_code_knows_nothing_of_the_demo():
    production = [f for f in PKG.rglob("*.py") if "demo" not in f.relative_to(PKG).parts
                  and "bench" not in f.relative_to(PKG).parts]
    for f in production:
        bad = {m for m in imports_of(f) if m.startswith("vglpipe.demo")}
        assert not bad, f"{f.relative_to(PKG.parent)} imports {sorted(bad)}"
        assert "builtin:" not in f.read_text(), f"{f.relative_to(PKG.parent)} interprets 'builtin:'"


def sections():
    return [c for c in vars(settings_module).values()
            if isinstance(c, type) and issubclass(c, Section) and c is not Section]


@pytest.mark.parametrize("cls", sections(), ids=lambda c: c.__name__)
def test_settings_classes_mirror_the_schema(cls):
    """Each setting is defined once: a settings class has exactly its schema object's keys."""
    schema = schema_node(cls.SCHEMA)
    keys = set(schema["properties"])
    if cls.__name__ == "LodSpec":  # the aerial section's LOD keys
        keys = {"patch_px", "m_per_px", "n_lods"}
    fields = {f.name for f in dataclasses.fields(cls)}
    assert fields == keys, f"{cls.__name__}: fields {sorted(fields ^ keys)} differ from {cls.SCHEMA}"
    if not schema.get("required"):
        cls.defaults()  # builds from the schema's defaults alone
