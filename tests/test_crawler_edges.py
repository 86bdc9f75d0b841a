"""Crawler edge cases against quirks of the local fake API (real HTTP on 127.0.0.1): a server
capping answers below the limit, signed URLs with escapes, Retry-After, thumbnails damaged for
good, and exact counts (edge points, records without geometry, the progress bar)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import re
import threading
import time

import cv2
import numpy as np
import pytest
import requests
from shapely.geometry import box

from vglpipe.demo.fake_mapillary import Faults, load_source, make_random_source, write_source
from vglpipe.errors import ConfigError, SourceError
from vglpipe.settings import CrawlSettings
from vglpipe.sources.mapillary import Crawler, Token, crawl as crawl_
from vglpipe.sources.mapillary.api import retry_after_s
from vglpipe.store.photos import PhotoStore

TOKEN = "MLY|5150|EDGE-CASES-TOKEN-0d15ea5e"
# one 0.01° search box holds all photos of the dense world
DENSE_BOUNDS = (10.0010, 50.0010, 10.0090, 50.0090)
DENSE_REGION = box(10.0005, 50.0005, 10.0095, 50.0095)


def config(url, **kw):
    """Fast retries, small shards; the default search limit (the API's maximum, 2000)."""
    base = dict(base_url=url, timeout_s=2.0, backoff_s=0.01, backoff_max_s=0.1, retries=12,
                concurrency=16, search_concurrency=4, shard_mb=0.25)
    return CrawlSettings.defaults(**{**base, **kw})


def crawl(region, out, url, progress=False, **kw):
    return crawl_(region, out, Token(TOKEN), config(url, **kw), image_workers=2, progress=progress)


def stored_ids(out) -> set[int]:
    return {int(i) for i in PhotoStore(out).ids()}


def colour_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (160, 120), interpolation=cv2.INTER_CUBIC)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()


