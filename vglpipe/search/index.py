"""Build a cell index from embedding shards, load it, and search it.

An index is a directory::

    index.json        spec, caller's meta (layout, checkpoint, settings), counts, file sizes
    index.faiss       the faiss index (ids are positions 0..n-1)
    ids.npy           int64 cell id of each position
    ...               kind-specific files (see :mod:`vglpipe.search.kinds`)

A build writes into a hidden temporary directory beside the target and renames it into
place when every file is complete, ``index.json`` last; a killed build leaves only the
temporary directory, which :meth:`CellIndex.load` never mistakes for an index.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np

from vglpipe.errors import InputError
from vglpipe.search import neighbours
from vglpipe.search.kinds import BUILDERS, SEARCHERS
from vglpipe.search.shards import ShardPaths, open_shards
from vglpipe.search.spec import SEARCH_FIELDS, IndexSpec

FORMAT = 1
INFO_FILE = "index.json"
RAM_FILES = ("index.faiss", "ids.npy", "entries.npy", "router.faiss")  # what a loaded index holds in RAM
DISK_FILES = ("vectors.f16.npy",)  # memory-mapped, read at random while re-ranking


@dataclass(frozen=True)
class IndexInfo:
    path: Path
    spec: IndexSpec
    meta: dict
    n_cells: int
    dim: int
    ram_bytes: int  # faiss structures + ids, as held in RAM once loaded
    disk_vector_bytes: int  # fp16 vectors memory-mapped from disk (compressed kind), else 0
    build_s: float
    details: dict  # kind-specific: entry_cells (hnsw), quantizer_bytes (compressed)

    @property
    def ram_bytes_per_cell(self) -> float:
        return self.ram_bytes / max(self.n_cells, 1)


@dataclass(frozen=True)
class SearchResult:
    """Top-k cells per query, best first: ``ids[i, j]`` scored ``scores[i, j]`` (inner product).

    Where the index holds fewer than k cells (or the search found fewer), the row is
    padded with id -1 and score -inf. ``start`` is the index of the first query (chunks).
    """

    ids: np.ndarray  # (m, k) int64
    scores: np.ndarray  # (m, k) float32
    start: int = 0


# ----------------------------------------------------------------------------- build


def build_index(
    shards: ShardPaths,
    spec: IndexSpec,
    out_dir: str | os.PathLike,
    meta: dict,
    *,
    add_chunk: int = 65536,
) -> IndexInfo:
    """Build ``spec`` over the embedding shards ``[(vectors.npy, ids.npy), ...]`` into ``out_dir``.

    Vectors are read ``add_chunk`` rows at a time (memory-mapped fp16 → float32). ``meta``
    (JSON-able) is stored as given; :meth:`CellIndex.load` can require parts of it to match.
    An existing index at ``out_dir`` is replaced only once the new one is complete.
    """
    out_dir = Path(out_dir)
    meta_json = json.dumps(meta, sort_keys=True)  # fail before the work if meta is not JSON-able
    shard_set = open_shards(shards)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        np.save(tmp / "ids.npy", shard_set.ids())
        details = BUILDERS[spec.kind](shard_set, spec, tmp, add_chunk)
        build_s = time.perf_counter() - t0
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        doc = {
            "format": FORMAT,
            "spec": spec.to_dict(),
            "meta": json.loads(meta_json),
            "n_cells": shard_set.rows,
            "dim": shard_set.dim,
            "build_s": round(build_s, 3),
            "faiss_version": faiss.__version__,
            "files": files,
            "details": details,
        }
        (tmp / INFO_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        _fsync_dir_files(tmp)
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _info(out_dir, doc)


def _fsync_dir_files(directory: Path) -> None:
    for p in directory.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())


def _publish(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``; an old index there is moved aside first, then removed."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _info(directory: Path, doc: dict) -> IndexInfo:
    files = doc["files"]
    return IndexInfo(
        path=directory,
        spec=IndexSpec.from_dict(doc["spec"]),
        meta=doc["meta"],
        n_cells=doc["n_cells"],
        dim=doc["dim"],
        ram_bytes=sum(files.get(f, 0) for f in RAM_FILES),
        disk_vector_bytes=sum(files.get(f, 0) for f in DISK_FILES),
        build_s=doc["build_s"],
        details=doc.get("details", {}),
    )


# ----------------------------------------------------------------------------- load


def read_info(directory: str | os.PathLike) -> IndexInfo:
    """The stored description of a finished index; InputError if there is none."""
    return _info(Path(directory), _read_doc(Path(directory)))


def _read_doc(directory: Path) -> dict:
    path = directory / INFO_FILE
    if not path.is_file():
        raise InputError(f"{directory}: no finished cell index here ({INFO_FILE} missing: not built, or its build did not finish)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable index description ({exc})") from None
    if doc.get("format") != FORMAT:
        raise InputError(f"{path}: index format {doc.get('format')!r}, this vglpipe reads format {FORMAT}; rebuild the index")
    for name, size in doc["files"].items():
        f = directory / name
        if not f.is_file() or f.stat().st_size != size:
            raise InputError(f"{f}: missing or not the size recorded in {INFO_FILE} (incomplete or modified index); rebuild it")
    return doc


def check_meta(directory: Path, meta: dict, expect: dict | None) -> None:
    """InputError unless every key of ``expect`` is stored in ``meta`` with the same value."""
    for key, want in json.loads(json.dumps(expect or {})).items():  # compare as stored (JSON)
        have = meta.get(key, "<missing>")
        if have != want:
            raise InputError(
                f"{directory}: index was built with {key}={have!r}, but {want!r} was expected "
                "(queries and index must come from the same model and settings; rebuild the index)"
            )


class CellIndex:
    """A loaded index. ``CellIndex.load(dir, expect={"checkpoint": sha})`` to open one."""

    def __init__(self, info: IndexInfo):
        self.info = info
        self.spec = info.spec
        self.ids = np.load(info.path / "ids.npy")
        self._searcher = SEARCHERS[self.spec.kind](info.path, self.spec)
        self._id_order: np.ndarray | None = None  # argsort of ids, built on first exact_scores

    @classmethod
    def load(cls, directory: str | os.PathLike, expect: dict | None = None) -> CellIndex:
        """Open a finished index; refuse it (InputError) if its meta disagrees with ``expect``."""
        directory = Path(directory)
        doc = _read_doc(directory)
        check_meta(directory, doc["meta"], expect)
        return cls(_info(directory, doc))

    @property
    def meta(self) -> dict:
        return self.info.meta

    def __len__(self) -> int:
        return self.info.n_cells

    def configure(self, **search_fields) -> None:
        """Change search-time parameters (ef_search, entry_probe, seed_search, nprobe, quantizer_ef, rerank)."""
        unknown = sorted(set(search_fields) - set(SEARCH_FIELDS))
        if unknown:
            raise ValueError(f"not search-time parameters: {', '.join(unknown)}")
        self.spec = replace(self.spec, **search_fields)
        self._searcher.configure(self.spec)

    # -- search ------------------------------------------------------------------------

    def search_chunks(self, queries, k: int, chunk: int = 4096) -> Iterator[SearchResult]:
        """Top-k cells for ``queries`` (m, dim; float32/16, array or memmap), ``chunk`` at a time.

        Only one chunk of queries is converted and searched at once, so memory does not grow
        with m. Queries are used as given (normalise them like the cell embeddings).
        """
        self._check_queries(queries, k)
        w = self.spec.neighbour_weight
        layout = self._neighbour_layout() if w > 0 else None
        pool = min(max(k, self.spec.rerank), max(len(self), 1)) if w > 0 else k
        for a in range(0, queries.shape[0], chunk):
            x = np.ascontiguousarray(queries[a : a + chunk], dtype=np.float32)
            scores, positions = self._searcher.search(x, pool)
            ids, scores = self._to_ids(positions), _clean_scores(scores, positions)
            if layout is not None:
                ids, scores = neighbours.rescore(x, ids, scores, w, layout, self._positions_or_missing,
                                                 self._searcher.vectors)
                ids, scores = _pad(ids[:, :k], k, -1), _pad(scores[:, :k], k, -np.inf)
            yield SearchResult(ids, scores, a)

    def search(self, queries, k: int, chunk: int = 4096) -> SearchResult:
        """All results at once: :meth:`search_chunks` into (m, k) arrays."""
        m = queries.shape[0]
        ids, scores = np.empty((m, k), np.int64), np.empty((m, k), np.float32)
        for part in self.search_chunks(queries, k, chunk):
            n = part.ids.shape[0]
            ids[part.start : part.start + n], scores[part.start : part.start + n] = part.ids, part.scores
        return SearchResult(ids, scores)

    def exact_scores(self, query, cell_ids) -> np.ndarray:
        """Exact inner product of one query (dim,) with the given cells (e.g. all cells near it)."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.size != self.info.dim:
            raise InputError(f"query has dim {q.size}, the index at {self.info.path} has dim {self.info.dim}")
        positions = self.positions_of(cell_ids)
        return np.einsum("sd,d->s", self._searcher.vectors(positions), q)

    def positions_of(self, cell_ids) -> np.ndarray:
        """Row of each cell id in this index; InputError for an id it does not hold."""
        cell_ids = np.asarray(cell_ids, dtype=np.int64).reshape(-1)
        pos = self._positions_or_missing(cell_ids)
        if np.any(pos < 0):
            raise InputError(f"cell id {int(cell_ids[pos < 0][0])} is not in the index at {self.info.path}")
        return pos

    def _positions_or_missing(self, cell_ids) -> np.ndarray:
        """Row of each cell id in this index, -1 for an id it does not hold."""
        cell_ids = np.asarray(cell_ids, dtype=np.int64).reshape(-1)
        if self._id_order is None:
            self._id_order = np.argsort(self.ids, kind="stable")
        sorted_ids = self.ids[self._id_order]
        if sorted_ids.size == 0:
            return np.full(cell_ids.size, -1, np.int64)
        at = np.minimum(np.searchsorted(sorted_ids, cell_ids), sorted_ids.size - 1)
        return np.where(sorted_ids[at] == cell_ids, self._id_order[at], -1).astype(np.int64)

    def _neighbour_layout(self):
        from vglpipe.geo.layout import layout_from_description

        if "layout" not in self.meta:
            raise InputError(f"the index at {self.info.path} records no layout in its meta, which neighbour "
                             "scoring needs: search it with neighbour_weight 0")
        return layout_from_description(self.meta["layout"])

    # -- helpers -----------------------------------------------------------------------

    def _check_queries(self, queries, k: int) -> None:
        if getattr(queries, "ndim", None) != 2 or queries.shape[1] != self.info.dim:
            shape = getattr(queries, "shape", None)
            raise InputError(f"queries must have shape (m, {self.info.dim}) for the index at {self.info.path}, got {shape}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")

    def _to_ids(self, positions: np.ndarray) -> np.ndarray:
        return np.where(positions >= 0, self.ids[np.maximum(positions, 0)], -1)


def _pad(a: np.ndarray, k: int, fill) -> np.ndarray:
    """``a`` (m, <=k) padded on the right to (m, k) with ``fill``."""
    if a.shape[1] == k:
        return a
    out = np.full((a.shape[0], k), fill, a.dtype)
    out[:, : a.shape[1]] = a
    return out


def _clean_scores(scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return np.where(positions >= 0, scores, -np.inf).astype(np.float32, copy=False)
