"""Multi-LOD aerial patches per cell (paper §3.2): n images of P×P px covering d_i = 2^i·d0 m.

Geometry (:mod:`vglpipe.aerial.geometry`). A patch is a square of side
``d_i = 2^i · P · m_per_px`` metres in the local true-north frame of its centre, rotated by a
bearing θ and shifted by a metric offset. Each LOD is read from the COG overview level whose
ground resolution is closest to (not coarser than) the LOD's m/px — GDAL's warped VRT would
not pick overviews itself — and resampled bilinearly with OpenCV.

Reading (:mod:`vglpipe.aerial.tiles`). Decoded RGBA tiles (alpha = nodata mask) are kept in
an LRU cache keyed by (file, level, block); one 4-channel warp resamples colour and mask
together, and several COGs (also in different CRSs) are composited seamlessly.

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

Resolution. Each result also carries, per cell and LOD, ``upsample``: the ground resolution
of the imagery read (the COG level used, in ground metres per pixel) divided by the LOD's
m/px, the largest over the COGs that contributed pixels (1 is exact, below 1 the imagery is
finer, 0 where no imagery was read), and ``upsampled``: whether it exceeds ``max_upsample``
(aerial.quality.max_upsample) — a patch magnified from imagery too coarse for its LOD.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import rasterio
import rasterio.warp

from vglpipe.aerial.cog import read_index
from vglpipe.aerial.geometry import local_frame, local_to_projected, patch_to_projected, transformer, window_of
from vglpipe.aerial.tiles import CogReader, TileCache, composite, finish
from vglpipe.errors import InputError
from vglpipe.geo.sphere import EARTH_RADIUS_M
from vglpipe.settings import LodSpec, QualitySettings


@dataclass
class Patches:
    """The n LOD patches of one cell."""

    patches: np.ndarray  # (n, P, P, 3) uint8
    coverage: np.ndarray  # (n,) float32 fraction of valid pixels per LOD
    upsample: np.ndarray  # (n,) float32 source m/px / LOD m/px (0: no imagery)
    upsampled: np.ndarray  # (n,) bool: upsample > max_upsample


@dataclass
class TrainingPatches(Patches):
    """A training cell's patches and the random pose they were cut at (paper §3.4)."""

    bearing: float  # radians, clockwise from true north
    offset: tuple[float, float]  # (east, north) metres from the photo


@dataclass
class CellPatches:
    index: np.ndarray  # (m,) positions in the caller's cell arrays
    patches: np.ndarray  # (m, n, P, P, 3) uint8
    coverage: np.ndarray  # (m, n) float32 fraction of valid pixels per LOD
    upsample: np.ndarray  # (m, n) float32 source m/px / LOD m/px (0: no imagery)
    upsampled: np.ndarray  # (m, n) bool: upsample > max_upsample


