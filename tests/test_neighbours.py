"""Neighbour scoring (index.neighbour_weight): a cell's score plus a share of its neighbours' mean
score, checked against a brute-force computation over every cell, on every index kind."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from vglpipe.errors import InputError
from vglpipe.geo.layout import make_layout, pack_ids
from vglpipe.geo.sphere import haversine_m
from vglpipe.search import CellIndex, build_index
from vglpipe.search.spec import recommended_spec

LAYOUT = make_layout("consistent", 30.0)


def grid(n_side: int, drop: float = 0.0, seed: int = 0):
    """Cell ids of an n_side x n_side patch near Boston, a share ``drop`` of them left out."""
    r0, c0 = LAYOUT.cell_of(np.array([42.36]), np.array([-71.06]))
    rows, cols = np.meshgrid(np.arange(n_side) + r0[0], np.arange(n_side) + c0[0], indexing="ij")
    ids = pack_ids(rows.ravel(), cols.ravel())
    keep = np.random.default_rng(seed).random(ids.size) >= drop
    return ids[keep]


def write_index(tmp_path, ids, vectors, kind="flat", weight=0.5, meta=None, **spec):
    np.save(tmp_path / "cells.npy", vectors.astype(np.float16))
    np.save(tmp_path / "cells.ids.npy", ids)
    s = dataclasses.replace(recommended_spec(kind, ids.size, vectors.shape[1]), neighbour_weight=weight, **spec)
    out = tmp_path / kind
    build_index([(str(tmp_path / "cells.npy"), str(tmp_path / "cells.ids.npy"))], s, out,
                {"layout": LAYOUT.describe()} if meta is None else meta)
    return CellIndex.load(out)


def brute_force(ids, vectors, queries, weight, pool, k):
    """Top-k of s + w * mean(neighbours' s) among each query's best ``pool`` cells by s, every
    score computed, neighbours = other cells of the index with centres within 45 m."""
    v = vectors.astype(np.float16).astype(np.float32)
    s = queries @ v.T
    lat, lon = LAYOUT.center_of_ids(ids)
    d = haversine_m(lat[:, None], lon[:, None], lat[None], lon[None])
    nb = (d <= 45.0) & ~np.eye(ids.size, dtype=bool)
    n = nb.sum(1)
    mean = np.where(n > 0, (s @ nb.T) / np.maximum(n, 1), s)
    top_ids, top_scores = [], []
    for i in range(queries.shape[0]):
        cand = np.argsort(-s[i], kind="stable")[:pool]
        agg = s[i, cand] + weight * mean[i, cand]
        best = cand[np.argsort(-agg, kind="stable")[:k]]
        top_ids.append(ids[best])
        top_scores.append(s[i, best] + weight * mean[i, best])
    return np.array(top_ids), np.array(top_scores)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "compressed"])
def test_search_equals_brute_force(tmp_path, kind):
    ids = grid(18, drop=0.15)  # missing cells: some neighbourhoods are incomplete
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(ids.size, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.normal(size=(25, 16)).astype(np.float32)
    index = write_index(tmp_path, ids, vectors, kind=kind, weight=0.7, rerank=40,
                        **({"ef_search": 512, "entry_points": 0} if kind == "hnsw" else {}),
                        **({"nlist": 4, "nprobe": 4, "pq_m": 16, "train_size": 1000} if kind == "compressed" else {}))
    res = index.search(queries, 10, chunk=7)
    want_ids, want_scores = brute_force(ids, vectors, queries, 0.7, pool=40, k=10)
    assert (res.ids == want_ids).mean() > 0.97  # float16 storage / float32 sums may swap a near tie
    np.testing.assert_allclose(res.scores, want_scores, rtol=1e-3, atol=1e-3)
    index.configure(neighbour_weight=0.0)
    plain = index.search(queries, 10)
    s = queries @ vectors.astype(np.float16).astype(np.float32).T
    assert (plain.ids == ids[np.argsort(-s, axis=1, kind="stable")[:, :10]]).mean() > 0.97


def test_agreeing_neighbours_beat_a_lone_look_alike(tmp_path):
    """Query q = e0. Cell A scores 0.9 and its 8 neighbours 0.6; a lone cell B far away scores
    0.95 among neighbours scoring 0. By its own score B is first; with neighbours, A is."""
    ids = grid(12)
    lat, lon = LAYOUT.center_of_ids(ids)
    rows, cols = np.divmod(np.arange(ids.size), 12)
    a, b = 2 * 12 + 2, 9 * 12 + 9
    score = np.zeros(ids.size, np.float32)
    score[(np.abs(rows - 2) <= 1) & (np.abs(cols - 2) <= 1)] = 0.6
    score[a], score[b] = 0.9, 0.95
    rng = np.random.default_rng(0)
    rest = rng.normal(size=(ids.size, 7)).astype(np.float32)
    rest *= np.sqrt(1 - score**2)[:, None] / np.linalg.norm(rest, axis=1, keepdims=True)
    vectors = np.concatenate([score[:, None], rest], axis=1)
    q = np.eye(8, dtype=np.float32)[:1]
    index = write_index(tmp_path, ids, vectors, weight=0.5)
    assert index.search(q, 3).ids[0, 0] == ids[a]
    np.testing.assert_allclose(index.search(q, 1).scores[0, 0], 0.9 + 0.5 * 0.6, atol=2e-3)
    index.configure(neighbour_weight=0.0)
    assert index.search(q, 3).ids[0, 0] == ids[b]


def test_small_index_pads_and_missing_layout_is_refused(tmp_path):
    ids = grid(2)  # 4 cells, every one the others' neighbour
    vectors = np.eye(4, 8, dtype=np.float32)
    res = write_index(tmp_path, ids, vectors).search(np.eye(1, 8, dtype=np.float32), 6)
    assert list(res.ids[0, 4:]) == [-1, -1] and np.isneginf(res.scores[0, 4:]).all()
    assert res.ids[0, 0] == ids[0]
    bare = write_index(tmp_path, ids, vectors, kind="hnsw", meta={"weights_id": "w"})
    with pytest.raises(InputError, match="no layout.*neighbour_weight 0"):
        bare.search(np.eye(1, 8, dtype=np.float32), 2)
    bare.configure(neighbour_weight=0.0)
    assert bare.search(np.eye(1, 8, dtype=np.float32), 2).ids[0, 0] == ids[0]


def test_an_index_built_before_neighbour_scoring_loads_with_it_off(tmp_path):
    ids = grid(3)
    index = write_index(tmp_path, ids, np.eye(9, 8, dtype=np.float32))
    doc_path = index.info.path / "index.json"
    doc = json.loads(doc_path.read_text())
    del doc["spec"]["neighbour_weight"]
    doc_path.write_text(json.dumps(doc))
    assert CellIndex.load(index.info.path).spec.neighbour_weight == 0.0
