"""Multi-LOD sampler: geometry against pyproj, rotation, LOD scale, coverage, test-time mode."""

import math

import cv2
import numpy as np
import pyproj
import pytest
from conftest_aerial import (  # noqa: F401  (fixtures)
    CENTER, DISK_D_M, WORLD_M, aerial_cogs, aerial_world, disk_latlon,
)

from vglpipe.aerial.geometry import local_frame, patch_to_projected
from vglpipe.aerial.sampler import AerialSampler
from vglpipe.settings import LodSpec
from vglpipe.errors import InputError

GEOD = pyproj.Geod(ellps="WGS84")


@pytest.fixture(scope="module")
def sampler(aerial_cogs):
    s = AerialSampler(aerial_cogs / "index.parquet")
    yield s
    s.close()


def _psnr(a, b, mask=None):
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    mse = d[mask].mean() if mask is not None else d.mean()
    return 10 * math.log10(255**2 / max(mse, 1e-9))


@pytest.mark.parametrize("theta_deg", [0.0, 37.0, 90.0, 200.0])
def test_patch_geometry_matches_pyproj_geodesics(theta_deg):
    """Patch pixel -> projected coordinates equals pyproj Geod.fwd + Transformer (incl. convergence)."""
    lat, lon = 42.36, -71.06
    crs = "EPSG:32619"
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    spec = LodSpec.defaults()
    frame = local_frame(crs, lat, lon)
    assert math.degrees(-frame.delta) == pytest.approx(
        pyproj.Proj(crs).get_factors(lon, lat).meridian_convergence, abs=1e-12)
    for i in range(spec.n_lods):
        s = spec.m_per_px_of(i)
        M = patch_to_projected(frame, s, spec.patch_px, math.radians(theta_deg), offset=(3.0, -7.0))
        for (c, r) in [(0, 0), (383, 0), (0, 383), (383, 383), (191, 40), (300, 250)]:
            X, Y, _ = M @ [c, r, 1.0]
            # reference: local (right, up) metres of the pixel centre -> geodesic from the offset centre
            xl, yl = (c + 0.5 - 192) * s, (192 - r - 0.5) * s
            lon_o, lat_o, _ = GEOD.fwd(lon, lat, math.degrees(math.atan2(3.0, -7.0)), math.hypot(3.0, -7.0))
            az = theta_deg + math.degrees(math.atan2(xl, yl))
            lon_p, lat_p, _ = GEOD.fwd(lon_o, lat_o, az, math.hypot(xl, yl))
            Xr, Yr = to_utm.transform(lon_p, lat_p)
            assert math.hypot(X - Xr, Y - Yr) < 0.02 + 1e-5 * math.hypot(xl, yl), (i, c, r, X - Xr, Y - Yr)


def _reference_patch(world, lat, lon, theta_deg, s, P, step=4):
    """Independent reference: pyproj geodesics + transformer + bilinear lookup in the world raster."""
    to_w = pyproj.Transformer.from_crs("EPSG:4326", world.crs, always_xy=True)
    idx = np.arange(0, P, step)
    cc, rr = np.meshgrid(idx, idx)
    xl, yl = (cc + 0.5 - P / 2) * s, (P / 2 - rr - 0.5) * s
    az = theta_deg + np.degrees(np.arctan2(xl, yl))
    lons, lats, _ = GEOD.fwd(np.full(xl.shape, lon), np.full(xl.shape, lat), az, np.hypot(xl, yl))
    X, Y = to_w.transform(lons, lats)
    inv = ~world.transform
    u = (inv.a * X + inv.b * Y + inv.c - 0.5).astype(np.float32)
    v = (inv.d * X + inv.e * Y + inv.f - 0.5).astype(np.float32)
    return cv2.remap(world.color, u, v, cv2.INTER_LINEAR), idx


@pytest.mark.parametrize("theta_deg", [0.0, 65.0])
def test_patches_match_pyproj_reference_and_wrong_convergence_fails(sampler, aerial_world, theta_deg):
    lat, lon = CENTER[0] + 0.0003, CENTER[1] - 0.0004
    _s = sampler.sample(lat, lon, math.radians(theta_deg))
    patches, cov = _s.patches, _s.coverage
    assert cov[0] == 1.0 and cov[1] == 1.0
    for i, s in ((0, 0.2), (1, 0.4)):
        ref, idx = _reference_patch(aerial_world, lat, lon, theta_deg, s, 384)
        got = patches[i][np.ix_(idx, idx)]
        good = _psnr(got, ref)
        assert good > 24.0, (i, good)
        # negative control: ignoring the ~1.39° convergence (or doubling it) is detectably worse
        bad_ref, _ = _reference_patch(aerial_world, lat, lon, theta_deg + 2 * 1.388, s, 384)
        assert _psnr(got, bad_ref) < good - 3.0


