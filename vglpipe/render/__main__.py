"""``python -m vglpipe.render``: render a region's synthetic street-view photos for the fake Mapillary API.

    python -m vglpipe.render --demo-region demo-test --out resources/streetview/demo-test --n 400
    python -m vglpipe.render --region-geojson r.geojson --world-color c.tif --world-height h.tif --out DIR

The world is either read from the aerial stage's GeoTIFFs (``--world-color/--world-height``,
preferred: street views and orthophotos then show the same world) or drawn with
``vglpipe.sources.synthetic.make_world`` from the demo region's seed and centre.
Writes ``OUT/source.parquet`` (+ tar shards), served by
``python -m vglpipe.sources.fakes.mapillary_server --source OUT``.
"""

from __future__ import annotations

import argparse
import sys

from vglpipe.cli import run
from vglpipe.errors import InputError
from vglpipe.render.photos import RenderSettings, render_source


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vglpipe.render", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--demo-region", help="built-in demo region (its seed and centre draw the world)")
    where.add_argument("--region-geojson", help="region polygon (GeoJSON lon/lat); needs --world-color/--world-height")
    p.add_argument("--world-color", help="orthophoto GeoTIFF of the world (vglpipe.sources.synthetic.write_world)")
    p.add_argument("--world-height", help="DSM GeoTIFF of the world")
    p.add_argument("--world-size-m", type=float, default=None,
                   help="side of the drawn demo world (default: as the orthophoto stage draws it, the region's "
                   "square plus its default margin on every side, so street views and aerial images match)")
    p.add_argument("--out", required=True, help="source directory to write")
    p.add_argument("--n", type=int, default=400, help="number of photos (default 400)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--outside-fraction", type=float, default=RenderSettings.outside)
    p.add_argument("--pano-fraction", type=float, default=RenderSettings.pano)
    p.add_argument("--grey-fraction", type=float, default=RenderSettings.grey)
    return p


def main(args: argparse.Namespace) -> int:
    from vglpipe.sources import synthetic

    if bool(args.world_color) != bool(args.world_height):
        raise InputError("give both --world-color and --world-height, or neither")
    if args.demo_region:
        from vglpipe.sources.demo import demo_region

        reg = demo_region(args.demo_region)
        region = reg.boundary()
        if args.world_color:
            world = synthetic.read_world(args.world_color, args.world_height)
        else:
            from vglpipe.orthophotos import DEFAULT_WORLD_MARGIN_M

            size = args.world_size_m or reg.size_m + 2 * DEFAULT_WORLD_MARGIN_M
            world = synthetic.make_world(reg.seed, reg.center_lat, reg.center_lon, size)
    else:
        from vglpipe.geo.region import load_boundary

        if not args.world_color:
            raise InputError("--region-geojson needs --world-color and --world-height")
        region = load_boundary(args.region_geojson)
        world = synthetic.read_world(args.world_color, args.world_height)
    settings = RenderSettings(n=args.n, seed=args.seed, outside=args.outside_fraction, pano=args.pano_fraction,
                              grey=args.grey_fraction)
    render_source(world, region, args.out, settings)
    return 0


if __name__ == "__main__":
    sys.exit(run(build_parser(), main))
