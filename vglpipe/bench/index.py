"""Cell index benchmark: exact vs HNSW vs compressed search on realistic synthetic embeddings.

``--n`` cells (default 1,000,000) of the 30 m layout get ``--dim``-d spatially correlated
embeddings (:mod:`vglpipe.search.synthetic`: a smooth multi-scale random field plus
land-cover classes and per-cell detail, fp16 shards as the pipeline writes them);
``--queries`` photos are noisy views of random cells. Exact (flat) search is the ground
truth. For each index: build seconds (all cores), ms/query with ONE thread (faiss and the
re-ranking), top-1 agreement with exact search, RAM bytes per cell (the index files a
loaded index holds in RAM: faiss structures + cell ids; the compressed index's fp16 vectors
are memory-mapped from disk and reported separately) and the RAM Massachusetts (25.5 M
cells) would need. Indexes: the recommended HNSW (entry points), the paper's HNSW
(M 64, efConstruction 40, efSearch 512, fp32 vectors, plain faiss search) and the
compressed IVF-PQ index with exact re-ranking. ``--sweep`` also tries other search-time
settings on the built indexes.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

from vglpipe.bench._util import peak_rss_mb
from vglpipe.geo.layout import make_layout
from vglpipe.search import CellIndex, IndexSpec, build_index
from vglpipe.search.metrics import cell_centres, first_correct_rank, recall_at
from vglpipe.search.spec import recommended_spec
from vglpipe.search.synthetic import CellField, make_cells, make_queries, write_shards

MA_CELLS = 25_500_000


def _search_spec(kind: str, n_cells: int, dim: int = 1024) -> IndexSpec:
    """The recommended spec without neighbour scoring: this bench measures the nearest-neighbour search itself."""
    return replace(recommended_spec(kind, n_cells, dim), neighbour_weight=0.0)


PAPER_HNSW = replace(_search_spec("hnsw", 1), hnsw_m=64, ef_construction=40, ef_search=512, hnsw_storage="fp32",
                     entry_points=0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=1_000_000, help="cells (default 1,000,000)")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="where shards and indexes go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument("--skip", default="", help="comma list of indexes to skip: hnsw,paper,compressed")
    p.add_argument("--sweep", action="store_true", help="also try other search-time settings")
    g = p.add_argument_group("HNSW (defaults: recommended_spec)")
    for name in ("hnsw-m", "ef-construction", "ef-search", "entry-points", "entry-probe"):
        g.add_argument(f"--{name}", type=int, default=None)
    g.add_argument("--hnsw-storage", choices=("fp16", "fp32"), default=None)
    g.add_argument("--seed-search", choices=("separate", "joint"), default=None)
    g = p.add_argument_group("compressed (defaults: recommended_spec)")
    for name in ("nlist", "pq-m", "pq-nbits", "nprobe", "quantizer-ef", "rerank", "train-size"):
        g.add_argument(f"--{name}", type=int, default=None)
    g.add_argument("--opq", action=argparse.BooleanOptionalAction, default=None)


def _spec(kind: str, args: argparse.Namespace) -> IndexSpec:
    """The bench's spec for ``--n`` cells (:func:`_search_spec`), with any option given on the command line."""
    spec = _search_spec(kind, args.n, args.dim)
    given = {k: v for k, v in vars(args).items() if v is not None and k in spec.to_dict()}
    return replace(spec, **given)


