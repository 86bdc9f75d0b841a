"""Geometry of aerial patches: local true-north metres around a point -> a COG's projected CRS.

A patch is a square in the local frame of its centre, rotated by a bearing θ (radians,
clockwise from true north: the compass direction of the patch's "up") and shifted by a
metric offset (east, north). Local metres map to a projected CRS through pyproj's factors
at the centre: meridian convergence (grid north vs true north, ~-1.39° at Boston in UTM
19N) and the meridional / parallel scales (UTM ~0.9996, Web Mercator 1/cos φ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyproj


@dataclass(frozen=True)
class LocalFrame:
    """A point's projected position and the local linearisation of its CRS there."""

    x: float
    y: float
    k_east: float  # parallel scale
    k_north: float  # meridional scale
    delta: float  # grid bearing of true north, radians (-meridian convergence)

    @property
    def k(self) -> float:
        """Mean areal scale factor (ground metres -> projected units)."""
        return math.sqrt(self.k_east * self.k_north)


def local_frame(crs: str, lat: float, lon: float) -> LocalFrame:
    """The :class:`LocalFrame` of (lat, lon) in ``crs``."""
    x, y = transformer(crs).transform(lon, lat)
    f = _proj(crs).get_factors(lon, lat)
    delta = -math.radians(float(f.meridian_convergence))
    return LocalFrame(float(x), float(y), float(f.parallel_scale), float(f.meridional_scale), delta)


_TRANSFORMERS: dict[str, pyproj.Transformer] = {}
_PROJS: dict[str, pyproj.Proj] = {}


def transformer(crs: str) -> pyproj.Transformer:
    """Cached lon/lat (EPSG:4326, x=lon) -> ``crs`` transformer."""
    if crs not in _TRANSFORMERS:
        _TRANSFORMERS[crs] = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return _TRANSFORMERS[crs]


def _proj(crs: str) -> pyproj.Proj:
    if crs not in _PROJS:
        _PROJS[crs] = pyproj.Proj(crs)
    return _PROJS[crs]


def local_to_projected(frame: LocalFrame, theta: float = 0.0, offset=(0.0, 0.0)) -> np.ndarray:
    """3×3 affine: local rotated metres (right, up) around the centre -> projected (X, Y)."""
    c, s = math.cos(theta), math.sin(theta)
    R = np.array([[c, s, offset[0]], [-s, c, offset[1]], [0, 0, 1.0]])  # (right, up) -> (east, north)
    cd, sd = math.cos(frame.delta), math.sin(frame.delta)
    G = np.array([[frame.k_east * cd, frame.k_north * sd, frame.x],
                  [-frame.k_east * sd, frame.k_north * cd, frame.y], [0, 0, 1.0]])  # (east, north) -> grid
    return G @ R


def patch_to_projected(frame, lod_m_per_px: float, patch_px: int, theta: float = 0.0, offset=(0.0, 0.0)) -> np.ndarray:
    """3×3 affine: patch pixel index (col, row) (centre of pixel) -> projected (X, Y)."""
    s, h = lod_m_per_px, patch_px / 2.0
    L = np.array([[s, 0, s * (0.5 - h)], [0, -s, s * (h - 0.5)], [0, 0, 1.0]])
    return local_to_projected(frame, theta, offset) @ L


def aff3(a) -> np.ndarray:
    return np.array([[a.a, a.b, a.c], [a.d, a.e, a.f], [0, 0, 1.0]])


# ----------------------------------------------------------------------------- COG access

def quad_hits_rect(q: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> bool:
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



def window_of(S: np.ndarray, dst_size, level_shape) -> tuple[int, int, int, int] | None:
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

