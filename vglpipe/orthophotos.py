"""Orthophoto stage: ``python -m vglpipe.orthophotos {world,download,tile} ...``.

* ``world``    — draw the synthetic demo world of a built-in region (colour + DSM GeoTIFFs).
  The world is the region's square (``DemoRegion.size_m``) plus ``--margin-m`` on every
  side. The default margin, 450 m, covers the coarsest LOD of any edge cell at any bearing:
  half-diagonal of LOD 3 (614.4 m · √2 / 2 = 434.4 m) + the training offset
  t_max = 0.5·30 m − 5 m = 10 m, rounded up.
* ``download`` — fetch a region's imagery with the configured client (WMS / XYZ / bulk).
  A source URL starting with ``fake:`` is served from a synthetic world by the local fake
  server (started in this process on 127.0.0.1): same client, same code path as a state.
* ``tile``     — downloaded imagery -> COGs with overviews + ``index.parquet``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math

from vglpipe.cli import run
from vglpipe.errors import ConfigError, RasterError

log = logging.getLogger("vglpipe.orthophotos")

DEFAULT_WORLD_MARGIN_M = 450.0


def required_margin_m(patch_px: int = 384, m_per_px: float = 0.2, n_lods: int = 4,
                      cell_m: float = 30.0, gnss_margin_m: float = 5.0) -> float:
    """Distance beyond a region's edge that the coarsest LOD of an edge cell can reach at any bearing."""
    side = patch_px * m_per_px * 2 ** (n_lods - 1)
    return side * math.sqrt(2) / 2 + max(0.5 * cell_m - gnss_margin_m, 0.0)


def _world(args) -> int:
    from vglpipe.sources.demo import demo_region
    from vglpipe.sources.synthetic import make_world, write_world

    region = demo_region(args.region)
    need = required_margin_m()
    if args.margin_m < need:
        log.warning("world margin %.0f m < %.1f m: edge cells' coarsest LOD will be partly uncovered", args.margin_m, need)
    size = region.size_m + 2 * args.margin_m
    world = make_world(region.seed, region.center_lat, region.center_lon, size, args.m_per_px)
    write_world(world, args.out_color, args.out_height)
    log.info("world %s: seed %d, %.0f m square at %.2f m/px, %s", args.region, region.seed, size, args.m_per_px, world.crs)
    return 0


def _download(args) -> int:
    from vglpipe.geo.region import load_boundary
    from vglpipe.sources.orthophoto import SourceConfig, area_polygon, download

    try:
        src = json.loads(args.source_json)
    except ValueError as exc:
        raise ConfigError(f"--source-json is not JSON: {exc}") from exc
    fake = src.pop("fake", None) or {}
    cfg = SourceConfig.from_dict(src, where=f"aerial.sources.{args.region}")
    area = area_polygon(load_boundary(args.boundary), args.margin_m)
    if cfg.url.startswith("fake:"):
        from vglpipe.sources.fakes.orthophoto_server import FakeOrthophotoServer, Faults, ServerConfig
        from vglpipe.sources.synthetic import read_world

        if not (args.fake_world_color and args.fake_world_height):
            raise ConfigError(f"aerial.sources.{args.region}: url {cfg.url!r} needs --fake-world-color/--fake-world-height")
        world = read_world(args.fake_world_color, args.fake_world_height)
        scfg = ServerConfig(
            tile_format=fake.get("tile_format", "png"),
            bulk_tile_m=float(fake.get("bulk_tile_m", 300.0)),
            bulk_format=fake.get("bulk_format", "tif"),
            faults=Faults(rate=float(fake.get("fault_rate", 0.0)), seed=int(fake.get("seed", 0))),
            delay_s=float(fake.get("delay_s", 0.0)),
        )
        if fake.get("alt_crs"):
            minx, _, maxx, _ = world.bounds
            scfg.alt_crs = fake["alt_crs"]
            scfg.alt_crs_split_x = minx + float(fake.get("alt_crs_west_fraction", 0.5)) * (maxx - minx)
        with FakeOrthophotoServer(world, scfg) as server:
            cfg.url = server.url + cfg.url[len("fake:"):]
            log.info("serving %s from the fake orthophoto server at %s", args.region, server.url)
            rep = download(cfg, area, args.out, progress=not args.no_progress)
    else:
        rep = download(cfg, area, args.out, progress=not args.no_progress)
    log.info("download %s: %d planned, %d fetched, %d already there, %d blank, %d missing, %d retries %s",
             args.region, rep.planned, rep.fetched, rep.skipped_existing, len(rep.blank), len(rep.missing),
             rep.retries, rep.retry_reasons)
    return 0


def _tile(args) -> int:
    from vglpipe.aerial.cog import CogOptions, build_cogs, build_index
    from vglpipe.sources.orthophoto import downloaded_rasters

    inputs = downloaded_rasters(args.downloads)
    opts = CogOptions(tile_px=args.tile_px, blocksize=args.blocksize, compress=args.compress,
                      quality=args.quality, min_overviews=args.min_overviews)
    rep = build_cogs(inputs, args.cogs, opts, acquired=args.acquired or None, progress=not args.no_progress)
    if not rep.cogs:
        raise RasterError(f"{args.downloads}: no valid imagery in {len(inputs)} input(s) (all nodata or blank)")
    build_index(rep.cogs, args.index, acquired=args.acquired or None, source=args.source)
    log.info("tile: %d input(s) -> %d COG(s), %d empty tile(s) skipped, %d input(s) without data",
             len(inputs), len(rep.cogs), rep.skipped_empty, len(rep.inputs_without_data))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vglpipe.orthophotos", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    w = sub.add_parser("world", help="draw a built-in demo region's synthetic world")
    w.add_argument("--region", required=True)
    w.add_argument("--margin-m", type=float, default=DEFAULT_WORLD_MARGIN_M)
    w.add_argument("--m-per-px", type=float, default=0.2)
    w.add_argument("--out-color", required=True)
    w.add_argument("--out-height", required=True)
    w.set_defaults(fn=_world)

    d = sub.add_parser("download", help="fetch a region's orthophotos (resumable)")
    d.add_argument("--region", required=True)
    d.add_argument("--boundary", required=True, help="region boundary GeoJSON (lon/lat)")
    d.add_argument("--margin-m", type=float, default=DEFAULT_WORLD_MARGIN_M)
    d.add_argument("--source-json", required=True, help="the region's aerial.sources entry as JSON")
    d.add_argument("--fake-world-color")
    d.add_argument("--fake-world-height")
    d.add_argument("--out", required=True, help="download directory (manifest.json written last)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(fn=_download)

    t = sub.add_parser("tile", help="downloaded imagery -> COGs + index.parquet")
    t.add_argument("--downloads", required=True)
    t.add_argument("--cogs", required=True)
    t.add_argument("--index", required=True)
    t.add_argument("--tile-px", type=int, default=4096)
    t.add_argument("--blocksize", type=int, default=256)
    t.add_argument("--compress", default="JPEG", choices=["JPEG", "WEBP"])
    t.add_argument("--quality", type=int, default=90)
    t.add_argument("--min-overviews", type=int, default=3)
    t.add_argument("--acquired", default="")
    t.add_argument("--source", default="")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=_tile)
    return p


def main(argv=None) -> int:
    return run(build_parser(), lambda a: a.fn(a), argv)


if __name__ == "__main__":
    raise SystemExit(main())
