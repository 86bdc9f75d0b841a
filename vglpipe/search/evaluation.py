"""Evaluation of a test region (paper §4.2, Fig. 6): every photo's top-k cells, the rank of the first
cell within r of its position, R@N<r overall and by capture year and local hour, and the
recall a random ranking would reach (chance), streaming over the photos in chunks.

Ground truth is the photo's position in ``metadata.parquet`` (as served by Mapillary, GNSS
noise included), as in a real run; where the true camera positions are known (the demo), the
same ranks are also computed against them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa

from vglpipe.errors import InputError
from vglpipe.geo.layout import Layout
from vglpipe.search.metrics import RecallCounter, cell_centres, first_correct_ranks, recall_by, recall_key
from vglpipe.store.atomic import atomic_write_text
from vglpipe.store.tables import read_table, write_batches

log = logging.getLogger("vglpipe.evaluate")


@dataclass(frozen=True)
class Queries:
    """The photos to localize: ids, embeddings (memmap), ground truth, capture time."""

    ids: np.ndarray  # (m,) int64
    vectors: np.ndarray  # (m, d) float16 (memmap)
    lat: np.ndarray
    lon: np.ndarray
    captured_at: np.ndarray  # (m,) datetime64[ms] UTC (NaT where unknown)
    true_lat: np.ndarray | None = None
    true_lon: np.ndarray | None = None


def load_queries(vectors: np.ndarray, ids: np.ndarray, metadata: Path, true_positions: Path | None = None) -> Queries:
    meta = read_table(metadata, ["image_id", "lat", "lon", "captured_at"]).to_pandas().set_index("image_id")
    missing = np.setdiff1d(ids, meta.index.to_numpy())
    if missing.size:
        raise InputError(f"{metadata}: {missing.size} embedded photo(s) are not in the metadata (e.g. {missing[0]})")
    rows = meta.loc[ids]
    cap = pd.to_datetime(rows["captured_at"], utc=True).dt.tz_localize(None).to_numpy("datetime64[ms]")
    t_lat = t_lon = None
    if true_positions is not None:
        truth = read_table(true_positions, ["id", "true_lat", "true_lon"]).to_pandas()
        truth["id"] = truth["id"].astype(np.int64)
        truth = truth.set_index("id")
        if not np.isin(ids, truth.index.to_numpy()).all():
            raise InputError(f"{true_positions}: not every evaluated photo has a true position")
        t_lat, t_lon = truth.loc[ids, "true_lat"].to_numpy(), truth.loc[ids, "true_lon"].to_numpy()
    return Queries(ids, vectors, rows["lat"].to_numpy(), rows["lon"].to_numpy(), cap, t_lat, t_lon)


def local_year_hour(captured_at: np.ndarray, lon: np.ndarray, timezone: str) -> tuple[np.ndarray, np.ndarray]:
    """Capture year and hour of day in ``timezone`` (an IANA name; "solar" for local solar time)."""
    ts = pd.Series(pd.to_datetime(captured_at)).dt.tz_localize("UTC")
    if timezone == "solar":
        local = ts + pd.to_timedelta(np.asarray(lon) / 15.0, unit="h")
    else:
        local = ts.dt.tz_convert(ZoneInfo(timezone))
    year = local.dt.year.to_numpy(dtype="float64")
    hour = local.dt.hour.to_numpy(dtype="float64")
    return year, hour


def chance_counts(layout: Layout, index_ids: np.ndarray, lat: np.ndarray, lon: np.ndarray,
                  radius_m: float) -> np.ndarray:
    """Per query: how many of the index's cells have their centre within ``radius_m`` of it."""
    near = layout.cells_within(lat, lon, radius_m)
    sorted_ids = np.sort(index_ids)
    pos = np.searchsorted(sorted_ids, near.ids)
    hit = (pos < sorted_ids.size) & (sorted_ids[np.minimum(pos, sorted_ids.size - 1)] == near.ids)
    return np.bincount(near.point[hit], minlength=lat.size)


def chance_recall(counts: np.ndarray, n_cells: int, ns: Sequence[int]) -> dict[int, float]:
    """Expected R@N of a uniformly random ranking: mean over queries of 1 − C(n−c, N)/C(n, N)."""
    out = {}
    c = np.asarray(counts, dtype=np.float64)
    for n in ns:
        n_ = min(n, n_cells)
        # log C(n−c, N) − log C(n, N), with C(a, N) = 0 for a < N
        ok = (n_cells - c) >= n_
        miss = np.zeros_like(c)
        a = n_cells - c[ok]
        miss[ok] = np.exp(_lgamma(a + 1) - _lgamma(a - n_ + 1) - (math.lgamma(n_cells + 1) - math.lgamma(n_cells - n_ + 1)))
        out[n] = float(np.mean(1.0 - miss)) if c.size else float("nan")
    return out


def _lgamma(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.lgamma, otypes=[np.float64])(x)


