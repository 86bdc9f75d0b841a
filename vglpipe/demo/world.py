"""A procedural, deterministic demo world: orthophoto (colour), DSM (height) and class map.

The world is a north-up raster in the UTM zone of its centre (EPSG:326zz, e.g.
EPSG:32619 near Boston) at ``m_per_px`` (default 0.2 m/px). It holds a road network
(two jittered road families at a seed-dependent angle, sidewalks, centre lines), a
river and ponds, fields with crop stripes, forest patches with canopy texture, single
trees, and buildings with roof colours (gable roofs shaded by the sun, flat roofs with
rooftop units), heights and cast shadows. Everything is drawn with vectorized numpy /
OpenCV; the only Python loops are over objects (roads, buildings, trees), never pixels.

Two seeds give different road angles, spacings, palettes, densities and sun directions,
so a model trained on one world is tested on another (as the paper trains on other
states and tests on Massachusetts).

Contract used by the street-view renderer (crawl stage): :class:`World`,
:func:`make_world`, :func:`write_world`, :func:`read_world`.
"""

from __future__ import annotations

import colorsys
import math
import os
from dataclasses import dataclass, field

import affine
import cv2
import numpy as np
import pyproj
import rasterio

from vglpipe.errors import InputError, RasterError
from vglpipe.store.atomic import atomic_path

# class codes of World.classes
GRASS, FIELD, ROAD, BUILDING, TREE, WATER, SIDEWALK = 0, 1, 2, 3, 4, 5, 6
CLASS_NAMES = {
    GRASS: "grass",
    FIELD: "field",
    ROAD: "road",
    BUILDING: "building",
    TREE: "tree",
    WATER: "water",
    SIDEWALK: "sidewalk",
}


