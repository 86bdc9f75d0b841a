"""COG tiling and the footprint index: valid COGs, overviews, pixels, several CRSs, bad inputs."""

import math

import numpy as np
import pyproj
import pytest
import rasterio
from conftest_aerial import CENTER, aerial_cogs, aerial_world  # noqa: F401  (fixtures)
from rasterio.warp import Resampling, calculate_default_transform, reproject

from vglpipe.aerial.cog import CogOptions, build_cogs, build_index, read_index, validate_cog
from vglpipe.aerial.sampler import AerialSampler
from vglpipe.errors import InputError, RasterError


def _psnr(a, b):
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return 10 * math.log10(255**2 / max(mse, 1e-9))


def test_cogs_validate_have_overviews_and_reproduce_pixels(aerial_cogs, aerial_world):
    idx = read_index(aerial_cogs / "index.parquet").to_pylist()
    # 640 m at 0.2 m/px on a 2048 px grid anchored at the CRS origin: 4 to 9 tiles, all valid pixels kept
    assert 4 <= len(idx) <= 9
    valid_px = sum(r["valid_fraction"] * r["width"] * r["height"] for r in idx)
    assert valid_px == pytest.approx(aerial_world.shape[0] * aerial_world.shape[1], rel=0.01)
    to_w = ~aerial_world.transform
    for row in idx:
        path = aerial_cogs / row["file"]
        ok, errors, _ = validate_cog(path)
        assert ok, errors
        with rasterio.open(path) as src:
            assert src.overviews(1)[:3] == [2, 4, 8]
            assert src.profile["compress"] == "jpeg" and src.block_shapes[0] == (256, 256)
            assert row["crs"] == "EPSG:32619" and row["acquired"] == "2021-04-01"
            assert row["res_m"] == pytest.approx(0.2)
            # pixels at known coordinates: a 256 px window in the middle of the valid part
            mask = src.dataset_mask()
            rs, cs = np.nonzero(mask)
            r0, c0 = int(rs.min() + (rs.max() - rs.min()) / 2 - 128), int(cs.min() + (cs.max() - cs.min()) / 2 - 128)
            win = rasterio.windows.Window(c0, r0, 256, 256)
            got = np.moveaxis(src.read((1, 2, 3), window=win), 0, -1)
            x, y = src.transform * (c0, r0)
            wc, wr = (int(round(v)) for v in to_w * (x, y))
            ref = aerial_world.color[wr : wr + 256, wc : wc + 256]
            assert _psnr(got, ref) > 30.0
            assert 0 < row["valid_fraction"] <= 1.0
            assert row["lat_min"] < CENTER[0] + 0.01 and row["lat_max"] > CENTER[0] - 0.01


def test_rerun_keeps_finished_cogs(aerial_cogs, tmp_path):
    cog_dir = aerial_cogs / "cogs"
    before = {p.name: p.stat().st_mtime_ns for p in cog_dir.glob("*.tif")}
    rep = build_cogs([aerial_cogs / "world_color.tif"], cog_dir, CogOptions(tile_px=2048), progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in rep.cogs} == before


