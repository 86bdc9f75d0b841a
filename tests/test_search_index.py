"""Cell indexes: agreement with exact search on realistic embeddings, stored meta, atomic builds,
shard validation, streaming search with bounded memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from vglpipe.errors import ConfigError, InputError
from vglpipe.search import CellIndex, IndexSpec, build_index, read_info
from vglpipe.search import kinds
from vglpipe.search.spec import recommended_spec
from vglpipe.search.synthetic import CellField, make_cells, make_queries, write_shards

N, DIM, QUERIES = 20_000, 256, 400
META = {"checkpoint": "sha-A", "layout": {"kind": "consistent", "cell_m": 30.0}}


#: The tests' base parameters (small, plain-HNSW like the paper's); each test states what differs.
BASE = dict(hnsw_m=64, ef_construction=40, ef_search=512, hnsw_storage="fp16", entry_points=0, entry_probe=8,
            seed_search="separate", nlist=256, quantizer_m=32, quantizer_ef=128, pq_m=64, pq_nbits=8, opq=False,
            nprobe=16, rerank=64, train_size=100_000, seed=0)


def make_spec(kind: str, **overrides) -> IndexSpec:
    return IndexSpec(kind=kind, **{**BASE, **overrides})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """20k spatially correlated 256-d cells in 3 fp16 shards, 400 noisy queries, exact top-10."""
    root = tmp_path_factory.mktemp("search")
    cells = make_cells(N)
    field = CellField(DIM, seed=3)
    shards = write_shards(cells, field, root / "shards", n_shards=3)
    vectors = np.concatenate([np.load(v) for v, _ in shards])
    queries = make_queries(cells, vectors, field, QUERIES, seed=5)
    build_index(shards, make_spec("flat"), root / "flat", META)
    exact = CellIndex.load(root / "flat").search(queries.vectors, 10)
    return {"root": root, "cells": cells, "shards": shards, "vectors": vectors, "queries": queries, "exact": exact}


def _build(data, name: str, spec: IndexSpec) -> CellIndex:
    path = data["root"] / name
    if not path.exists():
        build_index(data["shards"], spec, path, META)
    return CellIndex.load(path, expect={"checkpoint": "sha-A"})


HNSW = make_spec("hnsw", hnsw_m=32, ef_construction=80, ef_search=64, entry_points=512, entry_probe=8)
COMPRESSED = make_spec("compressed", nlist=128, pq_m=32, nprobe=8, rerank=64, train_size=5_000)


# ----------------------------------------------------------------------------- agreement with exact search


def test_exact_search_is_exact(data):
    """The flat index's top-10 equals a brute-force numpy computation."""
    q = data["queries"].vectors[:50]
    scores = q @ data["vectors"].astype(np.float32).T
    top = np.argsort(-scores, axis=1)[:, :10]
    ids = np.concatenate([np.load(i) for _, i in data["shards"]])
    assert np.array_equal(data["exact"].ids[:50, 0], ids[top[:, 0]])
    np.testing.assert_allclose(data["exact"].scores[:50], np.take_along_axis(scores, top, 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seeds", [{"seed_search": "separate"}, {"seed_search": "joint", "ef_search": 256}])
def test_hnsw_agrees_with_exact(data, seeds):
    index = _build(data, "hnsw", HNSW)
    index.configure(**seeds)
    result = index.search(data["queries"].vectors, 10)
    exact = data["exact"]
    assert np.mean(result.ids[:, 0] == exact.ids[:, 0]) >= 0.98
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(result.ids, exact.ids)])
    assert overlap >= 0.9
    # returned scores are the true inner products, best first
    assert np.all(np.diff(result.scores, axis=1) <= 1e-6)
    np.testing.assert_allclose(index.exact_scores(data["queries"].vectors[0], result.ids[0]), result.scores[0], atol=1e-5)


def test_hnsw_entry_points_beat_plain_hnsw(data):
    """Seeding level 0 from entry cells finds the best cell where plain HNSW is stuck elsewhere."""
    plain = _build(data, "hnsw_plain", make_spec("hnsw", hnsw_m=32, ef_construction=80, ef_search=64))
    seeded = _build(data, "hnsw", HNSW)
    q, truth = data["queries"].vectors, data["exact"].ids[:, 0]
    plain_agree = np.mean(plain.search(q, 10).ids[:, 0] == truth)
    seeded_agree = np.mean(seeded.search(q, 10).ids[:, 0] == truth)
    assert seeded_agree > plain_agree


