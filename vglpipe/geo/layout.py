"""Search-region cell layouts (paper §3.1), pure and vectorized.

Two layouts share one interface:

* :class:`ConsistentLayout` — the paper's layout on a sphere of radius ``r``:
  latitudinal bands centred on φ_i = i·l/r; in band i, columns centred on
  λ_ij = j·l/(r·cos φ_i). Every cell is a north-aligned l×l square (up to the
  S3 approximation error), wherever it lies.
* :class:`MercatorLayout` — VIGOR's baseline: a regular grid of constant size ``s``
  in Web Mercator (EPSG:3857, a spherical projection), so the metric size of a
  cell shrinks as cos φ away from the equator.

A layout only has to say where row i lies (:meth:`Layout.row_lat_deg`), how wide a
column of row i is in longitude (:meth:`Layout.col_step_deg`) and which row a
latitude falls in (:meth:`Layout.row_of_lat`); everything else — cell of a point,
centres, bounds, radius queries, polygon enumeration — is shared.

Cells are addressed by (row, col) or by a packed non-negative int64 id.
Longitudes are in (-180, 180]; regions must not cross the antimeridian.
All angles in the public interface are degrees.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from vglpipe.errors import ConfigError, RegionError
from vglpipe.geo.sphere import EARTH_RADIUS_M, haversine_m

_ROW_OFFSET = 1 << 30
_COL_OFFSET = 1 << 31
_COL_MASK = (1 << 32) - 1


def pack_ids(row, col) -> np.ndarray:
    """(row, col) → packed int64 id ≥ 0 (rows |i| < 2^30, cols |j| < 2^31)."""
    row = np.asarray(row, dtype=np.int64)
    col = np.asarray(col, dtype=np.int64)
    return ((row + _ROW_OFFSET) << 32) | (col + _COL_OFFSET)


def unpack_ids(ids) -> tuple[np.ndarray, np.ndarray]:
    """Packed int64 id → (row, col)."""
    ids = np.asarray(ids, dtype=np.int64)
    return (ids >> 32) - _ROW_OFFSET, (ids & _COL_MASK) - _COL_OFFSET


@dataclass(frozen=True)
class CellsNear:
    """Result of a radius query: cell ``ids[k]`` is within the radius of point ``point[k]``."""

    point: np.ndarray  # int64 index into the query points
    ids: np.ndarray  # int64 packed cell ids
    distance_m: np.ndarray  # float64 great-circle distance point → cell centre


class Layout(ABC):
    """A division of the sphere into rows (latitudinal bands) of columns."""

    kind: str
    cell_m: float
    radius_m: float

    # -- the three things a layout defines --------------------------------------------

    @abstractmethod
    def row_of_lat(self, lat) -> np.ndarray:
        """Row (int64) whose latitude band contains ``lat`` (degrees)."""

    @abstractmethod
    def row_lat_deg(self, row) -> np.ndarray:
        """Latitude of the centre of row ``row``; ``row ± 0.5`` gives its edges."""

    @abstractmethod
    def col_step_deg(self, row) -> np.ndarray:
        """Longitude width (degrees) of one column in row ``row``."""

    # -- shared, derived ---------------------------------------------------------------

    def describe(self) -> dict:
        """JSON-able description, stored with every table that holds cell ids."""
        return {"kind": self.kind, "cell_m": self.cell_m, "earth_radius_m": self.radius_m}

    def cell_of(self, lat, lon) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of the cell containing each point (degrees)."""
        lat = np.asarray(lat, dtype=np.float64)
        lon = np.asarray(lon, dtype=np.float64)
        row = self.row_of_lat(lat)
        if row.size == 0:
            return row, row.copy()
        lo, hi = int(row.min()), int(row.max())
        if hi - lo < 1 << 24:
            # One reciprocal column step per distinct row: a table lookup instead of a cos per point.
            inv_step = 1.0 / self.col_step_deg(np.arange(lo, hi + 1, dtype=np.int64))
            scale = inv_step[row - lo]
        else:
            scale = 1.0 / self.col_step_deg(row)
        col = np.floor(lon * scale + 0.5).astype(np.int64)
        return row, col

    def ids_of(self, lat, lon) -> np.ndarray:
        """Packed id of the cell containing each point."""
        return pack_ids(*self.cell_of(lat, lon))

    def center(self, row, col) -> tuple[np.ndarray, np.ndarray]:
        """Centre (lat, lon) in degrees of cells (row, col)."""
        row = np.asarray(row, dtype=np.int64)
        col = np.asarray(col, dtype=np.int64)
        return self.row_lat_deg(row), col * self.col_step_deg(row)

    def center_of_ids(self, ids) -> tuple[np.ndarray, np.ndarray]:
        return self.center(*unpack_ids(ids))

    def bounds(self, row, col) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(south, north, west, east) in degrees of cells (row, col)."""
        row = np.asarray(row, dtype=np.int64)
        col = np.asarray(col, dtype=np.int64)
        south = self.row_lat_deg(row - 0.5)
        north = self.row_lat_deg(row + 0.5)
        step = self.col_step_deg(row)
        return south, north, (col - 0.5) * step, (col + 0.5) * step

    def cell_size_m(self, row) -> tuple[np.ndarray, np.ndarray]:
        """(height, width at the row's centre latitude) of cells in row ``row``, metres."""
        row = np.asarray(row, dtype=np.int64)
        height = np.radians(self.row_lat_deg(row + 0.5) - self.row_lat_deg(row - 0.5)) * self.radius_m
        width = np.radians(self.col_step_deg(row)) * self.radius_m * np.cos(np.radians(self.row_lat_deg(row)))
        return height, width

    # -- radius query ------------------------------------------------------------------

    def cells_within(self, lat, lon, radius_m: float, chunk: int = 1 << 16) -> CellsNear:
        """All cells whose centre lies within ``radius_m`` (great circle) of each point.

        Candidates are the cells of a window of rows and columns around each point that
        is guaranteed to contain every cell centre within the radius; they are filtered
        with the same haversine distance a brute-force search would use.
        """
        lat = np.atleast_1d(np.asarray(lat, dtype=np.float64))
        lon = np.atleast_1d(np.asarray(lon, dtype=np.float64))
        if radius_m < 0:
            raise ValueError(f"radius_m must be >= 0, got {radius_m}")
        parts = []
        for start in range(0, lat.size, chunk):
            parts.append(self._cells_within_chunk(lat[start : start + chunk], lon[start : start + chunk], radius_m, start))
        if not parts:
            empty = np.zeros(0, np.int64)
            return CellsNear(empty, empty.copy(), np.zeros(0))
        return CellsNear(*(np.concatenate(p) for p in zip(*parts)))

    def _cells_within_chunk(self, lat, lon, radius_m, offset):
        # Row window: every latitude within radius_m lies in [lat - dlat, lat + dlat].
        dlat = math.degrees(radius_m / self.radius_m)
        r_lo = self.row_of_lat(np.clip(lat - dlat, -90, 90))
        r_hi = self.row_of_lat(np.clip(lat + dlat, -90, 90))
        n_rows = int((r_hi - r_lo).max()) + 1
        rows = r_lo[:, None] + np.arange(n_rows)[None, :]  # (n, R)
        rows = np.minimum(rows, r_hi[:, None])  # duplicates removed below
        # Column window in each candidate row: centres within radius have
        # |Δλ| <= asin(sin(radius/r) / cos φ_point) (spherical cap around the point).
        ang = radius_m / self.radius_m
        cos_p = np.cos(np.radians(lat))
        sin_ratio = np.sin(ang) / np.maximum(cos_p, 1e-12)
        dlon = np.where(sin_ratio < 1, np.degrees(np.arcsin(np.minimum(sin_ratio, 1.0))), 180.0)
        step = self.col_step_deg(rows)  # (n, R)
        c_mid = np.floor(lon[:, None] / step + 0.5).astype(np.int64)
        c_half = np.ceil(dlon[:, None] / step).astype(np.int64) + 1
        n_cols = int((2 * c_half + 1).max())
        cols = c_mid[..., None] - c_half[..., None] + np.arange(n_cols)[None, None, :]  # (n, R, C)
        valid = cols <= (c_mid + c_half)[..., None]
        valid &= np.concatenate([np.ones((rows.shape[0], 1), bool), rows[:, 1:] != rows[:, :-1]], axis=1)[..., None]
        rows_b = np.broadcast_to(rows[..., None], cols.shape)
        pi = np.broadcast_to(np.arange(lat.size)[:, None, None], cols.shape)
        rows_f, cols_f, pi_f = rows_b[valid], cols[valid], pi[valid]
        clat, clon = self.center(rows_f, cols_f)
        d = haversine_m(lat[pi_f], lon[pi_f], clat, clon, self.radius_m)
        keep = d <= radius_m
        return pi_f[keep] + offset, pack_ids(rows_f[keep], cols_f[keep]), d[keep]

    # -- polygon enumeration -----------------------------------------------------------

    def cells_in_polygon(self, geom: BaseGeometry) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of every cell whose centre lies inside ``geom`` (lon/lat degrees).

        Polygons and multipolygons with holes; edges are straight in lon/lat (GeoJSON).
        A scanline fill: each row's centre latitude crosses the rings' edges at sorted
        longitudes, consecutive pairs of which bound the inside (even-odd rule).
        Cells are returned in row-major order (row, then col ascending).
        """
        x1, y1, x2, y2 = _polygon_edges(geom)
        miny, maxy = float(min(y1.min(), y2.min())), float(max(y1.max(), y2.max()))
        rows = np.arange(int(self.row_of_lat(miny)), int(self.row_of_lat(maxy)) + 1, dtype=np.int64)
        row_lat = self.row_lat_deg(rows)
        # Half-open crossing rule [ymin, ymax) so that a vertex on a scanline counts once.
        ylo, yhi = np.minimum(y1, y2), np.maximum(y1, y2)
        first = np.searchsorted(row_lat, ylo, side="left")
        stop = np.searchsorted(row_lat, yhi, side="left")
        counts = stop - first
        edge = np.repeat(np.arange(x1.size), counts)
        ri = first[edge] + (np.arange(edge.size) - np.repeat(np.cumsum(counts) - counts, counts))
        y = row_lat[ri]
        x = x1[edge] + (y - y1[edge]) * (x2[edge] - x1[edge]) / (y2[edge] - y1[edge])
        order = np.lexsort((x, ri))
        ri, x = ri[order], x[order]
        if ri.size % 2:
            raise RegionError("polygon rings are not closed (odd number of scanline crossings)")
        r_iv, xa, xb = ri[0::2], x[0::2], x[1::2]
        if np.any(r_iv != ri[1::2]):
            raise RegionError("polygon rings are not closed (unpaired scanline crossing)")
        step = self.col_step_deg(rows[r_iv])
        ja = np.ceil(xa / step).astype(np.int64)
        jb = np.floor(xb / step).astype(np.int64)
        n = np.maximum(jb - ja + 1, 0)
        total = int(n.sum())
        out_row = np.repeat(rows[r_iv], n)
        out_col = np.repeat(ja, n) + (np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(n) - n, n))
        return out_row, out_col


def _polygon_edges(geom: BaseGeometry):
    """All ring edges (x1, y1, x2, y2) of a (multi)polygon, after normalising overlaps."""
    if geom is None or geom.is_empty:
        raise RegionError("region boundary is empty")
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise RegionError(f"region boundary must be a Polygon or MultiPolygon, got {geom.geom_type}")
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    geom = shapely.union_all(shapely.get_parts(geom))  # merge overlapping parts
    polys = [p for p in shapely.get_parts(geom) if p.geom_type == "Polygon" and not p.is_empty]
    if not polys:
        raise RegionError("region boundary has no polygon area")
    rings = [r for p in polys for r in (p.exterior, *p.interiors)]
    coords = [np.asarray(r.coords, dtype=np.float64) for r in rings]
    x1 = np.concatenate([c[:-1, 0] for c in coords])
    y1 = np.concatenate([c[:-1, 1] for c in coords])
    x2 = np.concatenate([c[1:, 0] for c in coords])
    y2 = np.concatenate([c[1:, 1] for c in coords])
    keep = y1 != y2  # horizontal edges never cross a scanline under the half-open rule
    return x1[keep], y1[keep], x2[keep], y2[keep]


class ConsistentLayout(Layout):
    """Paper §3.1: bands φ_i = i·l/r, columns λ_ij = j·l/(r cos φ_i)."""

    kind = "consistent"

    def __init__(self, cell_m: float, radius_m: float = EARTH_RADIUS_M):
        if not cell_m > 0:
            raise ConfigError(f"layout cell size must be > 0 m, got {cell_m}")
        self.cell_m = float(cell_m)
        self.radius_m = float(radius_m)
        self._dlat_deg = math.degrees(self.cell_m / self.radius_m)
        self._rows_per_deg = 1.0 / self._dlat_deg

    def row_of_lat(self, lat) -> np.ndarray:
        return np.floor(np.asarray(lat, dtype=np.float64) * self._rows_per_deg + 0.5).astype(np.int64)

    def row_lat_deg(self, row) -> np.ndarray:
        return np.asarray(row, dtype=np.float64) * self._dlat_deg

    def col_step_deg(self, row) -> np.ndarray:
        return self._dlat_deg / np.cos(np.radians(self.row_lat_deg(row)))


class MercatorLayout(Layout):
    """VIGOR baseline: a grid of constant size in EPSG:3857 (spherical Web Mercator).

    ``cell_m`` is the metric cell size at ``reference_lat`` (default the equator);
    the projected size is ``cell_m / cos(reference_lat)``, so at latitude φ a cell
    measures ``cell_m · cos φ / cos(reference_lat)`` metres.
    """

    kind = "mercator"

    def __init__(self, cell_m: float, reference_lat: float = 0.0, radius_m: float = EARTH_RADIUS_M):
        if not cell_m > 0:
            raise ConfigError(f"layout cell size must be > 0 m, got {cell_m}")
        if not -85.06 < reference_lat < 85.06:
            raise ConfigError(f"layout.mercator_reference_lat must be within ±85.06°, got {reference_lat}")
        self.cell_m = float(cell_m)
        self.reference_lat = float(reference_lat)
        self.radius_m = float(radius_m)
        self.projected_m = self.cell_m / math.cos(math.radians(self.reference_lat))

    def describe(self) -> dict:
        return {**super().describe(), "reference_lat": self.reference_lat}

    def row_of_lat(self, lat) -> np.ndarray:
        phi = np.radians(np.clip(np.asarray(lat, dtype=np.float64), -89.999999, 89.999999))
        y = self.radius_m * np.log(np.tan(np.pi / 4 + phi / 2))
        return np.floor(y / self.projected_m + 0.5).astype(np.int64)

    def row_lat_deg(self, row) -> np.ndarray:
        y = np.asarray(row, dtype=np.float64) * self.projected_m
        return np.degrees(2 * np.arctan(np.exp(y / self.radius_m)) - np.pi / 2)

    def col_step_deg(self, row) -> np.ndarray:
        return np.full(np.shape(row), math.degrees(self.projected_m / self.radius_m))


LAYOUTS = {"consistent": ConsistentLayout, "mercator": MercatorLayout}


def make_layout(
    kind: str = "consistent",
    cell_m: float = 30.0,
    radius_m: float = EARTH_RADIUS_M,
    reference_lat: float = 0.0,
) -> Layout:
    """The layout named ``kind`` ("consistent" or "mercator") with cells of ``cell_m``."""
    if kind == "consistent":
        return ConsistentLayout(cell_m, radius_m)
    if kind == "mercator":
        return MercatorLayout(cell_m, reference_lat, radius_m)
    raise ConfigError(f"layout.kind must be one of {', '.join(LAYOUTS)}, got {kind!r}")


def layout_from_description(d: dict) -> Layout:
    """The layout a table's or index's stored :meth:`Layout.describe` names."""
    try:
        return make_layout(d["kind"], float(d["cell_m"]), float(d["earth_radius_m"]), float(d.get("reference_lat", 0.0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"not a layout description: {d!r} ({exc})") from None


def band_edge_ratio(cell_m: float, max_lat_deg: float = 85.06, radius_m: float = EARTH_RADIUS_M) -> float:
    """Supplementary S3: worst k = min(c_a, c_b)/max(c_a, c_b) over all bands within ±max_lat.

    c = 2πr·cos φ is the circumference at a band's lower/upper edge (φ_a, φ_b = φ_a + l/r).
    Returns the minimum k over every band whose edges lie within ±max_lat_deg.
    """
    layout = ConsistentLayout(cell_m, radius_m)
    top = int(layout.row_of_lat(max_lat_deg))
    rows = np.arange(0, top + 1)
    phi_a = np.radians(layout.row_lat_deg(rows - 0.5))
    phi_b = np.radians(layout.row_lat_deg(rows + 0.5))
    inside = np.abs(np.degrees(phi_b)) < max_lat_deg
    ca = 2 * np.pi * radius_m * np.cos(phi_a[inside])
    cb = 2 * np.pi * radius_m * np.cos(phi_b[inside])
    return float((np.minimum(ca, cb) / np.maximum(ca, cb)).min())
