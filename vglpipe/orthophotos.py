"""Orthophoto stage: ``python -m vglpipe.orthophotos {download,tile} ...``.

* ``download`` — fetch a region's imagery with the configured client (WMS / XYZ / bulk),
  as far beyond its boundary as the coarsest LOD of an edge cell reaches (the derived
  margin, :attr:`vglpipe.settings.Settings.download_margin_m`).
* ``tile``     — downloaded imagery -> COGs with overviews + ``index.parquet``. Inputs that
  cannot be used are skipped, logged and listed in the index's metadata (``skipped``); more
  than ``aerial.quality.max_skipped_fraction`` of them fail the stage. COGs coarser than the
  finest LOD (of any experiment) are logged as a WARNING, with the upsampling factor.

Settings come from ``--settings JSON`` (the workflow) or ``--config FILE --region NAME``.
"""

from __future__ import annotations

import argparse
import logging
import os

from vglpipe import cli
from vglpipe.errors import RasterError
from vglpipe.settings import DownloadStage, Settings, TileStage

log = logging.getLogger("vglpipe.orthophotos")


def _download(args) -> int:
    from vglpipe.geo.region import load_boundary
    from vglpipe.sources.orthophoto import area_polygon, download

    st = cli.stage_settings(args, DownloadStage, Settings.download_stage, "region")
    area = area_polygon(load_boundary(args.boundary), st.margin_m)
    rep = download(st.source, area, args.out, progress=not args.no_progress)
    log.info("download %s: %d planned, %d fetched, %d already there, %d invalid and fetched again, %d blank, "
             "%d missing, %d retries %s", args.out, rep.planned, rep.fetched, rep.skipped_existing, len(rep.invalid),
             len(rep.blank), len(rep.missing), rep.retries, rep.retry_reasons)
    return 0


def _tile(args) -> int:
    from vglpipe.aerial.cog import CogOptions, build_cogs, build_index
    from vglpipe.sources.orthophoto import downloaded_rasters

    st = cli.stage_settings(args, TileStage, Settings.tile_stage, "region")
    inputs = downloaded_rasters(args.downloads)
    c = st.cog
    opts = CogOptions(tile_px=c.tile_px, blocksize=c.blocksize, compress=c.compress, quality=c.quality,
                      min_overviews=c.min_overviews)
    rep = build_cogs(inputs, args.cogs, opts, acquired=st.acquired or None, progress=not args.no_progress,
                     max_skipped_fraction=st.max_skipped_fraction)
    if not rep.cogs:
        raise RasterError(f"{args.downloads}: no valid imagery in {len(inputs)} input(s) (all nodata or blank)")
    table = build_index(rep.cogs, args.index, acquired=st.acquired or None, source=st.protocol, skipped=rep.skipped)
    log.info("tile: %d input(s) -> %d COG(s), %d empty tile(s) skipped, %d input(s) without data, "
             "%d converted, %d skipped as unusable", len(inputs), len(rep.cogs), rep.skipped_empty,
             len(rep.inputs_without_data), len(rep.converted), len(rep.skipped))
    if rep.skipped:
        log.warning("tile: %d of %d input(s) skipped as unusable (listed in %s): %s", len(rep.skipped), len(inputs),
                    args.index, ", ".join(os.path.basename(s["file"]) for s in rep.skipped))
    _check_resolution(table.column("m_per_px").to_pylist(), table.column("file").to_pylist(), st)
    return 0


#: Ground resolution within this factor of the finest LOD's counts as matching it (UTM scale, rounding).
RESOLUTION_TOLERANCE = 1.01


def _check_resolution(m_per_px: list[float], files: list[str], st: TileStage) -> None:
    """WARNING when COGs are coarser than the finest LOD needs (they will be upsampled)."""
    finest = st.finest_m_per_px
    coarse = [(m, f) for m, f in zip(m_per_px, files) if m > finest * RESOLUTION_TOLERANCE]
    if coarse:
        worst = max(m for m, _ in coarse)
        log.warning("tile: %d of %d COG(s) are coarser than the finest LOD needs: up to %.3g m/px where the finest "
                    "LOD is %.3g m/px (upsampled up to %.2fx; patches beyond aerial.quality.max_upsample are "
                    "flagged by the sampler), e.g. %s", len(coarse), len(files), worst, finest, worst / finest,
                    coarse[0][1])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vglpipe.orthophotos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("download", help="fetch a region's orthophotos (resumable)")
    cli.add_settings_arguments(d)
    d.add_argument("--region", help="the region whose aerial.sources entry is used (with --config)")
    d.add_argument("--boundary", required=True, help="region boundary GeoJSON (lon/lat)")
    d.add_argument("--out", required=True, help="download directory (manifest.json written last)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(fn=_download)

    t = sub.add_parser("tile", help="downloaded imagery -> COGs + index.parquet")
    cli.add_settings_arguments(t)
    t.add_argument("--region", help="the region whose aerial.sources entry is used (with --config)")
    t.add_argument("--downloads", required=True)
    t.add_argument("--cogs", required=True)
    t.add_argument("--index", required=True)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(fn=_tile)
    return p


def main(argv=None) -> int:
    return cli.run(build_parser(), lambda a: a.fn(a), argv)


if __name__ == "__main__":
    raise SystemExit(main())
