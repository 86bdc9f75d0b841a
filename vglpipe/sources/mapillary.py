"""Mapillary Graph API v4 crawler: all non-panoramic images of a region into a sharded photo store.

How a crawl works (paper §4.1, S2):

1. **Search.** The region's bounding box is cut into a grid of boxes of at most
   ``max_box_deg`` (0.01°) per side, aligned to multiples of that size; boxes that miss the
   region polygon are dropped. ``GET /images?bbox=…&fields=id,computed_geometry,…&limit=2000``
   returns a *capped sample* (no pagination), so a box whose answer holds ≥ 95 % of the
   limit is split into four and searched again. Points outside the polygon are dropped.
2. **Entities.** ``GET /{id}?fields=camera_type,…,thumb_1024_url`` per image; panoramas
   (spherical/equirectangular/``is_pano``) and unknown camera types are skipped, the
   thumbnail is downloaded (a 403/410 on an expired signed URL re-queries the entity for a
   fresh one), greyscale photos are skipped, the rest is letterboxed to 640×480 and appended
   to a tar shard of the photo store.
3. **Export.** When nothing is pending, ``metadata.parquet`` is written atomically.

All HTTP goes through one aiohttp session (an asyncio client sustains ~2k requests/s per
process on loopback, a thread pool of ``requests`` ~550); two rate limiters (search, entity)
space the API calls at the configured per-minute limits, and enough workers run to reach
them with ~100 ms latency. Transient failures (429, 5xx, ``is_transient`` API errors,
timeouts, resets, truncated JSON or JPEG) are retried with exponential backoff and jitter
(hand-rolled: tenacity's per-attempt overhead was ~10 % of the client's CPU); a 401
stops the crawl at once. Thumbnail work (decode, greyscale check, letterbox, JPEG) runs
in a thread pool fed in batches; a thumbnail that already is a 640×480 JPEG is stored as
served. Note the image work dominates a real crawl's CPU (~8-10 ms per 1024 px thumbnail):
``python -m vglpipe.bench crawl`` prints the cores needed at the default limits.

Checkpointing: progress lives in ``crawl-state.sqlite`` beside the store (WAL; finished
images are committed about once a second from an I/O thread). Shard data is fsynced
*before* the rows that point at it are committed, and a
restart truncates each shard back to its committed end, so a crawl killed at any point (even
``kill -9``) redoes no committed box or image and loses none.

The access token is held by :class:`Token` (its ``repr``/``str`` are masked), sent only in the
``Authorization: OAuth …`` header of API requests (never to thumbnail hosts, never in a URL)
and masked out of every log line and error message the crawler writes.
"""

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
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import urllib.parse

import aiohttp
import yarl
import numpy as np
import pyarrow as pa
import shapely
from shapely.geometry import box as shapely_box
from tqdm import tqdm

from vglpipe.errors import AuthError, ConfigError, InputError, ResumeError, SourceError
from vglpipe.store.atomic import atomic_write_text
from vglpipe.store.photos import (
    METADATA_SCHEMA,
    PHOTO_HEIGHT,
    PHOTO_WIDTH,
    jpeg_size,
    ShardWriter,
    decode_jpeg,
    encode_jpeg,
    is_greyscale,
    letterbox,
    validate_image_id,
)
from vglpipe.store.tables import write_batches

log = logging.getLogger("vglpipe.crawl")

API_URL = "https://graph.mapillary.com"
TOKEN_ENV = "MAPILLARY_ACCESS_TOKEN"

#: Non-panoramic camera models of the Mapillary API (``camera_type``); everything else is skipped.
KEEP_CAMERA_TYPES = frozenset(
    {"perspective", "fisheye", "brown", "fisheye_opencv", "radial", "simple_radial"}
)
PANO_CAMERA_TYPES = frozenset({"spherical", "equirectangular"})

