"""Decoded COG tiles: per-file level geometry, an LRU cache of RGBA tiles, premultiplied compositing.

JPEG COGs are read raw (tile bytes + OpenCV's libjpeg-turbo, :mod:`vglpipe.aerial.rawtiff`);
other COGs through GDAL block reads. Decoded tiles are RGBA with the nodata mask as
(premultiplied) alpha, so several COGs (also in different CRSs) composite seamlessly with
the "over" operator.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import rasterio
from rasterio.windows import Window

from vglpipe.aerial.geometry import aff3, quad_hits_rect
from vglpipe.aerial.rawtiff import open_raw
from vglpipe.errors import RasterError

class CogReader:
    """One COG: level geometry, and decoded RGBA tiles (alpha = mask) through the shared LRU cache.

    JPEG COGs are read raw (tile bytes + OpenCV decode, :mod:`vglpipe.aerial.rawtiff`);
    anything else through GDAL block reads.
    """

    def __init__(self, path: Path, crs: str, lonlat_bounds, block_cache: "TileCache", raw: bool = True):
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
        for L in range(len(self.factors)):
            if self.ground_res(L, k) <= m_per_px * 1.001:
                best = L
        return best

    def ground_res(self, L: int, k: float = 1.0) -> float:
        """Ground metres per pixel of level L (projected res / scale factor ``k`` of the local frame)."""
        return self.res * self.factors[L] / k

    def level_shape(self, L: int) -> tuple[int, int]:
        return self._shapes[L]

    def level_to_projected(self, L: int) -> np.ndarray:
        h, w = self.level_shape(L)
        return aff3(self.transform) @ np.diag([self.width / w, self.height / h, 1.0])

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
                if footprint is not None and not quad_hits_rect(footprint, xs - 2.0, ys - 2.0, xs + bw + 2.0, ys + bh + 2.0):
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


def composite(dst: np.ndarray, src: np.ndarray, first: bool) -> None:
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


def finish(rgba: np.ndarray) -> np.ndarray:
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


class TileCache:
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

