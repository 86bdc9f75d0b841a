"""The synthetic demo world: deterministic, structured, different per seed, GeoTIFF round trip."""

import numpy as np
import pyproj
import pytest
import rasterio

from vglpipe.errors import InputError
from vglpipe.demo.world import (
    BUILDING, CLASS_NAMES, ROAD, TREE, make_world, read_world, utm_crs, write_world,
)

LAT, LON = 42.36, -71.06


@pytest.fixture(scope="module")
def world1():
    return make_world(1, LAT, LON, 300.0)


def test_deterministic_and_seed_dependent(world1):
    again = make_world(1, LAT, LON, 300.0)
    assert np.array_equal(world1.color, again.color)
    assert np.array_equal(world1.height, again.height)
    other = make_world(2, LAT, LON, 300.0)
    assert other.color.shape == world1.color.shape
    # different seeds: different layout, not just noise
    assert (world1.classes != other.classes).mean() > 0.2
    assert np.abs(world1.color.astype(int) - other.color.astype(int)).mean() > 10


def test_georeferencing_is_utm_near_boston(world1):
    assert world1.crs == "EPSG:32619" == utm_crs(LAT, LON)
    assert world1.color.shape == (1500, 1500, 3) and world1.color.dtype == np.uint8
    assert world1.height.dtype == np.float32
    assert world1.transform.a == pytest.approx(0.2) and world1.transform.e == pytest.approx(-0.2)
    minx, miny, maxx, maxy = world1.bounds
    inv = pyproj.Transformer.from_crs(world1.crs, "EPSG:4326", always_xy=True)
    lon, lat = inv.transform((minx + maxx) / 2, (miny + maxy) / 2)
    assert lat == pytest.approx(LAT, abs=1e-5) and lon == pytest.approx(LON, abs=1e-5)


def test_structure_roads_buildings_trees_heights():
    w = make_world(3, LAT, LON, 500.0)
    frac = {CLASS_NAMES[k]: float((w.classes == k).mean()) for k in CLASS_NAMES}
    assert frac["road"] > 0.03, frac
    assert frac["building"] > 0.01, frac
    assert frac["tree"] > 0.01, frac
    # buildings and trees stand above ground; roads are at ground level (bridges aside)
    assert np.median(w.height[w.classes == BUILDING]) > 3.0
    assert np.median(w.height[w.classes == TREE]) > 3.0
    assert np.median(w.height[w.classes == ROAD]) == 0.0
    # roads look different from buildings' roofs and vegetation
    road_mean = w.color[w.classes == ROAD].mean(0)
    tree_mean = w.color[w.classes == TREE].mean(0)
    assert np.abs(road_mean - tree_mean).sum() > 30
    # textured, not flat fills
    assert w.color[w.classes == ROAD].std(0).mean() > 3


def test_write_read_roundtrip(tmp_path, world1):
    cp, hp = tmp_path / "c.tif", tmp_path / "h.tif"
    write_world(world1, cp, hp)
    back = read_world(cp, hp)
    assert np.array_equal(back.color, world1.color)
    assert np.array_equal(back.height, world1.height)
    assert back.transform == world1.transform and back.crs == world1.crs and back.seed == 1
    with rasterio.open(cp) as src:
        assert src.count == 3 and src.crs.to_epsg() == 32619
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="size_m"):
        make_world(1, LAT, LON, -5.0)
    with pytest.raises(InputError, match="nope.tif"):
        read_world(tmp_path / "nope.tif", tmp_path / "h.tif")