SEARCH_FIELDS = "id,computed_geometry,geometry,captured_at,is_pano,camera_type"
ENTITY_FIELDS = (
    "id,camera_type,is_pano,captured_at,computed_geometry,geometry,creator,sequence,"
    "height,width,make,model,compass_angle,computed_compass_angle,{thumb}"
)

# image status codes in the checkpoint
PENDING, STORED = 0, 1
SKIP_REASONS = {
    2: "panorama",
    3: "camera_type",
    4: "greyscale",
    5: "outside_region",
    6: "not_found",
    7: "bad_record",
    8: "no_thumbnail",
    9: "bad_image",
}
FAILED = 10  # transient failures that outlasted the retries; retried on the next run
_REASON_CODE = {v: k for k, v in SKIP_REASONS.items()}

# box status codes
BOX_PENDING, BOX_DONE, BOX_SPLIT = 0, 1, 2


# --------------------------------------------------------------------------- token


class Token:
    """The access token; ``str``/``repr`` are masked so it cannot leak through formatting."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        value = value.strip()
        if not value or any(c.isspace() for c in value):
            raise AuthError("Mapillary access token is empty or contains whitespace")
        self._value = value

    @property
    def value(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        return text.replace(self._value, "***") if self._value in text else text

    def __repr__(self) -> str:
        return "Token(***)"

    __str__ = __repr__


def load_token(token_file: str | os.PathLike | None = None, env_var: str = TOKEN_ENV) -> Token:
    """Token from ``token_file`` if given, else from the environment variable ``env_var``."""
    if token_file:
        path = Path(token_file)
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise AuthError(f"cannot read Mapillary token file {path}: {exc.strerror}") from None
        if not text:
            raise AuthError(f"Mapillary token file {path} is empty")
        return Token(text)
    text = os.environ.get(env_var, "").strip()
    if not text:
        raise AuthError(
            f"no Mapillary access token: set the environment variable {env_var} or pass a token file"
        )
    return Token(text)


class _RedactFilter(logging.Filter):
    def __init__(self, token: Token):
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        red = self.token.redact(msg)
        if red is not msg and red != msg:
            record.msg, record.args = red, None
        return True


# --------------------------------------------------------------------------- config


@dataclass
class CrawlConfig:
    base_url: str = API_URL
    search_per_minute: float = 9000.0
    entity_per_minute: float = 50000.0
    search_limit: int = 2000
    max_box_deg: float = 0.01
    split_fraction: float = 0.95
    min_box_deg: float = 1e-5
    search_concurrency: int = 64
    concurrency: int = 384
    connections: int = 1024
    timeout_s: float = 30.0
    retries: int = 10
    backoff_s: float = 0.5
    backoff_max_s: float = 60.0
    thumb_field: str = "thumb_1024_url"
    jpeg_quality: int = 90
    shard_bytes: int = 1 << 30
    commit_interval_s: float = 1.0
    commit_every: int = 2000
    image_workers: int = 0  # threads for thumbnail work; 0: one per available core
    max_failed_fraction: float = 0.0
    progress: bool = True

    def validate(self) -> CrawlConfig:
        pos = ["search_per_minute", "entity_per_minute", "search_limit", "max_box_deg", "timeout_s",
               "search_concurrency", "concurrency", "connections", "retries", "shard_bytes",
               "commit_every"]
        for k in pos:
            if not getattr(self, k) > 0:
                raise ConfigError(f"crawl.{k}={getattr(self, k)!r}: must be > 0")
        if self.image_workers < 0:
            raise ConfigError(f"crawl.image_workers={self.image_workers!r}: must be >= 0 (0: one per core)")
        if not 0 < self.split_fraction <= 1:
            raise ConfigError(f"crawl.split_fraction={self.split_fraction!r}: must be in (0, 1]")
        if not 0 <= self.max_failed_fraction <= 1:
            raise ConfigError(f"crawl.max_failed_fraction={self.max_failed_fraction!r}: must be in [0, 1]")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"crawl.base_url={self.base_url!r}: must be an http(s) URL")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"crawl.jpeg_quality={self.jpeg_quality!r}: must be in 1..100")
        return self


@dataclass
class CrawlResult:
    stored: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    boxes: int = 0
    boxes_split: int = 0
    boxes_saturated: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    timing_ms_per_image: dict[str, float] = field(default_factory=dict)
    resumed_boxes: int = 0
    resumed_images: int = 0
    search_seconds: float = 0.0
    image_seconds: float = 0.0
    complete: bool = False


# --------------------------------------------------------------------------- boxes


def box_bounds(key: str, d: float) -> tuple[float, float, float, float]:
    """Bounds (minlon, minlat, maxlon, maxlat) of a box key ``"i:j"`` or ``"i:j/0312"``."""
    root, _, path = key.partition("/")
    i, j = (int(v) for v in root.split(":"))
    for q in path:  # integer box coordinates at depth len(path): exact, so neighbours share edges
        q = int(q)
        i, j = 2 * i + (q & 1), 2 * j + (q >> 1)
    scale = d / (1 << len(path))
    return i * scale, j * scale, (i + 1) * scale, (j + 1) * scale


def root_boxes(region, d: float) -> list[str]:
    """Keys of the grid boxes (side ``d`` degrees, aligned to multiples of ``d``) meeting ``region``."""
    minx, miny, maxx, maxy = region.bounds
    i0, i1 = math.floor(minx / d), math.ceil(maxx / d)
    j0, j1 = math.floor(miny / d), math.ceil(maxy / d)
    if (i1 - i0) * (j1 - j0) > 50_000_000:
        raise InputError(f"region bounds {region.bounds} too large for {d}° boxes")
    shapely.prepare(region)
    keys = []
    for i in range(i0, i1):
        for j in range(j0, j1):
            if region.intersects(shapely_box(i * d, j * d, (i + 1) * d, (j + 1) * d)):
                keys.append(f"{i}:{j}")
    return keys


def _fmt_bbox(b) -> str:
    return ",".join(f"{v:.7f}" for v in b)


# --------------------------------------------------------------------------- parsing


class _Transient(Exception):
    """A failure worth retrying (429, 5xx, reset, timeout, truncated body)."""


class _RateLimited(_Transient):
    """The API's request limit was reached (HTTP 429 or a rate-limit error code)."""


