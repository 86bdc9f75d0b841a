"""Multi-LOD aerial patches per cell (paper §3.2): n images of P×P px covering d_i = 2^i·d0 m.

Geometry. A patch is a square of side ``d_i = 2^i · P · m_per_px`` metres in the local
true-north frame of its centre, rotated by a bearing θ (radians, clockwise from true
north: θ is the compass direction of the patch's "up"), shifted by a metric offset
(east, north). Local metres map to a COG's projected CRS through pyproj's factors at the
centre: ``meridian_convergence`` (grid north vs true north, ~-1.39° at Boston in UTM 19N)
and the meridional / parallel scales (UTM ~0.9996, Web Mercator 1/cos φ). Each LOD is
read from the COG overview level whose ground resolution is closest to (not coarser
than) the LOD's m/px — GDAL's warped VRT would not pick overviews itself — and resampled
bilinearly with OpenCV.

Reading. JPEG COGs are read raw (tile bytes + OpenCV's libjpeg-turbo, see
:mod:`vglpipe.aerial.rawtiff`; other COGs through GDAL block reads). Decoded tiles are
RGBA with the nodata mask as (premultiplied) alpha, kept in an LRU cache keyed by
(file, level, block); one 4-channel warp resamples colour and mask together, several COGs
(also in different CRSs) are composited with the premultiplied "over" operator, so COG
seams are seamless.

Two modes:

* :meth:`AerialSampler.sample` — one cell, any bearing/offset (training: random θ, t,
  :meth:`AerialSampler.sample_training`); only the tiles the rotated footprint touches
  are decoded.
* :meth:`AerialSampler.sample_cells` — many north-aligned cells (test time, cells in
  row order). Cells are grouped in square bins (``bin_m``) on a fixed grid; per bin and
  LOD the covered region is resampled once into a north-aligned canvas at the LOD's
  m/px, and every cell's patch is cut out of it (cell centres rounded to the canvas
  grid: at most half a LOD pixel, i.e. 0.1/0.2/0.4/0.8 m). No block is decoded per cell,
  and a cell's patches do not depend on which other cells are requested.

Coverage. Pixels outside every COG or masked (nodata) stay 0 and are counted: each
result carries, per cell and LOD, the fraction of the patch with valid imagery (a pixel
counts when at least half of its bilinear footprint is valid). Nothing is filled in.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyproj
import rasterio
import rasterio.warp
from rasterio.windows import Window

from vglpipe.aerial.cog import read_index
from vglpipe.aerial.rawtiff import open_raw
from vglpipe.errors import InputError, RasterError
from vglpipe.geo.sphere import EARTH_RADIUS_M


@dataclass(frozen=True)
class LodSpec:
    patch_px: int = 384
    m_per_px: float = 0.2
    n_lods: int = 4

    def m_per_px_of(self, i: int) -> float:
        return self.m_per_px * (2**i)

    def side_m(self, i: int) -> float:
        return self.patch_px * self.m_per_px_of(i)


# ----------------------------------------------------------------------------- geometry


def local_frame(crs: str, lat, lon):
    """Projected centre (x, y), scales (k_east, k_north) and grid-north rotation δ (rad) at (lat, lon).

    δ is the grid bearing of true north, i.e. ``-meridian_convergence`` of pyproj's factors.
    """
    tr = _transformer(crs)
    x, y = tr.transform(lon, lat)
    f = _proj(crs).get_factors(lon, lat)
    delta = -np.radians(np.asarray(f.meridian_convergence, dtype=np.float64))
    return x, y, f.parallel_scale, f.meridional_scale, delta


_TRANSFORMERS: dict[str, pyproj.Transformer] = {}
_PROJS: dict[str, pyproj.Proj] = {}


def _transformer(crs: str) -> pyproj.Transformer:
    if crs not in _TRANSFORMERS:
        _TRANSFORMERS[crs] = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return _TRANSFORMERS[crs]


def _proj(crs: str) -> pyproj.Proj:
    if crs not in _PROJS:
        _PROJS[crs] = pyproj.Proj(crs)
    return _PROJS[crs]


def local_to_projected(frame, theta: float = 0.0, offset=(0.0, 0.0)) -> np.ndarray:
    """3×3 affine: local rotated metres (right, up) around the centre -> projected (X, Y)."""
    x, y, ke, kn, delta = frame
    c, s = math.cos(theta), math.sin(theta)
    R = np.array([[c, s, offset[0]], [-s, c, offset[1]], [0, 0, 1.0]])  # (right, up) -> (east, north)
    cd, sd = math.cos(delta), math.sin(delta)
    G = np.array([[ke * cd, kn * sd, x], [-ke * sd, kn * cd, y], [0, 0, 1.0]])  # (east, north) -> grid
    return G @ R


def patch_to_projected(frame, lod_m_per_px: float, patch_px: int, theta: float = 0.0, offset=(0.0, 0.0)) -> np.ndarray:
    """3×3 affine: patch pixel index (col, row) (centre of pixel) -> projected (X, Y)."""
    s, h = lod_m_per_px, patch_px / 2.0
    L = np.array([[s, 0, s * (0.5 - h)], [0, -s, s * (h - 0.5)], [0, 0, 1.0]])
    return local_to_projected(frame, theta, offset) @ L


def _aff3(a) -> np.ndarray:
    return np.array([[a.a, a.b, a.c], [a.d, a.e, a.f], [0, 0, 1.0]])


# ----------------------------------------------------------------------------- COG access


class _Cog:
    """One COG: level geometry, and decoded RGBA tiles (alpha = mask) through the shared LRU cache.

    JPEG COGs are read raw (tile bytes + OpenCV decode, :mod:`vglpipe.aerial.rawtiff`);
    anything else through GDAL block reads.
    """

    def __init__(self, path: Path, crs: str, lonlat_bounds, block_cache: "_LRU", raw: bool = True):
        self.path = path
        self.crs = crs
        self.lonlat_bounds = lonlat_bounds
        self._ds: dict[int, rasterio.io.DatasetReader] = {}
        self._cache = block_cache
        try:
            with rasterio.open(path) as src:
                self.transform = src.transform
                self.width, self.height = src.width, src.height
                self.factors = [1] + list(src.overviews(1))
                bs = src.block_shapes[0]
                self.block = (bs[0], bs[1])
                if src.count < 3 or src.dtypes[0] != "uint8":
                    raise RasterError(f"{path}: expected 8-bit RGB COG, got {src.count}×{src.dtypes[0]}")
                self._shapes = [(src.height, src.width)] + [
                    (int(math.ceil(src.height / f)), int(math.ceil(src.width / f))) for f in src.overviews(1)
                ]
        except rasterio.errors.RasterioIOError as exc:
            raise RasterError(f"{path}: cannot open COG: {exc}") from exc
        self.res = float(abs(self.transform.a))
        self.raw = open_raw(str(path)) if raw else None
        if self.raw is not None:
            ok = len(self.raw.levels) >= len(self.factors) and all(
                (lv.height, lv.width) == self._shapes[L] and (lv.tile_h, lv.tile_w) == self.block
                for L, lv in enumerate(self.raw.levels[: len(self.factors)])
            )
            if not ok:
                self.raw.close()
                self.raw = None

    def level_for(self, m_per_px: float, k: float = 1.0) -> int:
        """Coarsest level whose ground resolution (projected res / scale factor ``k``) is not coarser than ``m_per_px``."""
        best = 0
        for L, f in enumerate(self.factors):
            if self.res * f / k <= m_per_px * 1.001:
                best = L
        return best

    def level_shape(self, L: int) -> tuple[int, int]:
        return self._shapes[L]

    def level_to_projected(self, L: int) -> np.ndarray:
        h, w = self.level_shape(L)
        return _aff3(self.transform) @ np.diag([self.width / w, self.height / h, 1.0])

    def dataset(self, L: int):
        if L not in self._ds:
            try:
                self._ds[L] = rasterio.open(self.path) if L == 0 else rasterio.open(self.path, overview_level=L - 1)
            except rasterio.errors.RasterioIOError as exc:
                raise RasterError(f"{self.path}: cannot open overview level {L}: {exc}") from exc
        return self._ds[L]

    def tile(self, L: int, bi: int, bj: int) -> np.ndarray:
        """Decoded (bh, bw, 4) RGBA tile (alpha 255 valid, 0 nodata; colour 0 where nodata)."""
        key = (self.path, L, bi, bj)
        t = self._cache.get(key)
        if t is not None:
            return t
        if self.raw is not None:
            t, m = self.raw.tile(L, bi, bj, rgba=True)
        else:
            bh, bw = self.block
            h, w = self.level_shape(L)
            win = Window(bj * bw, bi * bh, min(bw, w - bj * bw), min(bh, h - bi * bh))
            ds = self.dataset(L)
            try:
                rgb = ds.read((1, 2, 3), window=win)
                m = ds.read_masks(1, window=win)
            except rasterio.errors.RasterioError as exc:
                raise RasterError(f"{self.path}: cannot read level {L} block {bi},{bj}: {exc}") from exc
            t = np.zeros((bh, bw, 4), np.uint8)
            t[: m.shape[0], : m.shape[1], :3] = rgb.transpose(1, 2, 0)
            m_full = np.zeros((bh, bw), np.uint8)
            m_full[: m.shape[0], : m.shape[1]] = m
            m = m_full
            t[..., 3] = m
        if not m.any():  # all nodata
            t = np.zeros_like(t)
        elif m.min() < 255:  # some nodata: alpha = mask, colour 0 there (premultiplied)
            m = np.where(m > 0, 255, 0).astype(np.uint8)
            t[..., 3] = m
            cv2.bitwise_and(t, cv2.merge([m, m, m, m]), dst=t)
        self._cache.put(key, t, t.nbytes)
        return t

    def read_rgba(self, L: int, c0: int, r0: int, c1: int, r1: int, footprint: np.ndarray | None = None) -> np.ndarray:
        """(r1-r0, c1-c0, 4) RGBA window of level L, assembled from (cached) decoded tiles.

        With ``footprint`` (4×2 corners of a convex quad in level pixels), tiles that the quad
        (grown by 2 px for the bilinear kernel) does not touch are not decoded (left zero).
        """
        bh, bw = self.block
        out = np.empty((r1 - r0, c1 - c0, 4), np.uint8)
        for bi in range(r0 // bh, (r1 - 1) // bh + 1):
            for bj in range(c0 // bw, (c1 - 1) // bw + 1):
                ys, xs = bi * bh, bj * bw
                a0, a1 = max(r0, ys), min(r1, ys + bh)
                b0, b1 = max(c0, xs), min(c1, xs + bw)
                if footprint is not None and not _quad_hits_rect(footprint, xs - 2.0, ys - 2.0, xs + bw + 2.0, ys + bh + 2.0):
                    out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = 0
                    continue
                t = self.tile(L, bi, bj)
                out[a0 - r0 : a1 - r0, b0 - c0 : b1 - c0] = t[a0 - ys : a1 - ys, b0 - xs : b1 - xs]
        return out

    def close(self):
        for ds in self._ds.values():
            ds.close()
        self._ds.clear()
        if self.raw is not None:
            self.raw.close()
            self.raw = None


def _quad_hits_rect(q: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> bool:
    """Separating-axis test: does the convex quad ``q`` (4×2, in order) intersect the rectangle?"""
    if q[:, 0].max() < x0 or q[:, 0].min() > x1 or q[:, 1].max() < y0 or q[:, 1].min() > y1:
        return False
    rect = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    for k in range(2):
        ex, ey = q[k + 1] - q[k]
        nx, ny = -ey, ex
        pq = q[:, 0] * nx + q[:, 1] * ny
        pr = rect[:, 0] * nx + rect[:, 1] * ny
        if pq.max() < pr.min() or pq.min() > pr.max():
            return False
    return True


def _composite(dst: np.ndarray, src: np.ndarray, first: bool) -> None:
    """Premultiplied 'over' of ``src`` under ``dst`` (both (h, w, 4) uint8; ``src`` is clobbered).

    Only the bounding box of what ``dst`` already covers needs the per-pixel weights
    (255 - alpha_dst)/255; elsewhere ``dst`` is empty (all zero) and a saturating add is a copy.
    """
    if first:
        np.copyto(dst, src)
        return
    a = cv2.extractChannel(dst, 3)
    x, y, w, h = cv2.boundingRect(a)
    if w and h:
        inv = cv2.subtract(np.full((h, w), 255, np.uint8), a[y : y + h, x : x + w])
        sub = src[y : y + h, x : x + w]
        cv2.multiply(sub, cv2.merge([inv, inv, inv, inv]), dst=sub, scale=1.0 / 255.0)
    cv2.add(dst, src, dst=dst)


def _finish(rgba: np.ndarray) -> np.ndarray:
    """Un-premultiply partially covered pixels, zero those below half coverage; returns the (h, w) coverage (0/1)."""
    a = cv2.extractChannel(rgba, 3)
    if cv2.minMaxLoc(a)[0] == 255:
        return np.ones(a.shape, np.uint8)
    valid = cv2.threshold(a, 127, 1, cv2.THRESH_BINARY)[1]
    pts = cv2.findNonZero(cv2.inRange(a, 1, 254))
    if pts is not None:
        pts = pts.reshape(-1, 2)
        xs, ys = pts[:, 0], pts[:, 1]
        px = rgba[ys, xs].astype(np.float32)
        px[:, :3] *= 255.0 / np.maximum(px[:, 3:4], 1.0)
        px[px[:, 3] < 128] = 0
        rgba[ys, xs] = np.clip(px, 0, 255).astype(np.uint8)
    return valid


class _LRU:
    """Decoded tiles by (file, level, row, col), least recently used evicted beyond ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.d: OrderedDict = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key):
        v = self.d.get(key)
        if v is None:
            self.misses += 1
            return None
        self.hits += 1
        self.d.move_to_end(key)
        return v[0]

    def put(self, key, value, nbytes):
        self.d[key] = (value, nbytes)
        self.bytes += nbytes
        while self.bytes > self.max_bytes and len(self.d) > 1:
            _, (_, nb) = self.d.popitem(last=False)
            self.bytes -= nb

    def clear(self):
        self.d.clear()
        self.bytes = 0


