"""The crawler: search boxes, then entities and thumbnails, checkpointed; :func:`crawl` runs it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import math
import os
import random
import sqlite3
import sys
import time
import urllib.parse
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import shapely
import yarl
from tqdm import tqdm

from vglpipe.errors import AuthError, ConfigError, InputError, ResumeError, SourceError
from vglpipe.settings import CrawlSettings
from vglpipe.sources.mapillary.api import (
    API_MAX_LIMIT,
    ENTITY_FIELDS,
    PANO_CAMERA_TYPES,
    SEARCH_FIELDS,
    Expired,
    NotFound,
    RateLimited,
    RateLimiter,
    RedactFilter,
    Token,
    Transient,
    classify_answer,
    parse_entity,
    point,
    retry_after_s,
)
from vglpipe.sources.mapillary.boxes import box_bounds, fmt_bbox, root_boxes
from vglpipe.sources.mapillary.checkpoint import (
    BOX_DONE,
    BOX_PENDING,
    BOX_SPLIT,
    FAILED,
    INSERT_PHOTO_SQL,
    PENDING,
    REASON_CODE,
    ROW_COLUMNS,
    SEARCH_SKIP_REASONS,
    SKIP_REASONS,
    STORED,
    CrawlState,
    export_metadata,
)
from vglpipe.sources.mapillary.images import ImageBatcher
from vglpipe.store.atomic import atomic_write_text
from vglpipe.store.photos import ShardWriter, crc32, validate_image_id

log = logging.getLogger("vglpipe.crawl")

#: Smallest search answer probed for a server cap below the limit (see ``Crawler._capped``):
#: a cap this small is implausible, and probing tiny answers would search sparse boxes' quadrants.
MIN_PROBED_ANSWER = 20
#: A thumbnail that comes back as the same undecodable bytes this often is damaged for good.
SAME_BAD_BODY_TRIES = 3


@dataclass
class CrawlResult:
    stored: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    boxes: int = 0
    boxes_split: int = 0
    boxes_saturated: int = 0
    boxes_probed: int = 0
    search_cap: int = 0  # answers of at least split_fraction of this many images were split
    requests: dict[str, int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    timing_ms_per_image: dict[str, float] = field(default_factory=dict)
    resumed_boxes: int = 0
    resumed_images: int = 0
    search_seconds: float = 0.0
    image_seconds: float = 0.0
    complete: bool = False



# --------------------------------------------------------------------------- crawler


class Crawler:
    """One crawl of ``region`` into the photo store ``out_dir``; ``image_workers`` threads do the
    thumbnail work (0: one per available core)."""

    def __init__(self, region, out_dir: str | os.PathLike, token: Token, config: CrawlSettings,
                 image_workers: int = 0, progress: bool = True):
        if image_workers < 0:
            raise ConfigError(f"image_workers={image_workers}: must be >= 0 (0: one per core)")
        if config.search_limit > API_MAX_LIMIT:  # settings given as JSON skip the schema's check
            raise ConfigError(f"crawl.search_limit={config.search_limit}: the Mapillary API answers at most "
                              f"{API_MAX_LIMIT} images per search; set it to {API_MAX_LIMIT} or less")
        self.region = region
        shapely.prepare(self.region)
        self.out = Path(out_dir)
        self.token = token
        self.cfg = config
        self.image_workers = image_workers
        self.progress = progress
        self.base = self.cfg.base_url.rstrip("/")
        self.auth = {"Authorization": f"OAuth {token.value}"}
        self.limit = {"search": RateLimiter(self.cfg.search_per_minute),
                      "entity": RateLimiter(self.cfg.entity_per_minute)}
        self.requests: Counter = Counter()
        self.timing: Counter = Counter()  # summed seconds per step of the image workers
        self.retries: Counter = Counter()
        self.result = CrawlResult()
        self._rows: list[dict] = []
        self._status: list[tuple[int, int]] = []
        # the search answers' cap: lowered once the server shows a smaller one (_learn_cap)
        self.cap, self.cap_learned = min(config.search_limit, API_MAX_LIMIT), False
        self.largest = 0  # the largest search answer of this run

    # ---- helpers

    def _msg(self, text: str) -> str:
        return self.token.redact(text)

    async def _backoff(self, what: str, attempt: int, exc: BaseException) -> None:
        """Exponential backoff with full jitter (as tenacity's ``wait_random_exponential``).

        Hand-rolled: tenacity's per-attempt machinery was ~10 % of the client's CPU at
        ~1,500 requests/s (signature inspection on every attempt).
        """
        self.retries[what] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s", self._msg(f"retry {attempt + 1} of {what}: {type(exc).__name__}: {exc}"))
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2.0**attempt)
        await asyncio.sleep(self._retry_delay(cap, getattr(exc, "retry_after", None)))

    def _retry_delay(self, cap: float, retry_after: float | None) -> float:
        """Full jitter up to ``cap``, but at least the server's ``Retry-After`` (plus up to 10 %
        jitter, so waiting workers do not return at once), never more than ``backoff_max_s``."""
        delay = random.uniform(0.0, cap)
        if retry_after is not None:
            delay = max(delay, retry_after * random.uniform(1.0, 1.1))
        return min(delay, self.cfg.backoff_max_s)

    async def _api(self, kind: str, path: str, params: dict, what: str) -> Any:
        # build the URL once, already encoded: yarl's per-request parsing/quoting is a large
        # share of the client's CPU at ~1,000 requests/s
        url = yarl.URL(f"{self.base}{path}?{urllib.parse.urlencode(params, safe=',|')}", encoded=True)
        for attempt in range(self.cfg.retries):
            try:
                await self.limit[kind].acquire()
                self.requests[kind] += 1
                async with self.session.get(url, headers=self.auth) as resp:
                    status = resp.status
                    body = await resp.read()
                    wait = resp.headers.get("Retry-After")
                if status != 200:
                    raise classify_answer(status, body, what, self.token, retry_after_s(wait))
                try:
                    answer = json.loads(body)
                except ValueError:
                    raise Transient(f"invalid or truncated JSON ({len(body)} bytes)") from None
                self.limit[kind].succeeded()
                return answer
            except (Transient, asyncio.TimeoutError, aiohttp.ClientError) as exc:
                if isinstance(exc, RateLimited):
                    self.limit[kind].slow_down()
                if attempt + 1 >= self.cfg.retries:
                    raise SourceError(self._msg(
                        f"{what} still failing after {self.cfg.retries} attempts: {type(exc).__name__}: {exc}"
                    )) from None
                await self._backoff(kind, attempt, exc)
        raise AssertionError("unreachable")

    # ---- commit / resume

    def _take_batch(self):
        """Swap out what is ready to commit; the shard's buffered bytes go to the OS first."""
        self.writer.flush()
        rows, status = self._rows, self._status
        self._rows, self._status = [], []
        shards = [(s, e, 1) for s, e in self._finalized]
        self._finalized.clear()
        if self.writer.end > 0:
            shards.append((self.writer.shard, self.writer.end, 0))
        return rows, status, shards, self.writer.fileno()

    @staticmethod
    def _write_batch(db: sqlite3.Connection, batch) -> None:
        """fsync the shard, then record the rows that point into it (runs in the I/O thread)."""
        rows, status, shards, fd = batch
        if fd is not None:
            try:
                os.fsync(fd)
            except OSError:  # the shard was closed (and synced) by a rollover meanwhile
                pass
        db.execute("BEGIN IMMEDIATE")
        if rows:
            db.executemany(
                INSERT_PHOTO_SQL,
                [tuple(r[c] for c in ROW_COLUMNS) for r in rows],
            )
            db.executemany("UPDATE images SET status=? WHERE id=?", [(STORED, r["image_id"]) for r in rows])
        if status:
            db.executemany("UPDATE images SET status=? WHERE id=?", status)
        db.executemany("INSERT OR REPLACE INTO shards VALUES (?, ?, ?)", shards)
        db.execute("COMMIT")

    def _commit_now(self) -> None:
        self._write_batch(self.state.db, self._take_batch())

    async def _committer(self, stop: asyncio.Event) -> None:
        """Commit finished images every ``commit_interval_s`` off the event loop, until ``stop``
        (set once no image is in progress any more): the last batch is taken after it was set."""
        loop = asyncio.get_running_loop()
        db = self.state.connect()
        try:
            while True:
                try:
                    await asyncio.wait_for(stop.wait(), self.cfg.commit_interval_s)
                except asyncio.TimeoutError:
                    pass
                # decided before the batch is taken: images finishing while a batch is being
                # written (fsync, SQLite) go into the next one, which is then still written
                last = stop.is_set()
                if self._rows or self._status or self._finalized:
                    await loop.run_in_executor(self.io, self._write_batch, db, self._take_batch())
                if last:
                    return
        finally:
            db.close()

    def _open_writer(self) -> None:
        self._finalized: list[tuple[int, int]] = []
        self.writer = ShardWriter(self.out, self.cfg.shard_bytes,
                                  on_finalize=lambda s, e: self._finalized.append((s, e)))
        row = self.state.db.execute("SELECT idx, end_, finalized FROM shards ORDER BY idx DESC LIMIT 1").fetchone()
        if row is None:
            self.writer.resume(0, 0)
        elif row[2]:
            self.writer.resume(row[0] + 1, 0)
        else:
            self.writer.resume(row[0], row[1])

    # ---- phase 1: search
    #
    # A search answers a capped sample (no pagination), so a box whose answer may be capped is
    # split into four. The cap is min(search_limit, API_MAX_LIMIT), unless the server caps
    # lower: then an answer can be capped below the limit. An answer smaller than one already
    # seen is complete (the server's cap is at least that), so only an answer as large as any
    # before it (of MIN_PROBED_ANSWER images or more) is probed: its quadrants are searched, and
    # if they hold more distinct images, the server caps at that size. The cap is learned (and
    # kept in the checkpoint): from then on an answer of >= split_fraction of it is split.

    async def _search_answer(self, key: str) -> list:
        """The ``data`` records of a search of box ``key``."""
        params = {"bbox": fmt_bbox(box_bounds(key, self.cfg.max_box_deg)), "fields": SEARCH_FIELDS,
                  "limit": str(self.cfg.search_limit)}
        ans = await self._api("search", "/images", params, f"search bbox={params['bbox']}")
        data = ans.get("data") if isinstance(ans, dict) else None
        if not isinstance(data, list):
            raise SourceError(f"search bbox={params['bbox']}: answer has no 'data' list")
        return data

    def _splittable(self, key: str) -> bool:
        b = box_bounds(key, self.cfg.max_box_deg)
        return (b[2] - b[0]) / 2 >= self.cfg.min_box_deg

    async def _capped(self, key: str, n: int) -> bool:
        """Whether an answer of ``n`` images for box ``key`` is (or may be) a capped sample."""
        self.largest = max(self.largest, n)
        if n >= self.cfg.split_fraction * self.cap:
            return True
        if self.cap_learned or n < max(MIN_PROBED_ANSWER, self.largest):
            return False  # below the server's known cap, or below an answer already seen
        return await self._probe(key, n)

    async def _probe(self, key: str, n: int) -> bool:
        """Whether the server capped box ``key``'s answer at ``n`` images: its quadrants hold
        more distinct images (where one quadrant holds all ``n``, look closer into it)."""
        self.result.boxes_probed += 1
        while self._splittable(key):
            kids = _children(key)
            answers = [await self._search_answer(k) for k in kids]
            if len({_record_key(r) for a in answers for r in a}) > n:
                self._learn_cap(n)
                return True
            full = [k for k, a in zip(kids, answers) if len(a) >= n]
            if not full:
                return False
            key = full[0]
        return False

    def _learn_cap(self, n: int) -> None:
        if self.cap_learned and n >= self.cap:
            return
        self.cap, self.cap_learned = min(self.cap, n), True
        self.state.db.execute("INSERT OR REPLACE INTO meta VALUES ('search_cap', ?)", (str(self.cap),))
        log.warning("the search endpoint caps answers at %d images (below search_limit=%d): boxes answering "
                    "%d or more are split", self.cap, self.cfg.search_limit,
                    math.ceil(self.cfg.split_fraction * self.cap))

    def _load_cap(self) -> None:
        """A cap learned by an earlier run of this crawl."""
        row = self.state.db.execute("SELECT value FROM meta WHERE key='search_cap'").fetchone()
        if row is not None:
            self.cap, self.cap_learned = min(self.cap, int(row[0])), True

    async def _search_box(self, key: str, queue: asyncio.Queue, bar) -> None:
        data = await self._search_answer(key)
        if await self._capped(key, len(data)):
            if self._splittable(key):
                self._split(key, queue, bar)
                return
            self.result.boxes_saturated += 1
            b = box_bounds(key, self.cfg.max_box_deg)
            log.warning("box %s still returns a full sample at %.1e°; keeping the capped sample", key, b[2] - b[0])
        self._keep_answer(key, data)
        bar.update(1)

    def _split(self, key: str, queue: asyncio.Queue, bar) -> None:
        children = _children(key)
        db = self.state.db
        db.execute("BEGIN")
        db.executemany("INSERT OR IGNORE INTO boxes VALUES (?, ?)", [(c, BOX_PENDING) for c in children])
        db.execute("UPDATE boxes SET status=? WHERE key=?", (BOX_SPLIT, key))
        db.execute("COMMIT")
        self.result.boxes_split += 1
        bar.total += 4
        for c in children:
            queue.put_nowait(c)
        bar.update(1)

    def _keep_answer(self, key: str, data: list) -> None:
        """Queue the answer's photos inside the region; record the others once per record."""
        bbox = fmt_bbox(box_bounds(key, self.cfg.max_box_deg))
        ids, lats, lons, pano = [], [], [], []
        bad: list[str] = []  # search_skips items of unusable records
        no_position: list[int] = []
        for item in data:
            try:
                iid = validate_image_id(item.get("id") if isinstance(item, dict) else None)
            except InputError as exc:
                bad.append(_record_key(item))
                log.warning("search bbox=%s: skipping record: %s", bbox, exc)
                continue
            pos = point(item.get("computed_geometry")) or point(item.get("geometry"))
            if pos is None:
                bad.append(str(iid))
                no_position.append(iid)
                continue
            ids.append(iid)
            lats.append(pos[0])
            lons.append(pos[1])
            pano.append(item.get("is_pano") is True or item.get("camera_type") in PANO_CAMERA_TYPES)
        if no_position:
            log.warning("search bbox=%s: skipping %d record(s) without a usable geometry (bad_search_record), "
                        "e.g. id(s) %s", bbox, len(no_position), ", ".join(map(str, no_position[:5])))
        inside = shapely.contains_xy(self.region, np.asarray(lons, float), np.asarray(lats, float)) \
            if ids else np.zeros(0, bool)
        rows = [(i, REASON_CODE["panorama"] if p else PENDING) for i, p, ok in zip(ids, pano, inside) if ok]
        skips = [(str(i), "outside_region_search") for i, ok in zip(ids, inside) if not ok]
        skips += [(b, "bad_search_record") for b in bad]
        db = self.state.db
        db.execute("BEGIN")
        db.executemany("INSERT OR IGNORE INTO images VALUES (?, ?)", rows)
        # search-phase skips are kept in the checkpoint (a resumed crawl reports them), once
        # per record: a point on the shared edge of two boxes comes in both answers
        db.executemany("INSERT OR IGNORE INTO search_skips VALUES (?, ?)", skips)
        db.execute("UPDATE boxes SET status=? WHERE key=?", (BOX_DONE, key))
        db.execute("COMMIT")

    async def _search(self) -> None:
        db = self.state.db
        self._resuming = self.state.count("SELECT count(*) FROM boxes") > 0
        if not self._resuming:
            keys = root_boxes(self.region, self.cfg.max_box_deg)
            db.execute("BEGIN")
            db.executemany("INSERT INTO boxes VALUES (?, ?)", [(k, BOX_PENDING) for k in keys])
            db.execute("COMMIT")
        pending = [r[0] for r in db.execute("SELECT key FROM boxes WHERE status=? ORDER BY key", (BOX_PENDING,))]
        done = self.state.count("SELECT count(*) FROM boxes WHERE status!=?", BOX_PENDING)
        self.result.resumed_boxes = done
        if done:
            log.info("resume: skipping %d finished search boxes, %d pending", done, len(pending))
        if not pending:
            return
        bar = tqdm(total=len(pending), desc="search boxes", unit="box", disable=not self.progress,
                   file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
        queue: asyncio.Queue = asyncio.Queue()
        for k in pending:
            queue.put_nowait(k)
        try:
            await _pool(queue, lambda k: self._search_box(k, queue, bar), self.cfg.search_concurrency)
        finally:
            bar.close()

    # ---- phase 2: images

    async def _fetch_thumb(self, iid: int, url: str) -> tuple[bool, bytes | None]:
        what = f"thumbnail of image {iid}"
        bad_bodies: Counter = Counter()  # digests of the undecodable bodies received
        for attempt in range(self.cfg.retries):
            try:
                if url is None:
                    ent = await self._api("entity", f"/{iid}", {"fields": f"id,{self.cfg.thumb_field}"},
                                          f"entity {iid} (fresh thumbnail URL)")
                    url = ent.get(self.cfg.thumb_field) if isinstance(ent, dict) else None
                    if not isinstance(url, str):
                        raise NotFound("no thumbnail URL")
                self.requests["thumbnail"] += 1
                async with self.session.get(_as_served(url)) as resp:
                    status = resp.status
                    body = await resp.read()
                    wait = resp.headers.get("Retry-After")
                if status in (403, 410):
                    url = None
                    raise Expired(f"HTTP {status}")
                if status == 404:
                    raise NotFound("HTTP 404")
                if status == 429 or status >= 500:
                    raise Transient(f"HTTP {status}", retry_after_s(wait))
                if status != 200:
                    raise SourceError(f"{what}: HTTP {status}")
                # a truncated/corrupt JPEG raises InputError: downloaded again, unless it is
                # the same bad bytes again and again (damaged at the source)
                t0 = time.perf_counter()
                try:
                    out = await self.images.process(body, what)
                except InputError:
                    if _seen_often(bad_bodies, body):
                        log.warning("%s", self._msg(f"{what}: the same {len(body)} undecodable bytes "
                                                    f"{SAME_BAD_BODY_TRIES} times; skipped as bad_image"))
                        return False, None
                    raise
                self.timing["process"] += time.perf_counter() - t0
                return out
            except (Transient, Expired, asyncio.TimeoutError, aiohttp.ClientError, InputError) as exc:
                if attempt + 1 >= self.cfg.retries:
                    if isinstance(exc, InputError):
                        return False, None  # undecodable after all retries: counted as bad_image
                    raise _GaveUp(f"{what}: {type(exc).__name__}: {exc}") from None
                await self._backoff("thumbnail", attempt, exc)
        raise AssertionError("unreachable")

    async def _do_image(self, iid: int, bar) -> None:
        try:
            reason = await self._image(iid)
        except _GaveUp as exc:
            log.warning("%s", self._msg(f"image {iid}: giving up for this run ({exc}); a rerun retries it"))
            reason = "failed"
        except SourceError as exc:
            if isinstance(exc, AuthError):
                raise
            log.warning("%s", self._msg(f"image {iid}: {exc}; a rerun retries it"))
            reason = "failed"
        if reason is None:
            self.counts["stored"] += 1
        else:
            self.counts[reason] += 1
            self._status.append((FAILED if reason == "failed" else REASON_CODE[reason], iid))
        bar.update(1)
        if bar.n % 64 == 0:
            self._show_counts(bar)

    def _show_counts(self, bar) -> None:
        """The stored/skipped counts in the progress bar's postfix (shown at its next refresh)."""
        if not bar.disable:
            bar.set_postfix(stored=self.counts["stored"], skipped=sum(self.counts.values()) - self.counts["stored"],
                            refresh=False)

    async def _image(self, iid: int) -> str | None:
        fields = ENTITY_FIELDS.format(thumb=self.cfg.thumb_field)
        try:
            t0 = time.perf_counter()
            ent = await self._api("entity", f"/{iid}", {"fields": fields}, f"entity {iid}")
            self.timing["entity"] += time.perf_counter() - t0
        except SourceError as exc:
            if isinstance(exc, AuthError):
                raise
            raise _GaveUp(str(exc)) from None
        except NotFound:
            return "not_found"
        reason, row = parse_entity(iid, ent)
        if reason:
            return reason
        if not shapely.contains_xy(self.region, row["lon"], row["lat"]):
            return "outside_region"
        url = ent.get(self.cfg.thumb_field)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return "no_thumbnail"
        try:
            t0 = time.perf_counter()
            grey, jpeg = await self._fetch_thumb(iid, url)
            self.timing["thumbnail+process"] += time.perf_counter() - t0
        except NotFound:
            return "no_thumbnail"
        if grey:
            return "greyscale"
        if jpeg is None:
            return "bad_image"
        row["shard"], row["offset"], row["nbytes"] = self.writer.append(iid, jpeg)
        row["crc32"] = crc32(jpeg)  # here, while the bytes are in memory: the export reads no photo
        self._rows.append(row)
        return None

    async def _images(self) -> None:
        db = self.state.db
        db.execute("UPDATE images SET status=? WHERE status=?", (PENDING, FAILED))  # retry last run's failures
        pending = self.state.count("SELECT count(*) FROM images WHERE status=?", PENDING)
        done = self.state.count("SELECT count(*) FROM images WHERE status!=?", PENDING)
        if self._resuming:
            self.result.resumed_images = done
        if done and self._resuming:
            log.info("resume: skipping %d finished images, %d pending", done, pending)
        if not pending:
            return
        bar = tqdm(total=pending, desc="images", unit="img", disable=not self.progress,
                   file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
        queue: asyncio.Queue = asyncio.Queue(maxsize=4 * self.cfg.concurrency)
        ids = [r[0] for r in db.execute("SELECT id FROM images WHERE status=? ORDER BY id", (PENDING,))]

        async def feed():
            for i in ids:
                await queue.put(i)

        stop = asyncio.Event()
        committer = asyncio.create_task(self._committer(stop))
        try:
            await _pool(queue, lambda i: self._do_image(i, bar), self.cfg.concurrency, feeder=feed())
        finally:
            stop.set()
            await asyncio.shield(committer)  # the last batch is committed even when failing
            self._show_counts(bar)  # the final line shows the final counts
            bar.close()

    # ---- driver

    def _fingerprint(self) -> dict:
        return {
            "region_wkb_sha256": hashlib.sha256(shapely.to_wkb(self.region, output_dimension=2)).hexdigest(),
            "max_box_deg": self.cfg.max_box_deg,
            "search_limit": self.cfg.search_limit,
            "thumb_field": self.cfg.thumb_field,
            "jpeg_quality": self.cfg.jpeg_quality,
        }

    async def run(self) -> CrawlResult:
        self.state = CrawlState(self.out / "crawl-state.sqlite")
        self.counts: Counter = Counter()
        redact = RedactFilter(self.token)
        handlers = logging.getLogger().handlers
        for h in handlers:
            h.addFilter(redact)
        # Image work runs in threads (OpenCV releases the GIL while decoding, resizing and
        # encoding), fed in batches: one hand-off per batch instead of per image. A process
        # pool was tried: faster on this benchmark, but forking a threaded process can deadlock
        # the child (OpenCV's thread pool) and a killed crawler left workers/forkservers behind.
        workers = self.image_workers or len(os.sched_getaffinity(0))
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="vgl-img")
        # an image thread coming back from OpenCV waits for the GIL up to the switch interval
        # while the event loop runs; 5 ms (the default) per image capped the batches at
        # ~400 images/s per thread. Restored when the crawl ends.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, 0.001))
        self.images = ImageBatcher(self.pool, workers, self.cfg.jpeg_quality)
        self.io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vgl-commit")
        try:
            self.state.check_fingerprint(self._fingerprint())
            self._load_cap()
            self._open_writer()
            timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
            connector = aiohttp.TCPConnector(limit=self.cfg.connections, ttl_dns_cache=300)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector,
                                             headers={"User-Agent": "vglpipe-crawler/0.1"}) as self.session:
                t0 = time.perf_counter()
                await self._search()
                t1 = time.perf_counter()
                await self._images()
                t2 = time.perf_counter()
            self.result.search_seconds, self.result.image_seconds = t1 - t0, t2 - t1
            self._finish()
            return self.result
        finally:
            for h in handlers:
                h.removeFilter(redact)
            self.images.close()
            self.pool.shutdown(wait=True, cancel_futures=True)
            sys.setswitchinterval(switch)
            self.io.shutdown(wait=True)
            if hasattr(self, "writer"):
                self.writer.close(finalize=False)
            self.state.close()

    def _check_accounted(self) -> None:
        """Every box searched and every image found stored, failed or skipped (a named reason),
        all committed: the counts below are then exact, not short by what was still in flight."""
        st = self.state
        if self._rows or self._status:
            raise SourceError(f"crawl of {self.out}: {len(self._rows) + len(self._status)} finished image(s) "
                              "not committed before the counts (a crawler bug); a rerun resumes")
        boxes = st.count("SELECT count(*) FROM boxes WHERE status=?", BOX_PENDING)
        known = (STORED, FAILED, *SKIP_REASONS)
        open_ = st.count(f"SELECT count(*) FROM images WHERE status NOT IN ({', '.join('?' * len(known))})", *known)
        if boxes or open_:
            raise SourceError(f"crawl of {self.out}: {boxes} search box(es) and {open_} image(s) left unfinished "
                              "(a crawler bug); a rerun resumes them")

    def _finish(self) -> None:
        self._check_accounted()
        st = self.state
        r = self.result
        r.boxes = st.count("SELECT count(*) FROM boxes WHERE status=?", BOX_DONE)
        r.stored = st.count("SELECT count(*) FROM images WHERE status=?", STORED)
        r.failed = st.count("SELECT count(*) FROM images WHERE status=?", FAILED)
        r.skipped = {name: st.count("SELECT count(*) FROM images WHERE status=?", code)
                     for code, name in SKIP_REASONS.items()}
        for key in SEARCH_SKIP_REASONS:
            legacy = st.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()  # older checkpoints
            r.skipped[key] = st.count("SELECT count(*) FROM search_skips WHERE reason=?", key) + \
                (int(legacy[0]) if legacy else 0)
        r.search_cap = self.cap
        r.requests, r.retries = dict(self.requests), dict(self.retries)
        done = max(1, sum(self.counts.values()))
        r.timing_ms_per_image = {k: round(1000 * v / done, 1) for k, v in self.timing.items()}
        total = r.stored + r.failed + sum(v for k, v in r.skipped.items() if k in REASON_CODE)
        if r.failed > self.cfg.max_failed_fraction * max(total, 1):
            raise SourceError(
                f"crawl of {self.out}: {r.failed} image(s) still failing after retries "
                f"(allowed fraction {self.cfg.max_failed_fraction}); rerun to retry them"
            )
        # finalize the last shard and export
        self.writer.close(finalize=True)
        self._commit_now()
        r.complete = True
        report = asdict(r)
        export_metadata(self.state.db, self.out / "metadata.parquet",
                        {"source": "mapillary-graph-v4", "base_url": self.base, "crawl": report,
                         "photo_size": [640, 480]})
        atomic_write_text(self.out / "crawl_report.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
        log.info("crawl complete: %d photos stored, skipped %s, %d failed; requests %s; retries %s",
                 r.stored, {k: v for k, v in r.skipped.items() if v}, r.failed, r.requests, r.retries)


def _children(key: str) -> list[str]:
    """The four quadrants' keys of box ``key``."""
    return [f"{key}{'/' if '/' not in key else ''}{q}" for q in range(4)]


def _record_key(item: Any) -> str:
    """A search record's identity: its image id as served, or a digest of an id-less record."""
    raw = item.get("id") if isinstance(item, dict) else None
    if isinstance(raw, (str, int)) and not isinstance(raw, bool):
        try:
            return str(validate_image_id(raw))
        except InputError:
            return f"raw:{raw!r}"[:200]
    text = json.dumps(item, sort_keys=True, default=str)
    return "raw:" + hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _as_served(url: str) -> yarl.URL | str:
    """``url`` to request exactly as served: a signed URL's escapes (``%2F``) must stay, or a
    CDN that checks the exact URL refuses it. One with spaces or non-ASCII (not encoded) is encoded."""
    if url.isascii() and not any(c.isspace() for c in url):
        return yarl.URL(url, encoded=True)
    return url


def _seen_often(seen: Counter, body: bytes) -> bool:
    """Count ``body``; whether it came SAME_BAD_BODY_TRIES times."""
    digest = hashlib.blake2b(body, digest_size=16).digest()
    seen[digest] += 1
    return seen[digest] >= SAME_BAD_BODY_TRIES


class _GaveUp(Exception):
    """Transient failures of one image outlasted the retries (retried on the next run)."""


async def _pool(queue: asyncio.Queue, handler, n: int, feeder=None) -> None:
    """Run ``handler`` over the items of ``queue`` (which may grow) with ``n`` workers."""

    async def worker():
        while True:
            item = await queue.get()
            try:
                await handler(item)
            finally:
                queue.task_done()

    try:
        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(worker()) for _ in range(n)]
            if feeder is not None:
                await tg.create_task(feeder)
            await queue.join()
            for w in workers:
                w.cancel()
    except* (AuthError, SourceError, ResumeError, ConfigError, InputError) as eg:
        raise eg.exceptions[0] from None


def crawl(region, out_dir: str | os.PathLike, token: Token, config: CrawlSettings | None = None,
          image_workers: int = 0, progress: bool = True) -> CrawlResult:
    """Crawl all non-panoramic photos inside ``region`` (shapely lon/lat polygon) into ``out_dir``."""
    if region is None or region.is_empty or region.geom_type not in ("Polygon", "MultiPolygon"):
        raise InputError(f"crawl region must be a non-empty (multi)polygon, got {getattr(region, 'geom_type', region)!r}")
    config = config or CrawlSettings.defaults()
    return asyncio.run(Crawler(region, out_dir, token, config, image_workers, progress).run())