def test_hnsw_router_for_many_entry_points(data, monkeypatch):
    """Above FLAT_ROUTER_MAX entry cells the best ones are found with a small HNSW: same quality."""
    monkeypatch.setattr(kinds, "FLAT_ROUTER_MAX", 64)
    index = _build(data, "hnsw_router", HNSW)
    assert isinstance(index._searcher.router, kinds.faiss.IndexHNSW)
    result = index.search(data["queries"].vectors, 10)
    assert np.mean(result.ids[:, 0] == data["exact"].ids[:, 0]) >= 0.98


def test_compressed_top1_agrees_with_exact(data):
    index = _build(data, "compressed", COMPRESSED)
    result = index.search(data["queries"].vectors, 10)
    exact = data["exact"]
    assert np.mean(result.ids[:, 0] == exact.ids[:, 0]) >= 0.97
    # re-ranked scores are exact: where the ids agree, so do the scores
    same = result.ids == exact.ids
    np.testing.assert_allclose(result.scores[same], exact.scores[same], rtol=1e-5, atol=1e-6)
    info = index.info
    assert info.ram_bytes_per_cell < 32 + 8 + 8 + 40  # PQ codes + IVF id + cell id + (small) quantizer share
    assert N * DIM * 2 <= info.disk_vector_bytes < N * DIM * 2 + 4096  # + .npy header


def test_compressed_without_rerank_is_worse(data):
    """The exact re-ranking matters: with a shortlist of 1 (PQ order only) agreement drops."""
    index = _build(data, "compressed", COMPRESSED)
    q, truth = data["queries"].vectors, data["exact"].ids[:, 0]
    index.configure(rerank=1)
    pq_only = np.mean(index.search(q, 1).ids[:, 0] == truth)
    index.configure(rerank=COMPRESSED.rerank)
    assert pq_only < np.mean(index.search(q, 1).ids[:, 0] == truth)


def test_compressed_with_opq(tmp_path):
    cells = make_cells(2048)
    field = CellField(64, seed=1)
    shards = write_shards(cells, field, tmp_path / "shards", n_shards=1)
    vectors = np.load(shards[0][0])
    q = make_queries(cells, vectors, field, 100).vectors
    spec = make_spec("compressed", nlist=16, pq_m=8, opq=True, nprobe=8, rerank=32, train_size=2048)
    build_index(shards, spec, tmp_path / "opq", {})
    result = CellIndex.load(tmp_path / "opq").search(q, 1)
    truth = np.argmax(q @ vectors.astype(np.float32).T, axis=1)
    assert np.mean(result.ids[:, 0] == cells.ids[truth]) >= 0.95


@pytest.mark.parametrize(
    "spec, n",
    [
        (make_spec("flat"), 30),
        (make_spec("hnsw", hnsw_m=8), 30),
        (make_spec("hnsw", hnsw_m=8, entry_points=4), 30),
        (make_spec("compressed", nlist=4, pq_m=4, nprobe=4, rerank=400, train_size=300), 300),
    ],
    ids=["flat", "hnsw", "hnsw-entries", "compressed"],
)
def test_padding_when_k_exceeds_cells(tmp_path, spec, n):
    cells = make_cells(n)
    shards = write_shards(cells, CellField(16, seed=0), tmp_path / "shards", n_shards=1)
    q = np.load(shards[0][0])[:3].astype(np.float32)
    build_index(shards, spec, tmp_path / "idx", {})
    result = CellIndex.load(tmp_path / "idx").search(q, n + 10)
    assert result.ids.shape == (3, n + 10)
    assert np.all(result.ids[:, n:] == -1) and np.all(np.isneginf(result.scores[:, n:]))
    assert np.all(result.ids[:, :n] >= 0) and np.all(np.isfinite(result.scores[:, :n]))
    assert np.array_equal(result.ids[:, 0], cells.ids[:3])  # each query is a cell's own vector


def test_compressed_needs_enough_cells_for_pq(tmp_path):
    shards = write_shards(make_cells(30), CellField(16, seed=0), tmp_path / "shards", n_shards=1)
    with pytest.raises(ConfigError, match="at least 256 cells.*use kind 'flat'"):
        build_index(shards, make_spec("compressed", nlist=4, pq_m=4), tmp_path / "idx", {})