class _NotFound(Exception):
    pass


class _Expired(Exception):
    """A signed thumbnail URL was refused (403/410): fetch a fresh one."""


def _point(geom: Any) -> tuple[float, float] | None:
    """(lat, lon) of a GeoJSON Point ``{"type": "Point", "coordinates": [lon, lat]}``, or None."""
    if not isinstance(geom, dict):
        return None
    c = geom.get("coordinates")
    if not isinstance(c, (list, tuple)) or len(c) < 2:
        return None
    try:
        lon, lat = float(c[0]), float(c[1])
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return lat, lon


def _str(v: Any, cap: int = 256) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        v = str(v) if isinstance(v, (int, float)) else None
        if v is None:
            return None
    return v[:cap]


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    try:
        i = int(v)
    except (TypeError, ValueError):
        return None
    return i if -(1 << 63) <= i < (1 << 63) else None


def parse_entity(image_id: int, ent: Any) -> tuple[str | None, dict | None]:
    """Validate an entity answer; return ``(skip_reason, None)`` or ``(None, row)``."""
    if not isinstance(ent, dict):
        return "bad_record", None
    try:
        if validate_image_id(ent.get("id")) != image_id:
            return "bad_record", None
    except InputError:
        return "bad_record", None
    cam = ent.get("camera_type")
    if ent.get("is_pano") is True or cam in PANO_CAMERA_TYPES:
        return "panorama", None
    if cam is not None and cam not in KEEP_CAMERA_TYPES:
        return "camera_type", None
    pos = _point(ent.get("computed_geometry")) or _point(ent.get("geometry"))
    if pos is None:
        return "bad_record", None
    orig = _point(ent.get("geometry"))
    creator = ent.get("creator") if isinstance(ent.get("creator"), dict) else {}
    seq = ent.get("sequence")
    if isinstance(seq, dict):
        seq = seq.get("id")
    cap = _int(ent.get("captured_at"))
    row = {
        "image_id": image_id,
        "lat": pos[0],
        "lon": pos[1],
        "orig_lat": orig[0] if orig else None,
        "orig_lon": orig[1] if orig else None,
        "captured_at": cap,
        "camera_type": _str(cam, 64),
        "make": _str(ent.get("make")),
        "model": _str(ent.get("model")),
        "compass_angle": _float(ent.get("compass_angle")),
        "computed_compass_angle": _float(ent.get("computed_compass_angle")),
        "sequence_id": _str(seq, 128),
        "creator_id": _int(creator.get("id")),
        "creator_username": _str(creator.get("username")),
        "width": _int(ent.get("width")),
        "height": _int(ent.get("height")),
    }
    for k in ("width", "height"):
        if row[k] is not None and not 0 < row[k] < 1 << 31:
            row[k] = None
    return None, row