# ----------------------------------------------------------------------------- sampler


@dataclass
class CellPatches:
    index: np.ndarray  # (m,) positions in the caller's cell arrays
    patches: np.ndarray  # (m, n, P, P, 3) uint8
    coverage: np.ndarray  # (m, n) float32 fraction of valid pixels per LOD


class AerialSampler:
    """Patches from the COGs of an ``index.parquet`` (or an explicit list of COG paths)."""

    def __init__(self, index_path=None, cogs: list | None = None, spec: LodSpec | None = None,
                 cache_mb: float = 512.0, bin_m: float = 640.0, raw: bool = True):
        self.spec = spec or LodSpec()
        self.bin_m = float(bin_m)
        self._cache = _LRU(int(cache_mb * 2**20))
        entries = []
        if index_path is not None:
            index_path = Path(index_path)
            t = read_index(index_path).to_pylist()
            for r in t:
                p = Path(r["file"])
                if not p.is_absolute():
                    p = index_path.parent / p
                entries.append((p, r["crs"], (r["lon_min"], r["lat_min"], r["lon_max"], r["lat_max"])))
        for p in cogs or []:
            with rasterio.open(p) as src:
                lb = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
                entries.append((Path(p), src.crs.to_string(), lb))
        if not entries:
            raise InputError(f"no COGs to sample from (index: {index_path}, cogs: {cogs})")
        for p, _, _ in entries:
            if not os.path.exists(p):
                raise InputError(f"{p}: COG listed in {index_path} is missing")
        self.cogs = [_Cog(p, crs, lb, self._cache, raw=raw) for p, crs, lb in entries]
        self._lb = np.array([c.lonlat_bounds for c in self.cogs])

    def close(self):
        for c in self.cogs:
            c.close()

    def clear_cache(self) -> None:
        """Forget every decoded tile (the next reads are cold)."""
        self._cache.clear()

    @property
    def cache_stats(self) -> dict:
        return {"hits": self._cache.hits, "misses": self._cache.misses, "mb": self._cache.bytes / 2**20}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ candidates
    def _candidates(self, lat: float, lon: float, radius_m: float) -> list[_Cog]:
        dlat = math.degrees(radius_m / EARTH_RADIUS_M)
        dlon = dlat / max(math.cos(math.radians(lat)), 1e-6)
        lb = self._lb
        hit = (lb[:, 0] <= lon + dlon) & (lb[:, 2] >= lon - dlon) & (lb[:, 1] <= lat + dlat) & (lb[:, 3] >= lat - dlat)
        return [self.cogs[i] for i in np.flatnonzero(hit)]

    # ------------------------------------------------------------------ one cell, any bearing
    def sample(self, lat: float, lon: float, bearing: float = 0.0, offset=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
        """(n, P, P, 3) uint8 patches and (n,) coverage for a patch centre at (lat, lon) + offset, rotated by ``bearing``."""
        sp = self.spec
        P = sp.patch_px
        out = np.zeros((sp.n_lods, P, P, 3), np.uint8)
        cov = np.zeros(sp.n_lods, np.float32)
        reach = sp.side_m(sp.n_lods - 1) * 0.7072 + math.hypot(*offset) + 5.0
        cands = self._candidates(lat, lon, reach)
        frames = {c.crs: local_frame(c.crs, lat, lon) for c in cands}
        acc = np.zeros((P, P, 4), np.uint8)
        tmp = np.empty((P, P, 4), np.uint8)
        for i in range(sp.n_lods):
            s = sp.m_per_px_of(i)
            acc[...] = 0
            first = True
            for cog in cands:
                M = patch_to_projected(frames[cog.crs], s, P, bearing, offset)
                L = cog.level_for(s, _k(frames[cog.crs]))
                S = np.linalg.inv(cog.level_to_projected(L)) @ M
                S[:2, 2] -= 0.5  # corner-based -> cv2 centre-based source coordinates
                win = _window_of(S, P, cog.level_shape(L))
                if win is None:
                    continue
                c0, r0, c1, r1 = win
                quad = (S[:2] @ np.array([[0, P - 1, P - 1, 0], [0, 0, P - 1, P - 1], [1, 1, 1, 1.0]])).T + 0.5
                rgba = cog.read_rgba(L, c0, r0, c1, r1, footprint=quad)
                S[0, 2] -= c0
                S[1, 2] -= r0
                cv2.warpAffine(rgba, S[:2], (P, P), dst=tmp, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                _composite(acc, tmp, first)
                first = False
                if acc[..., 3].min() == 255:
                    break
            valid = _finish(acc)
            cov[i] = cv2.countNonZero(valid) / float(P * P)
            cv2.cvtColor(acc, cv2.COLOR_RGBA2RGB, dst=out[i])
        return out, cov

    def sample_training(self, lat: float, lon: float, rng: np.random.Generator, cell_m: float = 30.0,
                        gnss_margin_m: float = 5.0):
        """Paper §3.4: random θ ∈ [0, 2π) and offset t ∈ [-t_max, t_max]², t_max = 0.5·l - l_Δ."""
        t_max = max(0.5 * cell_m - gnss_margin_m, 0.0)
        theta = float(rng.uniform(0.0, 2 * math.pi))
        off = tuple(float(v) for v in rng.uniform(-t_max, t_max, 2))
        patches, cov = self.sample(lat, lon, theta, off)
        return patches, cov, theta, off

    # ------------------------------------------------------------------ many cells, north-aligned
    def sample_cells(self, lat, lon, batch_cells: int = 64, out: np.ndarray | None = None) -> Iterator[CellPatches]:
        """North-aligned patches for many cell centres (row order is fastest); yields batches of ≤ ``batch_cells``.

        Cells are grouped in spatial bins; per bin and LOD the region is read and resampled
        once, and each cell's patch is cut out of that canvas. With ``out`` (a preallocated
        (batch_cells, n, P, P, 3) uint8 buffer, e.g. pinned memory of an embedding loop) the
        patches of every batch are written into it and ``CellPatches.patches`` is a view of it,
        valid until the next batch is requested.
        """
        lat = np.asarray(lat, np.float64)
        lon = np.asarray(lon, np.float64)
        if lat.shape != lon.shape or lat.ndim != 1:
            raise InputError("sample_cells: lat and lon must be 1-d arrays of equal length")
        if batch_cells < 1:
            raise InputError("sample_cells: batch_cells must be >= 1")
        sp = self.spec
        if out is not None and (out.shape[0] < batch_cells or out.shape[1:] != (sp.n_lods, sp.patch_px, sp.patch_px, 3)
                                or out.dtype != np.uint8):
            raise InputError(f"sample_cells: out must be uint8 ({batch_cells}, {sp.n_lods}, {sp.patch_px}, "
                             f"{sp.patch_px}, 3), got {out.shape} {out.dtype}")
        if lat.size == 0:
            return
        # bins on a fixed global grid (rows of bin_m in latitude, columns of bin_m along each row):
        # a cell's patches do not depend on which other cells are requested, nor on their order
        R = EARTH_RADIUS_M
        brow = np.floor(np.radians(lat) * R / self.bin_m).astype(np.int64)
        row_lat = np.degrees((brow + 0.5) * self.bin_m / R)
        col_w = np.degrees(self.bin_m / (R * np.cos(np.radians(row_lat))))
        bcol = np.floor(lon / col_w).astype(np.int64)
        kb = brow * (1 << 32) + bcol
        _, first, inv = np.unique(kb, return_index=True, return_inverse=True)
        for b in np.argsort(first):
            idx = np.flatnonzero(inv == b)
            k = idx[0]
            centre = (float(row_lat[k]), float((bcol[k] + 0.5) * col_w[k]))
            canvases, cuts, cov = self._bin_canvases(lat[idx], lon[idx], centre)
            P = sp.patch_px
            for s0 in range(0, idx.size, batch_cells):
                sel = np.arange(s0, min(s0 + batch_cells, idx.size))
                buf = out[: sel.size] if out is not None else np.empty((sel.size, sp.n_lods, P, P, 3), np.uint8)
                for q, j in enumerate(sel):
                    for i, canvas in enumerate(canvases):
                        c, r = cuts[i][j]
                        buf[q, i] = canvas[r : r + P, c : c + P]
                yield CellPatches(index=idx[sel], patches=buf, coverage=cov[sel])

    def _bin_canvases(self, lat, lon, centre):
        """Per LOD: the bin's north-aligned RGB canvas, each cell's (col, row) cut, and coverage (m, n)."""
        sp = self.spec
        P = sp.patch_px
        m = lat.size
        latc, lonc = centre
        cov = np.zeros((m, sp.n_lods), np.float32)
        canvases, cuts = [], []
        dlat = np.radians(lat - latc) * EARTH_RADIUS_M
        dlon = np.radians(lon - lonc) * EARTH_RADIUS_M * math.cos(math.radians(latc))
        ext = float(max(np.abs(dlat).max(), np.abs(dlon).max())) * 1.5 + 1.0
        cands = self._candidates(latc, lonc, ext + sp.side_m(sp.n_lods - 1))
        frames = {c.crs: local_frame(c.crs, latc, lonc) for c in cands}
        # cells' local metres (east, north) in the bin frame: through the frame of one CRS, the
        # same linearisation that maps the canvas to the COGs
        crs0 = cands[0].crs if cands else "EPSG:4326"
        if cands:
            X, Y = _transformer(crs0).transform(lon, lat)
            G = local_to_projected(frames[crs0])
            en = np.linalg.solve(G[:2, :2], np.stack([np.asarray(X) - G[0, 2], np.asarray(Y) - G[1, 2]]))
            e, n = en[0], en[1]
        else:
            e, n = dlon, dlat
        for i in range(sp.n_lods):
            s = sp.m_per_px_of(i)
            half = sp.side_m(i) / 2
            # canvas upper-left in local metres, snapped to the bin frame's pixel grid
            e0 = math.floor((e.min() - half) / s - 1) * s
            n1 = math.ceil((n.max() + half) / s + 1) * s
            W = int(math.ceil((e.max() + half + s - e0) / s))
            H = int(math.ceil((n1 - (n.min() - half - s)) / s))
            # canvas px index (c, r) -> local metres of the pixel centre
            Lc = np.array([[s, 0, e0 + 0.5 * s], [0, -s, n1 - 0.5 * s], [0, 0, 1.0]])
            canvas = np.zeros((H, W, 4), np.uint8)
            for cog in cands:
                M = local_to_projected(frames[cog.crs]) @ Lc
                L = cog.level_for(s, _k(frames[cog.crs]))
                S = np.linalg.inv(cog.level_to_projected(L)) @ M
                S[:2, 2] -= 0.5
                # the part of the canvas this COG can reach
                lh, lw = cog.level_shape(L)
                inv = np.linalg.inv(S)
                cs = inv[:2] @ np.array([[-0.5, -0.5, lw - 0.5, lw - 0.5], [-0.5, lh - 0.5, -0.5, lh - 0.5], [1, 1, 1, 1.0]])
                x0 = max(int(math.floor(cs[0].min())) - 1, 0)
                y0 = max(int(math.floor(cs[1].min())) - 1, 0)
                x1 = min(int(math.ceil(cs[0].max())) + 2, W)
                y1 = min(int(math.ceil(cs[1].max())) + 2, H)
                if x1 <= x0 or y1 <= y0:
                    continue
                S_roi = S @ np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1.0]])
                win = _window_of(S_roi, (x1 - x0, y1 - y0), (lh, lw))
                if win is None:
                    continue
                c0, r0, c1, r1 = win
                rgba = cog.read_rgba(L, c0, r0, c1, r1)
                S_roi[0, 2] -= c0
                S_roi[1, 2] -= r0
                tmp = cv2.warpAffine(rgba, S_roi[:2], (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                _composite(canvas[y0:y1, x0:x1], tmp, first=False)
            valid = _finish(canvas)
            rgb = cv2.cvtColor(canvas, cv2.COLOR_RGBA2RGB)
            del canvas
            # each cell's patch: top-left canvas index (cell centres rounded to the canvas grid)
            cc = np.rint((e - e0) / s - P / 2).astype(np.int64)
            rr = np.rint((n1 - n) / s - P / 2).astype(np.int64)
            integ = cv2.integral(valid)
            ok = integ[rr + P, cc + P] - integ[rr, cc + P] - integ[rr + P, cc] + integ[rr, cc]
            cov[:, i] = ok / float(P * P)
            canvases.append(rgb)
            cuts.append(np.stack([cc, rr], 1))
        return canvases, cuts, cov


def _k(frame) -> float:
    return float(math.sqrt(float(frame[2]) * float(frame[3])))


def _window_of(S: np.ndarray, dst_size, level_shape) -> tuple[int, int, int, int] | None:
    """Source window (c0, r0, c1, r1) covering the destination's footprint, clipped to the level."""
    if isinstance(dst_size, int):
        W = H = dst_size
    else:
        W, H = dst_size
    corners = np.array([[0, 0, 1], [W - 1, 0, 1], [0, H - 1, 1], [W - 1, H - 1, 1]], float).T
    src = S[:2] @ corners
    h, w = level_shape
    c0 = max(int(math.floor(src[0].min())) - 2, 0)
    r0 = max(int(math.floor(src[1].min())) - 2, 0)
    c1 = min(int(math.ceil(src[0].max())) + 3, w)
    r1 = min(int(math.ceil(src[1].max())) + 3, h)
    if c1 <= c0 or r1 <= r0:
        return None
    return c0, r0, c1, r1
