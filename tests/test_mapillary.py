"""Mapillary crawler against the local fake API over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
from shapely.geometry import Polygon

from vglpipe.errors import AuthError, InputError, ResumeError
from vglpipe.demo.fake_mapillary import FAULT_KINDS, Faults, load_source, make_random_source
from vglpipe.sources.mapillary import (
    Token,
    box_bounds,
    crawl as crawl_,
    load_token,
    process_thumbnail,
    root_boxes,
)
from vglpipe.settings import CrawlSettings
from vglpipe.store.photos import METADATA_SCHEMA, PhotoStore, validate_image_id

TOKEN = "MLY|4242|TESTTOKEN-c0ffee-dont-leak-me"
BOUNDS = (-71.2400, 42.4400, -71.2200, 42.4600)
# non-convex (notched) polygon with a hole, well inside BOUNDS so some photos fall outside
REGION = Polygon(
    [(-71.238, 42.442), (-71.222, 42.442), (-71.222, 42.450), (-71.229, 42.450), (-71.229, 42.458), (-71.238, 42.458)],
    [[(-71.236, 42.444), (-71.232, 42.444), (-71.232, 42.447), (-71.236, 42.447)]],
)
SMALL_SIZES = ((160, 120), (200, 112), (120, 160), (150, 150), (256, 192))


def fast_config(url, **kw):
    base = dict(base_url=url, search_limit=40, timeout_s=1.0, backoff_s=0.01, backoff_max_s=0.1, retries=12,
                concurrency=32, search_concurrency=8, shard_mb=0.25)
    base.update(kw)
    return CrawlSettings.defaults(**base)


def crawl(*args, **kw):
    return crawl_(*args, progress=False, **kw)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("source")
    table = make_random_source(d, BOUNDS, 420, seed=3, sizes=SMALL_SIZES, pano_fraction=0.06, grey_fraction=0.06)
    return d, table


def expected_ids(table):
    t = table.to_pydict()
    out = set()
    for k, sid in enumerate(t["id"]):
        if not sid.isdigit() or t["is_pano"][k] or t["grey"][k]:
            continue
        if shapely.contains_xy(REGION, t["computed_lon"][k], t["computed_lat"][k]):
            out.add(int(sid))
    return out


def read_store(d):
    store = PhotoStore(d)
    return store, {int(i): store.read(int(i)) for i in store.ids()}


@pytest.fixture(scope="module")
def clean(source, tmp_path_factory):
    src, _ = source
    out = tmp_path_factory.mktemp("clean")
    with load_source(src, TOKEN) as fake:
        result = crawl(REGION, out, Token(TOKEN), fast_config(fake.url))
    return out, result


def test_box_keys_cover_and_respect_size():
    keys = root_boxes(REGION, 0.01)
    assert keys
    for k in keys:
        b = box_bounds(k, 0.01)
        assert b[2] - b[0] <= 0.01 + 1e-12 and b[3] - b[1] <= 0.01 + 1e-12
    cover = shapely.union_all([shapely.box(*box_bounds(k, 0.01)) for k in keys])
    assert cover.contains(REGION)
    parent = box_bounds(keys[0], 0.01)
    kids = [box_bounds(f"{keys[0]}/{q}", 0.01) for q in range(4)]
    assert shapely.union_all([shapely.box(*c) for c in kids]).equals(shapely.box(*parent))
    assert box_bounds(f"{keys[0]}/31", 0.01)[2] == pytest.approx(parent[2])


def test_clean_crawl_keeps_exactly_the_eligible_photos(clean, source):
    out, result = clean
    _, table = source
    store, images = read_store(out)
    want = expected_ids(table)
    assert set(images) == want and len(store.ids()) == len(set(store.ids()))
    assert result.complete and result.failed == 0
    # panoramas and greyscale images were served and dropped; outside photos never entered
    assert result.skipped["panorama"] > 0 and result.skipped["greyscale"] > 0
    assert result.skipped["outside_region_search"] > 0 and result.skipped["bad_search_record"] == 1
    assert result.boxes_split > 0  # capped samples were split
    meta = pq.read_table(out / "metadata.parquet")
    assert meta.schema.remove_metadata() == METADATA_SCHEMA.remove_metadata()
    m = meta.to_pydict()
    assert shapely.contains_xy(REGION, np.array(m["lon"]), np.array(m["lat"])).all()
    assert set(m["camera_type"]) <= {"perspective", "fisheye", "brown", "fisheye_opencv", "radial", "simple_radial"}
    for iid, data in list(images.items())[:50]:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (480, 640, 3)
    # the hostile user name is stored verbatim as data (escaping is the HTML report's job)
    assert '<script>alert("x")</script>' in set(m["creator_username"])
    # times are UTC epoch ms from the API
    src = {int(i): c for i, c in zip(table.column("id").to_pylist(), table.column("captured_at").to_pylist())
           if i.isdigit()}
    got = meta.column("captured_at").cast("int64").to_pylist()
    assert all(src[i] == c for i, c in zip(m["image_id"], got))
    assert str(meta.schema.field("captured_at").type) == "timestamp[ms, tz=UTC]"


def test_crawl_with_faults_of_every_kind_equals_clean_crawl(clean, source, tmp_path):
    src, _ = source
    faults = Faults(rate=0.25, kinds=FAULT_KINDS, slow_s=1.5, seed=7)
    with load_source(src, TOKEN, faults=faults) as fake:
        result = crawl(REGION, tmp_path, Token(TOKEN), fast_config(fake.url))
        stats = dict(fake.stats)
    for kind in FAULT_KINDS:
        assert stats.get(f"fault_{kind}", 0) > 0, kind
    n_faults = sum(v for k, v in stats.items() if k.startswith("fault_"))
    n_requests = sum(v for k, v in stats.items() if k.endswith("_requests"))
    assert n_faults >= 0.2 * n_requests
    assert sum(result.retries.values()) >= n_faults * 0.8
    _, clean_images = read_store(clean[0])
    _, images = read_store(tmp_path)
    assert images.keys() == clean_images.keys()
    assert all(images[i] == clean_images[i] for i in images)  # identical bytes
    ids = pq.read_table(tmp_path / "metadata.parquet").column("image_id").to_pylist()
    assert len(ids) == len(set(ids))


def test_rate_limit_answers_are_retried(source, tmp_path):
    src, table = source
    # the fake allows 50 entity requests/s; the crawler is configured 3x faster than that
    with load_source(src, TOKEN, entity_per_minute=3000, search_per_minute=600) as fake:
        result = crawl(REGION, tmp_path, Token(TOKEN),
                       fast_config(fake.url, entity_per_minute=9000, search_per_minute=1200))
        limited = fake.stats["entity_rate_limited"]
    assert limited > 0 and result.retries.get("entity", 0) >= limited
    assert len(PhotoStore(tmp_path)) == len(expected_ids(table))


def test_bad_token_stops_at_once_without_leaking(source, tmp_path, caplog):
    src, _ = source
    wrong = "MLY|9999|WRONG-TOKEN-badbadbad"
    with load_source(src, TOKEN) as fake, caplog.at_level(logging.DEBUG):
        with pytest.raises(AuthError) as err:
            crawl(REGION, tmp_path, Token(wrong), fast_config(fake.url))
        n = fake.stats["search_requests"] + fake.stats["entity_requests"]
    assert "401" in str(err.value) and "token" in str(err.value)
    assert wrong not in str(err.value) and wrong not in repr(err.value) and wrong not in caplog.text
    assert n <= 8 + 2  # the in-flight requests of the first wave, no retries
    assert not (tmp_path / "metadata.parquet").exists()


def test_token_loading_and_masking(tmp_path, monkeypatch):
    monkeypatch.delenv("MAPILLARY_ACCESS_TOKEN", raising=False)
    with pytest.raises(AuthError, match="MAPILLARY_ACCESS_TOKEN"):
        load_token()
    monkeypatch.setenv("MAPILLARY_ACCESS_TOKEN", TOKEN)
    tok = load_token()
    assert tok.value == TOKEN and TOKEN not in repr(tok) and TOKEN not in str(tok) and TOKEN not in f"{tok}"
    f = tmp_path / "tok"
    f.write_text(" other-token\n")
    assert load_token(f).value == "other-token"
    with pytest.raises(AuthError, match="cannot read"):
        load_token(tmp_path / "missing")


def test_resume_with_other_settings_is_refused(clean, source):
    out, _ = clean
    src, _ = source
    with load_source(src, TOKEN) as fake:
        with pytest.raises(ResumeError, match="search_limit"):
            crawl(REGION, out, Token(TOKEN), fast_config(fake.url, search_limit=50))


def test_second_run_on_finished_crawl_redoes_nothing(clean, source, caplog):
    out, first = clean
    src, _ = source
    before = (out / "metadata.parquet").read_bytes()
    with load_source(src, TOKEN) as fake, caplog.at_level(logging.INFO):
        again = crawl(REGION, out, Token(TOKEN), fast_config(fake.url))
        n = fake.stats["search_requests"] + fake.stats["entity_requests"] + fake.stats["thumb_requests"]
    assert n == 0 and again.stored == first.stored and again.skipped == first.skipped
    assert "skipping" in caplog.text
    assert pq.read_table(out / "metadata.parquet").equals(pq.read_table(__import__("io").BytesIO(before)))


def test_fake_rejects_oversized_bbox_and_unknown_ids(source):
    import requests

    src, _ = source
    with load_source(src, TOKEN) as fake:
        h = {"Authorization": f"OAuth {TOKEN}"}
        r = requests.get(f"{fake.url}/images", params={"bbox": "-71.24,42.44,-71.22,42.46"}, headers=h, timeout=5)
        assert r.status_code == 400 and "bbox" in r.json()["error"]["message"]
        r = requests.get(f"{fake.url}/images", params={"bbox": "-71.24,42.44,-71.235,42.445", "limit": 5,
                                                       "fields": "id,computed_geometry,captured_at,creator"},
                         headers=h, timeout=5)
        data = r.json()["data"]
        assert len(data) == 5 and all(isinstance(d["id"], str) for d in data)
        assert data[0]["computed_geometry"]["type"] == "Point" and len(data[0]["computed_geometry"]["coordinates"]) == 2
        assert isinstance(data[0]["captured_at"], int) and set(data[0]["creator"]) == {"id", "username"}
        r = requests.get(f"{fake.url}/123", headers=h, timeout=5)
        assert r.status_code == 404 and r.json()["error"]["code"] == 100
        r = requests.get(f"{fake.url}/images", params={"bbox": "-71.24,42.44,-71.235,42.445"}, timeout=5)
        assert r.status_code == 401 and r.json()["error"]["type"] == "OAuthException"
        ent = requests.get(f"{fake.url}/{data[0]['id']}", params={"fields": "id,thumb_1024_url"}, headers=h,
                           timeout=5).json()
        assert requests.get(ent["thumb_1024_url"], timeout=5).content[:2] == b"\xff\xd8"
        tampered = ent["thumb_1024_url"].replace("sig=", "sig=0")
        assert requests.get(tampered, timeout=5).status_code == 403
    validate_image_id(data[0]["id"])
    json.dumps(data)


def test_rate_limiter_slows_down_on_limit_answers_and_recovers():
    import asyncio

    from vglpipe.sources.mapillary import RateLimiter

    async def scenario():
        lim = RateLimiter(6000)  # 10 ms spacing
        base = lim.interval
        lim.slow_down()
        lim.slow_down()  # a burst of limit answers within a second counts once
        assert lim.interval == pytest.approx(1.5 * base)
        for _ in range(20):
            lim._slowed_at -= 1.0
            lim.slow_down()
        assert lim.interval == pytest.approx(8 * base)  # capped
        for _ in range(5000):
            lim.succeeded()
        assert lim.interval == pytest.approx(base)  # back to the configured rate, never faster

    asyncio.run(scenario())


def _photo(w, h, seed=0):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("w,h", [(640, 480), (1024, 768), (768, 1024)])
def test_thumbnail_processing_keeps_colour_drops_grey_rejects_truncated(w, h):
    colour = _photo(w, h)
    data = cv2.imencode(".jpg", colour, [cv2.IMWRITE_JPEG_QUALITY, 88])[1].tobytes()
    grey_img = cv2.cvtColor(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    grey_data = cv2.imencode(".jpg", grey_img, [cv2.IMWRITE_JPEG_QUALITY, 88])[1].tobytes()
    # colour only in a small patch (~2 % of the frame) is still a colour photo
    patch = grey_img.copy()
    patch[: h // 7, : w // 7] = colour[: h // 7, : w // 7]
    patch_data = cv2.imencode(".jpg", patch, [cv2.IMWRITE_JPEG_QUALITY, 88])[1].tobytes()

    grey, jpeg = process_thumbnail(data, 90, "t")
    assert not grey
    out = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert out.shape == (480, 640, 3)
    if (w, h) == (640, 480):
        assert jpeg is data  # stored as served, not re-encoded
    assert process_thumbnail(grey_data, 90, "t") == (True, None)
    assert process_thumbnail(patch_data, 90, "t")[0] is False
    with pytest.raises(InputError, match="thumbnail 7"):
        process_thumbnail(data[: len(data) // 2], 90, "thumbnail 7")


def test_metadata_export_in_chunks_equals_the_crawl_output(clean, tmp_path):
    import sqlite3

    from vglpipe.sources.mapillary import export_metadata

    out, result = clean
    db = sqlite3.connect(out / "crawl-state.sqlite")
    n = export_metadata(db, tmp_path / "chunked.parquet", {"x": 1}, chunk_rows=7)
    db.close()
    assert n == result.stored
    chunked = pq.read_table(tmp_path / "chunked.parquet")
    assert pq.ParquetFile(tmp_path / "chunked.parquet").num_row_groups == -(-n // 7)
    whole = pq.read_table(out / "metadata.parquet")
    assert chunked.schema.remove_metadata() == whole.schema.remove_metadata() == METADATA_SCHEMA
    assert chunked.replace_schema_metadata(None).equals(whole.replace_schema_metadata(None))
    ids = chunked.column("image_id").to_numpy()
    assert (np.diff(ids) > 0).all()


@pytest.mark.parametrize("status, body", [
    (400, {"error": {"message": "Invalid OAuth access token - Cannot parse access token", "type": "OAuthException",
                     "code": 190, "fbtrace_id": "x"}}),
    (401, {"error": {"message": "unauthorized"}}),
])
def test_invalid_token_answers_stop_with_a_token_hint(status, body):
    from vglpipe.sources.mapillary.api import classify_answer

    exc = classify_answer(status, json.dumps(body).encode(), "search bbox=1,2,3,4", Token(TOKEN))
    assert isinstance(exc, AuthError) and "access token" in str(exc) and "MAPILLARY_ACCESS_TOKEN" in str(exc)
    assert TOKEN not in str(exc)


@pytest.mark.parametrize("status, body", [
    (429, {"error": {"message": "Application request limit reached", "type": "OAuthException", "code": 4}}),
    (400, {"error": {"message": "User request limit reached", "type": "OAuthException", "code": 17}}),
])
def test_rate_limit_answers_typed_oauth_are_retried_not_fatal(status, body):
    from vglpipe.sources.mapillary.api import RateLimited, classify_answer

    exc = classify_answer(status, json.dumps(body).encode(), "search bbox=1,2,3,4", Token(TOKEN))
    assert isinstance(exc, RateLimited)
