"""What index to build and how to search it: :class:`IndexSpec`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from vglpipe.errors import ConfigError

KINDS = ("flat", "hnsw", "compressed")
HNSW_STORAGE = ("fp16", "fp32")
SEED_SEARCH = ("separate", "joint")


@dataclass(frozen=True)
class IndexSpec:
    """Index kind and parameters, every value resolved (the config's defaults and 'auto' values
    become an IndexSpec in :func:`spec_for`; the schema holds the defaults).

    * ``flat``: exact inner product over float32 vectors in RAM (ablation-sized regions).
    * ``hnsw``: faiss HNSW graph (paper §4.3: M 64, efConstruction 40, efSearch 512) over the
      vectors in RAM (``hnsw_storage`` fp16 is lossless for fp16 embeddings and half of fp32).
      With ``entry_points`` > 0 the search starts on level 0 from the ``entry_probe`` best of
      that many entry cells (cells nearest to k-means centroids) instead of descending the
      upper levels from one entry point; 0 is plain faiss HNSW, as in the paper.
      ``seed_search`` "separate": one search of width ``ef_search`` from each seed, results
      merged; "joint": one search of width ``ef_search`` from all seeds at once (cheaper per
      unit of ef, but the best region's candidates crowd out the other seeds' regions).
    * ``compressed``: IVF (``nlist`` lists, HNSW coarse quantizer) over PQ codes
      (``pq_m`` bytes per cell at 8 bits, optional OPQ rotation) in RAM, plus an exact
      re-ranking of the best ``rerank`` candidates from the fp16 vectors memory-mapped from
      the index directory.

    ``neighbour_weight`` > 0 re-ranks the best max(k, ``rerank``) cells found by their score plus
    that share of their neighbours' mean score (:mod:`vglpipe.search.neighbours`; needs the
    layout in the index's meta).

    Search-time fields (``ef_search``, ``entry_probe``, ``seed_search``, ``nprobe``,
    ``quantizer_ef``, ``rerank``, ``neighbour_weight``) can be changed on a loaded index (:meth:`CellIndex.configure`).
    """

    kind: str
    # hnsw
    hnsw_m: int
    ef_construction: int
    ef_search: int
    hnsw_storage: str
    entry_points: int
    entry_probe: int
    seed_search: str
    # compressed
    nlist: int
    quantizer_m: int
    quantizer_ef: int
    pq_m: int
    pq_nbits: int
    opq: bool
    nprobe: int
    rerank: int
    # training (k-means for entry points and IVF lists, PQ/OPQ codebooks)
    train_size: int
    seed: int
    # search: neighbour scoring (vglpipe.search.neighbours); 0 in indexes built before it existed
    neighbour_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"index kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.hnsw_storage not in HNSW_STORAGE:
            raise ConfigError(f"index hnsw_storage must be one of {', '.join(HNSW_STORAGE)}, got {self.hnsw_storage!r}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "entry_probe", "nlist", "quantizer_m",
                     "quantizer_ef", "pq_m", "nprobe", "rerank", "train_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"index {name} must be >= 1, got {getattr(self, name)}")
        if self.seed_search not in SEED_SEARCH:
            raise ConfigError(f"index seed_search must be one of {', '.join(SEED_SEARCH)}, got {self.seed_search!r}")
        if not 0 <= self.neighbour_weight < float("inf"):
            raise ConfigError(f"index neighbour_weight must be >= 0, got {self.neighbour_weight}")
        if self.entry_points < 0:
            raise ConfigError(f"index entry_points must be >= 0, got {self.entry_points}")
        if not 1 <= self.pq_nbits <= 16:
            raise ConfigError(f"index pq_nbits must be within 1..16, got {self.pq_nbits}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> IndexSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown index setting(s): {', '.join(unknown)}")
        return cls(**d)

    def search_time(self) -> dict:
        """The fields that only affect search (not what is stored)."""
        return {k: getattr(self, k) for k in SEARCH_FIELDS}


SEARCH_FIELDS = ("ef_search", "entry_probe", "seed_search", "nprobe", "quantizer_ef", "rerank", "neighbour_weight")


def _pow2(x: float, lo: int, hi: int) -> int:
    return int(min(max(2 ** round(math.log2(max(x, 1.0))), lo), hi))


def _divisor_at_most(n: int, cap: int) -> int:
    """Largest divisor of n that is <= cap (PQ sub-vectors must split the dim evenly)."""
    return next(m for m in range(min(cap, n), 0, -1) if n % m == 0)


def spec_for(settings, kind: str, n_cells: int, dim: int) -> IndexSpec:
    """The IndexSpec of ``kind`` for an index over ``n_cells`` cells of ``dim`` dims, from the
    config's index settings (:class:`vglpipe.settings.IndexSettings`), 'auto' values resolved:

    * entry_points: one per ~256 cells, a power of two in 256 … 65,536 (1 M cells: 4,096);
    * nlist: ≈ 4·√n, a power of two in 64 … 65,536 (Massachusetts' 25.5 M cells: 16,384);
    * pq_m: dim/8 bytes per cell (rounded to a divisor of dim).
    """
    s = settings
    values = {f.name: getattr(s, f.name) for f in dataclasses.fields(IndexSpec) if f.name != "kind"}
    if values["entry_points"] == "auto":
        values["entry_points"] = _pow2(n_cells / 256, 256, 65536)
    if values["nlist"] == "auto":
        values["nlist"] = _pow2(4 * math.sqrt(max(n_cells, 1)), 64, 65536)
    if values["pq_m"] == "auto":
        values["pq_m"] = _divisor_at_most(dim, max(1, dim // 8))
    return IndexSpec(kind=kind, **values)


def recommended_spec(kind: str, n_cells: int, dim: int = 1024) -> IndexSpec:
    """The default settings' IndexSpec (what a config that names nothing builds; see the index benchmark).

    1 M cells x 1024-d (bench index): hnsw top-1 agreement with exact 0.990 at 1.9 ms/query
    (24 seeds; 16: 0.984 at 1.2 ms); compressed 1.000 at 0.85 ms/query, 163 B/cell of RAM
    (Massachusetts ≈ 3.8 GB RAM + 52 GB fp16 vectors on disk).
    """
    from vglpipe.settings import IndexSettings

    return spec_for(IndexSettings.defaults(), kind, n_cells, dim)
