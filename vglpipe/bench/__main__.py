"""``python -m vglpipe.bench <name> [options]``: run one benchmark, JSON figures last."""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys

import vglpipe.bench


def available() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(vglpipe.bench.__path__) if not m.name.startswith("_")
    )


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m vglpipe.bench", description=__doc__)
    parser.add_argument("name", choices=names)
    args, rest = parser.parse_known_args(argv)
    module = importlib.import_module(f"vglpipe.bench.{args.name}")
    sub = argparse.ArgumentParser(prog=f"python -m vglpipe.bench {args.name}")
    module.add_arguments(sub)
    figures = module.run(sub.parse_args(rest))
    sys.stdout.flush()
    print(json.dumps({"bench": args.name, **figures}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
