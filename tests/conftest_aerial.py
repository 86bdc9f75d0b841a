"""Fixtures for the aerial tests (import explicitly: ``from conftest_aerial import ...``).

One small synthetic world (640 m at 0.2 m/px, ~10 Mpx) with a calibration disk of known
diameter painted 160 m south of its centre, tiled into JPEG COGs with overviews.
"""

from __future__ import annotations

import cv2
import pyproj
import pytest

from vglpipe.aerial.cog import CogOptions, build_cogs, build_index
from vglpipe.demo.world import make_world, write_world

CENTER = (42.36, -71.06)
WORLD_M = 640.0
DISK_D_M = 40.0
DISK_SOUTH_M = 160.0
DISK_RGB = (255, 0, 255)


def disk_latlon():
    g = pyproj.Geod(ellps="WGS84")
    lon, lat, _ = g.fwd(CENTER[1], CENTER[0], 180.0, DISK_SOUTH_M)
    return lat, lon


_CACHE: dict = {}


def _world():
    if "world" not in _CACHE:
        w = make_world(7, CENTER[0], CENTER[1], WORLD_M)
        lat, lon = disk_latlon()
        x, y = pyproj.Transformer.from_crs("EPSG:4326", w.crs, always_xy=True).transform(lon, lat)
        c, r = ~w.transform @ (x, y)
        # sub-pixel accurate disk (drawn with 8-bit fractional coordinates)
        sh = 8
        cv2.circle(w.color, (int(round((c - 0.5) * 2**sh)), int(round((r - 0.5) * 2**sh))),
                   int(round(DISK_D_M / 2 / w.m_per_px * 2**sh)), DISK_RGB, -1, lineType=cv2.LINE_AA, shift=sh)
        _CACHE["world"] = w
    return _CACHE["world"]


# Fixtures imported into several test modules are separate fixtures per module; the
# module-level cache makes them build the world and its COGs once per test session.
@pytest.fixture(scope="session")
def aerial_world():
    return _world()


@pytest.fixture(scope="session")
def aerial_cogs(tmp_path_factory):
    if "cogs" not in _CACHE:
        d = tmp_path_factory.mktemp("aerial")
        write_world(_world(), d / "world_color.tif", d / "world_height.tif")
        rep = build_cogs([d / "world_color.tif"], d / "cogs", CogOptions(tile_px=2048), progress=False)
        build_index(rep.cogs, d / "index.parquet", acquired="2021-04-01", source="synthetic")
        _CACHE["cogs"] = d
    return _CACHE["cogs"]