def point_source(d, points: dict[str, tuple[float, float]]):
    """A source of colour perspective photos at ``points`` (id -> (lon, lat), exactly)."""
    rows, jpegs = [], []
    for k, (sid, (lon, lat)) in enumerate(points.items()):
        rows.append({"id": sid, "lat": lat, "lon": lon, "computed_lat": lat, "computed_lon": lon,
                     "captured_at": 1600000000000 + k, "camera_type": "perspective", "is_pano": False,
                     "make": "FakeCam", "model": "M1", "compass_angle": 10.0, "computed_compass_angle": 10.0,
                     "sequence": "seq1", "creator_id": "101", "creator_username": "alice", "width": 160,
                     "height": 120})
        jpegs.append(colour_jpeg(k))
    write_source(d, rows, jpegs)
    return d


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """200 colour photos inside DENSE_REGION, all in one search box."""
    d = tmp_path_factory.mktemp("dense")
    table = make_random_source(d, DENSE_BOUNDS, 200, seed=5, n_distinct_images=16, sizes=((160, 120),),
                               pano_fraction=0.0, grey_fraction=0.0, hostile=False)
    return d, {int(i) for i in table.column("id").to_pylist()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Five photos inside DENSE_REGION."""
    d = tmp_path_factory.mktemp("tiny")
    pts = {str(1000 + k): (10.002 + 0.0015 * k, 50.002 + 0.001 * k) for k in range(5)}
    return point_source(d, pts), {int(i) for i in pts}


# --------------------------------------------------------------------------- 10: answer caps


def test_server_cap_below_the_limit_is_learned_and_capped_boxes_split(dense, tmp_path, caplog):
    src, want = dense
    # the server answers at most 50 images; the crawler asks for 2000
    with load_source(src, TOKEN, max_limit=50) as fake, caplog.at_level(logging.WARNING):
        result = crawl(DENSE_REGION, tmp_path, fake.url)
    assert stored_ids(tmp_path) == want and result.stored == len(want) == 200
    assert result.search_cap == 50 and result.boxes_split > 0 and result.boxes_probed >= 1
    assert "caps answers at 50" in caplog.text


def test_uncapped_server_learns_no_cap(dense, tmp_path):
    src, want = dense
    with load_source(src, TOKEN) as fake:
        result = crawl(DENSE_REGION, tmp_path, fake.url)
        searches = fake.stats["search_requests"]
    assert stored_ids(tmp_path) == want
    # the largest answer (200 of 2000) was probed once: its quadrants held nothing more
    assert result.search_cap == 2000 and result.boxes_split == 0 and result.boxes_probed == 1
    assert searches == 1 + 4


def test_search_limit_above_the_api_maximum_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="maximum of 2000"):
        CrawlSettings.defaults(search_limit=2001)
    # settings passed as JSON (--settings) skip the schema: the crawler checks again
    too_big = CrawlSettings.defaults().replace(search_limit=5000)
    with pytest.raises(ConfigError, match="at most 2000 images per search"):
        Crawler(DENSE_REGION, tmp_path, Token(TOKEN), too_big)


# --------------------------------------------------------------------------- 12: signed URLs


def test_signed_thumbnail_urls_are_requested_exactly_as_served(dense, tmp_path):
    src, want = dense
    with load_source(src, TOKEN, escaped_signatures=True) as fake:
        h = {"Authorization": f"OAuth {TOKEN}"}
        urls = [requests.get(f"{fake.url}/{i}", params={"fields": "thumb_1024_url"}, headers=h, timeout=5)
                .json()["thumb_1024_url"] for i in sorted(want)[:40]]
        escaped = next(u for u in urls if "%2F" in u)
        assert requests.get(escaped, timeout=5).status_code == 200
        assert requests.get(escaped.replace("%2F", "/"), timeout=5).status_code == 403  # the CDN's check
        fake.stats.clear()
        result = crawl(DENSE_REGION, tmp_path, fake.url)
        altered = fake.stats["thumb_url_altered"]
    assert altered == 0 and result.failed == 0
    assert stored_ids(tmp_path) == want


# --------------------------------------------------------------------------- 13: Retry-After


def test_retry_after_header_is_parsed():
    assert retry_after_s("2") == 2.0 and retry_after_s(" 0.5 ") == 0.5
    assert retry_after_s("-3") == 0.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None and retry_after_s("inf") is None
    assert 25 < retry_after_s(email.utils.formatdate(time.time() + 30, usegmt=True)) <= 30
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


@pytest.mark.parametrize("backoff_max_s, low, high", [(5.0, 1.0, 2.0), (0.2, 0.0, 0.9)])
def test_retry_after_is_waited_for_up_to_backoff_max(tiny, tmp_path, backoff_max_s, low, high):
    src, want = tiny
    # the first API request (the only box's search) answers 429 with Retry-After: 1
    with load_source(src, TOKEN, throttle_first=1, retry_after_s=1, record_arrivals=True) as fake:
        result = crawl(DENSE_REGION, tmp_path, fake.url, backoff_max_s=backoff_max_s, search_concurrency=1)
        searches = [t for kind, t in fake.arrivals if kind == "search"]
    assert stored_ids(tmp_path) == want and result.retries == {"search": 1}
    assert len(searches) == 2 and low <= searches[1] - searches[0] < high


# --------------------------------------------------------------------------- 14: permanent faults


def test_thumbnail_damaged_for_good_is_skipped_after_three_identical_bodies(tiny, tmp_path, caplog):
    src, want = tiny
    broken = min(want)
    with load_source(src, TOKEN, broken_thumbs=[str(broken)]) as fake, caplog.at_level(logging.WARNING):
        result = crawl(DENSE_REGION, tmp_path, fake.url, retries=12)
        served_broken = fake.stats["thumb_broken"]
    assert served_broken == 3  # not 12: the same bad bytes three times end the attempts
    assert result.skipped["bad_image"] == 1 and result.failed == 0
    assert stored_ids(tmp_path) == want - {broken}
    assert f"thumbnail of image {broken}: the same" in caplog.text and "bad_image" in caplog.text


def test_transiently_truncated_thumbnails_are_still_retried(dense, tmp_path):
    src, want = dense
    # each truncation cuts at another point: never the same bad bytes three times
    with load_source(src, TOKEN, faults=Faults(rate=0.3, kinds=("truncated",), seed=3)) as fake:
        result = crawl(DENSE_REGION, tmp_path, fake.url)
        truncated = fake.stats["fault_truncated"]
    assert truncated > 50 and result.skipped["bad_image"] == 0 and result.failed == 0
    assert stored_ids(tmp_path) == want


# --------------------------------------------------------------------------- 15: exact counts


@pytest.fixture(scope="module")
def edge_world(tmp_path_factory):
    """Two search boxes (lon 10.00-10.01 and 10.01-10.02) meeting a region; one photo outside
    the region lies exactly on their shared edge, one record is answered without geometry."""
    d = tmp_path_factory.mktemp("edge")
    pts = {"2001": (10.007, 50.002), "2002": (10.012, 50.003),  # inside
           "2003": (10.01, 50.008),  # outside, on the shared edge: in both boxes' answers
           "2004": (10.002, 50.008),  # outside
           "2005": (10.008, 50.0025)}  # inside, but answered without a geometry
    region = box(10.005, 50.001, 10.015, 50.004)
    return point_source(d, pts), region


def test_outside_point_on_a_shared_box_edge_is_counted_once(edge_world, tmp_path, caplog):
    src, region = edge_world
    with load_source(src, TOKEN, no_geometry_ids=["2005"]) as fake, caplog.at_level(logging.WARNING):
        result = crawl(region, tmp_path, fake.url)
        searches = fake.stats["search_requests"]
    assert searches == 2 and result.boxes == 2
    assert stored_ids(tmp_path) == {2001, 2002}
    assert result.skipped["outside_region_search"] == 2  # 2003 (in two answers) and 2004
    assert result.skipped["bad_search_record"] == 1
    # the record without geometry is logged with its id, not only counted
    assert re.search(r"WARNING.*1 record\(s\) without a usable geometry.*2005", caplog.text)


def test_progress_bar_final_line_shows_the_final_counts(tiny, tmp_path, capsys):
    src, want = tiny
    with load_source(src, TOKEN) as fake:
        result = crawl(DENSE_REGION, tmp_path, fake.url, progress=True)
    lines = [s for s in re.split(r"[\r\n]", capsys.readouterr().err) if s.startswith("images")]
    assert result.stored == len(want) and lines
    assert f"stored={result.stored}" in lines[-1] and "skipped=0" in lines[-1]


def test_images_finished_while_a_commit_is_written_are_counted(tiny, tmp_path):
    """Images finishing while the committer writes a batch (a slow disk) are committed before
    the counts are taken: the last commit of the image phase happens after its last image."""
    src, want = tiny
    broken = max(want)  # processed last (one worker, ids in order): a skip finishing during the write
    with load_source(src, TOKEN, latency_s=0.02, broken_thumbs=[str(broken)]) as fake:
        crawler = Crawler(DENSE_REGION, tmp_path, Token(TOKEN), config(fake.url, concurrency=1, commit_interval_s=0.01),
                          image_workers=1, progress=False)
        write, slowed = crawler._write_batch, []

        def slow_write(db, batch):
            rows = batch[0]
            if rows and not slowed and threading.current_thread().name.startswith("vgl-commit"):
                slowed.append(len(rows))  # the committer's first batch: held until every image is done
                deadline = time.monotonic() + 20
                while sum(crawler.counts.values()) < len(want) and time.monotonic() < deadline:
                    time.sleep(0.005)
                time.sleep(0.3)  # the image phase ends meanwhile
            write(db, batch)

        crawler._write_batch = slow_write
        result = asyncio.run(crawler.run())
    assert slowed and slowed[0] < len(want) - 1  # images were finished during the slow write
    assert result.stored == len(want) - 1 and result.skipped["bad_image"] == 1 and result.failed == 0
    assert stored_ids(tmp_path) == want - {broken}
    report = json.loads((tmp_path / "crawl_report.json").read_text())
    assert report["stored"] == len(want) - 1 and report["skipped"]["bad_image"] == 1


def test_crawl_with_images_left_unfinished_fails_instead_of_reporting_short_counts(tiny, tmp_path):
    src, want = tiny
    with load_source(src, TOKEN) as fake:
        crawler = Crawler(DENSE_REGION, tmp_path, Token(TOKEN), config(fake.url), image_workers=1, progress=False)

        async def no_images():  # an image phase that ends with every found image still pending
            return None

        crawler._images = no_images
        with pytest.raises(SourceError, match=rf"0 search box\(es\) and {len(want)} image\(s\) left unfinished"):
            asyncio.run(crawler.run())
    assert not (tmp_path / "crawl_report.json").exists()


@pytest.fixture(scope="module")
def uneven(tmp_path_factory):
    """4x4 search boxes of 0.01° holding 0 to 150 photos each (many near a cap of 40), some
    photos exactly on box edges, quadrant edges and corners."""
    d = tmp_path_factory.mktemp("uneven")
    rng = np.random.default_rng(7)
    counts = [0, 5, 19, 20, 38, 39, 40, 41, 45, 60, 79, 80, 81, 120, 150, 39]
    pts: dict[str, tuple[float, float]] = {}
    for b, n in enumerate(counts):
        x0, y0 = 10.0 + 0.01 * (b % 4), 50.0 + 0.01 * (b // 4)
        for _ in range(n):
            pts[str(10_000 + len(pts))] = (x0 + 0.01 * rng.random(), y0 + 0.01 * rng.random())
    for k in range(1, 4):  # on the edges shared by boxes and their quadrants, and on corners
        for f in (0.0, 0.0025, 0.005):
            pts[str(10_000 + len(pts))] = (10.0 + 0.01 * k, 50.013 + f)
            pts[str(10_000 + len(pts))] = (10.017 + f, 50.0 + 0.01 * k)
            pts[str(10_000 + len(pts))] = (10.0 + 0.01 * k + f, 50.0 + 0.01 * k + f)
    return point_source(d, pts), {int(i) for i in pts}


@pytest.mark.parametrize("max_limit", [40, 2000])
def test_concurrent_searches_of_uneven_boxes_near_a_server_cap_find_every_photo(uneven, tmp_path, max_limit):
    src, want = uneven
    region = box(9.9995, 49.9995, 10.0405, 50.0405)
    with load_source(src, TOKEN, max_limit=max_limit) as fake:
        result = crawl(region, tmp_path, fake.url, search_concurrency=16, concurrency=32)
    assert stored_ids(tmp_path) == want
    assert result.stored == len(want) and result.failed == 0 and not any(result.skipped.values())
    assert result.search_cap == min(max_limit, 2000) and result.boxes_probed >= 1
    assert (result.boxes_split > 0) == (max_limit == 40)  # the capped boxes were split
