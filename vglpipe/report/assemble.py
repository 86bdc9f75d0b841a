"""The report stage's reading side: evaluation outputs, photos, orthophotos and embeddings of a run
turned into the report's input dataclasses (:mod:`vglpipe.report.data`)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vglpipe.errors import InputError
from vglpipe.geo.layout import Layout
from vglpipe.geo.sphere import EARTH_RADIUS_M
from vglpipe.report.data import Example, ExperimentResult, RunFacts
from vglpipe.settings import LodSpec
from vglpipe.store.tables import read_table

RECALL_PREFIX = "R@"


@dataclass(frozen=True)
class EvalFiles:
    """One experiment's evaluation of a region and where its embeddings are."""

    experiment: str
    description: str
    eval_dir: Path  # retrieval.parquet, recall.json, recall_by_{year,hour}.csv
    embeddings: Path  # cells-*.npy (+ ids), photos.npy (+ ids)
    model_info: Path  # model.json


def _table(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    t = pd.read_csv(path)
    stratum = t.columns[0]
    return t[t[stratum].notna()].astype({stratum: "int64"})


def experiment_result(files: EvalFiles, min_count: int, index_facts: dict) -> ExperimentResult:
    doc = json.loads((files.eval_dir / "recall.json").read_text())
    info = json.loads(files.model_info.read_text())
    recall = {k: v for k, v in doc.items() if k.startswith(RECALL_PREFIX)}
    facts = {"weights id": info["weights_id"], "training steps": info["steps"],
             "model": info["model_config"]["name"], "cells searched": doc["n_cells"], **index_facts}
    if "true_positions" in doc:
        facts["R@1<50m against the true camera positions"] = f"{100 * doc['true_positions'].get('R@1<50m', float('nan')):.1f} %"
    return ExperimentResult(
        name=files.experiment, description=files.description or files.experiment, recall=recall,
        chance=doc["chance"], n_queries=doc["n_queries"], by_year=_table(files.eval_dir / "recall_by_year.csv"),
        by_hour=_table(files.eval_dir / "recall_by_hour.csv"), min_stratum_count=min_count, facts=facts)


class Embeddings:
    """Cell and photo embeddings of one experiment and region, looked up by id."""

    def __init__(self, directory: Path):
        vecs, ids = [], []
        for p in sorted(directory.glob("cells-*.ids.npy")):
            ids.append(np.load(p))
            vecs.append(np.load(str(p).replace(".ids.npy", ".npy"), mmap_mode="r"))
        if not ids:
            raise InputError(f"{directory}: no cell embeddings (cells-*.npy)")
        self.cell_ids = np.concatenate(ids)
        self.cell_vectors = np.concatenate([np.asarray(v, np.float32) for v in vecs])
        order = np.argsort(self.cell_ids)
        self.cell_ids, self.cell_vectors = self.cell_ids[order], self.cell_vectors[order]
        self.photo_ids = np.load(directory / "photos.ids.npy")
        self.photo_vectors = np.load(directory / "photos.npy", mmap_mode="r")

    def photo(self, image_id: int) -> np.ndarray:
        i = int(np.searchsorted(self.photo_ids, image_id))
        if i >= self.photo_ids.size or self.photo_ids[i] != image_id:
            raise InputError(f"photo {image_id} has no embedding")
        return np.asarray(self.photo_vectors[i], np.float32)

    def cells_near(self, layout: Layout, lat: float, lon: float, radius_m: float) -> tuple[np.ndarray, np.ndarray]:
        """(ids, rows) of embedded cells whose centre is within ``radius_m``."""
        near = layout.cells_within(lat, lon, radius_m).ids
        rows = np.searchsorted(self.cell_ids, near)
        ok = (rows < self.cell_ids.size) & (self.cell_ids[np.minimum(rows, self.cell_ids.size - 1)] == near)
        return near[ok], rows[ok]


def local_en(lat0: float, lon0: float, lat, lon) -> np.ndarray:
    """(n, 2) east/north metres of points relative to (lat0, lon0) (local equirectangular)."""
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    east = np.radians(lon - lon0) * EARTH_RADIUS_M * math.cos(math.radians(lat0))
    north = np.radians(lat - lat0) * EARTH_RADIUS_M
    return np.stack([east, north], axis=-1).reshape(-1, 2)


def choose_examples(retrieval: pd.DataFrame, radius_m: float, n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Random successes (first correct cell at rank 1) and failures, ``n`` of each (row indices)."""
    col = f"rank_{radius_m:g}m"
    rng = np.random.default_rng(seed)
    ok = np.flatnonzero(retrieval[col].to_numpy() == 1)
    bad = np.flatnonzero(retrieval[col].to_numpy() != 1)
    pick = lambda rows: sorted(rng.choice(rows, size=min(n, rows.size), replace=False).tolist()) if rows.size else []  # noqa: E731
    return pick(ok), pick(bad)


def examples(files: EvalFiles, layout: Layout, photos_dir: Path, aerial_index: Path, n: int, radius_m: float,
             map_m: float, top: int = 10) -> list[Example]:
    from vglpipe.aerial.sampler import AerialSampler
    from vglpipe.store.photos import PhotoStore

    cols = ["image_id", "lat", "lon", f"rank_{radius_m:g}m", "top_ids", "top_scores"]
    retrieval = read_table(files.eval_dir / "retrieval.parquet", cols).to_pandas()
    good, bad = choose_examples(retrieval, radius_m, n)
    if not good and not bad:
        return []
    emb = Embeddings(files.embeddings)
    meta = read_table(photos_dir / "metadata.parquet", ["image_id", "captured_at", "creator_username"]).to_pandas()
    meta = meta.set_index("image_id")
    px = 512
    spec = LodSpec(patch_px=px, m_per_px=2 * map_m / px, n_lods=1)
    out = []
    with PhotoStore(photos_dir) as store, AerialSampler(aerial_index, spec=spec) as sampler:
        for row_i in good + bad:
            r = retrieval.iloc[row_i]
            iid, lat, lon = int(r["image_id"]), float(r["lat"]), float(r["lon"])
            ortho = sampler.sample(lat, lon).patches[0]
            ids, rows = emb.cells_near(layout, lat, lon, map_m * math.sqrt(2))
            q = emb.photo(iid)
            scores = emb.cell_vectors[rows] @ q
            c_lat, c_lon = layout.center_of_ids(ids)
            top_ids = np.asarray(r["top_ids"])[:top]
            t_lat, t_lon = layout.center_of_ids(np.maximum(top_ids, 0))
            rank = int(r[f"rank_{radius_m:g}m"])
            m = meta.loc[iid]
            out.append(Example(
                photo_jpeg=store.read(iid), image_id=str(iid), creator_username=str(m["creator_username"] or ""),
                captured_at=None if pd.isna(m["captured_at"]) else pd.Timestamp(m["captured_at"]).to_pydatetime(),
                lat=lat, lon=lon, success=rank == 1, rank=rank or None, ortho=ortho,
                ortho_extent_m=(-map_m, map_m, -map_m, map_m), cells_en_m=local_en(lat, lon, c_lat, c_lon),
                cell_scores=scores, topk_en_m=local_en(lat, lon, t_lat, t_lon),
                topk_scores=np.asarray(r["top_scores"], np.float64)[:top], radius_m=radius_m,
                cell_size_m=None, experiment=files.experiment))
    return out


def _benchmark_seconds(path: Path) -> float | None:
    try:
        with open(path) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        return float(rows[-1]["s"])
    except (OSError, KeyError, ValueError, IndexError):
        return None


def run_facts(region: str, n_photos: int, n_cells: int, cells_summary: Path, crawl_report: Path | None,
              excluded: int, benchmarks: Path, experiment: str) -> RunFacts:
    summary = json.loads(cells_summary.read_text())
    skipped = {"photos outside the region": summary["photos_outside_region"],
               "photos with invalid coordinates": summary["photos_invalid_coordinates"],
               "photos with a repeated id": summary["photos_duplicate_id"],
               "cells with too little aerial imagery (not embedded)": excluded}
    if crawl_report is not None and crawl_report.exists():
        rep = json.loads(crawl_report.read_text())
        for reason, count in rep.get("skipped", {}).items():
            skipped[f"crawl: {reason.replace('_', ' ')}"] = count
        skipped["crawl: failed after retries"] = rep.get("failed", 0)
    timings = {}
    for stage, pattern in (("crawl", f"crawl/{region}.tsv"), ("orthophoto download", f"orthophotos/download_{region}.tsv"),
                           ("orthophoto tiling", f"orthophotos/tile_{region}.tsv"), ("cells", f"cells/{region}.tsv"),
                           ("training", f"train/{experiment}.tsv"), ("index", f"index/{experiment}/{region}.tsv"),
                           ("evaluation", f"evaluate/{experiment}/{region}.tsv")):
        s = _benchmark_seconds(benchmarks / pattern)
        if s is not None:
            timings[stage] = s
    embed = [_benchmark_seconds(p) for p in sorted((benchmarks / "embed" / experiment / region).glob("*.tsv"))]
    if any(v is not None for v in embed):
        timings["embedding"] = sum(v for v in embed if v is not None)
    return RunFacts(region=region, n_photos=n_photos, n_cells=n_cells, skipped={k: int(v) for k, v in skipped.items()},
                    timings_s=timings, generated_at=dt.datetime.now(dt.timezone.utc))
