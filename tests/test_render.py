"""Street-view renderer: occlusion, sky, light by hour, poses; demo source rendering."""

from __future__ import annotations

import affine
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from vglpipe.demo.photos import RenderSettings, render_source, road_mask
from vglpipe.demo.streetview import Camera, HeightField, render
from vglpipe.demo.regions import DemoRegion
from vglpipe.store.photos import jpeg_size

M = 0.2  # m/px


def _field(wall_north_m=20.0, wall_h=15.0, red_behind=True):
    """200 m x 200 m flat grey ground; camera at the centre; a green wall ``wall_north_m`` north of it."""
    n = int(200 / M)
    rgb = np.full((n, n, 3), (90, 90, 90), np.uint8)
    h = np.zeros((n, n), np.float32)
    t = affine.Affine(M, 0, 0, 0, -M, 200.0)  # x 0..200, y 0..200 (north up)
    row = int((200 - (100 + wall_north_m)) / M)
    rgb[row - 10 : row, 200:800] = (20, 200, 20)
    h[row - 10 : row, 200:800] = wall_h
    if red_behind:
        r2 = int((200 - (100 + wall_north_m + 15)) / M)
        rgb[r2 - 50 : r2, 450:550] = (230, 10, 10)
    return HeightField(rgb, h, t)


def _frac(img, bgr, tol=40):
    return float(np.mean(np.abs(img.astype(int) - np.array(bgr)).sum(axis=2) < tol))


def _dominant(img, channel, margin=30):
    """Fraction of pixels whose ``channel`` (BGR index) exceeds both others by ``margin``."""
    i = img.astype(int)
    others = [c for c in range(3) if c != channel]
    return float(np.mean((i[..., channel] > i[..., others[0]] + margin) & (i[..., channel] > i[..., others[1]] + margin)))


def test_buildings_occlude_and_sky_is_above_the_horizon():
    f = _field()
    cam = Camera(100.0, 100.0, 0.0, 60.0, 320, 240, cam_height_m=1.8)
    north = render(f, cam, hour_local=12.0, internal_scale=1.0)
    assert north.shape == (240, 320, 3)
    # wall (green) fills the centre above and below the horizon; the red patch behind it is hidden
    centre = north[40:140, 120:200]  # the wall's base is ~25 rows below the horizon (row 120)
    assert _dominant(centre, 1) > 0.9
    assert _dominant(north, 2, margin=80) == 0.0
    south = render(f, Camera(100.0, 100.0, 180.0, 60.0, 320, 240), hour_local=12.0, internal_scale=1.0)
    sky, ground = south[:100], south[140:]
    assert sky[..., 0].mean() > sky[..., 2].mean()  # blue sky (BGR)
    assert abs(int(ground[..., 0].mean()) - int(ground[..., 2].mean())) < 15  # grey road
    # without the wall, the red patch is visible from the same pose
    open_view = render(_field(wall_h=0.0), cam, hour_local=12.0, internal_scale=1.0)
    assert _dominant(open_view, 2, margin=80) > 0.002


def test_night_is_darker_and_pitch_roll_change_the_view():
    f = _field()
    cam = Camera(100.0, 100.0, 90.0, 80.0, 320, 240)
    day = render(f, cam, 13.0)
    night = render(f, cam, 1.0)
    assert night.mean() < 0.4 * day.mean()
    up = render(f, Camera(100.0, 100.0, 90.0, 80.0, 320, 240, pitch_deg=8.0), 13.0)
    # looking up moves the horizon down: more sky rows
    assert (up[..., 0] > 150).mean() > (day[..., 0] > 150).mean()
    rolled = render(f, Camera(100.0, 100.0, 90.0, 80.0, 320, 240, roll_deg=5.0), 13.0)
    assert np.abs(rolled.astype(int) - day.astype(int)).mean() > 3
    pano = render(f, Camera(100.0, 100.0, 0.0, 360.0, 512, 256, pano=True), 13.0)
    assert pano.shape == (256, 512, 3)


@pytest.fixture(scope="module")
def small_world():
    from vglpipe.demo.world import make_world

    return make_world(3, 42.40, -71.10, 360.0)


