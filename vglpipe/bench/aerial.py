"""Aerial patch sampling throughput: test-time cells (row order) and training samples (cold reads).

Setup (not timed): a synthetic world of ``--world-m`` metres at 0.2 m/px, tiled into JPEG
COGs (512 blocks, overviews by averaging). Test-time: every 30 m cell of the §3.1
consistent layout whose LOD-3 patch lies inside the world, in row order, 4 LODs of
384², north-aligned. Training: random positions / bearings / offsets, the block cache
emptied before every sample (cold reads). One thread (OpenCV and GDAL), so the figures
are per core.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import multiprocessing
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import shapely

from vglpipe.bench._util import peak_rss_mb


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--world-m", type=float, default=1500.0, help="side of the synthetic world, metres")
    p.add_argument("--train-samples", type=int, default=150)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", default=None, help="keep the world and COGs here (default: a temp dir)")
    p.add_argument("--bin-m", type=float, default=None, help="test-time bin size, metres (default: sampler's)")
    p.add_argument("--blocksize", type=int, default=256, help="COG block size, px")
    p.add_argument("--batch-cells", type=int, default=64, help="test-time batch size (cells)")


def _setup(wd: str, world_m: float, seed: int, blocksize: int, lat0: float, lon0: float) -> None:
    from vglpipe.aerial.cog import CogOptions, build_cogs, build_index
    from vglpipe.demo.world import make_world, write_world

    wd = Path(wd)
    world = make_world(seed, lat0, lon0, world_m)
    write_world(world, wd / "color.tif", wd / "height.tif")
    del world
    rep = build_cogs([wd / "color.tif"], wd / "cogs", CogOptions(tile_px=4096, blocksize=blocksize), progress=False)
    build_index(rep.cogs, wd / "index.parquet")


def run(args: argparse.Namespace) -> dict:
    from vglpipe.aerial.sampler import AerialSampler
    from vglpipe.settings import LodSpec
    from vglpipe.geo.layout import make_layout
    from vglpipe.geo.sphere import EARTH_RADIUS_M

    cv2.setNumThreads(1)
    lat0, lon0 = 42.36, -71.06
    tmp = tempfile.TemporaryDirectory() if args.workdir is None else None
    wd = Path(args.workdir or tmp.name)
    index = wd / "index.parquet"
    t0 = time.perf_counter()
    if not index.exists():
        # in a child process, so that peak_rss_mb measures the sampler, not the world drawing
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            pool.submit(_setup, str(wd), args.world_m, args.seed, args.blocksize, lat0, lon0).result()
    print(f"setup: world {args.world_m:.0f} m + COGs ({args.blocksize} px blocks) in "
          f"{time.perf_counter() - t0:.1f} s ({wd})")

    spec = LodSpec.defaults()
    inner = args.world_m / 2 - spec.side_m(spec.n_lods - 1) / 2 - 15.0
    if inner <= 0:
        raise SystemExit(f"--world-m {args.world_m} too small for LOD {spec.n_lods - 1}")
    dlat = math.degrees(inner / EARTH_RADIUS_M)
    dlon = dlat / math.cos(math.radians(lat0))
    layout = make_layout("consistent", cell_m=30.0)
    rows, cols = layout.cells_in_polygon(shapely.box(lon0 - dlon, lat0 - dlat, lon0 + dlon, lat0 + dlat))
    order = np.lexsort((cols, rows))
    lat, lon = (np.asarray(v, float) for v in layout.center(rows[order], cols[order]))
    kw = {} if args.bin_m is None else {"bin_m": args.bin_m}

    with AerialSampler(index, spec=spec, **kw) as s:
        # test-time: all cells, row order
        n, low_cov, checksum = 0, 0, 0
        out = np.empty((args.batch_cells, spec.n_lods, spec.patch_px, spec.patch_px, 3), np.uint8)
        out[...] = 0  # an embedding loop's (pinned) batch buffer, reused for every batch
        t = time.perf_counter()
        for batch in s.sample_cells(lat, lon, batch_cells=args.batch_cells, out=out):
            n += batch.index.size
            low_cov += int((batch.coverage < 0.999).any(axis=1).sum())
            checksum += int(batch.patches[:, :, 192, 192].sum())
        dt_test = time.perf_counter() - t
    test_rate = n / dt_test
    print(f"test-time: {n} cells in {dt_test:.2f} s = {test_rate:.0f} cells/s per core "
          f"({low_cov} with coverage < 1; checksum {checksum})")

    rng = np.random.default_rng(args.seed)
    with AerialSampler(index, spec=spec) as s:
        s.sample(lat0, lon0)  # open the datasets (not timed)
        t = time.perf_counter()
        for _ in range(args.train_samples):
            s.clear_cache()  # cold: no decoded block survives from the previous sample
            k = int(rng.integers(lat.size))
            s.sample_training(lat[k], lon[k], rng, t_max_m=10.0)
        dt_train = time.perf_counter() - t
        # warm cache: the same number of samples without clearing
        t = time.perf_counter()
        for _ in range(args.train_samples):
            k = int(rng.integers(lat.size))
            s.sample_training(lat[k], lon[k], rng, t_max_m=10.0)
        dt_warm = time.perf_counter() - t
    train_rate = args.train_samples / dt_train
    warm_rate = args.train_samples / dt_warm
    print(f"training: {args.train_samples} samples in {dt_train:.2f} s = {train_rate:.1f} samples/s per core "
          f"(cold reads); warm cache {warm_rate:.1f} samples/s")
    if tmp is not None:
        tmp.cleanup()
    return {
        "test_cells_per_s_per_core": round(test_rate, 1),
        "train_samples_per_s_per_core": round(train_rate, 1),
        "train_samples_per_s_per_core_warm": round(warm_rate, 1),
        "test_cells": int(n),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
