"""The three index kinds: how each is built into a directory, and searched once loaded.

Every builder reads the shards in chunks of ``add_chunk`` rows, writes its files into
``tmp`` (a directory that :func:`vglpipe.search.index.build_index` publishes when the build
is complete) and returns details for ``index.json``. Every searcher returns
``(scores, positions)``, positions being rows of the index's ``ids.npy`` (-1 where fewer
than k results exist).

GPUs (``faiss.get_num_gpus() > 0``, faiss-gpu builds) are used where they only change the
speed: k-means training and exact (flat) searches. The graph and codes are built on the
CPU either way, so a GPU machine builds the same kind of index, with equal results up to
floating-point rounding in k-means.

Files: ``index.faiss`` (all kinds); ``entries.npy`` + ``router.faiss`` (hnsw with entry
points); ``vectors.f16.npy`` (compressed: the fp16 vectors for exact re-ranking).
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from vglpipe.errors import ConfigError
from vglpipe.search.shards import ShardSet
from vglpipe.search.spec import IndexSpec

IP = faiss.METRIC_INNER_PRODUCT
FLAT_ROUTER_MAX = 8192  # more entry points than this are routed through a small HNSW


# ----------------------------------------------------------------------------- GPU / training


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def kmeans(x: np.ndarray, k: int, seed: int, niter: int = 10) -> np.ndarray:
    """Spherical k-means centroids (float32, unit norm); on the GPUs when faiss has them."""
    if k > x.shape[0]:
        raise ConfigError(f"cannot train {k} clusters from {x.shape[0]} vectors (lower nlist/entry_points)")
    km = faiss.Kmeans(x.shape[1], k, niter=niter, spherical=True, seed=seed, gpu=gpu_count() > 0)
    km.train(np.ascontiguousarray(x))
    return km.centroids


def _flat(dim: int) -> faiss.Index:
    """Exact inner-product index, moved to the GPUs when faiss has them (same results)."""
    index = faiss.IndexFlatIP(dim)
    return faiss.index_cpu_to_all_gpus(index) if gpu_count() > 0 else index


def _add_all(index: faiss.Index, shards: ShardSet, add_chunk: int, on_chunk=None) -> None:
    for start, x in shards.chunks(add_chunk):
        index.add(x)
        if on_chunk is not None:
            on_chunk(start, x)


# ----------------------------------------------------------------------------- flat


def build_flat(shards: ShardSet, spec: IndexSpec, tmp: Path, add_chunk: int) -> dict:
    index = faiss.IndexFlatIP(shards.dim)
    _add_all(index, shards, add_chunk)
    faiss.write_index(index, str(tmp / "index.faiss"))
    return {}


class FlatSearcher:
    def __init__(self, directory: Path, spec: IndexSpec):
        self.index = faiss.read_index(str(directory / "index.faiss"))
        self.searching = faiss.index_cpu_to_all_gpus(self.index) if gpu_count() > 0 else self.index

    def configure(self, spec: IndexSpec) -> None:
        pass

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.searching.search(x, k)

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        return _reconstruct(self.index, positions)


def _reconstruct(index: faiss.Index, positions: np.ndarray) -> np.ndarray:
    return index.reconstruct_batch(np.asarray(positions, dtype=np.int64))


# ----------------------------------------------------------------------------- hnsw


def build_hnsw(shards: ShardSet, spec: IndexSpec, tmp: Path, add_chunk: int) -> dict:
    d = shards.dim
    if spec.hnsw_storage == "fp16":
        index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_fp16, spec.hnsw_m, IP)
    else:
        index = faiss.IndexHNSWFlat(d, spec.hnsw_m, IP)
    index.hnsw.efConstruction = spec.ef_construction
    _add_all(index, shards, add_chunk)
    faiss.write_index(index, str(tmp / "index.faiss"))
    return {"entry_cells": _build_entries(shards, spec, tmp) if spec.entry_points > 0 else 0}


def _build_entries(shards: ShardSet, spec: IndexSpec, tmp: Path) -> int:
    """Entry cells: for each k-means centroid of a sample, the sampled cell nearest to it."""
    positions, sample = shards.sample(max(spec.train_size, 2 * spec.entry_points), spec.seed)
    centroids = kmeans(sample, min(spec.entry_points, positions.size), spec.seed)
    nearest = _flat(shards.dim)
    nearest.add(sample)
    _, rows = nearest.search(centroids, 1)
    rows = np.unique(rows[:, 0])
    rows = rows[rows >= 0]
    np.save(tmp / "entries.npy", positions[rows])
    faiss.write_index(_router(sample[rows]), str(tmp / "router.faiss"))
    return int(rows.size)


def _router(vectors: np.ndarray) -> faiss.Index:
    """Index over the entry cells' vectors: exact when small, else a small HNSW."""
    if vectors.shape[0] <= FLAT_ROUTER_MAX:
        router = faiss.IndexFlatIP(vectors.shape[1])
    else:
        router = faiss.IndexHNSWFlat(vectors.shape[1], 32, IP)
        router.hnsw.efConstruction = 200
    router.add(vectors)
    return router