class AerialSampler:
    """Patches from the COGs of an ``index.parquet`` (or an explicit list of COG paths)."""

    def __init__(self, index_path=None, cogs: list | None = None, spec: LodSpec | None = None,
                 cache_mb: float = 512.0, bin_m: float = 640.0, raw: bool = True, max_upsample: float | None = None):
        self.spec = spec or LodSpec.defaults()
        self.bin_m = float(bin_m)
        self.max_upsample = QualitySettings.defaults().max_upsample if max_upsample is None else float(max_upsample)
        self._cache = TileCache(int(cache_mb * 2**20))
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
        self.cogs = [CogReader(p, crs, lb, self._cache, raw=raw) for p, crs, lb in entries]
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
    def _candidates(self, lat: float, lon: float, radius_m: float) -> list[CogReader]:
        dlat = math.degrees(radius_m / EARTH_RADIUS_M)
        dlon = dlat / max(math.cos(math.radians(lat)), 1e-6)
        lb = self._lb
        hit = (lb[:, 0] <= lon + dlon) & (lb[:, 2] >= lon - dlon) & (lb[:, 1] <= lat + dlat) & (lb[:, 3] >= lat - dlat)
        return [self.cogs[i] for i in np.flatnonzero(hit)]

    # ------------------------------------------------------------------ one cell, any bearing
    def sample(self, lat: float, lon: float, bearing: float = 0.0, offset=(0.0, 0.0)) -> Patches:
        """(n, P, P, 3) uint8 patches and (n,) coverage for a patch centre at (lat, lon) + offset, rotated by ``bearing``."""
        sp = self.spec
        P = sp.patch_px
        out = np.zeros((sp.n_lods, P, P, 3), np.uint8)
        cov = np.zeros(sp.n_lods, np.float32)
        up = np.zeros(sp.n_lods, np.float32)
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
                L = cog.level_for(s, frames[cog.crs].k)
                S = np.linalg.inv(cog.level_to_projected(L)) @ M
                S[:2, 2] -= 0.5  # corner-based -> cv2 centre-based source coordinates
                win = window_of(S, P, cog.level_shape(L))
                if win is None:
                    continue
                c0, r0, c1, r1 = win
                quad = (S[:2] @ np.array([[0, P - 1, P - 1, 0], [0, 0, P - 1, P - 1], [1, 1, 1, 1.0]])).T + 0.5
                rgba = cog.read_rgba(L, c0, r0, c1, r1, footprint=quad)
                S[0, 2] -= c0
                S[1, 2] -= r0
                cv2.warpAffine(rgba, S[:2], (P, P), dst=tmp, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                if cv2.countNonZero(cv2.extractChannel(tmp, 3)):
                    up[i] = max(up[i], cog.ground_res(L, frames[cog.crs].k) / s)
                composite(acc, tmp, first)
                first = False
                if acc[..., 3].min() == 255:
                    break
            valid = finish(acc)
            cov[i] = cv2.countNonZero(valid) / float(P * P)
            cv2.cvtColor(acc, cv2.COLOR_RGBA2RGB, dst=out[i])
        return Patches(out, cov, up, up > self.max_upsample)

    def sample_training(self, lat: float, lon: float, rng: np.random.Generator, t_max_m: float) -> TrainingPatches:
        """Paper §3.4: random θ ∈ [0, 2π) and offset t ∈ [-t_max, t_max]² (t_max: Settings.t_max_m)."""
        theta = float(rng.uniform(0.0, 2 * math.pi))
        off = tuple(float(v) for v in rng.uniform(-t_max_m, t_max_m, 2))
        p = self.sample(lat, lon, theta, off)
        return TrainingPatches(patches=p.patches, coverage=p.coverage, upsample=p.upsample, upsampled=p.upsampled,
                               bearing=theta, offset=off)

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
            canvases, cuts, cov, up = self._bin_canvases(lat[idx], lon[idx], centre)
            P = sp.patch_px
            for s0 in range(0, idx.size, batch_cells):
                sel = np.arange(s0, min(s0 + batch_cells, idx.size))
                buf = out[: sel.size] if out is not None else np.empty((sel.size, sp.n_lods, P, P, 3), np.uint8)
                for q, j in enumerate(sel):
                    for i, canvas in enumerate(canvases):
                        c, r = cuts[i][j]
                        buf[q, i] = canvas[r : r + P, c : c + P]
                yield CellPatches(index=idx[sel], patches=buf, coverage=cov[sel], upsample=up[sel],
                                  upsampled=up[sel] > self.max_upsample)

    def _bin_canvases(self, lat, lon, centre):
        """Per LOD: the bin's north-aligned RGB canvas, each cell's (col, row) cut; coverage and upsample (m, n)."""
        sp = self.spec
        P = sp.patch_px
        m = lat.size
        latc, lonc = centre
        cov = np.zeros((m, sp.n_lods), np.float32)
        up = np.zeros((m, sp.n_lods), np.float32)
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
            X, Y = transformer(crs0).transform(lon, lat)
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
            # each cell's patch: top-left canvas index (cell centres rounded to the canvas grid)
            cc = np.rint((e - e0) / s - P / 2).astype(np.int64)
            rr = np.rint((n1 - n) / s - P / 2).astype(np.int64)
            for cog in cands:
                M = local_to_projected(frames[cog.crs]) @ Lc
                L = cog.level_for(s, frames[cog.crs].k)
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
                win = window_of(S_roi, (x1 - x0, y1 - y0), (lh, lw))
                if win is None:
                    continue
                c0, r0, c1, r1 = win
                rgba = cog.read_rgba(L, c0, r0, c1, r1)
                S_roi[0, 2] -= c0
                S_roi[1, 2] -= r0
                tmp = cv2.warpAffine(rgba, S_roi[:2], (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                _note_upsample(up[:, i], cc, rr, P, tmp, x0, y0, cog.ground_res(L, frames[cog.crs].k) / s)
                composite(canvas[y0:y1, x0:x1], tmp, first=False)
            valid = finish(canvas)
            rgb = cv2.cvtColor(canvas, cv2.COLOR_RGBA2RGB)
            del canvas
            integ = cv2.integral(valid)
            ok = integ[rr + P, cc + P] - integ[rr, cc + P] - integ[rr + P, cc] + integ[rr, cc]
            cov[:, i] = ok / float(P * P)
            canvases.append(rgb)
            cuts.append(np.stack([cc, rr], 1))
        return canvases, cuts, cov, up


def _note_upsample(up: np.ndarray, cc, rr, P: int, warped: np.ndarray, x0: int, y0: int, factor: float) -> None:
    """Raise ``up`` (per cell) to ``factor`` where the cell's patch overlaps the pixels that the
    COG's ``warped`` window (at canvas offset x0, y0) covers."""
    bx, by, bw, bh = cv2.boundingRect(cv2.extractChannel(warped, 3))
    if not (bw and bh):
        return
    bx, by = bx + x0, by + y0
    hit = (cc < bx + bw) & (cc + P > bx) & (rr < by + bh) & (rr + P > by)
    np.maximum(up, np.where(hit, factor, 0.0).astype(up.dtype), out=up)