@dataclass
class EvaluationResult:
    recall: dict
    by_year: pd.DataFrame
    by_hour: pd.DataFrame
    n_queries: int


def evaluate(index, layout: Layout, queries: Queries, out_dir: Path, k: int, ns: Sequence[int],
             radii: Sequence[float], min_count: int, timezone: str, chunk: int = 4096,
             meta: dict | None = None) -> EvaluationResult:
    """Search every query, write retrieval.parquet, recall.json, recall_by_year.csv, recall_by_hour.csv."""
    m = queries.ids.size
    n_cells = len(index)
    k = min(k, n_cells)
    ns_ok = [n for n in ns if n <= k or k >= n_cells]
    counters = {r: RecallCounter(k, r, n_cells) for r in radii}
    true_counters = {r: RecallCounter(k, r, n_cells) for r in radii} if queries.true_lat is not None else None
    year, hour = local_year_hour(queries.captured_at, queries.lon, timezone)
    ranks_50 = {r: np.zeros(m, np.int32) for r in radii}

    fields = [pa.field("image_id", pa.int64()), pa.field("lat", pa.float64()), pa.field("lon", pa.float64()),
              pa.field("year", pa.float64()), pa.field("hour", pa.float64())]
    fields += [pa.field(f"rank_{r:g}m", pa.int32()) for r in radii]
    if true_counters is not None:
        fields += [pa.field(f"true_rank_{r:g}m", pa.int32()) for r in radii]
    fields += [pa.field("top_ids", pa.list_(pa.int64(), k)), pa.field("top_scores", pa.list_(pa.float32(), k))]
    schema = pa.schema(fields)

    def batches() -> Iterator[pa.RecordBatch]:
        for start, res in _chunks(index, queries.vectors, k, chunk):
            sl = slice(start, start + res.ids.shape[0])
            top_lat, top_lon = cell_centres(layout, res.ids)
            ranks = first_correct_ranks(top_lat, top_lon, queries.lat[sl], queries.lon[sl], radii)
            cols = {"image_id": pa.array(queries.ids[sl], pa.int64()),
                    "lat": pa.array(queries.lat[sl]), "lon": pa.array(queries.lon[sl]),
                    "year": pa.array(year[sl]), "hour": pa.array(hour[sl])}
            for r, rk in ranks.items():
                counters[r].add(rk)
                ranks_50[r][sl] = rk
                cols[f"rank_{r:g}m"] = pa.array(rk, pa.int32())
            if true_counters is not None:
                t = first_correct_ranks(top_lat, top_lon, queries.true_lat[sl], queries.true_lon[sl], radii)
                for r, rk in t.items():
                    true_counters[r].add(rk)
                    cols[f"true_rank_{r:g}m"] = pa.array(rk, pa.int32())
            cols["top_ids"] = pa.FixedSizeListArray.from_arrays(pa.array(res.ids.reshape(-1), pa.int64()), k)
            cols["top_scores"] = pa.FixedSizeListArray.from_arrays(pa.array(res.scores.reshape(-1), pa.float32()), k)
            yield pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)

    write_batches(batches(), schema, out_dir / "retrieval.parquet", metadata=meta or {})
    recall = {}
    for r in radii:
        recall.update(counters[r].recall(ns_ok))
    chance = {}
    for r in radii:
        cc = chance_counts(layout, index.ids, queries.lat, queries.lon, r)
        chance.update({recall_key(n, r): v for n, v in chance_recall(cc, n_cells, ns_ok).items()})
    doc = {**recall, "n_queries": m, "n_cells": n_cells, "k": k, "chance": chance, "timezone": timezone,
           "meta": meta or {}}
    if true_counters is not None:
        doc["true_positions"] = {key: v for r in radii for key, v in true_counters[r].recall(ns_ok).items()}
    atomic_write_text(out_dir / "recall.json", json.dumps(doc, indent=2, sort_keys=True) + "\n")
    tables = {}
    for name, key in (("year", year), ("hour", hour)):
        parts = [recall_by(ranks_50[r], {name: key}, k, ns_ok, r, min_count, n_cells) for r in radii]
        table = parts[0]
        for p in parts[1:]:
            table = table.merge(p.drop(columns=["count", "low_count"]), on=name)
        table = table.rename(columns={"low_count": "flagged"})
        atomic_write_text(out_dir / f"recall_by_{name}.csv", table.to_csv(index=False))
        tables[name] = table
    log.info("evaluated %d photos against %d cells: %s", m, n_cells,
             ", ".join(f"{key} {recall[key]:.3f}" for key in (recall_key(1, 50), recall_key(10, 50)) if key in recall))
    return EvaluationResult(doc, tables["year"], tables["hour"], m)


def _chunks(index, vectors: np.ndarray, k: int, chunk: int):
    start = 0
    for res in index.search_chunks(vectors, k, chunk=chunk):
        yield start, res
        start += res.ids.shape[0]
