"""Photo metadata export benchmark: the crawl checkpoint's photo rows to ``metadata.parquet``.

A statewide crawl ends by exporting ~11 M rows. A checkpoint with ``--rows`` synthetic rows
is built, then exported twice, each in a fresh process so that its peak memory is its own:
in chunks (as the crawler does) and as one chunk (all rows in memory at once, as a plain
``fetchall`` would). Figures: ``export_rows_per_s``, ``export_peak_rss_mb`` (chunked),
``one_chunk_peak_rss_mb``, ``baseline_rss_mb`` (a process that only imports), and the
memory a one-chunk export of Massachusetts (11 M rows) would need, extrapolated.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from vglpipe.bench._util import peak_rss_mb

MA_PHOTOS = 11_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=2_000_000, help="photo rows (default 2,000,000)")
    parser.add_argument("--chunk-rows", type=int, default=1 << 16, help="rows per chunk (default 65536, as the crawler)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")


def _fill(db_path: Path, n: int, seed: int = 0) -> None:
    from vglpipe.sources.mapillary import INSERT_PHOTO_SQL, CrawlState

    rng = np.random.default_rng(seed)
    state = CrawlState(db_path)
    db = state.db
    step = 100_000
    for start in range(0, n, step):
        k = min(step, n - start)
        ids = np.arange(start, start + k, dtype=np.int64) * 7 + 1_000_000_000_000
        lat = 42.0 + rng.random(k)
        lon = -72.0 + rng.random(k)
        t = rng.integers(1_400_000_000_000, 1_750_000_000_000, k)
        ang = rng.random(k) * 360
        rows = [
            (int(ids[i]), float(lat[i]), float(lon[i]), float(lat[i]), float(lon[i]), int(t[i]), "perspective",
             "Apple", "iPhone 12", float(ang[i]), float(ang[i]), f"seq{int(ids[i]) // 50:x}", int(ids[i]) % 5000,
             f"user_{int(ids[i]) % 5000}", 4032, 3024, int(ids[i]) % 4000, 512 * (i + 1), 60_000,
             int(ids[i]) & 0xFFFFFFFF)
            for i in range(k)
        ]
        db.execute("BEGIN")
        db.executemany(INSERT_PHOTO_SQL, rows)
        db.execute("COMMIT")
    state.close()


def _child(db_path: str, out: str, chunk_rows: int, queue) -> None:
    import sqlite3

    from vglpipe.sources.mapillary import export_metadata

    if chunk_rows <= 0:
        queue.put((0.0, 0, peak_rss_mb()))
        return
    db = sqlite3.connect(db_path)
    t0 = time.perf_counter()
    rows = export_metadata(db, Path(out), {"bench": True}, chunk_rows=chunk_rows)
    queue.put((time.perf_counter() - t0, rows, peak_rss_mb()))


def _in_child(db_path: Path, out: Path, chunk_rows: int) -> tuple[float, int, float]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(str(db_path), str(out), chunk_rows, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def run(args: argparse.Namespace) -> dict:
    import pyarrow.parquet as pq

    tmp = Path(tempfile.mkdtemp(prefix="vgl-bench-export-"))
    try:
        db_path = tmp / "crawl-state.sqlite"
        t0 = time.perf_counter()
        _fill(db_path, args.rows)
        print(f"checkpoint with {args.rows:,} photo rows built in {time.perf_counter() - t0:.1f} s", flush=True)
        _, _, base = _in_child(db_path, tmp / "none.parquet", 0)
        sec, rows, chunked = _in_child(db_path, tmp / "chunked.parquet", args.chunk_rows)
        sec1, rows1, one = _in_child(db_path, tmp / "one.parquet", args.rows)
        assert rows == rows1 == args.rows == pq.read_metadata(tmp / "chunked.parquet").num_rows
        per_row = (one - base) * 1024 * 1024 / args.rows
        print(f"chunks of {args.chunk_rows:,}: {sec:.1f} s ({rows / sec:,.0f} rows/s), peak {chunked:.0f} MB")
        print(f"one chunk: {sec1:.1f} s, peak {one:.0f} MB (~{per_row:.0f} bytes per row); "
              f"a process that only imports: {base:.0f} MB")
        print(f"one chunk for Massachusetts ({MA_PHOTOS:,} photos) would need ~{per_row * MA_PHOTOS / 2**30:.1f} GiB")
        return {
            "rows": rows,
            "export_rows_per_s": round(rows / sec),
            "export_peak_rss_mb": round(chunked, 1),
            "one_chunk_peak_rss_mb": round(one, 1),
            "baseline_rss_mb": round(base, 1),
            "one_chunk_ma_gib": round(per_row * MA_PHOTOS / 2**30, 1),
        }
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