def test_two_source_crs_in_one_region(aerial_world, tmp_path):
    """West half delivered in UTM 18N, east half in UTM 19N (as MassGIS): both tiled, sampled seamlessly."""
    w = aerial_world
    H, W = w.shape
    half = W // 2
    east = tmp_path / "east_19n.tif"
    with rasterio.open(east, "w", driver="GTiff", width=W - half, height=H, count=3, dtype="uint8", crs=w.crs,
                       transform=w.transform * rasterio.Affine.translation(half, 0)) as dst:
        dst.write(np.moveaxis(w.color[:, half:], -1, 0))
    west = tmp_path / "west_18n.tif"
    src_tf = w.transform
    west_bounds = rasterio.transform.array_bounds(H, half, src_tf)
    dst_tf, dw, dh = calculate_default_transform(w.crs, "EPSG:32618", half, H, *west_bounds, resolution=0.2)
    out = np.zeros((3, dh, dw), np.uint8)
    valid = np.zeros((dh, dw), np.uint8)
    for b in range(3):
        reproject(np.ascontiguousarray(w.color[:, :half, b]), out[b], src_transform=src_tf, src_crs=w.crs,
                  dst_transform=dst_tf, dst_crs="EPSG:32618", resampling=Resampling.bilinear)
    reproject(np.full((H, half), 255, np.uint8), valid, src_transform=src_tf, src_crs=w.crs, dst_transform=dst_tf,
              dst_crs="EPSG:32618", resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
    with rasterio.open(west, "w", driver="GTiff", width=dw, height=dh, count=3, dtype="uint8", crs="EPSG:32618",
                       transform=dst_tf) as dst:
        dst.write(out)
        dst.write_mask(valid)
    rep = build_cogs([west, east], tmp_path / "cogs", CogOptions(tile_px=2048), progress=False)
    table = build_index(rep.cogs, tmp_path / "index.parquet")
    assert set(table.column("crs").to_pylist()) == {"EPSG:32618", "EPSG:32619"}
    # a patch straddling the seam is fully covered and matches the single-CRS world
    inv = pyproj.Transformer.from_crs(w.crs, "EPSG:4326", always_xy=True)
    x_seam, y_mid = w.transform * (half, H / 2)
    lon, lat = inv.transform(x_seam, y_mid)
    with AerialSampler(tmp_path / "index.parquet") as s_split:
        _s = s_split.sample(lat, lon, math.radians(20))
        split, cov = _s.patches, _s.coverage
    with AerialSampler(cogs=[p for p in (tmp_path / "cogs").glob("*.tif")]) as s2:
        assert len(s2.cogs) == len(rep.cogs)
    single_cog = tmp_path / "single"
    rep1 = build_cogs([_write(tmp_path / "whole.tif", w)], single_cog, CogOptions(tile_px=2048), progress=False)
    with AerialSampler(cogs=rep1.cogs) as s_one:
        _s = s_one.sample(lat, lon, math.radians(20))
        one, cov1 = _s.patches, _s.coverage
    assert cov[0] > 0.999 and cov[1] > 0.999 and cov1[0] == 1.0  # seam: a few edge pixels may be masked
    assert _psnr(split[0], one[0]) > 27.0
    assert _psnr(split[1], one[1]) > 27.0


def _write(path, w):
    with rasterio.open(path, "w", driver="GTiff", width=w.shape[1], height=w.shape[0], count=3, dtype="uint8",
                       crs=w.crs, transform=w.transform) as dst:
        dst.write(np.moveaxis(w.color, -1, 0))
    return path


def test_real_landsat_file_with_nodata_borders(reference_data, tmp_path):
    rep = build_cogs([reference_data / "RGB.byte.tif"], tmp_path / "cogs", CogOptions(tile_px=512), progress=False)
    assert rep.cogs
    table = build_index(rep.cogs, tmp_path / "index.parquet")
    for p in rep.cogs:
        assert validate_cog(p)[0]
    assert table.column("crs").to_pylist()[0] == "EPSG:32618"
    assert min(table.column("valid_fraction").to_pylist()) < 0.95  # nodata borders are in the mask
    # a pixel in the nodata corner is reported as not covered
    with rasterio.open(reference_data / "RGB.byte.tif") as src:
        x, y = src.transform * (5, 5)  # upper-left corner: nodata
        lon, lat = pyproj.Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True).transform(x, y)
        xc, yc = src.transform * (src.width / 2, src.height / 2)
        lonc, latc = pyproj.Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True).transform(xc, yc)
    with AerialSampler(tmp_path / "index.parquet") as s:
        _s = s.sample(lat, lon)
        _, cov = _s.patches, _s.coverage
        assert cov[0] < 0.1
        _s = s.sample(latc, lonc)
        _, covc = _s.patches, _s.coverage
        assert covc[0] == 1.0


def test_all_nodata_uint16_is_converted_then_reported_without_data(reference_data, tmp_path):
    # 16-bit BGR+undefined: converted (stretch, bands by colour interpretation), then found all nodata
    src = reference_data / "all-nodata.tif"
    rep = build_cogs([src], tmp_path / "cogs", progress=False)
    assert rep.cogs == [] and rep.inputs_without_data == [str(src)] and not rep.skipped
    assert rep.converted and "16-bit" in rep.converted[0]["how"]


def test_all_nodata_rgb_gives_no_cog_and_is_reported(tmp_path):
    p = tmp_path / "blank.tif"
    with rasterio.open(p, "w", driver="GTiff", width=600, height=600, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32619", transform=rasterio.Affine(0.2, 0, 330000, 0, -0.2, 4690000)) as dst:
        dst.write(np.zeros((3, 600, 600), np.uint8))
    rep = build_cogs([p], tmp_path / "cogs", CogOptions(tile_px=512), progress=False)
    assert rep.cogs == [] and rep.skipped_empty >= 1 and rep.inputs_without_data == [str(p)]


def test_corrupt_file_names_the_file(reference_data, tmp_path):
    with pytest.raises(RasterError, match="corrupt.tif"):
        build_cogs([reference_data / "corrupt.tif"], tmp_path / "cogs", CogOptions(tile_px=512), progress=False)


def test_no_inputs(tmp_path):
    with pytest.raises(InputError, match="no input rasters"):
        build_cogs([], tmp_path / "cogs")
