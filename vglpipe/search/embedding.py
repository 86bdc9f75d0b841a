"""Embedding a test region (paper §4.3): every cell with the aerial tower, every photo with the
street-view tower, written as fp16 arrays that the index stage memory-maps.

Cells. The rows of ``cells_<l>m.parquet`` are split into K shards of contiguous rows whose
boundaries fall on whole chunks, so each shard is one job (one GPU on a cluster). A shard is
worked in chunks of ``chunk_cells`` rows; every finished chunk is written atomically to the
shard's work directory, so a killed shard resumes from its last finished chunk. Batches are
aligned to global row positions (the last one padded), so a cell's embedding does not depend
on how the rows were split: a sharded run equals a single-shard run bit for bit on a CPU.
Cells whose aerial coverage (LOD 0, the cell's surroundings) is below ``min_coverage`` are
not embedded: they are listed with their coverage and kept out of the index. With
``rotations`` > 1 a cell's vector is the mean of the unit vectors of its patches turned by
0, 1/rotations, ... of a full turn (quarter turns: exact, no resampling), at the model's norm:
the towers are trained on cells at random bearings (paper §3.4), and the mean over turns is a
steadier description of the place than the north-up patch alone.

Outputs per shard: ``cells-<i>.npy`` (m, d) float16, ``cells-<i>.ids.npy`` (m,) int64, and
``cells-<i>.excluded.parquet`` (id, coverage per LOD). Photos: ``photos.npy`` +
``photos.ids.npy``. Every array's ``.json`` sidecar records the weights id of the model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from vglpipe.errors import InputError
from vglpipe.settings import LodSpec
from vglpipe.store.atomic import atomic_path, atomic_write_text
from vglpipe.store.tables import read_table, write_table

log = logging.getLogger("vglpipe.embed")


@dataclass(frozen=True)
class ShardPlan:
    index: int
    count: int  # K
    start: int  # first row
    stop: int  # one past the last row
    chunk_cells: int

    @property
    def chunks(self) -> list[tuple[int, int]]:
        return [(s, min(s + self.chunk_cells, self.stop)) for s in range(self.start, self.stop, self.chunk_cells)]


def plan_shard(n_rows: int, shard: int, shards: int, chunk_cells: int) -> ShardPlan:
    """Rows [start, stop) of shard ``shard`` of ``shards``; boundaries on multiples of ``chunk_cells``."""
    if not 0 <= shard < shards:
        raise InputError(f"shard {shard} is not in 0..{shards - 1}")
    n_chunks = math.ceil(n_rows / chunk_cells)
    lo = shard * n_chunks // shards
    hi = (shard + 1) * n_chunks // shards
    return ShardPlan(shard, shards, min(lo * chunk_cells, n_rows), min(hi * chunk_cells, n_rows), chunk_cells)


def shard_paths(out_dir: Path, shard: int) -> dict[str, Path]:
    stem = out_dir / f"cells-{shard:03d}"
    return {"vectors": stem.with_suffix(".npy"), "ids": Path(f"{stem}.ids.npy"),
            "excluded": Path(f"{stem}.excluded.parquet"), "info": Path(f"{stem}.json"),
            "work": out_dir / f".cells-{shard:03d}.work"}


class CellChunks(torch.utils.data.IterableDataset):
    """Batches of uint8 LOD patches of chunks of cells; each worker takes whole chunks."""

    def __init__(self, index_path: Path, lods: LodSpec, lat: np.ndarray, lon: np.ndarray,
                 chunks: list[tuple[int, int]], row0: int, batch_size: int, aerial_size: int, cache_mb: float = 256,
                 max_upsample: float | None = None):
        self.index_path, self.lods, self.lat, self.lon = index_path, lods, lat, lon
        self.chunks, self.row0, self.batch_size, self.aerial_size, self.cache_mb = chunks, row0, batch_size, aerial_size, cache_mb
        self.max_upsample = max_upsample

    def __iter__(self):
        import cv2

        from vglpipe.aerial.sampler import AerialSampler

        info = torch.utils.data.get_worker_info()
        mine = self.chunks if info is None else self.chunks[info.id::info.num_workers]
        P, n = self.lods.patch_px, self.lods.n_lods
        with AerialSampler(self.index_path, spec=self.lods, cache_mb=self.cache_mb,
                           max_upsample=self.max_upsample) as sampler:
            for c0, c1 in mine:
                sel = slice(c0 - self.row0, c1 - self.row0)
                patches = np.zeros((c1 - c0, n, P, P, 3), np.uint8)
                cov = np.zeros((c1 - c0, n), np.float32)
                upsampled = np.zeros((c1 - c0, n), bool)
                for part in sampler.sample_cells(self.lat[sel], self.lon[sel], batch_cells=256):
                    patches[part.index] = part.patches
                    cov[part.index] = part.coverage
                    upsampled[part.index] = part.upsampled
                if P != self.aerial_size:
                    s = self.aerial_size
                    patches = np.stack([[cv2.resize(p, (s, s), interpolation=cv2.INTER_AREA) for p in cell]
                                        for cell in patches]) if len(patches) else patches[:, :, :s, :s]
                yield c0, c1, torch.from_numpy(patches), torch.from_numpy(cov), torch.from_numpy(upsampled)


def _device_embed(model, images: torch.Tensor, aerial: bool, device: torch.device, amp: bool,
                  batch_size: int) -> np.ndarray:
    """Embeddings of uint8 images in batches of exactly ``batch_size`` (the last padded)."""
    out = []
    n = images.shape[0]
    for s in range(0, n, batch_size):
        x = images[s:s + batch_size]
        m = x.shape[0]
        if m < batch_size:  # pad: the same batch shapes whatever the split
            x = torch.cat([x, x[:1].expand(batch_size - m, *x.shape[1:])])
        x = x.to(device, non_blocking=True)
        x = model.preprocess(x, layout="channels_last")  # uint8 (..., H, W, 3) -> float (..., 3, H, W)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            e = model.embed_aerial(x) if aerial else model.embed_street(x)
        out.append(e[:m].float().cpu().numpy().astype(np.float16))
    return np.concatenate(out) if out else np.zeros((0, model.config.dim), np.float16)


def cell_vectors(model, patches: torch.Tensor, rotations: int, device: torch.device, amp: bool,
                 batch_size: int) -> np.ndarray:
    """(m, d) fp16 cell embeddings of uint8 (m, n, P, P, 3) patches, averaged over ``rotations`` turns (1, 2 or 4)."""
    if rotations not in (1, 2, 4):
        raise InputError(f"embed.aerial_rotations must be 1, 2 or 4 (quarter turns), got {rotations}")
    vec = _device_embed(model, patches, True, device, amp, batch_size)
    if rotations == 1 or len(vec) == 0:
        return vec
    vec = vec.astype(np.float32)
    norm = np.linalg.norm(vec, axis=1, keepdims=True)
    acc = vec / norm
    for k in range(1, rotations):
        turned = torch.rot90(patches, k * 4 // rotations, dims=(-3, -2)).contiguous()
        e = _device_embed(model, turned, True, device, amp, batch_size).astype(np.float32)
        acc += e / np.linalg.norm(e, axis=1, keepdims=True)
    return (acc / np.linalg.norm(acc, axis=1, keepdims=True) * norm).astype(np.float16)


def embed_cell_shard(model, weights_id: str, cells_path: Path, aerial_index: Path, lods: LodSpec, out_dir: Path,
                     shard: int, shards: int, chunk_cells: int, batch_size: int, min_coverage: float,
                     workers: int, device: torch.device, amp: bool, progress: bool = True,
                     max_upsample: float | None = None, rotations: int = 1) -> dict:
    """Embed shard ``shard`` of ``shards`` of a region's cells (resumable); returns its report."""
    cells = read_table(cells_path, ["id", "lat", "lon"])
    plan = plan_shard(cells.num_rows, shard, shards, chunk_cells)
    paths = shard_paths(out_dir, shard)
    work = paths["work"]
    work.mkdir(parents=True, exist_ok=True)
    stamp = {"weights_id": weights_id, "cells": str(cells_path), "rows": [plan.start, plan.stop],
             "chunk_cells": chunk_cells, "batch_size": batch_size, "min_coverage": min_coverage, "lods": lods.to_dict(),
             "rotations": rotations}
    stamp_file = work / "stamp.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) != stamp:
        log.warning("%s: finished chunks are from other settings or weights; starting the shard over", work)
        shutil.rmtree(work)
        work.mkdir(parents=True)
    atomic_write_text(stamp_file, json.dumps(stamp, sort_keys=True))
    done = {p.name for p in work.glob("chunk-*.npz")}
    todo = [c for c in plan.chunks if f"chunk-{c[0]:012d}.npz" not in done]
    if len(todo) < len(plan.chunks):
        log.info("resume: %d of %d chunks of shard %d already embedded", len(plan.chunks) - len(todo),
                 len(plan.chunks), shard)
    ids = cells["id"].to_numpy()[plan.start:plan.stop]
    lat = cells["lat"].to_numpy()[plan.start:plan.stop]
    lon = cells["lon"].to_numpy()[plan.start:plan.stop]
    ds = CellChunks(aerial_index, lods, lat, lon, todo, plan.start, batch_size, model.config.aerial_size,
                    max_upsample=max_upsample)
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=min(workers, len(todo)),
                                     pin_memory=device.type == "cuda", prefetch_factor=2 if workers and todo else None)
    t0 = time.perf_counter()
    bar = tqdm(total=plan.stop - plan.start, initial=(plan.stop - plan.start) - sum(c1 - c0 for c0, c1 in todo),
               desc=f"embed cells shard {shard}", unit="cell", disable=not progress, dynamic_ncols=True, mininterval=2)
    wait = 0.0
    tw = time.perf_counter()
    for c0, c1, patches, cov, upsampled in dl:
        wait += time.perf_counter() - tw
        keep = cov[:, 0].numpy() >= min_coverage
        vec = cell_vectors(model, patches[torch.from_numpy(keep)], rotations, device, amp, batch_size)
        with atomic_path(work / f"chunk-{c0:012d}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, ids=ids[c0 - plan.start:c1 - plan.start], keep=keep, vectors=vec, coverage=cov.numpy(),
                         upsampled=upsampled.numpy())
        bar.update(c1 - c0)
        tw = time.perf_counter()
    bar.close()
    seconds = time.perf_counter() - t0
    return _finish_shard(plan, paths, weights_id, lods, min_coverage, seconds, wait, model.config.dim, rotations)


