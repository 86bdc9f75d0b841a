"""Orthophoto stage hardening: optional source keys at their defaults, validated bulk downloads
(real HTTP on loopback), ground resolution in the index and the sampler, skip-and-report tiling."""

from __future__ import annotations

import http.server
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pyproj
import pytest
import rasterio
import shapely
from conftest_aerial import CENTER, aerial_world  # noqa: F401  (fixture)
from rasterio.io import MemoryFile
from rasterio.warp import transform_geom
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles
from shapely.geometry import mapping, shape

from vglpipe.aerial.cog import CogOptions, build_cogs, build_index, index_skipped, read_index
from vglpipe.aerial.sampler import AerialSampler
from vglpipe.demo.fake_orthophotos import FakeOrthophotoServer
from vglpipe.demo.world import make_world
from vglpipe.errors import SourceError
from vglpipe.settings import LodSpec, Settings, SourceSettings, to_json
from vglpipe.sources.orthophoto import download, raster_problem
from vglpipe.store.tables import read_metadata

REPO = Path(__file__).resolve().parent.parent
LAT, LON = 42.36, -71.06
UTM = "EPSG:32619"
#: upper-left corner of the test chips, on the 512 px (102.4 m) COG grid of 0.2 m/px
X0, Y0 = 102.4 * 3223, 102.4 * 45801


# ----------------------------------------------------------------------------- helpers


