"""Render a region's synthetic Mapillary: photos, camera metadata, GNSS noise, ground truth.

:func:`render_source` places cameras mostly on roads (a few off-road, some outside the
region polygon or in its hole, which the crawler must drop), turns most cameras on a road to
face along it (as vehicles and walkers take Mapillary's photos), draws camera/capture
metadata as a crowd-sourcing platform would hold it (several years, mostly daylight with a
minority of dusk, dawn and night shots, varied devices, aspect ratios and resolutions, a few
panoramas and greyscale photos, a hostile user name) and renders every photo. The position the fake API serves is the
GNSS-noised one (a few metres, sometimes tens of metres); the true pose is kept in
ground-truth columns of ``source.parquet`` that the fake never serves.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import cv2
import numpy as np
import pyproj
import shapely

from vglpipe.errors import InputError
from vglpipe.geo.sphere import offset_m
from vglpipe.demo.fake_mapillary import write_source
from vglpipe.demo.streetview import VIEW_RANGE_M, Camera, HeightField, render
from vglpipe.demo.world import ROAD, WATER

log = logging.getLogger("vglpipe.demo")

# (make, model, camera_type, weight)
DEVICES = [
    ("Apple", "iPhone 12", "perspective", 0.25),
    ("Samsung", "SM-G991B", "perspective", 0.2),
    ("Google", "Pixel 6", "perspective", 0.1),
    ("GoPro", "HERO9 Black", "fisheye", 0.1),
    ("Garmin", "VIRB Ultra 30", "brown", 0.08),
    ("Xiaomi", "Redmi Note 9", "simple_radial", 0.07),
    ("BlackVue", "DR900S", "radial", 0.1),
    ("Sony", "FDR-X3000", "fisheye_opencv", 0.1),
]
PANO_DEVICES = [("GoPro", "MAX", "spherical"), ("Insta360", "ONE X2", "equirectangular")]
# thumbnail sizes (thumb_1024_url: longest side 1024) and aspect ratios of the devices
SIZES = [(1024, 768), (1024, 576), (768, 1024), (1024, 683), (960, 720), (800, 600), (640, 480), (576, 1024)]
CREATORS = ["mapper_anna", "bikecam42", "R\u00e9mi.L", "truckfleet_07", "walker", "\u5927\u962a\u30de\u30c3\u30d1\u30fc",
            "dashcam_dave", '<script>alert("pwned")</script>', "o'neil & sons", "ghost_rider"]
YEARS = (2014, 2025)  # captured_at uniform over [2014-01-01, 2025-01-01)


#: Local solar capture hours: (weight, from, to) — mostly daylight, as on Mapillary.
HOURS = ((0.84, 7.0, 18.0), (0.05, 5.0, 7.0), (0.05, 18.0, 20.0), (0.06, 20.0, 29.0))


@dataclass
class RenderSettings:
    n: int = 400
    seed: int | tuple[int, ...] = 0  # e.g. (photo seed, world seed): ids then differ between regions
    hours: tuple[tuple[float, float, float], ...] = HOURS
    on_road: float = 0.85
    along_road: float = 0.8  # of the cameras on a road, those facing along it (as from a vehicle), ± heading_sigma_deg
    heading_sigma_deg: float = 10.0
    outside: float = 0.06  # outside the polygon (incl. its hole): must be dropped by the crawler
    pano: float = 0.03
    grey: float = 0.03
    gnss_sigma_m: tuple[float, float, float] = (3.0, 8.0, 25.0)  # mixture: typical, poor, bad fix
    gnss_weights: tuple[float, float, float] = (0.75, 0.18, 0.07)
    internal_scale: float = 0.5
    view_range_m: float = VIEW_RANGE_M  # how far the photos see (the world must reach that far beyond the region)
    jpeg_quality: int = 88


def road_mask(world) -> np.ndarray:
    """Road pixels: the class map if the world has one, else grey low-lying asphalt by colour."""
    if world.classes is not None:
        return world.classes == ROAD
    c = world.color.astype(np.int16)
    grey = (np.abs(c[..., 0] - c[..., 1]) < 10) & (np.abs(c[..., 1] - c[..., 2]) < 12)
    v = c.mean(axis=2)
    mask = grey & (v > 55) & (v < 110) & (world.height < 0.3)
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8)).astype(bool)


def road_axis_deg(roads: np.ndarray, row: np.ndarray, col: np.ndarray, m_per_px: float,
                  reach_m: float = 20.0, step_deg: float = 5.0) -> np.ndarray:
    """The local road's axis at each pixel, degrees clockwise from north in [0, 180): the
    direction through the pixel along which the most road lies within ±``reach_m``."""
    axes = np.arange(0.0, 180.0, step_deg)
    t = np.arange(-reach_m, reach_m + 1e-9, 1.0) / m_per_px  # px along the axis
    a = np.radians(axes)
    dc, dr = np.sin(a), -np.cos(a)  # east = +col, north = -row
    rr = np.rint(row[:, None, None] + dr[None, :, None] * t[None, None, :]).astype(np.int64)
    cc = np.rint(col[:, None, None] + dc[None, :, None] * t[None, None, :]).astype(np.int64)
    inside = (rr >= 0) & (rr < roads.shape[0]) & (cc >= 0) & (cc < roads.shape[1])
    hits = np.where(inside, roads[np.clip(rr, 0, roads.shape[0] - 1), np.clip(cc, 0, roads.shape[1] - 1)], False)
    return axes[hits.sum(axis=2).argmax(axis=1)]


def _pick(rng, mask: np.ndarray, n: int) -> np.ndarray:
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return np.zeros(0, np.int64)
    return idx[rng.integers(0, len(idx), n)]


def render_source(world, region, out_dir: str | os.PathLike, settings: RenderSettings | None = None) -> dict:
    """Render ``settings.n`` photos of ``world`` around ``region`` (shapely lon/lat) into ``out_dir``."""
    s = settings or RenderSettings()
    if s.n < 1:
        raise InputError(f"render: n={s.n} must be >= 1")
    rng = np.random.default_rng(s.seed)
    t0 = time.perf_counter()
    to_proj = pyproj.Transformer.from_crs("EPSG:4326", world.crs, always_xy=True)
    to_ll = pyproj.Transformer.from_crs(world.crs, "EPSG:4326", always_xy=True)
    region_p = shapely.transform(region, lambda xy: np.column_stack(to_proj.transform(xy[:, 0], xy[:, 1])))
    H, W = world.height.shape
    # candidate pixels: inside the region vs. in the world but outside it
    rr, cc = np.mgrid[0:H:4, 0:W:4]
    xs, ys = world.transform @ (cc + 0.5, rr + 0.5)
    inside = np.zeros((H, W), bool)
    inside[0:H:4, 0:W:4] = shapely.contains_xy(region_p, xs, ys)
    inside = cv2.dilate(inside.astype(np.uint8), np.ones((4, 4), np.uint8), anchor=(0, 0)).astype(bool)
    roads = road_mask(world)
    open_ground = (world.height < 0.3) & ~roads
    if world.classes is not None:
        open_ground &= world.classes != WATER
    kind = rng.choice(3, size=s.n, p=[(1 - s.outside) * s.on_road, (1 - s.outside) * (1 - s.on_road), s.outside])
    pix = np.empty(s.n, np.int64)
    for k, mask in enumerate([roads & inside, open_ground & inside, (roads | open_ground) & ~inside]):
        sel = kind == k
        got = _pick(rng, mask, int(sel.sum()))
        if len(got) < sel.sum():
            got = _pick(rng, roads | open_ground, int(sel.sum()))
        if len(got) < sel.sum():
            raise InputError("render: the world has no open ground to stand on")
        pix[sel] = got
    prow, pcol = np.divmod(pix, W)
    jitter = rng.uniform(0, 1, (2, s.n))
    x, y = world.transform @ (pcol + jitter[0], prow + jitter[1])
    x, y = np.asarray(x), np.asarray(y)
    true_lon, true_lat = to_ll.transform(x, y)
    # GNSS noise: mixture of fix qualities; served geometry = noised, computed = noised + small SfM wobble
    comp = rng.choice(3, size=s.n, p=s.gnss_weights)
    sigma = np.asarray(s.gnss_sigma_m)[comp]
    dn, de = rng.normal(0, 1, (2, s.n)) * sigma
    g_lat, g_lon = offset_m(true_lat, true_lon, de, dn)
    cn, ce = rng.normal(0, 1.0, (2, s.n))
    c_lat, c_lon = offset_m(g_lat, g_lon, ce, cn, ref_lat=true_lat)
    # time: a day uniform over the years, a local solar hour from the daylight-heavy mixture
    d_lo = np.datetime64(f"{YEARS[0]}-01-01").astype("datetime64[D]").astype(np.int64)
    d_hi = np.datetime64(f"{YEARS[1]}-01-01").astype("datetime64[D]").astype(np.int64)
    day = rng.integers(d_lo, d_hi, s.n)
    w = np.array([h[0] for h in s.hours])
    part = rng.choice(len(s.hours), size=s.n, p=w / w.sum())
    lo, hi = np.array([h[1] for h in s.hours])[part], np.array([h[2] for h in s.hours])[part]
    hour_local = rng.uniform(lo, hi) % 24.0
    captured = (day * 86_400_000 + np.round((hour_local - true_lon / 15.0) * 3_600_000)).astype(np.int64)
    # most photos on a road face along it (taken from a vehicle or walking it), the rest any way
    heading = rng.uniform(0, 360, s.n)
    along = (kind == 0) & (rng.random(s.n) < s.along_road)
    if along.any():
        axis = road_axis_deg(roads, prow[along], pcol[along], world.m_per_px)
        heading[along] = (axis + 180.0 * rng.integers(0, 2, int(along.sum()))
                          + rng.normal(0, s.heading_sigma_deg, int(along.sum()))) % 360
    hfov = rng.uniform(50, 110, s.n)
    cam_h = rng.uniform(1.5, 2.5, s.n)
    pitch = np.clip(rng.normal(0, 3, s.n), -8, 8)
    roll = np.clip(rng.normal(0, 2, s.n), -6, 6)
    pano = rng.random(s.n) < s.pano
    grey = (rng.random(s.n) < s.grey) & ~pano
    dev_p = np.array([d[3] for d in DEVICES])
    dev = rng.choice(len(DEVICES), size=s.n, p=dev_p / dev_p.sum())
    size_idx = rng.integers(0, len(SIZES), s.n)
    creator = rng.integers(0, len(CREATORS), s.n)
    ids = np.unique(rng.integers(10**14, 10**15, s.n * 2))[: s.n]
    rng.shuffle(ids)
    field = HeightField.from_world(world)
    rows, jpegs = [], []
    for k in range(s.n):
        if pano[k]:
            make, model, cam_type = PANO_DEVICES[k % len(PANO_DEVICES)]
            w, h = 1024, 512
        else:
            make, model, cam_type = DEVICES[dev[k]][:3]
            w, h = SIZES[size_idx[k]]
        cam = Camera(float(x[k]), float(y[k]), float(heading[k]), 360.0 if pano[k] else float(hfov[k]), w, h,
                     float(cam_h[k]), float(pitch[k]), float(roll[k]), pano=bool(pano[k]))
        img = render(field, cam, float(hour_local[k]), rng, internal_scale=s.internal_scale,
                     max_range_m=s.view_range_m)
        if grey[k]:
            img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, s.jpeg_quality])
        jpegs.append(buf.tobytes())
        scale = 4 if make in ("Apple", "Samsung", "Google") else 2  # originals are larger than thumbnails
        rows.append({
            "id": str(int(ids[k])),
            "lat": float(g_lat[k]), "lon": float(g_lon[k]),
            "computed_lat": float(c_lat[k]), "computed_lon": float(c_lon[k]),
            "captured_at": int(captured[k]),
            "camera_type": cam_type, "is_pano": bool(pano[k]), "make": make, "model": model,
            "compass_angle": float((heading[k] + rng.normal(0, 15)) % 360),
            "computed_compass_angle": float((heading[k] + rng.normal(0, 4)) % 360),
            "sequence": f"{CREATORS[creator[k]][:3].encode().hex()}{int(captured[k]) // 3_600_000:x}",
            "creator_id": str(1000 + int(creator[k])), "creator_username": CREATORS[creator[k]],
            "width": w * scale, "height": h * scale,
        })
    in_region = shapely.contains_xy(region, np.asarray(true_lon), np.asarray(true_lat))
    truth = {
        "true_lat": np.asarray(true_lat).tolist(), "true_lon": np.asarray(true_lon).tolist(),
        "true_heading": heading.tolist(), "hfov_deg": np.where(pano, 360.0, hfov).tolist(),
        "cam_height_m": cam_h.tolist(), "pitch_deg": pitch.tolist(), "roll_deg": roll.tolist(),
        "on_road": (kind == 0).tolist(), "along_road": along.tolist(), "placement": np.array(["road", "offroad", "outside"])[kind].tolist(),
        "true_in_region": in_region.tolist(), "greyscale": grey.tolist(),
        "gnss_error_m": np.hypot(dn, de).tolist(), "hour_local": hour_local.tolist(),
    }
    elapsed = time.perf_counter() - t0
    meta = {"world_crs": world.crs, "n": s.n, "seed": s.seed, "render_seconds": round(elapsed, 2),
            "years": list(YEARS)}
    write_source(out_dir, rows, jpegs, extra=truth, metadata=meta)
    log.info("rendered %d photos in %.1f s (%.1f ms each) into %s", s.n, elapsed, 1000 * elapsed / s.n, out_dir)
    return meta
