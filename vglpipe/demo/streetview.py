"""Ground-level photos of a height-field world: a vectorized voxel-space ray caster.

For every image column a ray leaves the camera at its azimuth; the DSM and orthophoto are
sampled at geometrically spaced ranges (fine near the camera, coarse far away). A sample of
height ``h`` at range ``r`` projects to screen row ``y = horizon - f (h - h_cam) / z`` with
``z = r cos(θ)`` the depth of a pinhole camera (θ: column angle) — or ``z = r`` for
cylindrical panoramas. Going outwards, the running minimum of ``y`` is the occlusion
horizon of the column (the classic voxel-space algorithm): a pixel row shows the first
sample whose running minimum reaches it, found for all pixels at once with one
``searchsorted``; rows no sample reaches are sky. Buildings and trees therefore occlude
what lies behind them; their fronts get a darker "wall" shade, distance adds haze, the
sky and the light follow the local solar hour (night photos are dark, noisy and bluish).

Everything is numpy/OpenCV over whole images; a 640×480 photo takes a few milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from vglpipe.errors import InputError

#: How far the street views see by default, metres (beyond: sky and haze); the setting
#: demo.streetview.view_range_m has the same default.
VIEW_RANGE_M = 450.0


@dataclass(frozen=True)
class Camera:
    x: float  # projected metres (world CRS)
    y: float
    heading_deg: float  # clockwise from north (of the image centre)
    hfov_deg: float  # horizontal field of view; 360 with pano=True
    width: int  # output pixels
    height: int
    cam_height_m: float = 1.8
    pitch_deg: float = 0.0  # positive: looking up
    roll_deg: float = 0.0
    pano: bool = False


class HeightField:
    """The world as the renderer needs it: BGR colour, DSM and the pixel transform."""

    def __init__(self, color_rgb: np.ndarray, height: np.ndarray, transform):
        if color_rgb.ndim != 3 or color_rgb.shape[2] != 3 or color_rgb.shape[:2] != height.shape:
            raise InputError(f"world colour {color_rgb.shape} and height {height.shape} do not match")
        if transform.b != 0 or transform.d != 0:
            raise InputError("world transform must be north-up (no rotation)")
        self.bgr = np.ascontiguousarray(color_rgb[..., ::-1])
        self.height = np.ascontiguousarray(height, dtype=np.float32)
        self.t = transform
        self.h, self.w = height.shape

    @classmethod
    def from_world(cls, world) -> HeightField:
        return cls(world.color, world.height, world.transform)

    def to_pixel(self, x, y):
        col = (np.asarray(x) - self.t.c) / self.t.a
        row = (np.asarray(y) - self.t.f) / self.t.e
        return col, row

    def sample(self, x, y):
        col, row = self.to_pixel(x, y)
        ci = np.clip(col.astype(np.int32), 0, self.w - 1)
        ri = np.clip(row.astype(np.int32), 0, self.h - 1)
        return self.height[ri, ci], self.bgr[ri, ci]


def light(hour_local: float) -> dict:
    """Sun-driven look for a local solar hour: brightness, tint, sky colours (BGR), noise."""
    elev = math.sin(math.pi * (hour_local - 6.0) / 12.0)  # ~ sun elevation proxy, -1..1
    day = float(np.clip(elev * 2.5 + 0.25, 0.0, 1.0))
    dusk = float(np.clip(1.0 - abs(elev) * 4.0, 0.0, 1.0)) * (1 if -0.2 < elev < 0.35 else 0)
    brightness = 0.13 + 0.87 * day
    tint = np.array([1.0, 1.0, 1.0]) * (1 - dusk) + np.array([0.75, 0.9, 1.2]) * dusk  # warm at dusk
    if day < 0.2:
        tint = tint * np.array([1.25, 0.95, 0.8])  # bluish night
    zenith = np.array([200, 140, 70]) * day + np.array([40, 20, 10]) * (1 - day)
    horizon = np.array([235, 215, 190]) * day + np.array([70, 45, 30]) * (1 - day)
    horizon = horizon * (1 - dusk) + np.array([120, 170, 250]) * dusk * max(day, 0.4)
    return {"brightness": brightness, "tint": tint, "sky_zenith": zenith, "sky_horizon": horizon,
            "noise": 2.0 + 10.0 * (1 - day), "day": day}


def render(field: HeightField, cam: Camera, hour_local: float = 12.0, rng: np.random.Generator | None = None,
           internal_scale: float = 0.5, max_range_m: float = VIEW_RANGE_M, n_samples: int = 320) -> np.ndarray:
    """Render ``cam`` over ``field``; returns a (height, width, 3) uint8 BGR photo."""
    rng = rng or np.random.default_rng(0)
    W = max(16, int(round(cam.width * internal_scale)))
    H = max(12, int(round(cam.height * internal_scale)))
    u = (np.arange(W) + 0.5 - W / 2)
    if cam.pano:
        theta = u / W * 2 * math.pi  # cylindrical: columns are angles
        f = W / (2 * math.pi)
        depth_scale = np.ones(W)
    else:
        f = (W / 2) / math.tan(math.radians(cam.hfov_deg) / 2)
        theta = np.arctan(u / f)
        depth_scale = np.cos(theta)
    az = math.radians(cam.heading_deg) + theta  # (W,)
    r = np.geomspace(1.2, max_range_m, n_samples)  # (K,)
    xs = cam.x + np.sin(az)[:, None] * r[None, :]  # east
    ys = cam.y + np.cos(az)[:, None] * r[None, :]  # north
    hk, ck = field.sample(xs, ys)  # (W, K), (W, K, 3)
    z = r[None, :] * depth_scale[:, None]
    horizon = H / 2 + f * math.tan(math.radians(cam.pitch_deg))
    y = horizon - f * (hk - cam.cam_height_m) / z  # (W, K) screen rows (down)
    cm = np.minimum.accumulate(y, axis=1)
    # pixel row centres; visible sample index = #samples whose running min is still below the row
    rows = np.arange(H, dtype=np.float32) + np.float32(0.5)
    span = 4.0 * H + 10.0
    v = np.clip(-cm, -span, span) + (np.arange(W)[:, None] * (4 * span))
    q = -rows[None, :] + (np.arange(W)[:, None] * (4 * span))  # (W, H)
    idx = np.searchsorted(v.ravel(), q.ravel(), side="left").reshape(W, H) - np.arange(W)[:, None] * n_samples
    sky = idx >= n_samples
    idx = np.minimum(idx, n_samples - 1)
    wi = np.arange(W)[:, None]
    col = ck[wi, idx].astype(np.float32)  # (W, H, 3)
    hv = hk[wi, idx]
    yv = y.astype(np.float32)[wi, idx]
    rv = r.astype(np.float32)[idx]
    # fronts of raised things (walls, trunks, canopy sides) below their top edge: darker, with texture
    wall = (hv > 1.0) & (rows[None, :] > yv + 1.5)
    green = (col[..., 1] > col[..., 0] + 4) & (col[..., 1] > col[..., 2] + 4)  # vegetation: leafy noise
    noise = np.modf(np.abs(np.sin(rows[None, :] * np.float32(12.9898) + (idx * 78.233 + wi * 3.1).astype(np.float32)))
                    * np.float32(43758.5))[0]
    # facades: window rows whose spacing shrinks with distance (about 3 m storeys)
    storey = np.float32(f * 3.0) / np.maximum(rv, np.float32(1.0))
    windows = np.modf(np.maximum(rows[None, :] - yv, 0) / np.maximum(storey, 1e-3))[0] > 0.55
    tex = np.where(green, np.float32(0.7) + np.float32(0.45) * noise, np.where(windows, np.float32(0.55), np.float32(0.95)))
    shade = np.where(wall, np.float32(0.7) * tex, np.float32(1.0))
    col *= shade[..., None]
    L = light(hour_local)
    col *= (L["brightness"] * L["tint"]).astype(np.float32)
    haze = (np.float32(1.0) - np.exp(-rv / np.float32(700.0)))[..., None]
    col = col * (1 - haze) + (L["sky_horizon"] * L["brightness"]).astype(np.float32) * haze
    # sky gradient by elevation angle of the row
    elev = np.clip((np.float32(horizon) - rows) / np.float32(H * 0.8), 0, 1)[None, :, None]
    skycol = (L["sky_horizon"] * (1 - elev) + L["sky_zenith"] * elev).astype(np.float32)
    if L["day"] < 0.2:
        skycol = skycol * np.float32(0.6)
    col = np.where(sky[..., None], np.broadcast_to(skycol, col.shape), col)
    img = np.ascontiguousarray(np.transpose(col, (1, 0, 2)))  # (H, W, 3)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(L["noise"])
    img = np.clip(img, 0, 255).astype(np.uint8)
    if cam.roll_deg and not cam.pano:
        m = cv2.getRotationMatrix2D((W / 2, H / 2), cam.roll_deg, 1.0 + abs(math.radians(cam.roll_deg)) * 1.2)
        img = cv2.warpAffine(img, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return cv2.resize(img, (cam.width, cam.height), interpolation=cv2.INTER_LINEAR)
