"""Orthophoto clients against the local fake over real HTTP: WMS, XYZ, bulk; faults; kill -9; blanks."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyproj
import pytest
import rasterio
import shapely

from vglpipe.aerial.cog import CogOptions, build_cogs, build_index, validate_cog
from vglpipe.aerial.sampler import AerialSampler
from vglpipe.errors import ConfigError, SourceError
from vglpipe.demo.fake_orthophotos import FakeOrthophotoServer, Faults, ServerConfig
from vglpipe.demo.world import make_world, write_world
from vglpipe.settings import DownloadStage, SourceSettings, to_json
from vglpipe.sources.orthophoto import (
    BLANK_SUFFIX,
    MISSING_SUFFIX,
    area_polygon,
    download,
    downloaded_rasters,
    plan_wms,
    read_tile_index,
)

REPO = Path(__file__).resolve().parent.parent
LAT, LON = 42.36, -71.06


@pytest.fixture(scope="module")
def world():
    return make_world(11, LAT, LON, 300.0)


@pytest.fixture(scope="module")
def area():
    # a 120 m square around the centre, grown by 30 m: well inside the 300 m world
    d_lat, d_lon = 60 / 111_200, 60 / (111_200 * math.cos(math.radians(LAT)))
    return area_polygon(shapely.box(LON - d_lon, LAT - d_lat, LON + d_lon, LAT + d_lat), 30.0)


def _wms(url, **kw):
    base = dict(protocol="wms", url=url + "/wms", layer="world", crs="EPSG:32619", chip_px=256,
                timeout_s=5.0, backoff_s=0.02, backoff_max_s=0.2)
    base.update(kw)
    return SourceSettings.defaults(**base)


def _psnr(a, b):
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return 10 * math.log10(255**2 / max(mse, 1e-9))


def _tree(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())
            if p.is_file() and p.name not in ("manifest.json", "tile_index.geojson")}


def test_wms_download_then_tile_reproduces_world_pixels(world, area, tmp_path):
    with FakeOrthophotoServer(world) as srv:
        rep = download(_wms(srv.url, format="image/jpeg"), area, tmp_path / "dl", progress=False)
        assert all("REQUEST=GetMap" in p and "VERSION=1.3.0" in p for p in srv.log)
    assert rep.fetched == rep.planned > 4 and not rep.failed
    cogs = build_cogs(downloaded_rasters(tmp_path / "dl"), tmp_path / "cogs", CogOptions(tile_px=1024), progress=False)
    build_index(cogs.cogs, tmp_path / "index.parquet")
    to_world = pyproj.Transformer.from_crs("EPSG:4326", world.crs, always_xy=True)
    # known coordinates inside the requested area, at least 8 m away from COG tile edges (204.8 m grid)
    pts = []
    for de, dn in [(0, 0), (35, -25), (-40, 30), (20, 45)]:
        x, y = to_world.transform(LON, LAT)
        x, y = x + de, y + dn
        if min(x % 204.8, -x % 204.8, y % 204.8, -y % 204.8) > 8:
            pts.append((x, y))
    assert len(pts) >= 2
    checked = 0
    for p in cogs.cogs:
        assert validate_cog(p)[0]
        with rasterio.open(p) as src:
            assert len(src.overviews(1)) >= 3
            mask = src.dataset_mask()
            for x, y in pts:
                c, r = (int(v) for v in ~src.transform * (x, y))
                if not (32 <= c < src.width - 32 and 32 <= r < src.height - 32):
                    continue
                assert mask[r - 32 : r + 32, c - 32 : c + 32].all()
                got = np.moveaxis(src.read((1, 2, 3), window=((r - 32, r + 32), (c - 32, c + 32))), 0, -1)
                wc, wr = (int(v) for v in ~world.transform * (x, y))
                ref = world.color[wr - 32 : wr + 32, wc - 32 : wc + 32]
                assert _psnr(got, ref) > 30.0, (p, x, y)
                checked += 1
    assert checked == len(pts)


def test_xyz_tiles_web_mercator_then_sampled(world, area, tmp_path):
    with FakeOrthophotoServer(world) as srv:
        cfg = SourceSettings.defaults(protocol="xyz", url=srv.url + "/tile/{z}/{y}/{x}", zoom=19, timeout_s=5.0)
        rep = download(cfg, area, tmp_path / "dl", progress=False)
        assert all(p.startswith("/tile/19/") for p in srv.log)
    assert rep.fetched == rep.planned > 10
    with rasterio.open(downloaded_rasters(tmp_path / "dl")[0]) as src:
        assert src.crs.to_epsg() == 3857 and src.width == 256
    cogs = build_cogs(downloaded_rasters(tmp_path / "dl"), tmp_path / "cogs", CogOptions(tile_px=1024), progress=False)
    build_index(cogs.cogs, tmp_path / "index.parquet")
    # the same patch from the Web Mercator COGs and from the world's own UTM COG
    ref = build_cogs([_world_tif(world, tmp_path)], tmp_path / "ref", CogOptions(tile_px=1024), progress=False)
    with AerialSampler(tmp_path / "index.parquet") as s_xyz, AerialSampler(cogs=ref.cogs) as s_ref:
        _s = s_xyz.sample(LAT, LON, math.radians(30))
        a, cov_a = _s.patches, _s.coverage
        _s = s_ref.sample(LAT, LON, math.radians(30))
        b, cov_b = _s.patches, _s.coverage
        assert s_xyz.cogs[0].level_for(0.4, 1 / math.cos(math.radians(LAT))) == 0  # z19 is 0.22 m on the ground
    assert cov_a[0] == 1.0 and cov_b[0] == 1.0
    assert _psnr(a[0], b[0]) > 22.0  # z19 (0.22 m) resampled twice vs 0.2 m


def _world_tif(world, tmp_path):
    c, h = tmp_path / "w_color.tif", tmp_path / "w_height.tif"
    write_world(world, c, h)
    return c


def test_bulk_jp2_tiles_in_two_utm_zones(world, area, tmp_path):
    minx, _, maxx, _ = world.bounds
    scfg = ServerConfig(bulk_tile_m=150.0, bulk_format="jp2", alt_crs="EPSG:32618", alt_crs_split_x=(minx + maxx) / 2)
    with FakeOrthophotoServer(world, scfg) as srv:
        cfg = SourceSettings.defaults(protocol="bulk", url=srv.url + "/bulk/index.geojson", timeout_s=20.0)
        rep = download(cfg, area, tmp_path / "dl", progress=False)
        files = downloaded_rasters(tmp_path / "dl")
        assert files and all(p.suffix == ".jp2" for p in files)
        for p in files:  # stored byte for byte
            assert p.read_bytes() == srv.bulk_tile_bytes(p.stem[len("bulk_"):])
    assert rep.fetched == rep.planned
    # resume against a restarted provider (new port, so new URLs in the index): only the lost tile
    lost = files[0]
    lost_bytes = lost.read_bytes()
    lost.unlink()
    with FakeOrthophotoServer(world, scfg) as srv2:
        cfg2 = SourceSettings.defaults(protocol="bulk", url=srv2.url + "/bulk/index.geojson", timeout_s=20.0)
        rep2 = download(cfg2, area, tmp_path / "dl", progress=False)
        assert srv2.log == ["/bulk/index.geojson", f"/bulk/tiles/{lost.stem[len('bulk_'):]}.jp2"]
    assert rep2.fetched == 1 and rep2.skipped_existing == rep.planned - 1
    assert lost.read_bytes() == lost_bytes
    crss = set()
    for p in files:
        with rasterio.open(p) as src:
            crss.add(src.crs.to_epsg())
    assert crss == {32618, 32619}
    cogs = build_cogs(files, tmp_path / "cogs", CogOptions(tile_px=1024), progress=False)
    table = build_index(cogs.cogs, tmp_path / "index.parquet")
    assert set(table.column("epsg").to_pylist()) == {32618, 32619}
    with AerialSampler(tmp_path / "index.parquet") as s:
        _s = s.sample(LAT, LON, 0.4)
        _, cov = _s.patches, _s.coverage
        assert cov[0] == pytest.approx(1.0, abs=1e-3)


def test_fault_injected_download_is_byte_identical_to_clean_run(world, area, tmp_path):
    with FakeOrthophotoServer(world) as srv:
        clean = download(_wms(srv.url), area, tmp_path / "clean", progress=False)
    faults = Faults(rate=0.45, slow_s=1.2, retry_after_s=1, seed=5)
    with FakeOrthophotoServer(world, ServerConfig(faults=faults)) as srv:
        rep = download(_wms(srv.url, timeout_s=0.8, concurrency=6), area, tmp_path / "faulty", progress=False)
        n_req, injected = len(srv.log), dict(srv.injected)
    assert clean.planned == rep.planned == rep.fetched > 10
    failed = sum(injected.values())
    assert failed / n_req >= 0.2, (failed, n_req)
    assert len(injected) >= 4, injected  # several kinds: 429, 500, reset, slow, truncate
    assert rep.retries >= failed - injected.get("slow", 0)
    assert _tree(tmp_path / "clean") == _tree(tmp_path / "faulty")
    manifest = json.loads((tmp_path / "faulty" / "manifest.json").read_text())
    assert manifest["report"]["retries"] == rep.retries and not manifest["report"]["failed"]


def test_kill_9_midway_then_restart_fetches_only_missing(world, area, tmp_path):
    boundary = tmp_path / "b.geojson"
    boundary.write_text(json.dumps({"type": "Feature", "properties": {},
                                    "geometry": shapely.geometry.mapping(area)}))
    out = tmp_path / "dl"
    with FakeOrthophotoServer(world, ServerConfig(delay_s=0.25)) as srv:
        source = SourceSettings.defaults(protocol="wms", url=srv.url + "/wms", layer="world", crs="EPSG:32619",
                                         chip_px=128, concurrency=1)
        cmd = [sys.executable, "-m", "vglpipe.orthophotos", "download", "--boundary", str(boundary),
               "--settings", to_json(DownloadStage(source, margin_m=0.0)), "--out", str(out), "--no-progress"]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and len(list(out.glob("wms_*.tif"))) < 4:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        have = _tree(out)
        assert 4 <= len(have), "download did not start"
        assert not (out / "manifest.json").exists()
        jobs = plan_wms(source, area)
        assert len(have) < len(jobs), "killed too late"
        srv.log.clear()
        srv.cfg.delay_s = 0.0
        proc2 = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc2.returncode == 0, proc2.stderr[-2000:]
        refetched = list(srv.log)
    url_of = {j.name: j.url[len(srv.url):] for j in jobs}
    missing = {url_of[n] for n in url_of if n not in have}
    assert sorted(refetched) == sorted(missing)  # each missing tile once, no finished tile again
    final = _tree(out)
    assert set(final) == set(url_of)
    assert all(final[n] == b for n, b in have.items())
    assert not list(out.glob(".*tmp-*"))


def test_blank_and_missing_tiles_are_reported_not_used(world, tmp_path):
    # an area reaching 200 m beyond the world's east edge: tiles there do not exist (404)
    d_lat = 60 / 111_200
    d_lon = 1 / (111_200 * math.cos(math.radians(LAT)))
    area = shapely.box(LON - 60 * d_lon, LAT - d_lat, LON + 350 * d_lon, LAT + d_lat)
    faults = Faults(blank_rate=0.25, seed=1)
    with FakeOrthophotoServer(world, ServerConfig(faults=faults)) as srv:
        cfg = SourceSettings.defaults(protocol="xyz", url=srv.url + "/tile/{z}/{y}/{x}", zoom=19, timeout_s=5.0)
        rep = download(cfg, area, tmp_path / "dl", progress=False)
        chosen = {"xyz_{}_{}_{}.tif".format(*(p.split("/")[2:3] + p.split("/")[4:5] + p.split("/")[3:4]))
                  for p in srv.log if srv.is_blank(p)}
    assert rep.missing
    assert rep.blank and set(rep.blank) == chosen - set(rep.missing)
    for name in rep.blank:
        assert (tmp_path / "dl" / (name + BLANK_SUFFIX)).exists() and not (tmp_path / "dl" / name).exists()
    for name in rep.missing:
        assert (tmp_path / "dl" / (name + MISSING_SUFFIX)).exists()
    manifest = json.loads((tmp_path / "dl" / "manifest.json").read_text())
    assert sorted(manifest["report"]["blank"]) == sorted(rep.blank)
    # the blank tiles leave holes that the sampler reports as missing coverage
    cogs = build_cogs(downloaded_rasters(tmp_path / "dl"), tmp_path / "cogs", CogOptions(tile_px=1024), progress=False)
    build_index(cogs.cogs, tmp_path / "index.parquet")
    import mercantile
    z, x, y = (int(v) for v in rep.blank[0][:-4].split("_")[1:])
    b = mercantile.bounds(mercantile.Tile(x, y, z))
    with AerialSampler(tmp_path / "index.parquet") as s:
        _s = s.sample((b.south + b.north) / 2, (b.west + b.east) / 2, 0.0)
        patches, cov = _s.patches, _s.coverage
    assert cov[0] < 0.999
    # a rerun does not ask for blank or missing tiles again
    with FakeOrthophotoServer(world, ServerConfig(faults=faults)) as srv:
        rep2 = download(cfg.__class__(**{**cfg.__dict__, "url": srv.url + "/tile/{z}/{y}/{x}"}), area, tmp_path / "dl",
                        progress=False)
        assert srv.log == [] and rep2.skipped_existing == rep.planned


def test_wms_exception_report_and_bad_config(world, area, tmp_path):
    with FakeOrthophotoServer(world) as srv:
        with pytest.raises(SourceError, match="ServiceException|exception report"):
            download(_wms(srv.url, layer="nope"), area, tmp_path / "dl", progress=False)
    with pytest.raises(ConfigError, match="unknown key"):
        SourceSettings.from_dict({"protocol": "wms", "url": "x", "layer": "a", "colour": 1})
    with pytest.raises(ConfigError, match="protocol"):
        SourceSettings.from_dict({"protocol": "ftp", "url": "x"})


def test_server_gone_fails_with_clear_error(area, tmp_path):
    cfg = SourceSettings.defaults(protocol="xyz", url="http://127.0.0.1:9/tile/{z}/{y}/{x}", zoom=17, retries=2,
                       backoff_s=0.01, timeout_s=1.0)
    with pytest.raises(SourceError, match="127.0.0.1:9"):
        download(cfg, area, tmp_path / "dl", progress=False)


def test_bulk_index_as_zipped_shapefile_in_utm_gives_the_same_tiles(world, area, tmp_path):
    """MassGIS ships its tile index as a shapefile in UTM: same plan and bytes as the GeoJSON index."""
    scfg = ServerConfig(bulk_tile_m=150.0, bulk_format="tif")
    with FakeOrthophotoServer(world, scfg) as srv:
        by_geojson = download(SourceSettings.defaults(protocol="bulk", url=srv.url + "/bulk/index.geojson", timeout_s=20.0),
                              area, tmp_path / "a", progress=False)
        by_shapefile = download(SourceSettings.defaults(protocol="bulk", url=srv.url + "/bulk/index.zip", timeout_s=20.0),
                                area, tmp_path / "b", progress=False)
    a = {p.name: p.read_bytes() for p in downloaded_rasters(tmp_path / "a")}
    b = {p.name: p.read_bytes() for p in downloaded_rasters(tmp_path / "b")}
    assert by_shapefile.planned == by_geojson.planned > 0
    assert a and a == b


def test_unusable_tile_index_is_a_clear_error():
    with pytest.raises(SourceError, match="idx.zip: zipped tile index does not open"):
        read_tile_index(b"PK\x03\x04garbage", "idx.zip")
    with pytest.raises(SourceError, match="idx: tile index is neither GeoJSON nor a zipped shapefile"):
        read_tile_index(b"<html>", "idx")
