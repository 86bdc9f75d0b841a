"""Shared plumbing for the ``python -m vglpipe.<stage>`` entry points."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from vglpipe.errors import VglpipeError

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