@pytest.mark.parametrize("theta_deg", [30.0, 90.0, 233.0])
def test_rotated_patch_equals_rotated_north_patch(sampler, theta_deg):
    lat, lon = CENTER[0] + 0.0002, CENTER[1] + 0.0003
    _s = sampler.sample(lat, lon, 0.0)
    north, _ = _s.patches, _s.coverage
    _s = sampler.sample(lat, lon, math.radians(theta_deg))
    rot, _ = _s.patches, _s.coverage
    P = 384
    R = cv2.getRotationMatrix2D(((P - 1) / 2, (P - 1) / 2), theta_deg, 1.0)  # CCW by theta
    yy, xx = np.mgrid[0:P, 0:P]
    disk = (xx - (P - 1) / 2) ** 2 + (yy - (P - 1) / 2) ** 2 < (0.45 * P) ** 2
    for i in range(3):  # LOD 3 reaches the world's edge
        expect = cv2.warpAffine(north[i], R, (P, P), flags=cv2.INTER_LINEAR)
        assert _psnr(rot[i], expect, disk) > 25.0, i
        # and it is not simply the unrotated patch
        assert _psnr(rot[i], north[i], disk) < _psnr(rot[i], expect, disk) - 3


def _magenta_diameter_px(patch):
    p = patch.astype(np.float32)
    score = (p[..., 0] + p[..., 2]) / 2 - p[..., 1]
    area = (np.clip((score - 60.0) / (255.0 - 60.0 - 60.0), 0, 1)).sum()  # soft count: edges partial
    return 2 * math.sqrt(area / math.pi)


def test_lod_i_covers_2_pow_i_d0(sampler):
    """The calibration disk (40 m) spans 40 / (0.2·2^i) px at LOD i: LOD i covers 2^i · 76.8 m."""
    lat, lon = disk_latlon()
    _s = sampler.sample(lat, lon, 0.0)
    patches, cov = _s.patches, _s.coverage
    spec = sampler.spec
    for i in range(spec.n_lods):
        expect = DISK_D_M / spec.m_per_px_of(i)
        got = _magenta_diameter_px(patches[i])
        assert abs(got - expect) <= max(1.5, 0.03 * expect), (i, got, expect)
        assert spec.side_m(i) == pytest.approx(76.8 * 2**i)
    # the disk is centred in the patch
    p0 = patches[0].astype(np.float32)
    ys, xs = np.nonzero((p0[..., 0] + p0[..., 2]) / 2 - p0[..., 1] > 128)
    assert abs(xs.mean() - 191.5) < 2 and abs(ys.mean() - 191.5) < 2


def test_coverage_reports_world_edge_and_outside(sampler):
    # LOD 3 around the disk (160 m south of centre) sticks out of the 640 m world on the south side
    lat, lon = disk_latlon()
    _s = sampler.sample(lat, lon, 0.0)
    _, cov = _s.patches, _s.coverage
    assert cov[0] == 1.0 and cov[1] == 1.0
    side3 = 76.8 * 8
    inside_south = WORLD_M / 2 - 160.0
    expect3 = (min(side3 / 2, WORLD_M / 2) + inside_south) / side3 * min(side3, WORLD_M) / side3
    assert cov[3] == pytest.approx(expect3, abs=0.02)
    # far outside every COG: zero coverage, black pixels (not filled)
    _s = sampler.sample(CENTER[0] + 0.05, CENTER[1], 0.0)
    patches, cov = _s.patches, _s.coverage
    assert (cov == 0).all() and not patches.any()


def test_overview_levels_are_used(sampler):
    cog = sampler.cogs[0]
    assert cog.factors[:4] == [1, 2, 4, 8]
    assert cog.raw is not None  # JPEG tiles are read raw (rawtiff), not through GDAL
    assert [cog.level_for(sampler.spec.m_per_px_of(i)) for i in range(4)] == [0, 1, 2, 3]


