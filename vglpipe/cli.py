"""Shared plumbing for the ``python -m vglpipe.<stage>`` entry points."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from vglpipe.errors import VglpipeError
from vglpipe.settings import Settings, from_json

T = TypeVar("T")

log = logging.getLogger("vglpipe")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def run(
    parser: argparse.ArgumentParser,
    main: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None = None,
) -> int:
    """Parse ``argv``, set up logging, run ``main``; VglpipeError becomes a one-line error, exit 2."""
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(main(args) or 0)
    except VglpipeError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """``--settings JSON`` (what the workflow passes) or ``--config FILE`` (run by hand)."""
    g = parser.add_mutually_exclusive_group(required=True)
    g.add_argument("--settings", help="the stage's settings as JSON, as the workflow passes them")
    g.add_argument("--config", help="a workflow config file (e.g. workflow_config.yaml) to take them from")


def stage_settings(args: argparse.Namespace, cls: type[T], build: Callable[..., T], *needs: str) -> T:
    """The stage's settings bundle from ``--settings`` or from ``--config``: ``build(settings,
    *(args.<need> ...))``, e.g. ``stage_settings(args, DownloadStage, Settings.download_stage, "region")``."""
    if args.settings is not None:
        return from_json(cls, args.settings)
    missing = [n for n in needs if not getattr(args, n, None)]
    if missing:
        raise VglpipeError(f"--config needs {', '.join('--' + n for n in missing)}")
    return build(Settings.load(args.config), *(getattr(args, n) for n in needs))