def test_compressed_ties_ordered_by_position(tmp_path):
    """Cells with identical vectors score the same; the compressed index orders them by position."""
    rng = np.random.default_rng(0)
    v = rng.standard_normal((64, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v[40] = v[7]  # a duplicate embedding
    np.save(tmp_path / "v.npy", v.astype(np.float16))
    np.save(tmp_path / "i.npy", np.arange(64, dtype=np.int64)[::-1].copy())  # ids descending
    spec = make_spec("compressed", nlist=4, pq_m=4, pq_nbits=4, nprobe=4, rerank=64, train_size=64)
    build_index([(tmp_path / "v.npy", tmp_path / "i.npy")], spec, tmp_path / "idx", {})
    result = CellIndex.load(tmp_path / "idx").search(v[7:8].astype(np.float32), 2)
    assert result.scores[0, 0] == result.scores[0, 1]
    assert list(result.ids[0]) == [63 - 7, 63 - 40]  # position 7 before position 40


# ----------------------------------------------------------------------------- meta, checkpoint tags, atomic builds


def test_meta_is_stored_and_other_checkpoints_are_refused(data):
    path = data["root"] / "flat"
    doc = json.loads((path / "index.json").read_text())
    assert doc["meta"] == META and doc["spec"]["kind"] == "flat"
    assert doc["n_cells"] == N and doc["dim"] == DIM
    assert read_info(path).meta == META
    CellIndex.load(path, expect={"checkpoint": "sha-A", "layout": META["layout"]})
    with pytest.raises(InputError, match=r"checkpoint='sha-A'.*'sha-B'"):
        CellIndex.load(path, expect={"checkpoint": "sha-B"})
    with pytest.raises(InputError, match="settings_hash"):
        CellIndex.load(path, expect={"settings_hash": "x"})  # not stored at all


def test_failed_build_leaves_no_index_and_keeps_the_old_one(data, monkeypatch, tmp_path):
    target = tmp_path / "idx"
    with pytest.raises(InputError, match="no finished cell index"):
        CellIndex.load(target)

    def broken(shards, spec, tmp, add_chunk):
        (tmp / "index.faiss").write_bytes(b"partial")
        raise RuntimeError("killed")

    monkeypatch.setitem(kinds.BUILDERS, "flat", broken)  # the dict build_index uses
    with pytest.raises(RuntimeError):
        build_index(data["shards"], make_spec("flat"), target, META)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    build_index(data["shards"][:1], make_spec("flat"), target, {"checkpoint": "old"})
    monkeypatch.setitem(kinds.BUILDERS, "flat", broken)
    with pytest.raises(RuntimeError):
        build_index(data["shards"], make_spec("flat"), target, {"checkpoint": "new"})
    assert CellIndex.load(target, expect={"checkpoint": "old"}).info.n_cells < N


def test_killed_build_is_not_mistaken_for_an_index(data, tmp_path):
    """SIGKILL in the middle of a build: only a hidden temporary directory remains."""
    target = tmp_path / "idx"
    script = textwrap.dedent(f"""
        import time
        from vglpipe.search import build_index, shards
        from vglpipe.search.spec import recommended_spec
        real = shards.ShardSet.chunks
        def slow(self, chunk):
            for item in real(self, chunk):
                yield item
                time.sleep(60)
        shards.ShardSet.chunks = slow
        build_index({[(str(v), str(i)) for v, i in data["shards"]]!r}, recommended_spec("flat", 1), {str(target)!r}, {{}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".idx.tmp-") and (p / "ids.npy").exists() for p in tmp_path.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, "build did not start"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not target.exists()
    with pytest.raises(InputError, match="no finished cell index"):
        CellIndex.load(target)
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".idx.tmp-")


def test_truncated_index_file_is_refused(data, tmp_path):
    build_index(data["shards"][:1], make_spec("flat"), tmp_path / "idx", {})
    with open(tmp_path / "idx" / "index.faiss", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(InputError, match="index.faiss: missing or not the size"):
        CellIndex.load(tmp_path / "idx")


# ----------------------------------------------------------------------------- shard validation


def _shard(tmp: Path, name: str, rows: int, dim: int, ids=None, dtype=np.float16):
    v, i = tmp / f"{name}.npy", tmp / f"{name}-ids.npy"
    np.save(v, np.ones((rows, dim), dtype))
    np.save(i, np.arange(rows, dtype=np.int64) if ids is None else ids)
    return v, i


def test_shard_errors_name_the_file(tmp_path):
    a = _shard(tmp_path, "a", 10, 8)
    cases = [
        ([a, _shard(tmp_path, "b", 10, 16, ids=np.arange(10, 20))], r"b\.npy: embedding dim 16 differs from .*a\.npy"),
        ([a, _shard(tmp_path, "c", 10, 8, ids=np.arange(10, 15))], r"c-ids\.npy: 5 cell ids for 10 rows"),
        ([_shard(tmp_path, "d", 10, 8, dtype=np.float32)], r"d\.npy: embeddings must be float16"),
        ([a, _shard(tmp_path, "e", 10, 8, ids=np.arange(5, 15))], r"cell id 5 appears twice \(.*a-ids\.npy and .*e-ids\.npy\)"),
        ([(tmp_path / "missing.npy", a[1])], r"missing\.npy"),
        ([_shard(tmp_path, "f", 10, 8, ids=np.arange(10, dtype=np.int32))], r"f-ids\.npy: cell ids must be a 1-D int64"),
        ([], "no embedding shards"),
    ]
    for shards, message in cases:
        with pytest.raises(InputError, match=message):
            build_index(shards, make_spec("flat"), tmp_path / "out", {})
    assert not (tmp_path / "out").exists()


def test_non_finite_vectors_are_reported(tmp_path):
    v, i = _shard(tmp_path, "a", 10, 8)
    x = np.load(v)
    x[7, 3] = np.nan
    np.save(v, x)
    with pytest.raises(InputError, match=r"a\.npy: row 7 is not finite"):
        build_index([(v, i)], make_spec("flat"), tmp_path / "out", {})


def test_spec_validation():
    with pytest.raises(ConfigError, match="kind"):
        make_spec("ivf")
    with pytest.raises(ConfigError, match="ef_search"):
        make_spec("hnsw", ef_search=0)
    with pytest.raises(ConfigError, match="unknown index setting"):
        IndexSpec.from_dict({"kind": "flat", "efsearch": 3})
    assert IndexSpec.from_dict(HNSW.to_dict()) == HNSW
    assert recommended_spec("compressed", 25_500_000).nlist == 16384
    assert recommended_spec("hnsw", 1_000_000).entry_points == 4096
    assert recommended_spec("compressed", 10**6).pq_m == 128 and recommended_spec("compressed", 10**6, dim=100).pq_m == 10


def test_pq_m_must_divide_dim(data, tmp_path):
    with pytest.raises(ConfigError, match="pq_m"):
        build_index(data["shards"], make_spec("compressed", pq_m=100), tmp_path / "x", {})


# ----------------------------------------------------------------------------- streaming search


def test_chunks_cover_all_queries_in_order(data):
    index = _build(data, "compressed", COMPRESSED)
    q = data["queries"].vectors
    whole = index.search(q, 5, chunk=10_000)
    parts = list(index.search_chunks(q, 5, chunk=64))
    assert [p.start for p in parts] == list(range(0, QUERIES, 64))
    assert np.array_equal(np.concatenate([p.ids for p in parts]), whole.ids)
    with pytest.raises(InputError, match=r"shape \(m, 256\)"):
        index.search(q[:, :100], 5)


@pytest.mark.parametrize("name", ["flat", "compressed"])
def test_search_memory_does_not_grow_with_queries(data, tmp_path, name):
    """Peak Python-visible memory of a chunked search is the same for 1k and 16k queries.

    The queries are an fp16 memmap; materialising them as float32 (16k x 256 x 4 = 16 MB), or
    all results at once (16k x 10 x 12 = 2 MB), would break the bound.
    """
    index = _build(data, name, make_spec("flat") if name == "flat" else COMPRESSED)
    rng = np.random.default_rng(0)
    path = tmp_path / "queries.npy"
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(16_000, DIM))
    big[:] = rng.standard_normal((16_000, DIM)).astype(np.float16)
    big.flush()
    del big

    def peak(m: int) -> int:
        queries = np.load(path, mmap_mode="r")[:m]
        tracemalloc.start()
        try:
            for part in index.search_chunks(queries, 10, chunk=100):
                assert part.ids.shape == (min(100, m - part.start), 10)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(1000), peak(16_000)
    assert large < 1_000_000  # ~100 queries' worth of float32 vectors and results, plus re-ranking of one
    assert large < 1.5 * small + 50_000


def test_exact_scores_and_unknown_ids(data):
    index = _build(data, "compressed", COMPRESSED)
    q = data["queries"].vectors[3]
    some = data["cells"].ids[[5, 17, 900]]
    expected = data["vectors"][[5, 17, 900]].astype(np.float32) @ q
    np.testing.assert_allclose(index.exact_scores(q, some), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        _build(data, "hnsw", HNSW).exact_scores(q, some), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="cell id 12345 is not in the index"):
        index.exact_scores(q, [12345])
    with pytest.raises(ValueError, match="not search-time"):
        index.configure(nlist=3)