def _timed_search(index: CellIndex, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """(ms per query with one thread, top-k ids)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.search(queries[: min(20, len(queries))], k)  # warm up (page cache, lazy tables)
        t0 = time.perf_counter()
        ids = index.search(queries, k, chunk=256).ids
        return (time.perf_counter() - t0) * 1e3 / len(queries), ids
    finally:
        faiss.omp_set_num_threads(threads)


def _r1(ids: np.ndarray, q) -> float:
    lat, lon = cell_centres(make_layout("consistent", 30.0), ids)
    return recall_at(first_correct_rank(lat, lon, q.lat, q.lon, 50.0), ids.shape[1], (1,))["R@1<50m"]


def _ma_gb(info, n: int) -> float:
    """RAM for Massachusetts: per-cell bytes scaled to 25.5 M cells, fixed parts (IVF centroids) for
    the recommended MA nlist. Entry points are assumed to scale with the cells."""
    if info.spec.kind != "compressed":
        return info.ram_bytes / n * MA_CELLS / 1e9
    fixed = info.details["quantizer_bytes"]
    per_cell = (info.ram_bytes - fixed) / n
    ma_nlist = recommended_spec("compressed", MA_CELLS).nlist
    return (per_cell * MA_CELLS + fixed * ma_nlist / info.spec.nlist) / 1e9


def _measure(name: str, spec: IndexSpec, shards, work: Path, queries, truth: np.ndarray, k: int) -> tuple[dict, CellIndex]:
    print(f"{name}: building {spec.kind} {_params(spec, spec.kind)}", flush=True)
    info = build_index(shards, spec, work / name, {"bench": "index"})
    index = CellIndex.load(work / name)
    ms, ids = _timed_search(index, queries.vectors, k)
    agree = float(np.mean(ids[:, 0] == truth[:, 0]))
    out = {
        "build_s": round(info.build_s, 1),
        "ms_per_query": round(ms, 3),
        "recall_vs_exact": round(agree, 4),
        "bytes_per_cell": round(info.ram_bytes_per_cell, 1),
        "ma_ram_gb": round(_ma_gb(info, len(index)), 1),
        "r1_50m": round(_r1(ids, queries), 4),
    }
    if info.disk_vector_bytes:
        out["disk_bytes_per_cell"] = round(info.disk_vector_bytes / len(index), 1)
    print(f"{name}: build {out['build_s']} s, {ms:.3f} ms/query (1 thread), top-1 agreement {agree:.4f}, "
          f"{out['bytes_per_cell']:.0f} B/cell in RAM"
          + (f" + {out['disk_bytes_per_cell']:.0f} B/cell on disk" if info.disk_vector_bytes else "")
          + f", Massachusetts ~{out['ma_ram_gb']} GB RAM; R@1<50m {out['r1_50m']}", flush=True)
    return out, index


def _sweep(name: str, index: CellIndex, queries, truth: np.ndarray, k: int, grid: list[dict]) -> list[dict]:
    rows = []
    for params in grid:
        index.configure(**params)
        ms, ids = _timed_search(index, queries.vectors, k)
        agree = float(np.mean(ids[:, 0] == truth[:, 0]))
        rows.append({**params, "ms_per_query": round(ms, 3), "recall_vs_exact": round(agree, 4)})
        print(f"  sweep {name} {params}: {ms:.3f} ms/query, agreement {agree:.4f}", flush=True)
    return rows


def run(args: argparse.Namespace) -> dict:
    skip = set(filter(None, args.skip.split(",")))
    work = Path(tempfile.mkdtemp(prefix="vgl-bench-index-", dir=args.workdir))
    k = 10
    try:
        t0 = time.perf_counter()
        cells = make_cells(args.n)
        field = CellField(args.dim, args.seed)
        shards = write_shards(cells, field, work / "shards")
        queries = make_queries(cells, _Shards(shards), field, args.queries, seed=args.seed + 1)
        print(f"data: {args.n:,} cells x {args.dim}-d fp16 in {len(shards)} shards, {args.queries:,} queries, "
              f"{time.perf_counter() - t0:.1f} s", flush=True)

        flat = build_index(shards, _search_spec("flat", 1), work / "flat", {"bench": "index"})
        exact = CellIndex.load(work / "flat")
        truth = exact.search(queries.vectors, k).ids
        r1_exact = _r1(truth, queries)
        print(f"exact: flat index built in {flat.build_s:.1f} s; R@1<50m of exact search {r1_exact:.4f}", flush=True)
        del exact
        shutil.rmtree(work / "flat")

        figures: dict = {"n_cells": args.n, "dim": args.dim, "queries": args.queries, "seed": args.seed,
                         "exact_r1_50m": round(r1_exact, 4)}
        sweeps: dict = {}
        if "hnsw" not in skip:
            spec = _spec("hnsw", args)
            out, index = _measure("hnsw", spec, shards, work, queries, truth, k)
            figures.update({f"hnsw_{key}": v for key, v in out.items()}, hnsw_spec=_params(spec, "hnsw"))
            if args.sweep:
                grid = [{"seed_search": "separate", "ef_search": e, "entry_probe": p}
                        for p in (4, 8, 16, 24, 32) for e in (16, 24, 32, 64)]
                grid += [{"seed_search": "joint", "ef_search": e, "entry_probe": 16} for e in (512, 1024, 2048)]
                sweeps["hnsw"] = _sweep("hnsw", index, queries, truth, k, grid)
            del index
            shutil.rmtree(work / "hnsw")
        if "paper" not in skip:
            out, index = _measure("paper_hnsw", PAPER_HNSW, shards, work, queries, truth, k)
            figures.update({f"paper_hnsw_{key}": v for key, v in out.items()}, paper_hnsw_spec=_params(PAPER_HNSW, "hnsw"))
            if args.sweep:
                sweeps["paper_hnsw"] = _sweep("paper_hnsw", index, queries, truth, k,
                                              [{"ef_search": e} for e in (128, 256, 1024, 2048)])
            del index
            shutil.rmtree(work / "paper_hnsw")
        if "compressed" not in skip:
            spec = _spec("compressed", args)
            out, index = _measure("compressed", spec, shards, work, queries, truth, k)
            figures.update({f"compressed_{key}": v for key, v in out.items()}, compressed_spec=_params(spec, "compressed"))
            if args.sweep:
                grid = [{"nprobe": p, "rerank": r} for p in (4, 8, 16, 32) for r in (16, 64, 256)]
                sweeps["compressed"] = _sweep("compressed", index, queries, truth, k, grid)
            del index
        if "hnsw" not in skip:
            figures["ma_ram_gb_hnsw"] = figures["hnsw_ma_ram_gb"]
        if "compressed" not in skip:
            figures["ma_ram_gb_compressed"] = figures["compressed_ma_ram_gb"]
            figures["ma_disk_gb_compressed_vectors"] = round(MA_CELLS * args.dim * 2 / 1e9, 1)
        if sweeps:
            figures["sweep"] = sweeps
        figures["peak_rss_mb"] = round(peak_rss_mb(), 1)
        print(f"peak RSS: {figures['peak_rss_mb']:,.0f} MiB")
        return figures
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _params(spec: IndexSpec, kind: str) -> dict:
    fields = {
        "hnsw": ("hnsw_m", "ef_construction", "ef_search", "hnsw_storage", "entry_points", "entry_probe", "seed_search"),
        "compressed": ("nlist", "quantizer_m", "quantizer_ef", "pq_m", "pq_nbits", "opq", "nprobe", "rerank", "train_size"),
    }[kind]
    return {f: getattr(spec, f) for f in fields}


class _Shards:
    """Row access across the fp16 shards (for making queries from cell vectors)."""

    def __init__(self, shards):
        self.parts = [np.load(v, mmap_mode="r") for v, _ in shards]
        self.starts = np.cumsum([0] + [p.shape[0] for p in self.parts])

    def __getitem__(self, rows):
        rows = np.asarray(rows)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((rows.size, self.parts[0].shape[1]), np.float32)
        for s, part in enumerate(self.parts):
            sel = which == s
            out[sel] = part[rows[sel] - self.starts[s]]
        return out