@dataclass
class World:
    color: np.ndarray  # (H, W, 3) uint8 RGB orthophoto, north-up
    height: np.ndarray  # (H, W) float32 DSM, metres above ground
    transform: affine.Affine  # pixel -> projected CRS (north-up)
    crs: str  # e.g. "EPSG:32619"
    classes: np.ndarray | None = None  # (H, W) uint8 class codes (CLASS_NAMES), None when read back
    seed: int | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.color.shape[:2]

    @property
    def m_per_px(self) -> float:
        return float(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) in ``crs``."""
        h, w = self.shape
        x0, y0 = self.transform @ (0, 0)
        x1, y1 = self.transform @ (w, h)
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def utm_crs(lat: float, lon: float) -> str:
    """The WGS84 UTM zone CRS of a point, e.g. ``EPSG:32619`` near Boston."""
    zone = int(math.floor((lon + 180.0) / 6.0)) + 1
    zone = min(max(zone, 1), 60)
    return f"EPSG:{32600 + zone if lat >= 0 else 32700 + zone}"


# --------------------------------------------------------------------------- noise


def _smooth_noise(rng: np.random.Generator, shape, cell_px: float, dtype=np.float32) -> np.ndarray:
    """Value noise in [0, 1]: random coarse grid (one value per ``cell_px``) upsampled bicubically."""
    h, w = shape
    ch, cw = max(2, int(math.ceil(h / cell_px)) + 2), max(2, int(math.ceil(w / cell_px)) + 2)
    coarse = rng.random((ch, cw), dtype=np.float32)
    coarse = cv2.GaussianBlur(coarse, (0, 0), 0.7)
    up = cv2.resize(coarse, (int(cw * cell_px), int(ch * cell_px)), interpolation=cv2.INTER_CUBIC)
    oy, ox = int(cell_px), int(cell_px)
    out = up[oy : oy + h, ox : ox + w]
    lo, hi = float(out.min()), float(out.max())
    return ((out - lo) / max(hi - lo, 1e-6)).astype(dtype, copy=False)


def _tex_u8(rng: np.random.Generator, shape, cell_px: float, amp: float) -> np.ndarray:
    """uint8 multiplicative texture centred on 128 (128 = x1.0), amplitude ``amp`` (e.g. 0.15)."""
    n = _smooth_noise(rng, shape, cell_px)
    return np.clip(128.0 + (n - 0.5) * 2 * amp * 128.0, 0, 255).astype(np.uint8)


def _apply_tex(color: np.ndarray, tex: np.ndarray, mask: np.ndarray | None = None) -> None:
    """color *= tex/128 (in place), optionally only where ``mask``."""
    t3 = cv2.merge([tex, tex, tex])
    out = cv2.multiply(color, t3, scale=1.0 / 128.0)
    if mask is None:
        color[...] = out
    else:
        np.copyto(color, out, where=mask[..., None])


# --------------------------------------------------------------------------- world


def make_world(
    seed: int,
    center_lat: float,
    center_lon: float,
    size_m: float,
    m_per_px: float = 0.2,
) -> World:
    """Draw a ``size_m`` × ``size_m`` world centred on (lat, lon) in its UTM zone, deterministically from ``seed``."""
    if not (size_m > 0 and m_per_px > 0):
        raise InputError(f"synthetic world: size_m={size_m} and m_per_px={m_per_px} must be > 0")
    n = int(round(size_m / m_per_px))
    if n < 16:
        raise InputError(f"synthetic world: size_m={size_m} at {m_per_px} m/px is fewer than 16 px")
    if n * n > 40_000**2:
        raise InputError(f"synthetic world: {n}x{n} px is too large")
    crs = utm_crs(center_lat, center_lon)
    fwd = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    cx, cy = fwd.transform(center_lon, center_lat)
    # snap the upper-left corner to the pixel grid so that worlds align with COG tiling
    x0 = math.floor((cx - n * m_per_px / 2) / m_per_px) * m_per_px
    y0 = math.ceil((cy + n * m_per_px / 2) / m_per_px) * m_per_px
    transform = affine.Affine(m_per_px, 0.0, x0, 0.0, -m_per_px, y0)

    rng = np.random.default_rng(seed)
    s = 1.0 / m_per_px  # px per metre
    shape = (n, n)
    P = _Params(rng)

    classes = np.full(shape, GRASS, np.uint8)
    color = np.empty((n, n, 3), np.uint8)
    color[...] = P.grass
    height = np.zeros(shape, np.float32)

    # ---- land use: fields (parcels with stripes) where urban density is low
    density = _smooth_noise(rng, shape, 350 * s)  # urban density, 0..1
    forest_n = _smooth_noise(rng, shape, 120 * s)
    field_mask = (density < P.field_below) & (forest_n < 0.55)
    _draw_fields(rng, color, classes, field_mask, P, s)
    del field_mask
    grass_tex = _tex_u8(rng, shape, 6 * s, 0.18)
    _apply_tex(color, grass_tex, classes == GRASS)
    del grass_tex

    # ---- forest patches: canopy texture and heights
    forest = (forest_n > P.forest_above) & (density < 0.7)
    canopy = _smooth_noise(rng, shape, 2.5 * s)
    fcol = np.empty_like(color)
    fcol[...] = P.forest
    shade = np.clip(60 + canopy * 140, 0, 255).astype(np.uint8)
    _apply_tex(fcol, shade)
    np.copyto(color, fcol, where=forest[..., None])
    height[forest] = (8.0 + 14.0 * canopy[forest]) * (0.6 + 0.4 * forest_n[forest])
    classes[forest] = TREE
    del fcol, shade, canopy, forest_n

    # ---- water: a river (thick polyline) and ponds (noise threshold)
    water = np.zeros(shape, np.uint8)
    pond_n = _smooth_noise(rng, shape, 200 * s)
    water[(pond_n > P.pond_above)] = 1
    del pond_n
    if P.river:
        t = np.linspace(-0.1, 1.1, 80)
        a = rng.uniform(0, np.pi)
        cx_, cy_ = n * rng.uniform(0.3, 0.7), n * rng.uniform(0.3, 0.7)
        L = 1.5 * n
        px = cx_ + (t - 0.5) * L * math.cos(a) + math.sin(a) * 40 * s * np.sin(t * 7 + rng.uniform(0, 6))
        py = cy_ + (t - 0.5) * L * math.sin(a) - math.cos(a) * 40 * s * np.sin(t * 7 + rng.uniform(0, 6))
        pts = np.stack([px, py], 1).round().astype(np.int32)
        cv2.polylines(water, [pts], False, 1, thickness=int(P.river_w * s), lineType=cv2.LINE_8)
    wm = water.astype(bool)
    del water
    wcol = np.empty_like(color)
    wcol[...] = P.water
    _apply_tex(wcol, _tex_u8(rng, shape, 15 * s, 0.12))
    np.copyto(color, wcol, where=wm[..., None])
    del wcol
    classes[wm] = WATER
    height[wm] = 0.0
    # shore: a thin band of sand/mud around water
    shore = cv2.dilate(wm.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(3 * s) | 1,) * 2)).astype(bool) & ~wm
    color[shore] = P.shore
    classes[shore] = GRASS
    height[shore] = 0.0
    del shore

    # ---- roads: two jittered families at angle alpha; sidewalks, centre lines
    roads = _road_network(rng, n, s, P)
    road_mask = np.zeros(shape, np.uint8)
    side_mask = np.zeros(shape, np.uint8)
    mark_mask = np.zeros(shape, np.uint8)
    for (p0, p1, width, major) in roads:
        cv2.line(side_mask, p0, p1, 1, thickness=int((width + 2 * P.sidewalk_w) * s), lineType=cv2.LINE_8)
        cv2.line(road_mask, p0, p1, 1, thickness=int(width * s), lineType=cv2.LINE_8)
    for (p0, p1, width, major) in roads:
        if major:
            _dashed_line(mark_mask, p0, p1, dash=int(3 * s), gap=int(6 * s), thickness=max(1, int(0.15 * s)))
    rm, sm = road_mask.astype(bool), side_mask.astype(bool) & ~road_mask.astype(bool)
    bridge = rm & wm  # roads cross water on bridges
    del road_mask, side_mask
    scol = np.empty_like(color)
    scol[...] = P.sidewalk
    _apply_tex(scol, _tex_u8(rng, shape, 1.5 * s, 0.08))
    np.copyto(color, scol, where=(sm & ~wm)[..., None])
    classes[sm & ~wm] = SIDEWALK
    height[sm & ~wm] = 0.0
    del scol
    acol = np.empty_like(color)
    acol[...] = P.asphalt
    _apply_tex(acol, _tex_u8(rng, shape, 0.8 * s, 0.10))
    _apply_tex(acol, _tex_u8(rng, shape, 20 * s, 0.10))
    np.copyto(color, acol, where=rm[..., None])
    del acol
    color[(mark_mask > 0) & rm] = P.marking
    classes[rm] = ROAD
    height[rm] = 0.0
    height[bridge] = 1.5
    del mark_mask, bridge

    # ---- buildings along roads, trees in yards and along streets
    sun_dx, sun_dy = P.shadow_vec  # shadow offset per metre of height, in px
    shadow = np.zeros(shape, np.uint8)
    _draw_buildings(rng, color, classes, height, shadow, density, roads, P, s)
    _draw_trees(rng, color, classes, height, shadow, density, roads, P, s)
    # shadows darken ground (not the roofs/canopies that cast them)
    sh = (shadow > 0) & (height < 0.5)
    color[sh] = (color[sh].astype(np.uint16) * P.shadow_gain // 256).astype(np.uint8)
    del sh, shadow, density

    # ---- sensor noise / fine texture over everything
    _apply_tex(color, _tex_u8(rng, shape, 1.0, 0.03))

    meta = {
        "seed": int(seed),
        "center_lat": float(center_lat),
        "center_lon": float(center_lon),
        "size_m": float(size_m),
        "m_per_px": float(m_per_px),
        "road_angle_deg": float(np.degrees(P.alpha)),
        "n_roads": len(roads),
    }
    return World(color=color, height=height, transform=transform, crs=crs, classes=classes, seed=int(seed), meta=meta)


class _Params:
    """All seed-dependent style choices, drawn in a fixed order."""

    def __init__(self, rng: np.random.Generator):
        u = rng.uniform
        self.alpha = u(0, np.pi / 2)
        self.spacing_a = u(70, 140)
        self.spacing_b = u(90, 200)
        self.keep_b = u(0.55, 0.9)
        self.road_w = u(6, 9)
        self.major_every = int(rng.integers(3, 6))
        self.sidewalk_w = u(1.2, 2.2)
        self.field_below = u(0.25, 0.45)
        self.forest_above = u(0.6, 0.75)
        self.pond_above = u(0.86, 0.93)
        self.river = bool(rng.random() < 0.7)
        self.river_w = u(12, 30)
        self.build_above = u(0.3, 0.45)
        self.tree_rate = u(0.3, 0.8)
        g = u(-15, 15)
        self.grass = (int(85 + g), int(120 + g), int(60 + g / 2))
        self.forest = (int(u(40, 60)), int(u(70, 95)), int(u(35, 50)))
        self.water = (int(u(30, 50)), int(u(60, 85)), int(u(80, 110)))
        self.shore = (int(u(150, 175)), int(u(140, 160)), int(u(110, 130)))
        self.asphalt = (int(u(70, 95)),) * 3
        self.sidewalk = (int(u(165, 190)),) * 3
        self.marking = (230, 200, 60) if rng.random() < 0.5 else (235, 235, 235)
        k = int(rng.integers(5, 9))
        self.roofs = [tuple(int(c) for c in rng.integers(40, 200, 3)) for _ in range(k)]
        self.crops = [
            (int(u(90, 190)), int(u(100, 170)), int(u(40, 90))) for _ in range(int(rng.integers(4, 7)))
        ]
        az = u(0, 2 * np.pi)  # shadow direction (away from the sun), in image x/y
        tan_z = u(0.5, 1.1)
        self.shadow_vec = (math.sin(az) * tan_z, -math.cos(az) * tan_z)
        self.shadow_gain = int(u(110, 150))  # /256
        self.roof_light = (math.sin(az), -math.cos(az))


def _draw_fields(rng, color, classes, mask, P, s):
    n = mask.shape[0]
    # parcels: a coarse random id grid (~60 m), rotated by the road angle, nearest upsampling
    cell = 60 * s
    k = int(math.ceil(n * 1.5 / cell)) + 2
    ids = rng.integers(0, len(P.crops), (k, k)).astype(np.uint8)
    orient = rng.integers(0, 2, (k, k)).astype(np.uint8)
    c, sn = math.cos(P.alpha), math.sin(P.alpha)
    # map world px -> parcel grid coordinates (rotated)
    M = np.array([[c / cell, sn / cell, k / 2 - (c + sn) * n / 2 / cell], [-sn / cell, c / cell, k / 2 - (c - sn) * n / 2 / cell]])
    Minv = cv2.invertAffineTransform(M)
    pid = cv2.warpAffine(ids, Minv, (n, n), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
    por = cv2.warpAffine(orient, Minv, (n, n), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
    lut = np.array(P.crops, np.uint8)
    fcol = lut[pid]
    # crop stripes (rows every ~3 m) along or across the road angle
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    period = 3.0 * s
    ph_a = (xx * c + yy * sn) * (2 * np.pi / period)
    ph_b = (-xx * sn + yy * c) * (2 * np.pi / period)
    del xx, yy
    stripes = np.where(por > 0, np.sin(ph_a), np.sin(ph_b))
    del ph_a, ph_b
    tex = np.clip(128 + 22 * stripes, 0, 255).astype(np.uint8)
    del stripes
    _apply_tex(fcol, tex)
    _apply_tex(fcol, _tex_u8(rng, mask.shape, 25 * s, 0.12))
    np.copyto(color, fcol, where=mask[..., None])
    classes[mask] = FIELD


def _dashed_line(img, p0, p1, dash, gap, thickness):
    x0, y0 = p0
    x1, y1 = p1
    L = math.hypot(x1 - x0, y1 - y0)
    if L < 1:
        return
    step = dash + gap
    ts = np.arange(0, L, step)
    ux, uy = (x1 - x0) / L, (y1 - y0) / L
    for t in ts:
        a = (int(x0 + ux * t), int(y0 + uy * t))
        b = (int(x0 + ux * min(t + dash, L)), int(y0 + uy * min(t + dash, L)))
        cv2.line(img, a, b, 1, thickness=thickness)


def _road_network(rng, n, s, P):
    """Lines of family A (full length) and segments of family B between consecutive A lines."""
    c, sn = math.cos(P.alpha), math.sin(P.alpha)
    ctr = n / 2
    half = n * 0.75
    da = np.array([c, sn])  # direction of family A
    db = np.array([-sn, c])  # direction of family B (perpendicular)
    roads = []
    offs_a = []
    o = -half + rng.uniform(0, P.spacing_a * s)
    i = 0
    while o < half:
        offs_a.append(o)
        o += P.spacing_a * s * rng.uniform(0.8, 1.25)
        i += 1
    for j, o in enumerate(offs_a):
        base = ctr + db * o
        p0 = base - da * half * 1.5
        p1 = base + da * half * 1.5
        major = j % P.major_every == 0
        w = P.road_w * (1.5 if major else 1.0)
        roads.append((tuple(int(v) for v in p0), tuple(int(v) for v in p1), w, major))
    o = -half + rng.uniform(0, P.spacing_b * s)
    j = 0
    while o < half:
        major = j % P.major_every == 0
        for a0, a1 in zip(offs_a[:-1], offs_a[1:]):
            if major or rng.random() < P.keep_b:
                p0 = ctr + da * o + db * a0
                p1 = ctr + da * o + db * a1
                w = P.road_w * (1.5 if major else 1.0)
                roads.append((tuple(int(v) for v in p0), tuple(int(v) for v in p1), w, major))
        o += P.spacing_b * s * rng.uniform(0.8, 1.25)
        j += 1
    return roads


def _draw_buildings(rng, color, classes, height, shadow, density, roads, P, s):
    n = color.shape[0]
    lx, ly = P.roof_light
    for p0, p1, w, major in roads:
        x0, y0 = p0
        x1, y1 = p1
        L = math.hypot(x1 - x0, y1 - y0)
        if L < 1:
            continue
        ux, uy = (x1 - x0) / L, (y1 - y0) / L
        nx, ny = -uy, ux
        t = rng.uniform(0, 10 * s)
        while t < L:
            gap = rng.uniform(14, 30) * s
            px, py = x0 + ux * t, y0 + uy * t
            t += gap
            if not (0 <= px < n and 0 <= py < n):
                continue
            for side in (-1, 1):
                dens = density[int(py), int(px)]
                if dens < P.build_above or rng.random() > 0.35 + dens:
                    continue
                big = dens > 0.75 and rng.random() < 0.5
                along = rng.uniform(18, 40) if big else rng.uniform(8, 15)
                depth = rng.uniform(15, 35) if big else rng.uniform(7, 12)
                setback = (w / 2 + P.sidewalk_w + rng.uniform(3, 8)) * s
                cxp = px + side * nx * (setback + depth * s / 2)
                cyp = py + side * ny * (setback + depth * s / 2)
                hw, hd = along * s / 2, depth * s / 2
                corners = np.array(
                    [
                        (cxp + ux * a * hw + nx * b * hd, cyp + uy * a * hw + ny * b * hd)
                        for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))
                    ]
                )
                pts = np.vstack([corners, [(cxp, cyp)]]).round().astype(int)
                if (pts < 0).any() or (pts >= n).any():
                    continue
                if np.isin(classes[pts[:, 1], pts[:, 0]], (ROAD, SIDEWALK, BUILDING, WATER)).any():
                    continue
                h = rng.uniform(12, 45) if big else rng.uniform(4, 11)
                poly = corners.round().astype(np.int32)
                # cast shadow: hull of the footprint and the footprint shifted by the height
                sh = poly + np.array([P.shadow_vec[0] * h * s, P.shadow_vec[1] * h * s]).round().astype(np.int32)
                cv2.fillConvexPoly(shadow, cv2.convexHull(np.vstack([poly, sh])), 1)
                cv2.fillConvexPoly(classes, poly, BUILDING)
                cv2.fillConvexPoly(height, poly, float(h))
                base = _building_colour(rng, P)
                if big:  # flat roof, light, with rooftop units
                    roof = np.clip(base * 0.4 + 120, 0, 255)
                    cv2.fillConvexPoly(color, poly, tuple(float(v) for v in roof))
                    for _ in range(int(rng.integers(1, 5))):
                        a, b = rng.uniform(-0.7, 0.7, 2)
                        ux2, uy2 = ux * 1.5 * s, uy * 1.5 * s
                        qx, qy = cxp + ux * a * hw + nx * b * hd, cyp + uy * a * hw + ny * b * hd
                        box = np.array([(qx - ux2 - nx * s, qy - uy2 - ny * s), (qx + ux2 - nx * s, qy + uy2 - ny * s),
                                        (qx + ux2 + nx * s, qy + uy2 + ny * s), (qx - ux2 + nx * s, qy - uy2 + ny * s)]).round().astype(np.int32)
                        cv2.fillConvexPoly(color, box, tuple(float(v) * 0.7 for v in roof))
                        cv2.fillConvexPoly(height, box, float(h + 1.5))
                else:  # gable roof: two halves split along the ridge, lit differently
                    lit = 1.0 if (nx * lx + ny * ly) > 0 else 0.7
                    half_a = np.array([corners[0], corners[1], (corners[1] + corners[2]) / 2, (corners[0] + corners[3]) / 2]).round().astype(np.int32)
                    half_b = np.array([(corners[0] + corners[3]) / 2, (corners[1] + corners[2]) / 2, corners[2], corners[3]]).round().astype(np.int32)
                    cv2.fillConvexPoly(color, half_a, tuple(float(v) * lit for v in base))
                    cv2.fillConvexPoly(color, half_b, tuple(float(v) * (1.7 - lit) for v in base))
                    ridge = np.array([(corners[0] + corners[3]) / 2, (corners[1] + corners[2]) / 2]).round().astype(np.int32)
                    cv2.line(height, tuple(int(v) for v in ridge[0]), tuple(int(v) for v in ridge[1]), float(h + 2.0), thickness=max(1, int(0.6 * s)))


def _building_colour(rng, P) -> np.ndarray:
    """Each building its own colour, as real roofs and facades vary: half of them a shade of the
    world's palette, half any hue (the renderer gives walls their roof's colour)."""
    if rng.random() < 0.5:
        base = np.array(P.roofs[int(rng.integers(len(P.roofs)))], np.float32)
        return np.clip(base * rng.uniform(0.8, 1.2, 3), 0, 255).astype(np.float32)
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.25, 0.85), rng.uniform(0.35, 0.9))
    return np.array([r, g, b], np.float32) * 255


def _draw_trees(rng, color, classes, height, shadow, density, roads, P, s):
    n = color.shape[0]
    # yard/street trees: candidates everywhere, kept where grass and moderately dense
    k = int(P.tree_rate * (n / s) ** 2 / 400)  # ~ one candidate per 400 m² x rate
    xs = rng.uniform(0, n, k)
    ys = rng.uniform(0, n, k)
    rs = rng.uniform(1.8, 5.0, k)
    hs = rng.uniform(5, 18, k)
    tones = rng.uniform(0.75, 1.2, k)
    ok = classes[ys.astype(int), xs.astype(int)] == GRASS
    ok &= density[ys.astype(int), xs.astype(int)] > 0.2
    for x, y, r, h, tone in zip(xs[ok], ys[ok], rs[ok], hs[ok], tones[ok]):
        c = (int(x), int(y))
        rp = int(r * s)
        cv2.circle(shadow, (int(x + P.shadow_vec[0] * h * s * 0.8), int(y + P.shadow_vec[1] * h * s * 0.8)), rp, 1, -1)
        base = np.array(P.forest, np.float32) * tone
        cv2.circle(color, c, rp, tuple(float(v) for v in base), -1)
        cv2.circle(color, (int(x - P.shadow_vec[0] * rp * 0.3), int(y - P.shadow_vec[1] * rp * 0.3)), max(1, int(rp * 0.55)), tuple(float(min(255, v * 1.3)) for v in base), -1)
        cv2.circle(classes, c, rp, TREE, -1)
        cv2.circle(height, c, rp, float(h * 0.7), -1)
        cv2.circle(height, c, max(1, int(rp * 0.6)), float(h), -1)


# --------------------------------------------------------------------------- I/O


def write_world(world: World, color_path, height_path) -> None:
    """Write the orthophoto (3×uint8) and the DSM (float32) as tiled GeoTIFFs, atomically."""
    h, w = world.shape
    if world.color.shape != (h, w, 3) or world.color.dtype != np.uint8:
        raise InputError(f"world colour must be (H, W, 3) uint8, got {world.color.shape} {world.color.dtype}")
    if world.height.shape != (h, w):
        raise InputError(f"world height must be (H, W) = {(h, w)}, got {world.height.shape}")
    common = dict(driver="GTiff", width=w, height=h, crs=world.crs, transform=world.transform, tiled=True, blockxsize=512, blockysize=512, compress="DEFLATE")
    tags = {k: str(v) for k, v in world.meta.items()}
    with atomic_path(color_path) as tmp:
        with rasterio.open(tmp, "w", count=3, dtype="uint8", photometric="RGB", predictor=2, **common) as dst:
            dst.write(np.moveaxis(world.color, -1, 0))
            dst.update_tags(**tags)
    with atomic_path(height_path) as tmp:
        with rasterio.open(tmp, "w", count=1, dtype="float32", predictor=3, **common) as dst:
            dst.write(world.height.astype(np.float32, copy=False), 1)
            dst.update_tags(**tags)


def read_world(color_path, height_path) -> World:
    """Read a world written by :func:`write_world` (``classes`` is None)."""
    for p in (color_path, height_path):
        if not os.path.exists(p):
            raise InputError(f"{p}: no such file")
    try:
        with rasterio.open(color_path) as src:
            if src.count < 3 or src.dtypes[0] != "uint8":
                raise RasterError(f"{color_path}: expected 3×uint8 bands, got {src.count}×{src.dtypes[0]}")
            color = np.ascontiguousarray(np.moveaxis(src.read((1, 2, 3)), 0, -1))
            transform, crs, tags = src.transform, src.crs.to_string(), src.tags()
        with rasterio.open(height_path) as src:
            height = src.read(1).astype(np.float32, copy=False)
            if src.transform != transform or src.crs.to_string() != crs:
                raise RasterError(f"{height_path}: georeferencing differs from {color_path}")
    except rasterio.errors.RasterioError as exc:
        raise RasterError(f"cannot read world ({color_path}, {height_path}): {exc}") from exc
    if height.shape != color.shape[:2]:
        raise RasterError(f"{height_path}: shape {height.shape} differs from {color_path} {color.shape[:2]}")
    seed = int(tags["seed"]) if "seed" in tags else None
    return World(color=color, height=height, transform=transform, crs=crs, classes=None, seed=seed, meta=tags)