def test_test_time_mode_matches_single_cell_sampling(sampler, aerial_world):
    from vglpipe.geo.layout import make_layout

    layout = make_layout("consistent", cell_m=30.0)
    r0, c0 = layout.cell_of(np.array([CENTER[0]]), np.array([CENTER[1]]))
    rows, cols = np.meshgrid(np.arange(-2, 3) + r0[0], np.arange(-3, 4) + c0[0], indexing="ij")
    lat, lon = layout.center(rows.ravel(), cols.ravel())
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    seen = np.zeros(lat.size, bool)
    for batch in sampler.sample_cells(lat, lon):
        assert batch.patches.shape[1:] == (4, 384, 384, 3)
        for j, k in enumerate(batch.index):
            seen[k] = True
            _s = sampler.sample(lat[k], lon[k], 0.0)
            single, cov = _s.patches, _s.coverage
            np.testing.assert_allclose(batch.coverage[j], cov, atol=0.01)
            for i in range(2):  # at most half a LOD pixel of shift: compare at LOD 0 and 1
                assert _psnr(batch.patches[j, i], single[i]) > 24.0, (k, i)
    assert seen.all()
    # row-major and shuffled orders give the same patches per cell
    perm = np.random.default_rng(0).permutation(lat.size)
    shuffled = {}
    for batch in sampler.sample_cells(lat[perm], lon[perm]):
        for j, k in enumerate(batch.index):
            shuffled[perm[k]] = batch.patches[j, 0]
    first = next(iter(sampler.sample_cells(lat, lon)))
    for j, k in enumerate(first.index):
        assert _psnr(first.patches[j, 0], shuffled[k]) > 40


def test_training_sample_ranges(sampler):
    rng = np.random.default_rng(3)
    for _ in range(5):
        tp = sampler.sample_training(CENTER[0], CENTER[1], rng, t_max_m=10.0)
        patches, cov, theta, off = tp.patches, tp.coverage, tp.bearing, tp.offset
        assert 0 <= theta < 2 * math.pi and max(abs(off[0]), abs(off[1])) <= 10.0
        assert patches.shape == (4, 384, 384, 3) and cov[:2].min() == 1.0


def test_no_cogs_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="index.parquet"):
        AerialSampler(tmp_path / "index.parquet")


def test_raw_jpeg_tiles_match_gdal(aerial_cogs):
    import rasterio
    from rasterio.windows import Window

    from vglpipe.aerial.rawtiff import open_raw

    path = sorted((aerial_cogs / "cogs").glob("*.tif"))[0]
    raw = open_raw(path)
    assert raw is not None
    try:
        for L in range(4):
            with (rasterio.open(path) if L == 0 else rasterio.open(path, overview_level=L - 1)) as ds:
                bh, bw = ds.block_shapes[0]
                for bi, bj in [(0, 0), ((ds.height - 1) // bh, (ds.width - 1) // bw), (1, 0)]:
                    if bi * bh >= ds.height:
                        continue
                    win = Window(bj * bw, bi * bh, min(bw, ds.width - bj * bw), min(bh, ds.height - bi * bh))
                    ref = np.moveaxis(ds.read((1, 2, 3), window=win), 0, -1)
                    ref_m = ds.read_masks(1, window=win)
                    rgb, m = raw.tile(L, bi, bj)
                    h, w = ref_m.shape
                    assert np.array_equal(m[:h, :w], ref_m)
                    # both decode the same JPEG stream (chroma upsampling may differ slightly)
                    assert np.abs(rgb[:h, :w].astype(int) - ref).mean() < 2.0
    finally:
        raw.close()


def test_gdal_fallback_gives_the_same_patches(aerial_cogs):
    lat, lon = CENTER[0] - 0.0002, CENTER[1] + 0.0001
    with AerialSampler(aerial_cogs / "index.parquet") as fast, AerialSampler(aerial_cogs / "index.parquet", raw=False) as slow:
        assert all(c.raw is None for c in slow.cogs)
        _s = fast.sample(lat, lon, 1.0)
        a, ca = _s.patches, _s.coverage
        _s = slow.sample(lat, lon, 1.0)
        b, cb = _s.patches, _s.coverage
    np.testing.assert_allclose(ca, cb, atol=1e-3)
    for i in range(4):
        assert _psnr(a[i], b[i]) > 33.0