class HnswSearcher:
    """faiss HNSW; with entry points, a level-0 search seeded from the best entry cells.

    Why entry points: plain HNSW descends its upper levels greedily to one region of the
    graph. A photo's embedding is similar to several far-apart places (its own and look-alike
    ones); level 0 links are local, so the search stays in whichever region it reached first
    and misses the best cell when it lies in another. Scoring a few thousand spread-out entry
    cells first and starting from the best few covers all those regions.
    """

    def __init__(self, directory: Path, spec: IndexSpec):
        self.index = faiss.read_index(str(directory / "index.faiss"))
        self.entries = None
        if (directory / "entries.npy").exists():
            self.entries = np.load(directory / "entries.npy").astype(np.int32)
            self.router = faiss.read_index(str(directory / "router.faiss"))
        self.configure(spec)

    def configure(self, spec: IndexSpec) -> None:
        self.index.hnsw.efSearch = spec.ef_search
        self.probe = spec.entry_probe
        self.search_type = {"separate": 1, "joint": 2}[spec.seed_search]  # faiss' search_level_0 codes
        if self.entries is not None:
            self.probe = min(spec.entry_probe, self.entries.size)
            if isinstance(self.router, faiss.IndexHNSW):
                self.router.hnsw.efSearch = max(64, 4 * self.probe)

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.entries is None:
            return self.index.search(x, k)
        m = x.shape[0]
        entry_scores, entry_rows = self.router.search(x, self.probe)
        nearest = np.where(entry_rows >= 0, self.entries[np.maximum(entry_rows, 0)], -1).astype(np.int32)
        # faiss takes the seeds' similarities as they are (not negated) for inner product.
        entry_scores = np.ascontiguousarray(entry_scores, dtype=np.float32)
        scores = np.empty((m, k), np.float32)
        labels = np.empty((m, k), np.int64)
        self.index.search_level_0(
            m, faiss.swig_ptr(x), k, faiss.swig_ptr(nearest), faiss.swig_ptr(entry_scores),
            faiss.swig_ptr(scores), faiss.swig_ptr(labels), self.probe, self.search_type,
        )
        return scores, labels

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        return _reconstruct(self.index, positions)


# ----------------------------------------------------------------------------- compressed