def _finish_shard(plan: ShardPlan, paths: dict, weights_id: str, lods: LodSpec, min_coverage: float,
                  seconds: float, wait: float, dim: int, rotations: int) -> dict:
    vecs, kept_ids, ex_ids, ex_cov = [], [], [], []
    upsampled = np.zeros(lods.n_lods, np.int64)  # embedded cells per LOD whose patch is magnified too much
    for c0, _ in plan.chunks:
        with np.load(paths["work"] / f"chunk-{c0:012d}.npz") as z:
            keep = z["keep"]
            upsampled += z["upsampled"][keep].sum(axis=0)
            vecs.append(z["vectors"])
            kept_ids.append(z["ids"][keep])
            ex_ids.append(z["ids"][~keep])
            ex_cov.append(z["coverage"][~keep])
    vectors = np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float16)
    ids = np.concatenate(kept_ids) if kept_ids else np.zeros(0, np.int64)
    cov = np.concatenate(ex_cov) if ex_cov else np.zeros((0, lods.n_lods), np.float32)
    excluded = pa.table({"id": pa.array(np.concatenate(ex_ids) if ex_ids else np.zeros(0, np.int64), pa.int64()),
                         **{f"coverage_lod{i}": pa.array(cov[:, i], pa.float32()) for i in range(lods.n_lods)}})
    write_table(excluded, paths["excluded"], metadata={"min_coverage": min_coverage})
    _save_npy(paths["ids"], ids.astype(np.int64))
    n_cells = plan.stop - plan.start
    info = {"weights_id": weights_id, "shard": plan.index, "shards": plan.count, "rows": [plan.start, plan.stop],
            "cells": n_cells, "embedded": int(ids.size), "excluded_low_coverage": int(excluded.num_rows),
            "upsampled_cells_per_lod": upsampled.tolist(),
            "min_coverage": min_coverage, "rotations": rotations, "dim": int(vectors.shape[1]) if vectors.ndim == 2 else dim,
            "seconds": round(seconds, 2), "cells_per_s": round(n_cells / seconds, 1) if seconds > 0 else None,
            "data_wait_fraction": round(wait / seconds, 4) if seconds > 0 else None}
    atomic_write_text(paths["info"], json.dumps(info, indent=2, sort_keys=True) + "\n")
    _save_npy(paths["vectors"], vectors)  # the declared output, last
    shutil.rmtree(paths["work"], ignore_errors=True)
    if excluded.num_rows:
        log.warning("shard %d: %d of %d cells have LOD-0 coverage below %.2f and are not embedded (listed in %s)",
                    plan.index, excluded.num_rows, n_cells, min_coverage, paths["excluded"])
    if upsampled.any():
        log.warning("shard %d: embedded cells whose patch is upsampled beyond aerial.quality.max_upsample, per LOD: %s "
                    "(imagery coarser than the LOD needs)", plan.index, upsampled.tolist())
    log.info("shard %d: %d cells embedded in %.1f s (%.0f cells/s, data wait %.0f %%)", plan.index, ids.size,
             seconds, n_cells / max(seconds, 1e-9), 100 * wait / max(seconds, 1e-9))
    return info


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


