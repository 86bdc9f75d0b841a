"""``python -m vglpipe.store verify DIR``: check every photo of a photo store.

Reads each photo's bytes (shard by shard, in offset order), compares them with the CRC-32
recorded in ``metadata.parquet`` and checks that they are framed as a JPEG; prints a summary
and one line per bad photo (shard, offset, image id). Exit status: 0 all good, 1 some photo
is bad, 2 the store cannot be read at all (e.g. no metadata.parquet).
"""

from __future__ import annotations

import argparse
import sys

from vglpipe.errors import VglpipeError
from vglpipe.store.photos import verify_store

#: Problem lines printed before "... and N more".
MAX_PROBLEMS_SHOWN = 50


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vglpipe.store", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="check every photo's bytes against its recorded checksum")
    v.add_argument("store", metavar="DIR", help="photo store directory (metadata.parquet + images/)")
    return p


def _verify(store: str) -> int:
    rep = verify_store(store)
    for line in rep.problems[:MAX_PROBLEMS_SHOWN]:
        print(line)
    if len(rep.problems) > MAX_PROBLEMS_SHOWN:
        print(f"... and {len(rep.problems) - MAX_PROBLEMS_SHOWN} more")
    print(rep.summary(store))
    return 1 if rep.bad else 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _verify(args.store)
    except VglpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