def build_compressed(shards: ShardSet, spec: IndexSpec, tmp: Path, add_chunk: int) -> dict:
    d = shards.dim
    if d % spec.pq_m:
        raise ConfigError(f"index pq_m ({spec.pq_m}) must divide the embedding dim ({d})")
    _, sample = shards.sample(spec.train_size, spec.seed)
    if sample.shape[0] < 2**spec.pq_nbits:
        raise ConfigError(
            f"a compressed index needs at least {2**spec.pq_nbits} cells to train its PQ codebooks "
            f"(pq_nbits {spec.pq_nbits}), got {sample.shape[0]}; use kind 'flat' for small regions"
        )
    opq = None
    if spec.opq:
        opq = faiss.OPQMatrix(d, spec.pq_m)
        opq.niter = 20  # faiss default 50; the rotation converges well before at these sizes
        opq.train(sample)
        sample = opq.apply(sample)
    quantizer = faiss.IndexHNSWFlat(d, spec.quantizer_m, IP)
    quantizer.hnsw.efConstruction = 200
    quantizer.add(kmeans(sample, spec.nlist, spec.seed))
    quantizer.hnsw.efSearch = max(spec.quantizer_ef, 128)  # assignment of the cells: be thorough
    ivf = faiss.IndexIVFPQ(quantizer, d, spec.nlist, spec.pq_m, spec.pq_nbits, IP)
    ivf.train(sample)  # the quantizer is complete, so this trains the PQ codebooks only
    index = faiss.IndexPreTransform(opq, ivf) if opq is not None else ivf
    vectors = np.lib.format.open_memmap(tmp / "vectors.f16.npy", mode="w+", dtype=np.float16, shape=(shards.rows, d))

    def keep(start: int, x: np.ndarray, out: np.ndarray = vectors) -> None:
        out[start : start + x.shape[0]] = x

    _add_all(index, shards, add_chunk, keep)
    vectors.flush()
    del vectors, keep  # unmap before the directory is published
    faiss.write_index(index, str(tmp / "index.faiss"))
    # RAM that does not grow with the cells (centroids + their HNSW): for extrapolating
    return {"quantizer_bytes": len(faiss.serialize_index(quantizer))}


class CompressedSearcher:
    """IVF-PQ shortlist of ``rerank`` candidates, re-scored exactly from the fp16 vectors on disk.

    Results are ordered by exact score, ties by position (deterministic).
    """

    def __init__(self, directory: Path, spec: IndexSpec):
        self.index = faiss.read_index(str(directory / "index.faiss"))
        self.ivf = faiss.extract_index_ivf(self.index)
        self.quantizer = faiss.downcast_index(self.ivf.quantizer)
        self.stored = np.load(directory / "vectors.f16.npy", mmap_mode="r")
        self.configure(spec)

    def configure(self, spec: IndexSpec) -> None:
        self.ivf.nprobe = spec.nprobe
        self.quantizer.hnsw.efSearch = max(spec.quantizer_ef, spec.nprobe)
        self.rerank = spec.rerank

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        m = x.shape[0]
        _, shortlist = self.index.search(x, max(k, self.rerank))
        scores = np.full((m, k), -np.inf, np.float32)
        labels = np.full((m, k), -1, np.int64)
        for i in range(m):  # one query's candidates at a time: memory independent of the chunk
            scores[i], labels[i] = self._rerank_one(x[i], shortlist[i], k)
        return scores, labels

    def _rerank_one(self, q: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        cand = np.unique(candidates[candidates >= 0])  # sorted: sequential reads, ties by position
        s = np.einsum("sd,d->s", np.asarray(self.stored[cand], dtype=np.float32), q)  # no BLAS threads
        order = np.argsort(-s, kind="stable")[:k]
        out_s = np.full(k, -np.inf, np.float32)
        out_l = np.full(k, -1, np.int64)
        out_s[: order.size], out_l[: order.size] = s[order], cand[order]
        return out_s, out_l

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        order = np.argsort(positions)
        out = np.empty((positions.size, self.stored.shape[1]), np.float32)
        out[order] = self.stored[positions[order]]
        return out


BUILDERS = {"flat": build_flat, "hnsw": build_hnsw, "compressed": build_compressed}
SEARCHERS = {"flat": FlatSearcher, "hnsw": HnswSearcher, "compressed": CompressedSearcher}
