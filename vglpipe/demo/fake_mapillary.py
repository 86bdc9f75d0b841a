"""A faithful local fake of the Mapillary Graph API v4, over real HTTP on 127.0.0.1.

It serves a *source* directory (the synthetic street-view world, see :mod:`vglpipe.demo.photos`)
in the real JSON shapes:

* ``GET /images?bbox=minLon,minLat,maxLon,maxLat&fields=…&limit=N`` → ``{"data": [...]}``;
  400 if a bbox side exceeds 0.01°; ``limit`` is capped at 2000 and a box holding more
  images answers a capped (deterministic, spatially unordered) sample — no pagination;
* ``GET /{id}?fields=…`` → the entity (string ``id``, ``captured_at`` epoch ms, GeoJSON
  ``[lon, lat]`` points, ``creator: {id, username}``, ``thumb_*_url``); unknown id → 404
  with a ``GraphMethodException`` (code 100);
* ``GET /thumbs/{id}.jpg?exp=…&sig=…`` → JPEG bytes behind an HMAC-signed URL that expires
  (403 once expired), like the CDN links of the real API; no token needed. With
  ``escaped_signatures`` the signature is base64 served percent-escaped (``%2F``, ``%2B``,
  ``%3D``) and a URL not requested byte-identical to the one served is refused (403), like a
  CDN that checks the exact URL.

API calls need ``Authorization: OAuth <token>`` (or ``access_token=``), else 401
(``OAuthException`` code 190). Per-minute rate limits per endpoint class answer 429 with
``{"error": {"message": "Application request limit reached", "code": 4, "is_transient": true}}``.
Optional added latency and fault injection (429, 500, 503, connection reset, slow answers,
truncated bodies cut at a random point, expired thumbnail URLs) exercise the crawler's retries.
Quirks for the crawler's edge cases: ``max_limit`` below the crawler's ``limit`` (a capped
answer smaller than asked for), ``retry_after_s`` (a ``Retry-After`` header on every 429) with
``throttle_first`` (the first N API requests answer 429), ``broken_thumbs`` (ids whose
thumbnail is cut the same way every time) and ``no_geometry_ids`` (ids found by a search but
answered without a geometry). ``record_arrivals`` keeps each request's arrival time.

The source directory holds ``source.parquet`` (:data:`SOURCE_SCHEMA`; rows may also carry
ground-truth columns, which are never served) and tar shards as in :mod:`vglpipe.store.photos`.

CLI (used by the demo workflow and the benchmark; the URL is written to ``--url-file``)::

    python -m vglpipe.demo.fake_mapillary --source DIR --token-file F --url-file U
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import os
import signal
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from aiohttp import web

from vglpipe.errors import InputError
from vglpipe.store.atomic import atomic_write_text
from vglpipe.store.photos import ShardWriter, shard_path
from vglpipe.store.tables import read_table, write_table

log = logging.getLogger("vglpipe.fake_mapillary")

#: Columns of ``source.parquet``: what the fake serves (``id`` is a string as on the wire, so
#: tests can plant malformed ids). Extra columns (ground truth) are kept but never served.
SOURCE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("lat", pa.float64()),  # geometry (device GNSS)
        ("lon", pa.float64()),
        ("computed_lat", pa.float64()),  # computed_geometry
        ("computed_lon", pa.float64()),
        ("captured_at", pa.int64()),  # epoch ms
        ("camera_type", pa.string()),
        ("is_pano", pa.bool_()),
        ("make", pa.string()),
        ("model", pa.string()),
        ("compass_angle", pa.float64()),
        ("computed_compass_angle", pa.float64()),
        ("sequence", pa.string()),
        ("creator_id", pa.string()),
        ("creator_username", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("shard", pa.int32()),
        ("offset", pa.int64()),
        ("nbytes", pa.int32()),
    ]
)

FAULT_KINDS = ("429", "500", "503", "reset", "slow", "truncated", "expired")


def write_source(out_dir: str | os.PathLike, rows: Sequence[dict], jpegs: Sequence[bytes],
                 extra: dict[str, Sequence] | None = None, metadata: dict | None = None) -> None:
    """Write a fake-API source: ``rows[i]`` (SOURCE_SCHEMA keys but shard/offset/nbytes) shows ``jpegs[i]``.

    Identical JPEG objects are stored once. ``extra`` adds columns (e.g. ground truth).
    """
    out = Path(out_dir)
    writer = ShardWriter(out, 1 << 30)
    writer.resume(0, 0)
    seen: dict[int, tuple[int, int, int]] = {}
    cols: dict[str, list] = {f.name: [] for f in SOURCE_SCHEMA}
    for k, (row, data) in enumerate(zip(rows, jpegs, strict=True)):
        loc = seen.get(id(data))
        if loc is None:
            loc = writer.append(k + 1, data)  # member names are a running number, not the (untrusted) id
            seen[id(data)] = loc
        row = dict(row, shard=loc[0], offset=loc[1], nbytes=loc[2])
        for f in SOURCE_SCHEMA:
            cols[f.name].append(row.get(f.name))
    writer.close(finalize=True)
    table = pa.Table.from_pydict(cols, schema=SOURCE_SCHEMA)
    for name, values in (extra or {}).items():
        table = table.append_column(name, pa.array(values))
    write_table(table, out / "source.parquet", metadata=metadata or {})


@dataclass
class Faults:
    """Fault injection: each request fails with probability ``rate``, kind drawn from ``kinds``."""

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    slow_s: float = 3.0
    seed: int = 0

    def __post_init__(self):
        bad = [k for k in self.kinds if k not in FAULT_KINDS]
        if bad:
            raise InputError(f"unknown fault kind(s) {bad}; known: {', '.join(FAULT_KINDS)}")


class _Bucket:
    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.cap = max(1.0, self.rate)  # one second of burst
        self.tokens = self.cap
        self.t = time.monotonic()

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.cap, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def _err(status: int, message: str, type_: str, code: int, headers: dict | None = None, **extra) -> web.Response:
    body = {"error": {"message": message, "type": type_, "code": code, **extra, "fbtrace_id": "AfakeTrace"}}
    return web.json_response(body, status=status, headers=headers)


class FakeMapillary:
    """The fake API over a table of records; run with :meth:`start` (thread) or :func:`main` (process)."""

    def __init__(
        self,
        table: pa.Table,
        read_image: Callable[[int], bytes],
        token: str,
        *,
        search_per_minute: float = 10_000,
        entity_per_minute: float = 60_000,
        max_bbox_deg: float = 0.01,
        max_limit: int = 2000,
        latency_s: float = 0.0,
        faults: Faults | None = None,
        thumb_ttl_s: float = 600.0,
        escaped_signatures: bool = False,
        retry_after_s: float | None = None,
        throttle_first: int = 0,
        broken_thumbs: Collection[str] = (),
        no_geometry_ids: Collection[str] = (),
        record_arrivals: bool = False,
    ):
        self.token = token
        self.max_bbox_deg = max_bbox_deg
        self.max_limit = max_limit
        self.latency_s = latency_s
        self.faults = faults or Faults()
        self.thumb_ttl_s = thumb_ttl_s
        self.escaped_signatures = escaped_signatures
        self.retry_after_s = retry_after_s
        self.throttle_left = throttle_first
        self.no_geometry = frozenset(no_geometry_ids)
        self.arrivals: list[tuple[str, float]] | None = [] if record_arrivals else None
        self.read_image = read_image
        self.rng = np.random.default_rng(self.faults.seed)
        self.buckets = {"search": _Bucket(search_per_minute), "entity": _Bucket(entity_per_minute)}
        self.stats: Counter = Counter()
        self._secret = os.urandom(16)
        d = table.to_pydict()
        self.ids: list[str] = d["id"]
        self.cols = d
        self.by_id = {i: k for k, i in enumerate(self.ids)}
        self.broken = frozenset(self.by_id[i] for i in broken_thumbs)
        lat = np.array([c if c is not None else g for c, g in zip(d["computed_lat"], d["lat"])], float)
        lon = np.array([c if c is not None else g for c, g in zip(d["computed_lon"], d["lon"])], float)
        order = np.argsort(lon, kind="stable")
        self._lon_sorted, self._order, self._lat = lon[order], order, lat
        # capped samples are drawn in a fixed pseudo-random order, not spatially
        self._rank = np.array([int(hashlib.md5(str(i).encode()).hexdigest()[:12], 16) for i in self.ids])
        self.url: str | None = None

    # ---- record shaping

    def entity(self, k: int, fields: set[str], origin: str) -> dict:
        c = self.cols
        out: dict = {"id": c["id"][k]}

        def point(lat, lon):
            return None if lat is None or lon is None else {"type": "Point", "coordinates": [lon, lat]}

        hide = c["id"][k] in self.no_geometry  # found by a search, answered without a position
        values = {
            "geometry": lambda: None if hide else point(c["lat"][k], c["lon"][k]),
            "computed_geometry": lambda: None if hide else point(c["computed_lat"][k], c["computed_lon"][k]),
            "captured_at": lambda: c["captured_at"][k],
            "camera_type": lambda: c["camera_type"][k],
            "is_pano": lambda: bool(c["is_pano"][k]),
            "make": lambda: c["make"][k],
            "model": lambda: c["model"][k],
            "compass_angle": lambda: c["compass_angle"][k],
            "computed_compass_angle": lambda: c["computed_compass_angle"][k],
            "sequence": lambda: c["sequence"][k],
            "creator": lambda: {"id": c["creator_id"][k], "username": c["creator_username"][k]},
            "width": lambda: c["width"][k],
            "height": lambda: c["height"][k],
        }
        for f in fields:
            if f in values:
                v = values[f]()
                if v is not None:
                    out[f] = v
            elif f.startswith("thumb_") and f.endswith("_url"):
                out[f] = self.thumb_url(origin, k)
        return out

    def thumb_url(self, origin: str, k: int) -> str:
        return f"{origin}{self._thumb_target(k, int(time.time() + self.thumb_ttl_s))}"

    def _thumb_target(self, k: int, exp: int) -> str:
        """Path and query of a signed thumbnail URL, exactly as served."""
        return f"/thumbs/{k}.jpg?exp={exp}&sig={urllib.parse.quote(self._sign(k, exp), safe='')}"

    def _sign(self, k: int, exp: int) -> str:
        digest = hmac.new(self._secret, f"{k}:{exp}".encode(), "sha256").digest()
        if self.escaped_signatures:  # base64: holds '/', '+' and '=' (served as %2F, %2B, %3D)
            return base64.b64encode(digest[:16]).decode()
        return digest.hex()[:32]

    # ---- request plumbing

    def _authorized(self, request: web.Request) -> bool:
        want = f"OAuth {self.token}"
        got = request.headers.get("Authorization", "")
        return hmac.compare_digest(got.encode(), want.encode()) or hmac.compare_digest(
            request.query.get("access_token", "").encode(), self.token.encode())

    async def _prelude(self, request: web.Request, kind: str) -> web.StreamResponse | str | None:
        """Latency, faults, auth, rate limit. Returns a response to send, a fault to apply, or None."""
        self.stats[f"{kind}_requests"] += 1
        if self.arrivals is not None:
            self.arrivals.append((kind, time.monotonic()))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if kind != "thumb" and self.throttle_left > 0:
            self.throttle_left -= 1
            self.stats["throttled"] += 1
            return self._too_many()
        fault = None
        if self.faults.rate and self.rng.random() < self.faults.rate:
            kinds = [k for k in self.faults.kinds if k != "expired" or kind == "thumb"]
            if kinds:
                fault = kinds[int(self.rng.integers(len(kinds)))]
                self.stats[f"fault_{fault}"] += 1
        if fault == "reset":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing more to send on an aborted connection
        if fault == "slow":
            await asyncio.sleep(self.faults.slow_s)
        if fault in ("429", "500", "503"):
            if fault == "429":
                return self._too_many(error_subcode=2207051)
            return _err(int(fault), "An unexpected error has occurred. Please retry your request later.",
                        "OAuthException", 2, is_transient=True)
        if kind != "thumb":
            if not self._authorized(request):
                self.stats["unauthorized"] += 1
                return _err(401, "Invalid OAuth access token - Cannot parse access token", "OAuthException", 190)
            if not self.buckets[kind].take():
                self.stats[f"{kind}_rate_limited"] += 1
                return self._too_many()
        return fault

    def _too_many(self, **extra) -> web.Response:
        headers = {"Retry-After": f"{self.retry_after_s:g}"} if self.retry_after_s is not None else None
        return _err(429, "Application request limit reached", "OAuthException", 4, headers, is_transient=True, **extra)

    def _cut(self, data: bytes) -> bytes:
        """``data`` cut at a random point, as a dropped transfer leaves it."""
        return data[: int(self.rng.integers(1, len(data)))] if len(data) > 1 else data[:1]

    def _truncated(self, resp: web.Response) -> web.Response:
        return web.Response(body=self._cut(resp.body or b""), status=resp.status, content_type=resp.content_type)

    def _fields(self, request: web.Request) -> set[str]:
        return {f.strip() for f in request.query.get("fields", "id").split(",") if f.strip()}

    async def search(self, request: web.Request) -> web.StreamResponse:
        pre = await self._prelude(request, "search")
        if isinstance(pre, web.StreamResponse):
            return pre
        try:
            b = [float(v) for v in request.query["bbox"].split(",")]
            if len(b) != 4 or not all(math.isfinite(v) for v in b) or b[0] >= b[2] or b[1] >= b[3]:
                raise ValueError
        except (KeyError, ValueError):
            return _err(400, f"Invalid bbox {request.query.get('bbox', '')[:80]!r}", "MLYApiException", 100)
        if b[2] - b[0] > self.max_bbox_deg + 1e-9 or b[3] - b[1] > self.max_bbox_deg + 1e-9:
            return _err(400, f"bbox must not be larger than {self.max_bbox_deg} degrees per side",
                        "MLYApiException", 100)
        try:
            limit = min(int(request.query.get("limit", self.max_limit)), self.max_limit)
        except ValueError:
            return _err(400, "Invalid limit", "MLYApiException", 100)
        lo = np.searchsorted(self._lon_sorted, b[0], side="left")
        hi = np.searchsorted(self._lon_sorted, b[2], side="right")
        cand = self._order[lo:hi]
        lat = self._lat[cand]
        hits = cand[(lat >= b[1]) & (lat <= b[3])]
        if len(hits) > limit:
            hits = hits[np.argsort(self._rank[hits], kind="stable")[:limit]]
        fields = self._fields(request)
        origin = str(request.url.origin())
        resp = web.json_response({"data": [self.entity(int(k), fields, origin) for k in hits]})
        return self._truncated(resp) if pre == "truncated" else resp

    async def image(self, request: web.Request) -> web.StreamResponse:
        pre = await self._prelude(request, "entity")
        if isinstance(pre, web.StreamResponse):
            return pre
        key = request.match_info["id"]
        k = self.by_id.get(key)
        if k is None:
            return _err(404, f"Unsupported get request. Object with ID '{key[:40]}' does not exist, cannot be "
                        "loaded due to missing permissions, or does not support this operation",
                        "GraphMethodException", 100)
        resp = web.json_response(self.entity(k, self._fields(request), str(request.url.origin())))
        return self._truncated(resp) if pre == "truncated" else resp

    async def thumb(self, request: web.Request) -> web.StreamResponse:
        pre = await self._prelude(request, "thumb")
        if isinstance(pre, web.StreamResponse):
            return pre
        try:
            k = int(request.match_info["k"])
            exp = int(request.query["exp"])
            sig = request.query["sig"]
        except (KeyError, ValueError):
            return web.Response(status=400, text="Bad URL")
        if not (0 <= k < len(self.ids)) or not hmac.compare_digest(sig, self._sign(k, exp)):
            return web.Response(status=403, text="URL signature mismatch")
        if self.escaped_signatures and request.raw_path != self._thumb_target(k, exp):
            self.stats["thumb_url_altered"] += 1
            return web.Response(status=403, text="URL signature mismatch (URL altered)")
        if time.time() > exp or pre == "expired":
            self.stats["thumb_expired"] += 1
            return web.Response(status=403, text="URL signature expired")
        data = self.read_image(k)
        if k in self.broken:  # permanently damaged: cut the same way every time
            self.stats["thumb_broken"] += 1
            data = data[: len(data) // 2]
        elif pre == "truncated":
            data = self._cut(data)
        return web.Response(body=data, content_type="image/jpeg")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/images", self.search)
        app.router.add_get(r"/thumbs/{k:\d+}.jpg", self.thumb)
        app.router.add_get("/{id}", self.image)
        return app

    # ---- running

    async def astart(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=1024)
        await site.start()
        real_port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{real_port}"
        return self.url

    async def astop(self) -> None:
        await self._runner.cleanup()

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve from a background thread; returns the base URL."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-mapillary", daemon=True)
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.astart(host, port), self._loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.astop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def make_random_source(
    out_dir: str | os.PathLike,
    bounds: tuple[float, float, float, float],
    n: int,
    *,
    seed: int = 0,
    n_distinct_images: int | None = None,
    pano_fraction: float = 0.05,
    grey_fraction: float = 0.05,
    hostile: bool = True,
    noise: int = 12,
    sizes: Sequence[tuple[int, int]] = ((320, 240), (400, 225), (240, 320), (360, 360), (800, 600)),
) -> pa.Table:
    """A source of ``n`` random images in ``bounds`` (lon/lat) for tests and benchmarks.

    Images are small random JPEGs (``n_distinct_images`` distinct ones, reused cyclically;
    default: one per record) in varied sizes; a fraction are panoramas or greyscale; with
    ``hostile``, one creator is called ``<script>alert("x")</script>`` and one record has the
    id ``../../x``. Returns the written table.
    """
    import cv2

    rng = np.random.default_rng(seed)
    minx, miny, maxx, maxy = bounds
    m = n if n_distinct_images is None else max(1, min(n, n_distinct_images))
    jpegs, grey_img = [], []
    for k in range(m):
        w, h = sizes[k % len(sizes)]
        base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
        if noise:
            img = np.clip(img.astype(np.int16) + rng.integers(-noise, noise + 1, img.shape), 0, 255).astype(np.uint8)
        grey = rng.random() < grey_fraction
        if grey:
            img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        jpegs.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
        grey_img.append(grey)
    ids = np.unique(rng.integers(10**9, 10**12, size=n + n // 10 + 10))[:n]
    rng.shuffle(ids)
    lon = rng.uniform(minx, maxx, n)
    lat = rng.uniform(miny, maxy, n)
    names = ["alice", "bob", "carol_b", "d.e", "\u00e9mile", '<script>alert("x")</script>' if hostile else "eve"]
    cams = ["perspective"] * 6 + ["fisheye", "brown", "radial", "simple_radial", "fisheye_opencv"]
    rows = []
    for k in range(n):
        pano = rng.random() < pano_fraction
        w, h = sizes[(k % m) % len(sizes)]
        rows.append({
            "id": str(int(ids[k])),
            "lat": float(lat[k]), "lon": float(lon[k]),
            "computed_lat": float(lat[k] + rng.normal(0, 5e-6)), "computed_lon": float(lon[k] + rng.normal(0, 5e-6)),
            "captured_at": int(rng.integers(1420070400000, 1735689600000)),
            "camera_type": ("spherical" if rng.random() < 0.5 else "equirectangular") if pano
            else cams[int(rng.integers(len(cams)))],
            "is_pano": bool(pano),
            "make": "FakeCam", "model": f"M{k % 7}",
            "compass_angle": float(rng.uniform(0, 360)), "computed_compass_angle": float(rng.uniform(0, 360)),
            "sequence": f"seq{k // 20:06d}",
            "creator_id": str(100 + k % len(names)), "creator_username": names[k % len(names)],
            "width": w, "height": h,
        })
    if hostile and n > 2:
        rows[1]["id"] = "../../x"
    truth = {"grey": [grey_img[k % m] for k in range(n)]}
    write_source(out_dir, rows, [jpegs[k % m] for k in range(n)], extra=truth)
    return read_table(Path(out_dir) / "source.parquet")


def load_source(source_dir: str | os.PathLike, token: str, **kwargs) -> FakeMapillary:
    """A :class:`FakeMapillary` serving ``source_dir`` (``source.parquet`` + shards)."""
    src = Path(source_dir)
    table = read_table(src / "source.parquet")
    missing = [n for n in SOURCE_SCHEMA.names if n not in table.schema.names]
    if missing:
        raise InputError(f"{src / 'source.parquet'}: missing column(s) {', '.join(missing)}")
    shard = table.column("shard").to_numpy()
    offset = table.column("offset").to_numpy()
    nbytes = table.column("nbytes").to_numpy()
    fds: dict[int, int] = {}

    def read_image(k: int) -> bytes:
        s = int(shard[k])
        if s not in fds:
            fds[s] = os.open(shard_path(src, s), os.O_RDONLY)
        return os.pread(fds[s], int(nbytes[k]), int(offset[k]))

    return FakeMapillary(table, read_image, token, **kwargs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vglpipe.demo.fake_mapillary", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="source directory (source.parquet + shards)")
    p.add_argument("--token-file", required=True, help="file holding the token the fake accepts")
    p.add_argument("--url-file", required=True, help="the base URL is written here once serving")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency-ms", type=float, default=0.0)
    p.add_argument("--search-per-minute", type=float, default=10_000)
    p.add_argument("--entity-per-minute", type=float, default=60_000)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--fault-kinds", default=",".join(FAULT_KINDS))
    p.add_argument("--slow-s", type=float, default=3.0)
    p.add_argument("--thumb-ttl-s", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stats-file", help="write request/fault counters here (JSON) on exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = Path(args.token_file).read_text().strip()
    fake = load_source(
        args.source, token, latency_s=args.latency_ms / 1000, search_per_minute=args.search_per_minute,
        entity_per_minute=args.entity_per_minute, thumb_ttl_s=args.thumb_ttl_s,
        faults=Faults(args.fault_rate, tuple(k for k in args.fault_kinds.split(",") if k), args.slow_s, args.seed),
    )

    async def serve():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        url = await fake.astart(args.host, args.port)
        atomic_write_text(args.url_file, url + "\n")
        await stop.wait()
        await fake.astop()

    asyncio.run(serve())
    if args.stats_file:
        atomic_write_text(args.stats_file, json.dumps(dict(fake.stats), sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
