"""Cell assignment and enumeration at Massachusetts scale.

Figures: assign_points_per_s (lat/lon → 5 m and 30 m ids, one core, points in memory),
ma_assign_s (photos Parquet → photo_cells Parquet, incl. the region test),
ma_enumerate_s / ma_cells (every 30 m cell of a Massachusetts-sized polygon → Parquet),
peak_rss_mb.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyproj import Geod
from shapely import affinity
from shapely.geometry import Polygon

from vglpipe.bench._util import median_seconds, peak_rss_mb
from vglpipe.cells import assign_file, enumerate_file
from vglpipe.geo.layout import make_layout
from vglpipe.store.tables import write_table

MA_BBOX = (-73.5, 41.2, -69.9, 42.9)  # lon/lat
MA_AREA_KM2 = 23_000.0


def ma_like_polygon(vertices: int = 4000, seed: int = 0) -> Polygon:
    """A non-convex polygon of Massachusetts' area inside its bounding box."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    wobble = 1 + sum(rng.uniform(0.01, 0.05) * np.sin(k * t + rng.uniform(0, 6.3)) for k in (3, 7, 19, 53, 211))
    cx, cy = (MA_BBOX[0] + MA_BBOX[2]) / 2, (MA_BBOX[1] + MA_BBOX[3]) / 2
    rx, ry = (MA_BBOX[2] - MA_BBOX[0]) / 2 * 0.8, (MA_BBOX[3] - MA_BBOX[1]) / 2 * 0.8
    poly = Polygon(np.c_[cx + rx * np.cos(t) * wobble, cy + ry * np.sin(t) * wobble])
    area_km2 = abs(Geod(ellps="WGS84").geometry_area_perimeter(poly)[0]) / 1e6
    scale = np.sqrt(MA_AREA_KM2 / area_km2)
    return affinity.scale(poly, scale, scale, origin=(cx, cy))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--points", type=int, default=10_000_000, help="points for assign_points_per_s")
    p.add_argument("--photos", type=int, default=11_000_000, help="photos for ma_assign_s")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None, help="where the Parquet files go (default: a temp dir)")


def _assign_seconds(rng, train, test, points: int, repeats: int) -> float:
    """Median seconds to give ``points`` random points their 5 m and 30 m ids (in memory)."""
    lon = rng.uniform(MA_BBOX[0], MA_BBOX[2], points)
    lat = rng.uniform(MA_BBOX[1], MA_BBOX[3], points)
    seconds, _ = median_seconds(lambda: (train.ids_of(lat, lon), test.ids_of(lat, lon)), repeats)
    return seconds


def run(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(0)
    train, test = make_layout("consistent", 5.0), make_layout("consistent", 30.0)
    t_assign = _assign_seconds(rng, train, test, args.points, args.repeats)
    points_per_s = args.points / t_assign
    print(f"assign: {args.points:,} points -> 5 m + 30 m ids in {t_assign:.3f} s (median of {args.repeats}): "
          f"{points_per_s / 1e6:.1f} M points/s")

    region = ma_like_polygon()
    print(f"region: Massachusetts-sized polygon, {len(region.exterior.coords) - 1} vertices, ~{MA_AREA_KM2:,.0f} km²")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        photos = tmp / "metadata.parquet"
        n = args.photos
        write_table(
            pa.table({
                "image_id": pa.array(rng.permutation(np.arange(n, dtype=np.int64) * 13 + 10**15)),
                "lat": pa.array(rng.uniform(MA_BBOX[1], MA_BBOX[3], n)),
                "lon": pa.array(rng.uniform(MA_BBOX[0], MA_BBOX[2], n)),
                "captured_at": pa.array(rng.integers(1.4e12, 1.7e12, n), pa.timestamp("ms", tz="UTC")),
            }),
            photos,
        )
        t_ma_assign, summary = median_seconds(
            lambda: assign_file(photos, region, train, test, tmp / "photo_cells.parquet"), args.repeats
        )
        print(f"ma_assign: {n:,} photos Parquet -> photo_cells Parquet in {t_ma_assign:.2f} s "
              f"({summary.photos_inside:,} inside the region)")
        photos.unlink()
        t0 = time.perf_counter()
        n_cells = enumerate_file(region, test, tmp / "cells_30m.parquet")
        t_enum = time.perf_counter() - t0
        print(f"ma_enumerate: {n_cells:,} cells of 30 m -> Parquet in {t_enum:.2f} s")
    rss = peak_rss_mb()
    print(f"peak RSS: {rss:,.0f} MiB")
    return {
        "assign_points_per_s": round(points_per_s),
        "ma_assign_s": round(t_ma_assign, 3),
        "ma_enumerate_s": round(t_enum, 3),
        "ma_cells": n_cells,
        "peak_rss_mb": round(rss, 1),
    }
