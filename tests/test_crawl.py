"""``python -m vglpipe.crawl`` end to end: kill -9 and resume, secrets, bad input."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import shapely
from shapely.geometry import mapping

from vglpipe.demo.fake_mapillary import Faults, load_source, make_random_source
from vglpipe.settings import CrawlSettings, CrawlStage, to_json
from vglpipe.store.photos import PhotoStore

TOKEN = "MLY|777|RECOGNISABLE-SECRET-7f3a9c1e"
BOUNDS = (-71.0700, 42.3500, -71.0500, 42.3700)
REGION = shapely.Polygon([(-71.068, 42.352), (-71.052, 42.352), (-71.052, 42.368), (-71.060, 42.360),
                          (-71.068, 42.368)])
SIZES = ((160, 120), (120, 160), (200, 112))
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    make_random_source(d / "src", BOUNDS, 360, seed=11, sizes=SIZES)
    (d / "region.geojson").write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(REGION)}))
    return d


def _cmd(world, out, *extra, **settings):
    crawl = CrawlSettings.defaults(**{"search_limit": 30, "timeout_s": 2, "backoff_s": 0.01, "backoff_max_s": 0.1,
                                      "shard_mb": 200000 / 2**20, **settings})
    return [sys.executable, "-m", "vglpipe.crawl", "--settings", to_json(CrawlStage(crawl)),
            "--region-geojson", str(world / "region.geojson"), "--out", str(out), *extra]


def _env(token=TOKEN):
    env = dict(os.environ, MAPILLARY_ACCESS_TOKEN=token, PYTHONPATH=str(ROOT))
    return env


def _run(cmd, env, timeout=120):
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _images(out):
    store = PhotoStore(out)
    return {int(i): store.read(int(i)) for i in store.ids()}


def _stored(out) -> int:
    db = out / "crawl-state.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT count(*) FROM photos").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kill9_mid_crawl_then_resume_is_complete_and_identical(world, tmp_path):
    clean_out, out = tmp_path / "clean", tmp_path / "killed"
    with load_source(world / "src", TOKEN) as fake:
        r = _run(_cmd(world, clean_out, "--base-url", fake.url, "--no-progress"), _env())
        assert r.returncode == 0, r.stderr
    clean = _images(clean_out)
    assert len(clean) > 100
    # slow fake, few workers: the crawl takes several seconds; kill it twice at different points
    logs = []
    with load_source(world / "src", TOKEN, latency_s=0.03) as fake:
        cmd = _cmd(world, out, "--base-url", fake.url, concurrency=4, search_concurrency=2)
        for target in (0, 60):  # 0: during the search phase; 60: after 60 stored images
            proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            deadline = time.monotonic() + 60
            if target == 0:
                while not (out / "crawl-state.sqlite").exists() and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(0.4)
            else:
                while _stored(out) < target and time.monotonic() < deadline:
                    time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
            _, err = proc.communicate(timeout=30)
            logs.append(err)
            assert proc.returncode == -signal.SIGKILL
            assert not (out / "metadata.parquet").exists()
        stored_before = _stored(out)
        assert 0 < stored_before < len(clean)
        r = _run(cmd, _env())
        assert r.returncode == 0, r.stderr
        n_thumbs = fake.stats["thumb_requests"]
    assert "resume: skipping" in r.stderr and "finished search boxes" in r.stderr
    assert "finished images" in r.stderr
    got = _images(out)
    assert got.keys() == clean.keys() and all(got[i] == clean[i] for i in got)
    # finished work was not redone: every image was downloaded at most once more than it was killed
    assert n_thumbs <= len(clean) + 2 * 4 + 2 * 64
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["stored"] == len(clean)


def test_token_never_appears_in_logs_outputs_or_errors(world, tmp_path):
    out = tmp_path / "out"
    with load_source(world / "src", TOKEN, faults=Faults(rate=0.2, slow_s=2.5)) as fake:
        r = _run(_cmd(world, out, "--base-url", fake.url, "-v"), _env())
        assert r.returncode == 0, r.stderr
        bad = _run(_cmd(world, tmp_path / "bad", "--base-url", fake.url, "-v"), _env("MLY|1|WRONG-" + TOKEN[-8:] + "x"))
    assert bad.returncode == 2 and "401" in bad.stderr and "token" in bad.stderr.lower()
    assert "retry" in r.stderr  # debug logs ran with faults
    for text in (r.stdout, r.stderr, bad.stdout, bad.stderr):
        assert TOKEN not in text and "WRONG-" not in text
    secret = TOKEN.encode()
    for d in (out, tmp_path / "bad"):
        for p in d.rglob("*"):
            if p.is_file():
                assert secret not in p.read_bytes(), p


def test_token_file_and_missing_token(world, tmp_path):
    env = {k: v for k, v in _env().items() if k != "MAPILLARY_ACCESS_TOKEN"}
    r = _run(_cmd(world, tmp_path / "o", "--base-url", "http://127.0.0.1:9"), env)
    assert r.returncode == 2 and "MAPILLARY_ACCESS_TOKEN" in r.stderr
    r = _run(_cmd(world, tmp_path / "o", "--token-file", str(tmp_path / "nope")), env)
    assert r.returncode == 2 and "nope" in r.stderr


@pytest.mark.parametrize("content,msg", [("{not json", "not a readable GeoJSON file"),
                                         ('{"type": "Point", "coordinates": [1, 2]}', "expected Polygon/MultiPolygon"),
                                         ('{"type": "Polygon", "coordinates": [[[500000, 4700000], [500100, 4700000], [500100, 4700100], [500000, 4700000]]]}', "lon/lat")])
def test_bad_region_file_is_named(tmp_path, content, msg):
    f = tmp_path / "region.geojson"
    f.write_text(content)
    r = _run([sys.executable, "-m", "vglpipe.crawl", "--config", str(ROOT / "workflow_config.yaml"),
              "--region-geojson", str(f), "--out", str(tmp_path / "o")], _env())
    assert r.returncode == 2 and msg in r.stderr and str(f) in r.stderr


def test_kill9_of_the_demo_wrapper_leaves_no_server_or_token_behind(world, tmp_path):
    """The demo runs the crawl inside `python -m vglpipe.demo serve-mapillary`: killing that (as a
    cancelled job would be) must take the fake API with it and leave no token file."""
    import psutil

    before = set(Path("/tmp").glob("vgl-fake-*"))
    cmd = [sys.executable, "-m", "vglpipe.demo", "serve-mapillary", "--settings", '{"fault_rate":0.0,"latency_ms":0.0}',
           "--source", str(world / "src"), "--", sys.executable, "-c", "import time; time.sleep(120)"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wrapper = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    while len(wrapper.children()) < 2 and time.monotonic() < deadline:  # the fake API and the command
        time.sleep(0.1)
    children = wrapper.children()
    assert len(children) == 2, "the wrapper did not start the fake API and the command"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"left running: {[p.cmdline()[:4] for p in alive]}"
    assert set(Path("/tmp").glob("vgl-fake-*")) <= before
