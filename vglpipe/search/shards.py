"""Embedding shards: fp16 ``(rows, dim)`` .npy files, each with an int64 cell-id array.

Shards are memory-mapped and read in chunks, so building an index never holds more than
one chunk (plus a training sample) of float32 vectors in memory. Every problem with a
shard is an :class:`~vglpipe.errors.InputError` whose message names the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vglpipe.errors import InputError

ShardPaths = Sequence[tuple[str | os.PathLike, str | os.PathLike]]


@dataclass(frozen=True)
class Shard:
    vectors: Path
    ids: Path
    rows: int
    start: int  # position of its first row among all shards


@dataclass(frozen=True)
class ShardSet:
    shards: tuple[Shard, ...]
    dim: int
    rows: int

    def chunks(self, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
        """(position of the first row, float32 vectors) over all shards, ``chunk`` rows at a time."""
        for shard in self.shards:
            vectors = _load(shard.vectors)
            for a in range(0, shard.rows, chunk):
                x = np.asarray(vectors[a : a + chunk], dtype=np.float32)
                bad = ~np.isfinite(x).all(axis=1)
                if bad.any():
                    raise InputError(f"{shard.vectors}: row {a + int(np.argmax(bad))} is not finite (NaN or inf)")
                yield shard.start + a, x

    def ids(self) -> np.ndarray:
        """All cell ids, in position order (int64)."""
        return np.concatenate([_load(s.ids) for s in self.shards]) if self.shards else np.zeros(0, np.int64)

    def rows_at(self, positions: np.ndarray) -> np.ndarray:
        """float32 vectors at sorted global ``positions``."""
        out = np.empty((positions.size, self.dim), np.float32)
        for shard in self.shards:
            lo, hi = np.searchsorted(positions, [shard.start, shard.start + shard.rows])
            if hi > lo:
                out[lo:hi] = _load(shard.vectors)[positions[lo:hi] - shard.start]
        return out

    def sample(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(sorted positions, float32 vectors) of ``min(n, rows)`` random rows."""
        rng = np.random.default_rng(seed)
        n = min(n, self.rows)
        positions = np.sort(rng.choice(self.rows, size=n, replace=False)).astype(np.int64)
        return positions, self.rows_at(positions)


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"embedding shard file not found: {path}") from None
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None


def open_shards(paths: ShardPaths) -> ShardSet:
    """Check every shard (shape, dtype, id count, duplicate ids) and return the set.

    Vectors must be 2-D float16 with the same dim in every shard; ids must be 1-D int64
    with one id per row, and no id may appear twice (in one shard or across shards).
    """
    if not paths:
        raise InputError("no embedding shards given")
    shards, dim, start = [], None, 0
    for vec_path, ids_path in paths:
        vec_path, ids_path = Path(vec_path), Path(ids_path)
        vectors, ids = _load(vec_path), _load(ids_path)
        if vectors.ndim != 2:
            raise InputError(f"{vec_path}: embeddings must be 2-D (rows, dim), got shape {vectors.shape}")
        if vectors.dtype != np.float16:
            raise InputError(f"{vec_path}: embeddings must be float16, got {vectors.dtype}")
        if dim is None:
            dim, first = vectors.shape[1], vec_path
        elif vectors.shape[1] != dim:
            raise InputError(f"{vec_path}: embedding dim {vectors.shape[1]} differs from {first} (dim {dim})")
        if ids.ndim != 1 or ids.dtype != np.int64:
            raise InputError(f"{ids_path}: cell ids must be a 1-D int64 array, got {ids.dtype} of shape {ids.shape}")
        if ids.size != vectors.shape[0]:
            raise InputError(f"{ids_path}: {ids.size} cell ids for {vectors.shape[0]} rows of {vec_path}")
        shards.append(Shard(vec_path, ids_path, int(vectors.shape[0]), start))
        start += int(vectors.shape[0])
    if dim == 0:
        raise InputError(f"{shards[0].vectors}: embeddings have dimension 0")
    if start == 0:
        raise InputError(f"embedding shards hold no cells ({shards[0].vectors}, ...)")
    shard_set = ShardSet(tuple(shards), int(dim), start)
    _check_unique(shard_set)
    return shard_set


def _check_unique(shard_set: ShardSet) -> None:
    ids = shard_set.ids()
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if dup.size:
        a, b = int(order[dup[0]]), int(order[dup[0] + 1])
        files = [s.ids for s in shard_set.shards for p in (a, b) if s.start <= p < s.start + s.rows]
        where = files[0] if files[0] == files[1] else f"{files[0]} and {files[1]}"
        raise InputError(f"cell id {int(ids[a])} appears twice ({where})")