def test_render_source_positions_times_and_noise(small_world, tmp_path):
    region = DemoRegion(42.40, -71.10, 300.0).boundary()
    meta = render_source(small_world, region, tmp_path, RenderSettings(n=60, seed=4, internal_scale=0.25,
                                                                       pano=0.1, grey=0.1))
    t = pq.read_table(tmp_path / "source.parquet").to_pandas()
    assert len(t) == 60 and t["id"].str.fullmatch(r"[1-9][0-9]+").all() and t["id"].is_unique
    assert meta["n"] == 60
    # mostly on roads, some outside the region (the crawl must drop those)
    assert (t["placement"] == "road").mean() > 0.6 and (~t["true_in_region"]).any()
    roads = road_mask(small_world)
    to_px = ~small_world.transform
    import pyproj

    fwd = pyproj.Transformer.from_crs("EPSG:4326", small_world.crs, always_xy=True)
    x, y = fwd.transform(t["true_lon"].to_numpy(), t["true_lat"].to_numpy())
    col, row = to_px @ (x, y)
    on = roads[row.astype(int), col.astype(int)]
    assert on[t["placement"].to_numpy() == "road"].all()
    # the served (GNSS) position differs from the truth by metres, sometimes tens of metres
    from vglpipe.geo.sphere import haversine_m

    err = haversine_m(t["lat"], t["lon"], t["true_lat"], t["true_lon"])
    assert np.median(err) < 15 and err.max() > 5 and np.allclose(err, t["gnss_error_m"], atol=0.5)
    years = t["captured_at"].astype("datetime64[ms]").dt.year
    hours = t["captured_at"].astype("datetime64[ms]").dt.hour
    assert years.nunique() >= 5 and hours.nunique() >= 12
    assert t["is_pano"].any() and t["greyscale"].any()
    assert '<script>alert("pwned")</script>' in set(t["creator_username"]) or len(t) < 10
    # varied sizes and aspect ratios; photos are real JPEGs of the declared thumbnail size
    data = (tmp_path / "images" / "shard-00000.tar").read_bytes()
    sizes = set()
    for off, n, pano in zip(t["offset"], t["nbytes"], t["is_pano"]):
        jpg = data[off : off + n]
        w, h = jpeg_size(jpg)
        sizes.add((w, h))
        assert cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (h, w)
        assert (w == 2 * h) if pano else max(w, h) <= 1024
    assert len({round(w / h, 2) for w, h in sizes}) >= 3


def test_road_mask_from_colour_when_read_back(small_world, tmp_path):
    from vglpipe.demo.world import read_world, write_world

    write_world(small_world, tmp_path / "c.tif", tmp_path / "h.tif")
    back = read_world(tmp_path / "c.tif", tmp_path / "h.tif")
    assert back.classes is None
    derived, truth = road_mask(back), road_mask(small_world)
    inter = (derived & truth).sum()
    assert inter / derived.sum() > 0.7 and inter / truth.sum() > 0.5


def test_cameras_on_roads_mostly_face_along_them(small_world, tmp_path):
    """Mapillary's photos are mostly taken from vehicles: most on-road cameras look along the road
    (either way), the rest any way."""
    region = DemoRegion(42.40, -71.10, 300.0).boundary()
    render_source(small_world, region, tmp_path, RenderSettings(n=200, seed=6, internal_scale=0.1))
    t = pq.read_table(tmp_path / "source.parquet").to_pandas()
    # the world's two road families (vglpipe.demo.world._road_network): pixel direction
    # (cos a, sin a) with rows running south, and the perpendicular one
    a = np.radians(float(small_world.meta["road_angle_deg"]))
    axes = np.array([np.degrees(np.arctan2(np.cos(a), -np.sin(a))), np.degrees(np.arctan2(-np.sin(a), -np.cos(a)))])
    off = np.abs((t["true_heading"].to_numpy()[:, None] - axes[None, :] + 90) % 180 - 90).min(axis=1)
    along = t["along_road"].to_numpy()
    on_road = (t["placement"] == "road").to_numpy()
    assert not along[~on_road].any()
    assert 0.7 < along[on_road].mean() < 0.9
    assert np.mean(off[along] < 30) > 0.95  # along a road, within 3 sigma of the noise
    assert np.mean(off[on_road & ~along] < 15) < 0.6  # the others any way (uniform: 1/3 within 15° of an axis)