def process_thumbnail(data: bytes, quality: int, what: str) -> tuple[bool, bytes | None]:
    """Greyscale check, letterbox to 640×480, JPEG. Returns ``(is_grey, jpeg)``.

    A thumbnail that already is a 640×480 colour JPEG is stored as served (no re-encoding);
    its greyscale check runs on a 1/8-scale decode (block averages, no inverse DCT).
    """
    import cv2

    if jpeg_size(data) == (PHOTO_WIDTH, PHOTO_HEIGHT):
        if data.rstrip(b"\0")[-2:] != b"\xff\xd9":
            raise InputError(f"{what}: not a complete JPEG ({len(data)} bytes)")
        small = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_8)
        if small is None:
            raise InputError(f"{what}: cannot decode image ({len(data)} bytes)")
        return (True, None) if is_greyscale(small, step=1) else (False, data)
    img = decode_jpeg(data, what)
    if is_greyscale(img):
        return True, None
    return False, encode_jpeg(letterbox(img), quality)


# --------------------------------------------------------------------------- state


_COLS = [f.name for f in METADATA_SCHEMA]
#: stores one photo row (a tuple in ``_COLS`` order) in the checkpoint
INSERT_PHOTO_SQL = f"INSERT OR REPLACE INTO photos ({', '.join(_COLS)}) VALUES ({', '.join('?' * len(_COLS))})"