def _smooth_rgb(h: int, w: int, seed: int, dtype=np.uint8, scale: float = 255.0) -> np.ndarray:
    """(3, h, w) smooth random colours (never blank)."""
    rng = np.random.default_rng(seed)
    small = rng.random((max(h // 32, 2), max(w // 32, 2), 3)).astype(np.float32)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    return np.moveaxis((img * scale).astype(dtype), -1, 0)


def _geotiff(path: Path, data: np.ndarray, crs: str, transform, **kw) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, **kw) as dst:
        dst.write(data)
    return path


def _cog_bytes(crs: str, transform, size: int, seed: int, tmp: Path) -> bytes:
    """A JPEG COG with overviews (overviews first in the file, full resolution last)."""
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=crs, transform=transform)
    out = tmp / f"cog_{seed}.tif"
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(_smooth_rgb(size, size, seed))
        with mem.open() as src:
            cog_translate(src, str(out), cog_profiles.get("jpeg"), overview_level=2, quiet=True, in_memory=True)
    return out.read_bytes()


def _plain_bytes(crs: str, transform, size: int, seed: int, tmp: Path) -> bytes:
    return _geotiff(tmp / f"plain_{seed}.tif", _smooth_rgb(size, size, seed), crs, transform,
                    compress="DEFLATE", tiled=True).read_bytes()


def _footprint(crs: str, transform, size: int):
    b = rasterio.transform.array_bounds(size, size, transform)  # (west, south, east, north)
    return shape(transform_geom(crs, "EPSG:4326", mapping(shapely.box(*b))))


def _mask_at(cogs, x: float, y: float, size: int = 256) -> np.ndarray:
    """The COG mask of the ``size`` px square whose upper-left corner is (x, y)."""
    for p in cogs:
        with rasterio.open(p) as src:
            b = src.bounds
            if b.left <= x < b.right and b.bottom < y <= b.top:
                r, c = src.index(x + 0.05, y - 0.05)
                return src.dataset_mask(window=((r, r + size), (c, c + size)))
    raise AssertionError(f"no COG holds ({x}, {y})")


class _Files(http.server.ThreadingHTTPServer):
    """Serves ``files`` (path -> bytes) on 127.0.0.1; other paths are 404; requests in ``log``."""

    daemon_threads = True

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.log: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                srv = self.server
                srv.log.append(self.path)
                body = srv.files.get(self.path)
                self.send_response(404 if body is None else 200)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def index(self, tiles: dict[str, object]) -> None:
        """Publish a GeoJSON tile index of ``tiles`` (name -> lon/lat footprint) at /index.geojson."""
        feats = [{"type": "Feature", "geometry": mapping(g), "properties": {"TILENAME": n, "URL": f"{self.url}/tiles/{n}.tif"}}
                 for n, g in tiles.items()]
        self.files["/index.geojson"] = json.dumps({"type": "FeatureCollection", "features": feats}).encode()


@pytest.fixture
def file_server():
    srv = _Files()
    yield srv
    srv.shutdown()
    srv.server_close()


# ----------------------------------------------------------------------------- 5: optional keys at defaults


def _run_stage(*args: str) -> subprocess.CompletedProcess:
    """A stage command line as the rule runs it (through a shell, the settings JSON shell-quoted)."""
    cmd = " ".join([shlex.quote(sys.executable), "-m", "vglpipe.orthophotos", *args])
    return subprocess.run(["bash", "-c", cmd], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def small_world():
    return make_world(11, LAT, LON, 300.0)


@pytest.mark.parametrize("protocol", ["bulk", "xyz", "wms"])
def test_source_with_only_required_keys_runs_download_and_tile(small_world, tmp_path, protocol):
    """Every optional aerial.sources key at its schema default (acquired "" included) through
    the stage CLIs with the settings JSON that vglpipe.settings builds for the rules."""
    d_lat, d_lon = 30 / 111_200, 30 / (111_200 * math.cos(math.radians(LAT)))
    boundary = tmp_path / "r.geojson"
    boundary.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(
        shapely.box(LON - d_lon, LAT - d_lat, LON + d_lon, LAT + d_lat))}))
    with FakeOrthophotoServer(small_world) as srv:
        source = {"bulk": {"protocol": "bulk", "url": srv.url + "/bulk/index.geojson"},
                  "xyz": {"protocol": "xyz", "url": srv.url + "/tile/{z}/{y}/{x}"},
                  "wms": {"protocol": "wms", "url": srv.url + "/wms", "layer": "world"}}[protocol]
        settings = Settings({"regions": {"r": {"boundary": str(boundary), "role": "test"}},
                             "aerial": {"patch_px": 64, "n_lods": 2, "sources": {"r": source}}})
        settings.check()
        assert settings.source_of("r").acquired == ""  # the optional keys are at their defaults
        dl, cogs, index = tmp_path / "dl", tmp_path / "cogs", tmp_path / "index.parquet"
        r = _run_stage("download", "--settings", shlex.quote(to_json(settings.download_stage("r"))),
                       "--boundary", shlex.quote(str(boundary)), "--out", shlex.quote(str(dl)), "--no-progress")
        assert r.returncode == 0, r.stderr[-3000:]
    r = _run_stage("tile", "--settings", shlex.quote(to_json(settings.tile_stage("r"))), "--downloads",
                   shlex.quote(str(dl)), "--cogs", shlex.quote(str(cogs)), "--index", shlex.quote(str(index)),
                   "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_index(index).to_pylist()
    assert rows and {row["acquired"] for row in rows} == {""} and {row["source"] for row in rows} == {protocol}


# ----------------------------------------------------------------------------- 6: validated downloads


@pytest.fixture
def bulk_tiles(tmp_path, reference_data):
    """Three bulk tiles with their good and bad bytes and declared footprints:
    A a COG (bad: cut to 60 %), B at the reference corrupt.tif's place (bad: corrupt.tif),
    C 2 km east of A (bad: A's bytes, i.e. the wrong place)."""
    x0, y0 = 330_000.0, 4_690_000.0
    tf_a = rasterio.Affine(0.2, 0, x0, 0, -0.2, y0)
    tf_c = rasterio.Affine(0.2, 0, x0 + 2000, 0, -0.2, y0)
    with rasterio.open(reference_data / "corrupt.tif") as src:
        crs_b, tf_b = src.crs.to_string(), src.transform
    good = {"A": _cog_bytes(UTM, tf_a, 1024, 1, tmp_path), "B": _plain_bytes(crs_b, tf_b, 1024, 2, tmp_path),
            "C": _plain_bytes(UTM, tf_c, 512, 3, tmp_path)}
    bad = {"A": good["A"][: int(len(good["A"]) * 0.6)], "B": (reference_data / "corrupt.tif").read_bytes(),
           "C": good["A"]}
    footprints = {"A": _footprint(UTM, tf_a, 1024), "B": _footprint(crs_b, tf_b, 1024), "C": _footprint(UTM, tf_c, 512)}
    return good, bad, footprints


def _serve(srv: _Files, tiles: dict[str, bytes]) -> None:
    for name, body in tiles.items():
        srv.files[f"/tiles/{name}.tif"] = body


def _bulk_cfg(srv: _Files) -> SourceSettings:
    return SourceSettings.defaults(protocol="bulk", url=srv.url + "/index.geojson", retries=2, backoff_s=0.01,
                                   backoff_max_s=0.02, timeout_s=20.0)


def _area(footprints) -> object:
    return shapely.box(*shapely.unary_union(list(footprints.values())).bounds)


def test_raster_problem_rejects_truncated_corrupt_and_misplaced(bulk_tiles, tmp_path):
    good, bad, footprints = bulk_tiles
    for name in "ABC":
        (tmp_path / f"good_{name}.tif").write_bytes(good[name])
        (tmp_path / f"bad_{name}.tif").write_bytes(bad[name])
        assert raster_problem(tmp_path / f"good_{name}.tif", footprints[name]) == ""
    assert "does not decode" in raster_problem(tmp_path / "bad_A.tif", footprints["A"])
    assert "does not decode" in raster_problem(tmp_path / "bad_B.tif", footprints["B"])
    assert "footprint" in raster_problem(tmp_path / "bad_C.tif", footprints["C"])
    with rasterio.open(tmp_path / "bad_A.tif") as src:  # what the old check did: a decimated read passes
        assert src.read(1, out_shape=(64, 64)).size == 64 * 64


def test_bad_bulk_tiles_are_never_finished_and_a_rerun_fetches_them(bulk_tiles, file_server, tmp_path):
    good, bad, footprints = bulk_tiles
    srv, out = file_server, tmp_path / "dl"
    srv.index(footprints)
    area = _area(footprints)
    # 1. a truncated COG, a corrupt TIFF and a file of the wrong place: retried, then failed, not kept
    _serve(srv, bad)
    with pytest.raises(SourceError, match="3 of 3 download"):
        download(_bulk_cfg(srv), area, out, progress=False)
    assert not [p.name for p in out.iterdir() if p.name.startswith(("bulk_", ".bulk_"))]
    report = json.loads((out / "manifest.json").read_text())["report"]
    assert report["fetched"] == 0 and len(report["failed"]) == 3 and report["retry_reasons"] == {"invalid": 3}
    assert all(srv.log.count(f"/tiles/{n}.tif") == 2 for n in "ABC")  # each validated, retried once
    # 2. the provider fixed: all three fetched, each valid and stamped
    _serve(srv, good)
    rep = download(_bulk_cfg(srv), area, out, progress=False)
    assert rep.fetched == 3 and not rep.failed and not rep.invalid
    for n in "ABC":
        assert (out / f"bulk_{n}.tif").read_bytes() == good[n] and (out / f".bulk_{n}.tif.valid").exists()
    # 3. a finished file gone bad on disk (or left by an older version): validated again, fetched again
    (out / "bulk_A.tif").write_bytes(bad["A"])
    srv.log.clear()
    rep = download(_bulk_cfg(srv), area, out, progress=False)
    assert rep.invalid == ["bulk_A.tif"] and rep.fetched == 1 and rep.skipped_existing == 2
    assert srv.log == ["/index.geojson", "/tiles/A.tif"]
    assert (out / "bulk_A.tif").read_bytes() == good["A"]
    # 4. nothing changed: the stamps spare a new validation, nothing is fetched
    srv.log.clear()
    rep = download(_bulk_cfg(srv), area, out, progress=False)
    assert rep.skipped_existing == 3 and rep.fetched == 0 and srv.log == ["/index.geojson"]


# ----------------------------------------------------------------------------- 7: resolution


def test_index_records_ground_resolution_of_any_crs(tmp_path):
    utm = _geotiff(tmp_path / "utm.tif", _smooth_rgb(512, 512, 4), UTM, rasterio.Affine(0.2, 0, X0, 0, -0.2, Y0))
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(LON, LAT)
    merc = _geotiff(tmp_path / "merc.tif", _smooth_rgb(512, 512, 5), "EPSG:3857", rasterio.Affine(0.3, 0, x, 0, -0.3, y))
    rep = build_cogs([utm, merc], tmp_path / "cogs", CogOptions(tile_px=512), progress=False)
    rows = {r["epsg"]: r for r in build_index(rep.cogs, tmp_path / "index.parquet").to_pylist()}
    assert rows[32619]["m_per_px"] == pytest.approx(0.2, rel=1e-3)
    # Web Mercator: 0.3 projected metres are 0.3 · cos(lat) on the ground
    assert rows[3857]["res_m"] == pytest.approx(0.3)
    assert rows[3857]["m_per_px"] == pytest.approx(0.3 * math.cos(math.radians(LAT)), rel=5e-3)


def _tile_settings(**quality) -> Settings:
    return Settings({"regions": {"r": {"boundary": "r.geojson", "role": "test"}},
                     "aerial": {"m_per_px": 0.2, "quality": quality, "cog": {"tile_px": 512},
                                "sources": {"r": {"protocol": "bulk", "url": "http://127.0.0.1:9/index.geojson"}}}})


def _tile(downloads: Path, out: Path, settings: Settings) -> subprocess.CompletedProcess:
    return _run_stage("tile", "--settings", shlex.quote(to_json(settings.tile_stage("r"))),
                      "--downloads", shlex.quote(str(downloads)), "--cogs", shlex.quote(str(out / "cogs")),
                      "--index", shlex.quote(str(out / "index.parquet")), "--no-progress")


def test_tile_stage_warns_when_imagery_is_coarser_than_the_finest_lod(reference_data, tmp_path):
    coarse, fine = tmp_path / "coarse", tmp_path / "fine"
    coarse.mkdir()
    fine.mkdir()
    shutil.copy(reference_data / "RGB.byte.tif", coarse / "landsat.tif")  # ~300 m/px where 0.2 is configured
    _geotiff(fine / "ortho.tif", _smooth_rgb(512, 512, 6), UTM, rasterio.Affine(0.2, 0, X0, 0, -0.2, Y0))
    r = _tile(coarse, tmp_path / "out_coarse", _tile_settings())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WARNING" in r.stderr and "coarser than the finest LOD needs" in r.stderr
    assert int(re.search(r"upsampled up to (\d+)\.\d+x", r.stderr).group(1)) > 1000  # ~300 m / 0.2 m
    assert read_index(tmp_path / "out_coarse" / "index.parquet").column("m_per_px").to_pylist()[0] > 250
    r = _tile(fine, tmp_path / "out_fine", _tile_settings())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "coarser than the finest LOD" not in r.stderr


@pytest.fixture(scope="module")
def half_metre_cogs(aerial_world, tmp_path_factory):  # noqa: F811
    """The aerial test world at 0.5 m/px (2.5x coarser than LOD 0 at 0.2 m/px), as COGs."""
    d = tmp_path_factory.mktemp("half")
    w = aerial_world
    h, wd = (int(round(n * w.m_per_px / 0.5)) for n in w.shape)
    color = cv2.resize(w.color, (wd, h), interpolation=cv2.INTER_AREA)
    tf = w.transform @ rasterio.Affine.scale(w.shape[1] / wd, w.shape[0] / h)
    src = _geotiff(d / "half.tif", np.moveaxis(color, -1, 0), w.crs, tf)
    rep = build_cogs([src], d / "cogs", CogOptions(tile_px=1024), progress=False)
    build_index(rep.cogs, d / "index.parquet")
    return d / "index.parquet"


def test_sampler_reports_patches_upsampled_beyond_max_upsample(half_metre_cogs):
    spec = LodSpec(patch_px=64, m_per_px=0.2, n_lods=3)  # LODs at 0.2, 0.4, 0.8 m/px
    with AerialSampler(half_metre_cogs, spec=spec) as s:  # max_upsample: the schema's default, 2.0
        assert s.max_upsample == 2.0
        one = s.sample(*CENTER, bearing=0.7)
        cells = next(s.sample_cells(np.array([CENTER[0]]), np.array([CENTER[1]])))
    assert one.coverage.min() == 1.0
    # 0.5 m imagery: LOD 0 magnified 2.5x (flagged), LOD 1 1.25x, LOD 2 read finer than needed
    np.testing.assert_allclose(one.upsample, [2.5, 1.25, 0.625], rtol=0.01)
    assert one.upsampled.tolist() == [True, False, False]
    np.testing.assert_allclose(cells.upsample[0], one.upsample, rtol=0.01)
    assert cells.upsampled[0].tolist() == [True, False, False]
    with AerialSampler(half_metre_cogs, spec=spec, max_upsample=3.0) as s:
        assert not s.sample(*CENTER).upsampled.any()


def test_sampler_reports_no_upsampling_for_fine_imagery_and_none_without_imagery(aerial_world, tmp_path):  # noqa: F811
    w = aerial_world
    src = _geotiff(tmp_path / "w.tif", np.moveaxis(w.color, -1, 0), w.crs, w.transform)
    rep = build_cogs([src], tmp_path / "cogs", CogOptions(tile_px=2048), progress=False)
    spec = LodSpec(patch_px=64, m_per_px=0.2, n_lods=2)
    with AerialSampler(cogs=rep.cogs, spec=spec) as s:
        inside = s.sample(*CENTER)
        outside = s.sample(CENTER[0] + 0.1, CENTER[1])  # 11 km north: no imagery
    np.testing.assert_allclose(inside.upsample, [1.0, 1.0], rtol=0.01)
    assert not inside.upsampled.any()
    assert outside.coverage.max() == 0 and outside.upsample.tolist() == [0.0, 0.0] and not outside.upsampled.any()


# ----------------------------------------------------------------------------- 8: convert or skip-and-report


def _utm_tf(col: int, size: int = 256):
    return rasterio.Affine(0.2, 0, X0 + col * size * 0.2, 0, -0.2, Y0)


def test_16bit_and_4band_inputs_are_converted(tmp_path):
    # 12-bit values in 16 bits, plus a NIR band (undefined colour interpretation) that must not show
    rgbn = np.concatenate([_smooth_rgb(256, 256, 7, np.uint16, 4095.0), np.full((1, 256, 256), 4095, np.uint16)])
    wide = _geotiff(tmp_path / "rgbn16.tif", rgbn, UTM, _utm_tf(0))
    # 8-bit RGBA: the alpha band masks (left half transparent) and is dropped
    rgba = np.concatenate([_smooth_rgb(256, 256, 8), np.zeros((1, 256, 256), np.uint8)])
    rgba[3, :, 128:] = 255
    with rasterio.open(tmp_path / "rgba.tif", "w", driver="GTiff", width=256, height=256, count=4, dtype="uint8",
                       crs=UTM, transform=_utm_tf(1), photometric="RGB", alpha="YES") as dst:
        dst.write(rgba)
    rep = build_cogs([wide, tmp_path / "rgba.tif"], tmp_path / "cogs", CogOptions(tile_px=512), progress=False)
    assert len(rep.cogs) == 1 and not rep.skipped
    assert {Path(c["file"]).name for c in rep.converted} == {"rgbn16.tif", "rgba.tif"}
    assert "16-bit stretched" in next(c["how"] for c in rep.converted if c["file"].endswith("rgbn16.tif"))
    with rasterio.open(rep.cogs[0]) as src:
        r0, c0 = src.index(X0 + 0.05, Y0 - 0.05)
        got = src.read(window=((r0, r0 + 256), (c0, c0 + 256))).astype(np.float64)
    alpha_half = _mask_at(rep.cogs, X0 + 256 * 0.2, Y0)
    # the 2nd..98th percentile stretch: the 16-bit picture, not its NIR band, spread over 0..255
    want = rgbn[:3].astype(np.float64)
    for b in range(3):
        assert np.corrcoef(got[b].ravel(), want[b].ravel())[0, 1] > 0.97
        assert np.percentile(got[b], 1) < 8 and np.percentile(got[b], 99) > 247
    assert alpha_half[:, :128].max() == 0 and alpha_half[:, 136:].min() == 255


@pytest.fixture
def mixed_downloads(tmp_path, reference_data):
    """A download directory with three good 8-bit chips, one 16-bit RGBN chip (converted), a
    one-band chip (unusable) and the reference corrupt.tif (unreadable pixels)."""
    d = tmp_path / "downloads"
    d.mkdir()
    for col in range(3):
        _geotiff(d / f"chip_{col}.tif", _smooth_rgb(256, 256, 10 + col), UTM, _utm_tf(col))
    rgbn = np.concatenate([_smooth_rgb(256, 256, 13, np.uint16, 4095.0), np.full((1, 256, 256), 900, np.uint16)])
    _geotiff(d / "chip_16bit.tif", rgbn, UTM, _utm_tf(3))
    _geotiff(d / "grey.tif", _smooth_rgb(256, 256, 14)[:1], UTM, _utm_tf(4))
    shutil.copy(reference_data / "corrupt.tif", d / "corrupt.tif")
    return d


def test_tile_stage_skips_and_reports_unusable_inputs_below_the_threshold(mixed_downloads, tmp_path):
    out = tmp_path / "out"
    r = _tile(mixed_downloads, out, _tile_settings(max_skipped_fraction=0.4))  # 2 of 6 unusable
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 of 6 input(s) skipped as unusable" in r.stderr
    assert "grey.tif" in r.stderr and "corrupt.tif" in r.stderr
    skipped = {Path(s["file"]).name: s["reason"] for s in index_skipped(out / "index.parquet")}
    assert set(skipped) == {"grey.tif", "corrupt.tif"}
    assert "1 band" in skipped["grey.tif"] and "cannot read pixels" in skipped["corrupt.tif"]
    assert read_metadata(out / "index.parquet")["skipped"]  # listed in the index's metadata
    rows = read_index(out / "index.parquet").to_pylist()
    assert rows and all(r["crs"] == UTM for r in rows)
    # the 16-bit chip is in the COGs (valid pixels where it lies)
    assert _mask_at([out / r["file"] for r in rows], X0 + 3 * 256 * 0.2, Y0).min() == 255


def test_tile_stage_fails_above_the_threshold_naming_the_files(mixed_downloads, tmp_path):
    r = _tile(mixed_downloads, tmp_path / "out", _tile_settings())  # default 0.05: 1 of 6 is already too many
    assert r.returncode == 2
    assert "of 6 input raster(s) unusable" in r.stderr and "grey.tif: expected RGB imagery" in r.stderr
    assert not (tmp_path / "out" / "index.parquet").exists()


def test_cog_made_without_a_skipped_input_is_rebuilt_once_the_input_is_fixed(tmp_path):
    d = tmp_path / "dl"
    d.mkdir()
    _geotiff(d / "a.tif", _smooth_rgb(256, 256, 20), UTM, _utm_tf(0))
    bad = d / "b.tif"
    bad.write_bytes((d / "a.tif").read_bytes()[:3000])  # unreadable (cut short)
    rep = build_cogs(sorted(d.iterdir()), tmp_path / "cogs", CogOptions(tile_px=512), progress=False,
                     max_skipped_fraction=0.5)
    assert [Path(s["file"]).name for s in rep.skipped] == ["b.tif"]
    _geotiff(bad, _smooth_rgb(256, 256, 21), UTM, _utm_tf(1))  # re-downloaded, now good
    rep = build_cogs(sorted(d.iterdir()), tmp_path / "cogs", CogOptions(tile_px=512), progress=False)
    assert not rep.skipped and len(rep.cogs) == 1
    assert _mask_at(rep.cogs, X0 + 256 * 0.2, Y0).min() == 255  # b is in it now
