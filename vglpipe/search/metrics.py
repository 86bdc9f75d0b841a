"""Localization recall R@N<r (paper §4.2), vectorized and streamable.

A retrieved cell is *correct* for a photo if the cell's centre lies within ``r`` metres
(great circle, ``distance <= r``) of the photo's position. A query is localized at
R@N<r if any of its top N cells is correct.

Everything is derived from one small integer per query and radius, its **first correct
rank**: the 1-based rank of the first correct cell among the k retrieved, or 0 if none
of the k is correct. So R@N<r = fraction of queries with 1 <= rank <= N, for any N <= k.

Conventions:

* Order: ranks follow the order the index returned. Cells with equal scores keep that
  order (faiss order for flat/hnsw; position order after the compressed index's exact
  re-ranking); no tie is broken in the query's favour.
* Padding: where an index holds (or found) fewer than k cells, its results are padded with
  id -1 / NaN centres; padding is never correct.
* N > k: R@N cannot be computed from a top-k list and raises ValueError, unless the top-k
  list held every cell of the index (``n_cells`` given and k >= n_cells): then the top N
  are all cells, and R@N = R@k.
* Streaming: ranks of successive query chunks can be concatenated (4 bytes per query), or
  summed into a :class:`RecallCounter` (k + 1 counters, whatever the number of queries).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from vglpipe.geo.sphere import haversine_m

DEFAULT_NS = (1, 5, 10, 50, 100)
#: Paper Fig. 6 shows only strata with at least 50k images.
DEFAULT_MIN_COUNT = 50_000


def recall_key(n: int, radius_m: float) -> str:
    """Column name of R@N<r, e.g. ``R@1<50m``."""
    return f"R@{n}<{radius_m:g}m"


# ----------------------------------------------------------------------------- ranks


def cell_centres(layout, ids) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) of cell ids from search results; NaN for padding ids (-1)."""
    ids = np.asarray(ids, dtype=np.int64)
    lat, lon = layout.center_of_ids(np.maximum(ids, 0))
    pad = ids < 0
    return np.where(pad, np.nan, lat), np.where(pad, np.nan, lon)


def first_correct_ranks(top_lat, top_lon, q_lat, q_lon, radii: Iterable[float]) -> dict[float, np.ndarray]:
    """{r: first correct rank (m,) int32} for each radius; distances are computed once.

    ``top_lat``/``top_lon`` (m, k): centres of each query's retrieved cells, best first
    (NaN = padding). ``q_lat``/``q_lon`` (m,): the photos' positions. Degrees.
    """
    top_lat = np.asarray(top_lat, dtype=np.float64)
    top_lon = np.asarray(top_lon, dtype=np.float64)
    if top_lat.ndim != 2 or top_lat.shape != top_lon.shape:
        raise ValueError(f"top_lat/top_lon must be (m, k) arrays of one shape, got {top_lat.shape}, {top_lon.shape}")
    q_lat = np.asarray(q_lat, dtype=np.float64).reshape(-1, 1)
    q_lon = np.asarray(q_lon, dtype=np.float64).reshape(-1, 1)
    if q_lat.shape[0] != top_lat.shape[0]:
        raise ValueError(f"{q_lat.shape[0]} query positions for {top_lat.shape[0]} result rows")
    dist = haversine_m(top_lat, top_lon, q_lat, q_lon)  # NaN for padding: never <= r
    out = {}
    for r in radii:
        within = dist <= r
        out[float(r)] = np.where(within.any(axis=1), within.argmax(axis=1) + 1, 0).astype(np.int32)
    return out


def first_correct_rank(top_lat, top_lon, q_lat, q_lon, radius_m: float) -> np.ndarray:
    """1-based rank of the first retrieved cell within ``radius_m`` of the photo; 0 if none (int32)."""
    return first_correct_ranks(top_lat, top_lon, q_lat, q_lon, [radius_m])[float(radius_m)]


# ----------------------------------------------------------------------------- recall


def _check_ns(ns: Sequence[int], k: int, n_cells: int | None) -> None:
    complete = n_cells is not None and k >= n_cells
    for n in ns:
        if n < 1:
            raise ValueError(f"N must be >= 1, got {n}")
        if n > k and not complete:
            raise ValueError(f"R@{n} needs the top {n} cells, but only the top {k} were retrieved")


def recall_at(
    first_rank,
    k: int,
    ns: Sequence[int] = DEFAULT_NS,
    radius_m: float = 50.0,
    n_cells: int | None = None,
) -> dict[str, float]:
    """{"R@N<rm": fraction of queries whose first correct rank is within 1..N} for each N.

    ``k``: how many cells were retrieved per query; ``n_cells``: cells in the index (lets
    N exceed k when the top-k list held them all). NaN when there are no queries.
    """
    counter = RecallCounter(k, radius_m, n_cells)
    counter.add(first_rank)
    return counter.recall(ns)


@dataclass
class RecallCounter:
    """Streaming R@N<r: add chunks of first correct ranks, read recalls at any time."""

    k: int
    radius_m: float = 50.0
    n_cells: int | None = None
    hist: np.ndarray = field(init=False)  # hist[j] = queries with first correct rank j (0 = none)

    def __post_init__(self) -> None:
        self.hist = np.zeros(self.k + 1, np.int64)

    @property
    def count(self) -> int:
        return int(self.hist.sum())

    def add(self, first_rank) -> None:
        ranks = np.asarray(first_rank).reshape(-1)
        if ranks.size and (ranks.min() < 0 or ranks.max() > self.k):
            raise ValueError(f"first correct ranks must be within 0..{self.k}")
        self.hist += np.bincount(ranks, minlength=self.k + 1)

    def merge(self, other: RecallCounter) -> None:
        if (other.k, other.radius_m) != (self.k, self.radius_m):
            raise ValueError("can only merge counters of the same k and radius")
        self.hist += other.hist

    def recall(self, ns: Sequence[int] = DEFAULT_NS) -> dict[str, float]:
        _check_ns(ns, self.k, self.n_cells)
        total = self.count
        hits = np.cumsum(self.hist[1:])  # hits[N-1] = queries localized within the top N
        return {
            recall_key(n, self.radius_m): float(hits[min(n, self.k) - 1] / total) if total else float("nan")
            for n in ns
        }


def recall_by(
    first_rank,
    keys: Mapping[str, Sequence] | pd.DataFrame,
    k: int,
    ns: Sequence[int] = DEFAULT_NS,
    radius_m: float = 50.0,
    min_count: int = DEFAULT_MIN_COUNT,
    n_cells: int | None = None,
) -> pd.DataFrame:
    """Recall per stratum (e.g. keys={"year": ..., "hour": ...}, one value per query).

    One row per distinct key combination present (sorted; missing keys form their own
    stratum), with ``count``, one column per R@N<r and ``low_count`` (count < min_count):
    small strata are flagged, not dropped.
    """
    _check_ns(ns, k, n_cells)
    ranks = np.asarray(first_rank).reshape(-1)
    df = pd.DataFrame(keys).reset_index(drop=True)
    if len(df) != ranks.size:
        raise ValueError(f"{len(df)} key rows for {ranks.size} ranks")
    names = list(df.columns)
    for n in ns:
        df[recall_key(n, radius_m)] = (ranks >= 1) & (ranks <= n)
    grouped = df.groupby(names, dropna=False, sort=True)
    table = grouped[[recall_key(n, radius_m) for n in ns]].mean().astype(float)
    table.insert(0, "count", grouped.size())
    table["low_count"] = table["count"] < min_count
    return table.reset_index()