class CrawlState:
    """The crawl checkpoint: an SQLite database (WAL) beside the photo store."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = self.connect()
        cols = ", ".join(f"{c} {'INTEGER' if c in ('image_id',) else ''}" for c in _COLS)
        self.db.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
            CREATE TABLE IF NOT EXISTS boxes (key TEXT PRIMARY KEY, status INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS images (id INTEGER PRIMARY KEY, status INTEGER NOT NULL);
            CREATE INDEX IF NOT EXISTS images_status ON images(status);
            CREATE TABLE IF NOT EXISTS photos ({cols}, PRIMARY KEY (image_id));
            CREATE TABLE IF NOT EXISTS shards (idx INTEGER PRIMARY KEY, end_ INTEGER, finalized INTEGER);
            """
        )

    def connect(self) -> sqlite3.Connection:
        # WAL + NORMAL: a committed transaction survives a killed process (kill -9); the shard
        # data it points at is fsynced before it is committed, so even a power loss leaves no
        # row pointing at missing bytes (only the newest commits may be redone).
        db = sqlite3.connect(self.path, isolation_level=None, timeout=60, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def check_fingerprint(self, fp: dict) -> None:
        want = json.dumps(fp, sort_keys=True)
        row = self.db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('fingerprint', ?)", (want,))
        elif row[0] != want:
            old = json.loads(row[0])
            diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
            raise ResumeError(
                f"{self.path}: checkpoint was written for a different crawl (differs in: "
                f"{', '.join(diff)}); delete the directory to start over"
            )

    def count(self, sql: str, *args) -> int:
        return int(self.db.execute(sql, args).fetchone()[0])

    def close(self) -> None:
        self.db.close()


# --------------------------------------------------------------------------- limiter


class RateLimiter:
    """Space calls evenly at ``per_minute`` (small burst allowance); ``per_minute <= 0``: unlimited.

    When the API answers "request limit reached" the configured rate is too high for it:
    :meth:`slow_down` stretches the spacing (at most once a second, up to ``max_slowdown``
    times), and every successful call lets it recover slowly towards the configured rate.
    """

    def __init__(self, per_minute: float, burst: int = 8, max_slowdown: float = 8.0):
        self.base_interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self.interval = self.base_interval
        self.max_interval = self.base_interval * max_slowdown
        self.burst = burst * self.interval
        self.next = 0.0
        self._slowed_at = -1e9

    async def acquire(self) -> None:
        if not self.interval:
            return
        now = asyncio.get_running_loop().time()
        t = max(self.next, now - self.burst)
        self.next = t + self.interval
        if t > now:
            await asyncio.sleep(t - now)

    def slow_down(self, factor: float = 1.5) -> None:
        if not self.interval:
            return
        now = asyncio.get_running_loop().time()
        if now - self._slowed_at >= 1.0:
            self._slowed_at = now
            self.interval = min(self.max_interval, self.interval * factor)

    def succeeded(self) -> None:
        if self.interval > self.base_interval:
            self.interval = max(self.base_interval, self.interval * 0.999)


# --------------------------------------------------------------------------- crawler


class Crawler:
    def __init__(self, region, out_dir: str | os.PathLike, token: Token, config: CrawlConfig):
        self.region = region
        shapely.prepare(self.region)
        self.out = Path(out_dir)
        self.token = token
        self.cfg = config.validate()
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
        await asyncio.sleep(random.uniform(0.0, cap))

    def _classify(self, status: int, body: bytes, what: str) -> Exception:
        err: dict = {}
        try:
            parsed = json.loads(body)
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                err = parsed["error"]
        except ValueError:
            pass
        message = self._msg(str(err.get("message", ""))[:200])
        if status == 401:
            return AuthError(
                self._msg(f"Mapillary rejected the access token (HTTP 401) for {what}: {message}"
                          " — check MAPILLARY_ACCESS_TOKEN / the token file")
            )
        if status == 429 or err.get("code") in (4, 17, 32, 613):
            return _RateLimited(f"HTTP {status} {message}")
        if status >= 500 or err.get("is_transient") or err.get("code") in (1, 2):
            return _Transient(f"HTTP {status} {message}")
        if status == 404 or err.get("code") == 100:
            return _NotFound(f"HTTP {status} {message}")
        return SourceError(self._msg(f"{what} failed: HTTP {status}: {message or body[:200]!r}"))

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
                if status != 200:
                    raise self._classify(status, body, what)
                try:
                    answer = json.loads(body)
                except ValueError:
                    raise _Transient(f"invalid or truncated JSON ({len(body)} bytes)") from None
                self.limit[kind].succeeded()
                return answer
            except (_Transient, asyncio.TimeoutError, aiohttp.ClientError) as exc:
                if isinstance(exc, _RateLimited):
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
                [tuple(r[c] for c in _COLS) for r in rows],
            )
            db.executemany("UPDATE images SET status=? WHERE id=?", [(STORED, r["image_id"]) for r in rows])
        if status:
            db.executemany("UPDATE images SET status=? WHERE id=?", status)
        db.executemany("INSERT OR REPLACE INTO shards VALUES (?, ?, ?)", shards)
        db.execute("COMMIT")

    def _commit_now(self) -> None:
        self._write_batch(self.state.db, self._take_batch())

    async def _committer(self, stop: asyncio.Event) -> None:
        """Commit finished images every ``commit_interval_s`` off the event loop, until ``stop``."""
        loop = asyncio.get_running_loop()
        db = self.state.connect()
        try:
            while True:
                try:
                    await asyncio.wait_for(stop.wait(), self.cfg.commit_interval_s)
                except asyncio.TimeoutError:
                    pass
                if self._rows or self._status or self._finalized:
                    await loop.run_in_executor(self.io, self._write_batch, db, self._take_batch())
                if stop.is_set():
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

    async def _search_box(self, key: str, queue: asyncio.Queue, bar) -> None:
        b = box_bounds(key, self.cfg.max_box_deg)
        params = {"bbox": _fmt_bbox(b), "fields": SEARCH_FIELDS, "limit": str(self.cfg.search_limit)}
        ans = await self._api("search", "/images", params, f"search bbox={params['bbox']}")
        data = ans.get("data") if isinstance(ans, dict) else None
        if not isinstance(data, list):
            raise SourceError(f"search bbox={params['bbox']}: answer has no 'data' list")
        db = self.state.db
        full = len(data) >= self.cfg.split_fraction * self.cfg.search_limit
        if full and (b[2] - b[0]) / 2 >= self.cfg.min_box_deg:
            children = [f"{key}{'/' if '/' not in key else ''}{q}" for q in range(4)]
            db.execute("BEGIN")
            db.executemany("INSERT OR IGNORE INTO boxes VALUES (?, ?)", [(c, BOX_PENDING) for c in children])
            db.execute("UPDATE boxes SET status=? WHERE key=?", (BOX_SPLIT, key))
            db.execute("COMMIT")
            self.result.boxes_split += 1
            bar.total += 4
            for c in children:
                queue.put_nowait(c)
            bar.update(1)
            return
        if full:
            self.result.boxes_saturated += 1
            log.warning("box %s still returns a full sample at %.1e°; keeping the capped sample", key, b[2] - b[0])
        ids, lats, lons, pano, bad = [], [], [], [], 0
        for item in data:
            try:
                iid = validate_image_id(item.get("id") if isinstance(item, dict) else None)
            except InputError as exc:
                bad += 1
                log.warning("search bbox=%s: skipping record: %s", params["bbox"], exc)
                continue
            pos = _point(item.get("computed_geometry")) or _point(item.get("geometry"))
            if pos is None:
                bad += 1
                continue
            ids.append(iid)
            lats.append(pos[0])
            lons.append(pos[1])
            pano.append(item.get("is_pano") is True or item.get("camera_type") in PANO_CAMERA_TYPES)
        inside = shapely.contains_xy(self.region, np.asarray(lons, float), np.asarray(lats, float)) \
            if ids else np.zeros(0, bool)
        outside = int((~inside).sum())
        rows = [(i, _REASON_CODE["panorama"] if p else PENDING) for i, p, ok in zip(ids, pano, inside) if ok]
        db.execute("BEGIN")
        db.executemany("INSERT OR IGNORE INTO images VALUES (?, ?)", rows)
        # search-phase skips are counted in the checkpoint too, so a resumed crawl reports them
        db.executemany(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + ?",
            [("outside_region_search", str(outside), outside), ("bad_search_record", str(bad), bad)],
        )
        db.execute("UPDATE boxes SET status=? WHERE key=?", (BOX_DONE, key))
        db.execute("COMMIT")
        bar.update(1)

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
        bar = tqdm(total=len(pending), desc="search boxes", unit="box", disable=not self.cfg.progress,
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
        for attempt in range(self.cfg.retries):
            try:
                if url is None:
                    ent = await self._api("entity", f"/{iid}", {"fields": f"id,{self.cfg.thumb_field}"},
                                          f"entity {iid} (fresh thumbnail URL)")
                    url = ent.get(self.cfg.thumb_field) if isinstance(ent, dict) else None
                    if not isinstance(url, str):
                        raise _NotFound("no thumbnail URL")
                self.requests["thumbnail"] += 1
                async with self.session.get(url) as resp:
                    status = resp.status
                    body = await resp.read()
                if status in (403, 410):
                    url = None
                    raise _Expired(f"HTTP {status}")
                if status == 404:
                    raise _NotFound("HTTP 404")
                if status == 429 or status >= 500:
                    raise _Transient(f"HTTP {status}")
                if status != 200:
                    raise SourceError(f"{what}: HTTP {status}")
                # a truncated/corrupt JPEG raises InputError: downloaded again
                t0 = time.perf_counter()
                out = await self.images.process(body, what)
                self.timing["process"] += time.perf_counter() - t0
                return out
            except (_Transient, _Expired, asyncio.TimeoutError, aiohttp.ClientError, InputError) as exc:
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
            self._status.append((FAILED if reason == "failed" else _REASON_CODE[reason], iid))
        bar.update(1)
        if not bar.disable and bar.n % 64 == 0:
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
        except _NotFound:
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
        except _NotFound:
            return "no_thumbnail"
        if grey:
            return "greyscale"
        if jpeg is None:
            return "bad_image"
        row["shard"], row["offset"], row["nbytes"] = self.writer.append(iid, jpeg)
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
        bar = tqdm(total=pending, desc="images", unit="img", disable=not self.cfg.progress,
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
            bar.close()

    # ---- driver

    def _fingerprint(self) -> dict:
        return {
            "region_wkb_sha256": hashlib.sha256(shapely.to_wkb(self.region, output_dimension=2)).hexdigest(),
            "max_box_deg": self.cfg.max_box_deg,
            "search_limit": self.cfg.search_limit,
            "thumb_field": self.cfg.thumb_field,
        }

    async def run(self) -> CrawlResult:
        self.state = CrawlState(self.out / "crawl-state.sqlite")
        self.counts: Counter = Counter()
        redact = _RedactFilter(self.token)
        handlers = logging.getLogger().handlers
        for h in handlers:
            h.addFilter(redact)
        # Image work runs in threads (OpenCV releases the GIL while decoding, resizing and
        # encoding), fed in batches: one hand-off per batch instead of per image. A process
        # pool was tried: faster on this benchmark, but forking a threaded process can deadlock
        # the child (OpenCV's thread pool) and a killed crawler left workers/forkservers behind.
        workers = self.cfg.image_workers or len(os.sched_getaffinity(0))
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="vgl-img")
        # an image thread coming back from OpenCV waits for the GIL up to the switch interval
        # while the event loop runs; 5 ms (the default) per image capped the batches at
        # ~400 images/s per thread. Restored when the crawl ends.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, 0.001))
        self.images = _ImageBatcher(self.pool, workers, self.cfg.jpeg_quality)
        self.io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vgl-commit")
        try:
            self.state.check_fingerprint(self._fingerprint())
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

    def _finish(self) -> None:
        st = self.state
        r = self.result
        r.boxes = st.count("SELECT count(*) FROM boxes WHERE status=?", BOX_DONE)
        r.stored = st.count("SELECT count(*) FROM images WHERE status=?", STORED)
        r.failed = st.count("SELECT count(*) FROM images WHERE status=?", FAILED)
        r.skipped = {name: st.count("SELECT count(*) FROM images WHERE status=?", code)
                     for code, name in SKIP_REASONS.items()}
        for key in ("outside_region_search", "bad_search_record"):
            row = st.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            r.skipped[key] = int(row[0]) if row else 0
        r.requests, r.retries = dict(self.requests), dict(self.retries)
        done = max(1, sum(self.counts.values()))
        r.timing_ms_per_image = {k: round(1000 * v / done, 1) for k, v in self.timing.items()}
        total = r.stored + r.failed + sum(v for k, v in r.skipped.items() if k in _REASON_CODE)
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


def _metadata_batches(db: sqlite3.Connection, chunk_rows: int):
    cur = db.execute(f"SELECT {', '.join(_COLS)} FROM photos ORDER BY image_id")
    while rows := cur.fetchmany(chunk_rows):
        arrays = []
        for f, values in zip(METADATA_SCHEMA, zip(*rows)):
            if pa.types.is_timestamp(f.type):
                arrays.append(pa.array(values, type=pa.int64()).cast(f.type))
            else:
                arrays.append(pa.array(values, type=f.type))
        yield pa.RecordBatch.from_arrays(arrays, schema=METADATA_SCHEMA)


def export_metadata(db: sqlite3.Connection, path: Path, metadata: dict, chunk_rows: int = 1 << 16) -> int:
    """Write the checkpoint's photo rows, by image id, to ``metadata.parquet`` in chunks of
    ``chunk_rows`` (memory stays flat: a statewide crawl holds ~11 M rows)."""
    return write_batches(_metadata_batches(db, chunk_rows), METADATA_SCHEMA, path, metadata=metadata)


def _process_batch(items: list, quality: int) -> list:
    """Worker side: ``(is_grey, jpeg | None | True)`` per item, True meaning "store as served",
    or the InputError of an undecodable one."""
    out = []
    for data, what in items:
        try:
            grey, jpeg = process_thumbnail(data, quality, what)
            out.append((grey, True if jpeg is data else jpeg))
        except InputError as exc:
            out.append(exc)
    return out


class _ImageBatcher:
    """Hand thumbnails to the image worker threads in batches: one hand-off (and GIL round
    trip) per batch instead of per image, which dominated at ~800 small images/s."""

    def __init__(self, pool, workers: int, quality: int, max_batch: int = 32):
        self.pool, self.quality, self.max_batch = pool, quality, max_batch
        self.slots = asyncio.Semaphore(workers)
        self.pending: list[tuple[bytes, str, asyncio.Future]] = []
        self.kick: asyncio.Event | None = None
        self.task: asyncio.Task | None = None

    async def process(self, data: bytes, what: str):
        if self.task is None:
            self.kick = asyncio.Event()
            self.task = asyncio.create_task(self._dispatch())
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((data, what, fut))
        self.kick.set()
        result = await fut
        if isinstance(result, InputError):
            raise result
        grey, jpeg = result
        return grey, (data if jpeg is True else jpeg)

    async def _dispatch(self):
        loop = asyncio.get_running_loop()
        while True:
            await self.kick.wait()
            self.kick.clear()
            while self.pending:
                await self.slots.acquire()
                batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
                loop.create_task(self._run(loop, batch))

    async def _run(self, loop, batch):
        try:
            results = await loop.run_in_executor(self.pool, _process_batch, [(d, w) for d, w, _ in batch], self.quality)
        except BaseException as exc:  # the pool is shutting down, or a bug: fail the waiting images
            results = [exc] * len(batch)
        finally:
            self.slots.release()
        for (_, _, fut), res in zip(batch, results):
            if not fut.done():
                if isinstance(res, BaseException) and not isinstance(res, InputError):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def close(self):
        if self.task is not None:
            self.task.cancel()


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


def crawl(region, out_dir: str | os.PathLike, token: Token, config: CrawlConfig | None = None) -> CrawlResult:
    """Crawl all non-panoramic photos inside ``region`` (shapely lon/lat polygon) into ``out_dir``."""
    if region is None or region.is_empty or region.geom_type not in ("Polygon", "MultiPolygon"):
        raise InputError(f"crawl region must be a non-empty (multi)polygon, got {getattr(region, 'geom_type', region)!r}")
    return asyncio.run(Crawler(region, out_dir, token, config or CrawlConfig()).run())
