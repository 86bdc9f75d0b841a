"""``python -m vglpipe.regions``: resolve a region's boundary into a normalised GeoJSON file."""

from __future__ import annotations

import argparse
import logging
import sys

from vglpipe import cli
from vglpipe.geo.region import load_boundary, write_boundary

log = logging.getLogger("vglpipe.regions")


def main(args: argparse.Namespace) -> None:
    geom = load_boundary(args.boundary)
    write_boundary(geom, args.out, args.region)
    log.info("region %s: %s, bounds %s -> %s", args.region, geom.geom_type, geom.bounds, args.out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vglpipe.regions", description=__doc__)
    p.add_argument("--region", required=True, help="region name")
    p.add_argument("--boundary", required=True, help="the region's boundary (GeoJSON, lon/lat)")
    p.add_argument("--out", required=True, help="output GeoJSON")
    return p


if __name__ == "__main__":
    sys.exit(cli.run(parser(), main))
