"""Synthetic cell embeddings that look like real ones, for tests and benchmarks.

Real cell embeddings are spatially correlated: neighbouring 30 m cells see overlapping
aerial images, so their embeddings are similar, and far-away cells of the same kind
(forest, suburb, highway) are more alike than unrelated ones. I.i.d. Gaussian vectors
have none of this structure and make approximate search look easier than it is.

The model (all parts deterministic given ``seed``):

* a smooth random field over the ground: for each length scale ℓ (50 m … 12 km) a
  random-Fourier-feature Gaussian process with RBF correlation exp(-r²/2ℓ²),
  projected to ``dim`` dimensions;
* a land-cover class map (argmax of a few smooth scalar fields) whose class
  prototype vector is shared by every cell of that class, anywhere;
* per-cell detail: an i.i.d. Gaussian vector per cell;

mixed with :attr:`FieldParams.weights` and L2-normalised. A query (a photo) is its
cell's vector plus structured noise (the smooth part of some other random place: the
photo resembles somewhere else, too) plus i.i.d. noise, normalised; the noise levels
vary per query and are set so that exact search localizes roughly 60 % of queries within
50 m (R@1<50m), the paper's figure for real photos; its misses are far-away cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vglpipe.geo.layout import make_layout
from vglpipe.geo.sphere import EARTH_RADIUS_M
from vglpipe.store.atomic import atomic_path

#: South-west corner of the synthetic region (west of Boston).
ORIGIN_LAT, ORIGIN_LON = 42.2, -71.6
_BLOCK = 4096  # cells per detail-noise block: chunking never changes the vectors


@dataclass(frozen=True)
class FieldParams:
    """Length scales (m) of the smooth field, and the weights of its parts."""

    scales_m: tuple[float, ...] = (50.0, 200.0, 800.0, 3000.0, 12000.0)
    scale_weights: tuple[float, ...] = (0.45, 0.45, 0.39, 0.32, 0.22)
    class_weight: float = 0.45
    detail_weight: float = 0.32
    n_classes: int = 16
    class_scale_m: float = 600.0
    features: int = 256  # random Fourier features per scale
    # A query's weight of "looks like somewhere else" is uniform in this range (queries differ
    # in difficulty); i.i.d. noise has a fixed weight.
    query_struct_noise: tuple[float, float] = (0.5, 1.5)
    query_iid_noise: float = 1.2


@dataclass(frozen=True)
class SyntheticCells:
    """``n`` cells of the 30 m consistent layout in a square around :data:`ORIGIN_LAT`."""

    ids: np.ndarray  # int64 packed cell ids, row-major
    lat: np.ndarray  # cell centres, degrees
    lon: np.ndarray
    xy_m: np.ndarray  # (n, 2) float64 east/north metres from the origin

    def __len__(self) -> int:
        return self.ids.size


@dataclass(frozen=True)
class SyntheticQueries:
    vectors: np.ndarray  # (m, dim) float32, unit norm
    lat: np.ndarray  # photo positions, degrees
    lon: np.ndarray
    cell: np.ndarray  # int64 index of the cell the query was made from


def make_cells(n: int, cell_m: float = 30.0) -> SyntheticCells:
    """The first ``n`` cells (row-major) of a square region just big enough to hold them."""
    layout = make_layout("consistent", cell_m)
    side_m = (np.sqrt(n) + 2) * cell_m
    dlat = np.degrees(side_m / EARTH_RADIUS_M)
    dlon = dlat / np.cos(np.radians(ORIGIN_LAT))
    rows = np.arange(layout.row_of_lat(ORIGIN_LAT), layout.row_of_lat(ORIGIN_LAT + dlat) + 1)
    row_list, col_list = [], []
    for row in rows:  # columns of each row that lie inside [lon0, lon0 + dlon]
        step = float(layout.col_step_deg(row))
        c0, c1 = int(np.ceil(ORIGIN_LON / step)), int(np.floor((ORIGIN_LON + dlon) / step))
        row_list.append(np.full(c1 - c0 + 1, row))
        col_list.append(np.arange(c0, c1 + 1))
        if sum(r.size for r in row_list) >= n:
            break
    row = np.concatenate(row_list)[:n]
    col = np.concatenate(col_list)[:n]
    lat, lon = layout.center(row, col)
    ids = layout.ids_of(lat, lon)
    return SyntheticCells(ids, lat, lon, to_xy_m(lat, lon))


def to_xy_m(lat, lon) -> np.ndarray:
    """East/north metres from the origin (local equirectangular; exact enough for a field)."""
    north = np.radians(np.asarray(lat) - ORIGIN_LAT) * EARTH_RADIUS_M
    east = np.radians(np.asarray(lon) - ORIGIN_LON) * EARTH_RADIUS_M * np.cos(np.radians(ORIGIN_LAT))
    return np.stack([east, north], axis=1)


@dataclass
class CellField:
    """The random field: ``vectors(xy_m, first_cell)`` gives cells' unit embeddings."""

    dim: int
    seed: int = 0
    params: FieldParams = field(default_factory=FieldParams)

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 0])
        p, k, d = self.params, self.params.features, self.dim
        # Random Fourier features: cos(ω·x + b), ω ~ N(0, 1/ℓ²) gives an RBF kernel of length ℓ.
        self._omega = [rng.normal(0, 1 / s, (2, k)) for s in p.scales_m]
        self._phase = [rng.uniform(0, 2 * np.pi, k) for _ in p.scales_m]
        # Projections to dim; scaled so each scale's part has unit expected norm.
        self._proj = [
            (w * np.sqrt(2 / k / d) * rng.standard_normal((k, d))).astype(np.float32)
            for w in p.scale_weights
        ]
        self._class_omega = rng.normal(0, 1 / p.class_scale_m, (2, k))
        self._class_phase = rng.uniform(0, 2 * np.pi, k)
        self._class_mix = rng.standard_normal((k, p.n_classes))
        protos = rng.standard_normal((p.n_classes, d))
        self._protos = (p.class_weight * protos / np.linalg.norm(protos, axis=1, keepdims=True)).astype(np.float32)

    def smooth(self, xy_m: np.ndarray) -> np.ndarray:
        """The spatially smooth part (field scales + land-cover class), float32, not normalised."""
        xy = np.asarray(xy_m, dtype=np.float64)
        out = np.zeros((xy.shape[0], self.dim), np.float32)
        for omega, phase, proj in zip(self._omega, self._phase, self._proj):
            out += np.cos(xy @ omega + phase).astype(np.float32) @ proj
        cls = np.argmax(np.cos(xy @ self._class_omega + self._class_phase) @ self._class_mix, axis=1)
        out += self._protos[cls]
        return out

    def vectors(self, xy_m: np.ndarray, first_cell: int) -> np.ndarray:
        """Unit embeddings of cells ``first_cell, first_cell + 1, …`` at ``xy_m``.

        ``first_cell`` must be a multiple of the detail block (4096) so that the per-cell
        detail of a cell never depends on how the cells were chunked.
        """
        if first_cell % _BLOCK:
            raise ValueError(f"first_cell must be a multiple of {_BLOCK}")
        out = self.smooth(xy_m)
        w = self.params.detail_weight / np.sqrt(self.dim)
        for start in range(0, out.shape[0], _BLOCK):
            block = (first_cell + start) // _BLOCK
            rows = min(_BLOCK, out.shape[0] - start)
            rng = np.random.default_rng([self.seed, 1, block])
            out[start : start + rows] += w * rng.standard_normal((rows, self.dim), dtype=np.float32)
        return _normalise(out)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_shards(
    cells: SyntheticCells, cell_field: CellField, out_dir: Path, n_shards: int = 4, chunk: int = 65536
) -> list[tuple[Path, Path]]:
    """Cell embeddings as ``n_shards`` fp16 .npy files with int64 id arrays (the pipeline's format)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chunk = max(_BLOCK, chunk // _BLOCK * _BLOCK)
    bounds = np.linspace(0, len(cells), n_shards + 1).astype(np.int64) // _BLOCK * _BLOCK
    bounds[-1] = len(cells)
    shards = []
    for s in range(n_shards):
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        vec_path, ids_path = out_dir / f"emb-{s:03d}.npy", out_dir / f"ids-{s:03d}.npy"
        with atomic_path(vec_path) as tmp:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(hi - lo, cell_field.dim))
            for a in range(lo, hi, chunk):
                b = min(a + chunk, hi)
                mm[a - lo : b - lo] = cell_field.vectors(cells.xy_m[a:b], a)
            mm.flush()
            del mm
        with atomic_path(ids_path) as tmp:
            np.save(tmp, cells.ids[lo:hi])
        shards.append((vec_path, ids_path))
    return shards


def make_queries(
    cells: SyntheticCells,
    cell_vectors,
    cell_field: CellField,
    m: int,
    seed: int = 1,
) -> SyntheticQueries:
    """``m`` photos: a random cell's vector (``cell_vectors[i]``, any array-like) plus noise.

    The photo's position is uniform within its cell (±cell/2 east and north).
    """
    rng = np.random.default_rng([cell_field.seed, 2, seed])
    p = cell_field.params
    cell = np.sort(rng.choice(len(cells), size=m, replace=False))
    base = np.asarray(cell_vectors[cell], dtype=np.float32)
    elsewhere = cells.xy_m[rng.integers(0, len(cells), m)]
    struct = _normalise(cell_field.smooth(elsewhere))
    iid = _normalise(rng.standard_normal((m, cell_field.dim), dtype=np.float32))
    w_struct = rng.uniform(*p.query_struct_noise, m).astype(np.float32)[:, None]
    q = _normalise(base + w_struct * struct + p.query_iid_noise * iid).astype(np.float32)
    half = 15.0 / EARTH_RADIUS_M
    lat = cells.lat[cell] + np.degrees(rng.uniform(-half, half, m))
    lon = cells.lon[cell] + np.degrees(rng.uniform(-half, half, m)) / np.cos(np.radians(cells.lat[cell]))
    return SyntheticQueries(q, lat, lon, cell)
