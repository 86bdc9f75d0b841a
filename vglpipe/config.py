"""Workflow configuration: validation against ``schemas/config.schema.yaml`` with defaults.

``python -m vglpipe.config workflow_config.yaml`` checks a file and prints the
complete configuration (defaults filled in).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from vglpipe.errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.yaml"


@cache
def load_schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


def _fill_defaults(schema: Mapping, instance: Any) -> Any:
    """Recursively insert schema defaults into ``instance`` (objects only)."""
    if not isinstance(instance, dict) or schema.get("type") != "object":
        return instance
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(sub, instance[key])
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                _fill_defaults(extra, value)
    return instance


def _describe(error: jsonschema.ValidationError, prefix: str = "") -> str:
    path = ".".join(str(p) for p in [*filter(None, prefix.split(".")), *error.absolute_path])
    where = path or "(top level)"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        keys = ", ".join(f"{where}.{k}" if path else k for k in unknown)
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"unknown key {keys}{hint}"
    return f"{where}: {error.message}"


def schema_node(path: str) -> dict:
    """The sub-schema at a dotted ``path`` ("" for the whole; "*" steps into additionalProperties)."""
    node = load_schema()
    for part in filter(None, path.split(".")):
        node = node["additionalProperties"] if part == "*" else node["properties"][part]
    return node


def validate_node(instance: Any, path: str, where: str, source: str = "workflow config") -> Any:
    """Validate ``instance`` against the sub-schema at ``path`` in place and fill in its defaults.

    ``where`` is the instance's position in the config (e.g. ``aerial.sources.ma``), used in
    the messages; raises ConfigError naming every offending key.
    """
    schema = schema_node(path)
    if instance is None and schema.get("type") == "object":
        instance = {}
    if schema.get("type") == "object" and not isinstance(instance, dict):
        raise ConfigError(f"{source}: {where or 'the config'} must be a mapping of keys to values, "
                          f"got {type(instance).__name__}")
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n  ".join(_describe(e, where) for e in errors)
        raise ConfigError(f"{source} is invalid:\n  {lines}")
    return _fill_defaults(schema, instance)


def validate_config(config: dict, source: str = "workflow config") -> dict:
    """Validate ``config`` in place, fill in defaults, and return it.

    Raises ConfigError naming every offending key.
    """
    return validate_node(config, "", "", source)


def load_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return validate_config(raw, source=str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vglpipe.config", description=__doc__)
    parser.add_argument("path", nargs="?", default="workflow_config.yaml")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(config, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
