"""``python -m vglpipe.cells``: assign photos to cells and enumerate a region's cells.

Writes
* ``photo_cells.parquet`` — image_id (int64), train_cell_id (int64, the training
  bucket of ``--train-cell-m``), test_cell_id (int64, the search-region cell of
  ``--test-cell-m``), for every photo inside the region;
* ``cells_<l>m.parquet`` — every search-region cell whose centre lies inside the
  region: id (int64), row, col (int32), lat, lon (float64, centre), in row order;
* a JSON summary with the counts (photos inside / outside / skipped, cells).

Photos outside the region, with invalid coordinates or with a repeated image_id
are kept out of the tables, counted, and reported in the log and the summary.
Both tables carry the layout (kind, cell size, earth radius) in their Parquet metadata.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import shapely
import shapely.ops
from shapely.geometry.base import BaseGeometry

from vglpipe import cli
from vglpipe.geo.layout import Layout, pack_ids
from vglpipe.errors import RegionError
from vglpipe.geo.region import load_boundary
from vglpipe.settings import CellsStage, Settings
from vglpipe.store.atomic import atomic_write_text
from vglpipe.store.tables import read_table, write_table

log = logging.getLogger("vglpipe.cells")

PHOTO_COLUMNS = ["image_id", "lat", "lon"]


@dataclass
class AssignSummary:
    photos_total: int
    photos_inside: int
    photos_outside_region: int
    photos_invalid_coordinates: int
    photos_duplicate_id: int


def assign_photos(
    image_id: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    region: BaseGeometry,
    train_layout: Layout,
    test_layout: Layout,
) -> tuple[pa.Table, AssignSummary]:
    """Photo → (training bucket, test cell) for the photos inside ``region`` (border included)."""
    image_id = np.asarray(image_id, dtype=np.int64)
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    valid = np.isfinite(lat) & np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    _, first = np.unique(image_id, return_index=True)
    unique = np.zeros(image_id.size, bool)
    unique[first] = True
    ok = valid & unique
    shapely.prepare(region)
    inside = np.zeros(image_id.size, bool)
    inside[ok] = shapely.intersects_xy(region, lon[ok], lat[ok])
    sel = np.flatnonzero(inside)
    table = pa.table(
        {
            "image_id": pa.array(image_id[sel], pa.int64()),
            "train_cell_id": pa.array(train_layout.ids_of(lat[sel], lon[sel]), pa.int64()),
            "test_cell_id": pa.array(test_layout.ids_of(lat[sel], lon[sel]), pa.int64()),
        }
    )
    summary = AssignSummary(
        photos_total=int(image_id.size),
        photos_inside=int(sel.size),
        photos_outside_region=int((ok & ~inside).sum()),
        photos_invalid_coordinates=int((~valid).sum()),
        photos_duplicate_id=int((valid & ~unique).sum()),
    )
    return table, summary


def enumerate_cells(region: BaseGeometry, layout: Layout) -> pa.Table:
    """Every cell of ``layout`` whose centre lies in ``region``, in row-major order."""
    row, col = layout.cells_in_polygon(region)
    lat, lon = layout.center(row, col)
    return pa.table(
        {
            "id": pa.array(pack_ids(row, col), pa.int64()),
            "row": pa.array(row.astype(np.int32), pa.int32()),
            "col": pa.array(col.astype(np.int32), pa.int32()),
            "lat": pa.array(lat, pa.float64()),
            "lon": pa.array(lon, pa.float64()),
        }
    )


def assign_file(photos_path, region: BaseGeometry, train_layout: Layout, test_layout: Layout, out) -> AssignSummary:
    """Photo metadata Parquet → ``photo_cells.parquet`` (see :func:`assign_photos`)."""
    photos = read_table(photos_path, PHOTO_COLUMNS)
    table, summary = assign_photos(
        photos["image_id"].to_numpy(),
        photos["lat"].to_numpy(),
        photos["lon"].to_numpy(),
        region,
        train_layout,
        test_layout,
    )
    del photos
    meta = {"train_layout": train_layout.describe(), "test_layout": test_layout.describe()}
    write_table(table, out, metadata=meta)
    log.info(
        "photos: %d read, %d inside the region, %d outside (excluded), "
        "%d with invalid coordinates (skipped), %d with a repeated image_id (skipped)",
        summary.photos_total,
        summary.photos_inside,
        summary.photos_outside_region,
        summary.photos_invalid_coordinates,
        summary.photos_duplicate_id,
    )
    return summary


def enumerate_file(region: BaseGeometry, layout: Layout, out) -> int:
    """Every cell of the region → ``cells_<l>m.parquet``; returns the number of cells."""
    cells = enumerate_cells(region, layout)
    write_table(cells, out, metadata={"layout": layout.describe()})
    log.info("cells: %d of %g m in the region -> %s", cells.num_rows, layout.cell_m, out)
    return cells.num_rows


def check_overlap(region: BaseGeometry, photos_path, boundary_path) -> None:
    """Refuse a region that holds none of the photos, saying what is probably wrong."""
    photos = read_table(photos_path, ["lat", "lon"])
    lat, lon = photos["lat"].to_numpy(), photos["lon"].to_numpy()
    ok = np.isfinite(lat) & np.isfinite(lon)
    if not ok.any():
        raise RegionError(f"{photos_path}: no photos with coordinates for region {boundary_path}: did the crawl "
                          "find any? (see its crawl_report.json)")
    if shapely.intersects_xy(region, lon[ok], lat[ok]).any():
        return
    hint = ""
    swapped = shapely.ops.transform(lambda x, y: (y, x), region)
    if shapely.intersects_xy(swapped, lon[ok], lat[ok]).any():
        hint = " The photos lie inside the boundary with its coordinates swapped: GeoJSON is [lon, lat], was it written as [lat, lon]?"
    raise RegionError(
        f"{boundary_path}: none of the {int(ok.sum())} photos of {photos_path} lies inside the region (region bounds "
        f"lon/lat {tuple(round(v, 4) for v in region.bounds)}, photos lon {lon[ok].min():.4f}..{lon[ok].max():.4f}, "
        f"lat {lat[ok].min():.4f}..{lat[ok].max():.4f}).{hint}")


def main(args: argparse.Namespace) -> None:
    layout = cli.stage_settings(args, CellsStage, Settings.cells_stage).layout
    train_layout, test_layout = layout.train_layout(), layout.test_layout()
    region = load_boundary(args.boundary)
    check_overlap(region, args.photos, args.boundary)
    summary = assign_file(args.photos, region, train_layout, test_layout, args.out_photo_cells)
    n_cells = enumerate_file(region, test_layout, args.out_cells)
    if n_cells == 0:
        raise RegionError(f"{args.boundary}: no {test_layout.cell_m:g} m cell centre lies inside the region "
                          f"(bounds {region.bounds}); is it smaller than one cell?")
    if args.out_summary:
        meta = {"train_layout": train_layout.describe(), "test_layout": test_layout.describe()}
        atomic_write_text(
            args.out_summary, json.dumps({**asdict(summary), "cells": n_cells, **meta}, indent=2) + "\n"
        )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vglpipe.cells", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_settings_arguments(p)
    p.add_argument("--photos", required=True, help="photo metadata Parquet (image_id, lat, lon, ...)")
    p.add_argument("--boundary", required=True, help="region boundary GeoJSON")
    p.add_argument("--out-photo-cells", required=True)
    p.add_argument("--out-cells", required=True)
    p.add_argument("--out-summary", help="JSON summary of the counts")
    return p


if __name__ == "__main__":
    sys.exit(cli.run(parser(), main))