class PhotoBatches(torch.utils.data.IterableDataset):
    """uint8 street views (letterboxed photos resized to the model input), in chunks of ids."""

    def __init__(self, photos_dir: Path, ids: np.ndarray, chunks: list[tuple[int, int]], size_hw: tuple[int, int]):
        self.photos_dir, self.ids, self.chunks, self.size_hw = photos_dir, ids, chunks, size_hw

    def __iter__(self):
        from vglpipe.store.photos import PhotoStore
        from vglpipe.train.data import street_image

        info = torch.utils.data.get_worker_info()
        mine = self.chunks if info is None else self.chunks[info.id::info.num_workers]
        with PhotoStore(self.photos_dir) as store:
            for c0, c1 in mine:
                imgs = [street_image(store.read(int(i)), int(i), self.size_hw) for i in self.ids[c0:c1]]
                yield c0, c1, torch.from_numpy(np.stack(imgs))


def embed_photos(model, weights_id: str, photos_dir: Path, photo_cells: Path, out_dir: Path, chunk: int,
                 batch_size: int, workers: int, device: torch.device, amp: bool, progress: bool = True) -> dict:
    """Embed every photo of the region that the cells stage kept (inside the region), in image id order."""
    ids = np.sort(read_table(photo_cells, ["image_id"])["image_id"].to_numpy())
    chunks = [(s, min(s + chunk, ids.size)) for s in range(0, ids.size, chunk)]
    size = tuple(model.config.street_size)
    dl = torch.utils.data.DataLoader(PhotoBatches(photos_dir, ids, chunks, size), batch_size=None,
                                     num_workers=min(workers, len(chunks)), pin_memory=device.type == "cuda")
    vecs = [None] * len(chunks)
    t0 = time.perf_counter()
    for c0, c1, imgs in tqdm(dl, total=len(chunks), desc="embed photos", unit="chunk", disable=not progress):
        vecs[c0 // chunk] = _device_embed(model, imgs, False, device, amp, batch_size)
    seconds = time.perf_counter() - t0
    vectors = np.concatenate(vecs) if vecs else np.zeros((0, model.config.dim), np.float16)
    info = {"weights_id": weights_id, "photos": int(ids.size), "dim": int(model.config.dim),
            "seconds": round(seconds, 2), "photos_per_s": round(ids.size / seconds, 1) if seconds > 0 else None}
    _save_npy(out_dir / "photos.ids.npy", ids.astype(np.int64))
    atomic_write_text(out_dir / "photos.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    _save_npy(out_dir / "photos.npy", vectors)
    return info


def read_embeddings(vectors_path: str | os.PathLike, expect_weights_id: str | None = None):
    """(vectors memmap, ids, info) of an embedding array written here; refuses other weights."""
    vectors_path = Path(vectors_path)
    info_path = vectors_path.with_suffix(".json")
    ids_path = Path(str(vectors_path)[: -len(".npy")] + ".ids.npy")
    try:
        info = json.loads(info_path.read_text())
        vectors = np.load(vectors_path, mmap_mode="r")
        ids = np.load(ids_path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{vectors_path}: cannot read embeddings ({exc})") from None
    if vectors.shape[0] != ids.shape[0]:
        raise InputError(f"{vectors_path}: {vectors.shape[0]} vectors but {ids.shape[0]} ids in {ids_path}")
    if expect_weights_id is not None and info.get("weights_id") != expect_weights_id:
        raise InputError(f"{vectors_path}: embedded with weights {info.get('weights_id')}, expected {expect_weights_id}")
    return vectors, ids, info
