"""Orthophoto clients for the protocols state providers use; one client per protocol.

* ``wms``  — OGC WMS 1.3.0 GetMap (e.g. NRW ``nw_dop_rgb`` in EPSG:25832): the area is cut
  into chips of ``chip_px`` × ``chip_px`` at ``m_per_px`` on a grid aligned to the request
  CRS; each chip is one GetMap request (``BBOX`` in the CRS's axis order: easting,
  northing for projected CRSs, lat,lon for EPSG:4326 as 1.3.0 requires).
* ``xyz``  — XYZ / WMTS-style tile caches (e.g. MassGIS orthos2021 ArcGIS cache
  ``.../tile/{z}/{y}/{x}``): Web Mercator tiles of ``tile_px`` at zoom ``zoom``.
* ``bulk`` — bulk tile archives described by a tile index (e.g. MassGIS 2021: 1500 m
  JPEG 2000 tiles in UTM 18N/19N with an index listing TILENAME and URL). The index is
  either a GeoJSON FeatureCollection (lon/lat footprints) or a zipped ESRI shapefile in any
  CRS (as MassGIS ships it; read with pyogrio and reprojected to lon/lat), with the
  attributes ``TILENAME`` and ``URL``.

The state/provider is described in config (:class:`vglpipe.settings.SourceSettings`), not in code.

Every download is resumable — a finished tile (file present) is never fetched again;
stale temporaries of a killed run are removed — retried with exponential backoff and
jitter on 429 (honouring ``Retry-After``), 5xx, connection errors, timeouts, truncated
or undecodable bodies (tenacity), validated (decodes, expected size, not blank) and
written atomically. WMS/XYZ images are stored as georeferenced GeoTIFF chips (alpha ->
mask), bulk files byte for byte. Blank images (fully transparent or one uniform colour)
and tiles the server does not have (404) are recorded with a marker file and reported
in ``manifest.json``, never used as imagery.

Bulk files are streamed to a temporary name and validated there before the rename that
finishes them (:func:`raster_problem`: opens with a size and a CRS, every block of every
band, mask and internal overview decodes, and the raster covers at least half of the
footprint the tile index declares for it); an invalid file is retried like a bad
response. A valid file gets a stamp (``.NAME.valid``: its size and mtime); on a rerun a
finished bulk file without a matching stamp (e.g. from an older version, or changed on
disk) is validated again and, if invalid, deleted and fetched again (``invalid`` in the
report).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import mercantile
import numpy as np
import pyproj
import rasterio
import shapely
from rasterio.windows import Window
from shapely.geometry import shape
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt
from tqdm import tqdm

from vglpipe.errors import AuthError, SourceError
from vglpipe.settings import SourceSettings
from vglpipe.store.atomic import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

WEB_MERCATOR = "EPSG:3857"
BLANK_SUFFIX = ".blank"
MISSING_SUFFIX = ".missing"
VALID_SUFFIX = ".valid"  # hidden stamp of a validated bulk file: .NAME.valid


@dataclass
class Job:
    name: str  # output file name
    url: str
    kind: str  # "image" (decode -> GeoTIFF chip) or "file" (bulk, stored as is)
    crs: str = ""
    bounds: tuple[float, float, float, float] = (0, 0, 0, 0)  # in crs
    size: tuple[int, int] = (0, 0)  # (width, height) expected
    footprint: Any = None  # bulk: the lon/lat footprint the tile index declares


@dataclass
class DownloadReport:
    planned: int = 0
    fetched: int = 0
    skipped_existing: int = 0
    requests: int = 0
    retries: int = 0
    retry_reasons: dict[str, int] = field(default_factory=dict)
    blank: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)  # finished files found invalid on a rerun, fetched again
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class _Retryable(Exception):
    def __init__(self, msg: str, retry_after: float | None = None, reason: str = "retryable"):
        super().__init__(msg)
        self.retry_after = retry_after
        self.reason = reason


class _NotFound(Exception):
    pass


# ----------------------------------------------------------------------------- planning


def _reproject(transformer: pyproj.Transformer, geom):
    """``geom`` with every coordinate passed through ``transformer`` (always_xy order)."""
    return shapely.transform(geom, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))


def area_polygon(boundary_lonlat, margin_m: float):
    """The region boundary (lon/lat) grown by ``margin_m`` metres (its convex hull, then buffered)."""
    c = boundary_lonlat.centroid
    aeqd = pyproj.Transformer.from_crs(
        "EPSG:4326", f"+proj=aeqd +lat_0={c.y} +lon_0={c.x} +ellps=WGS84 +units=m", always_xy=True
    )
    local = _reproject(aeqd, boundary_lonlat.convex_hull).buffer(margin_m, join_style="mitre")
    back = pyproj.Transformer.from_crs(aeqd.target_crs, "EPSG:4326", always_xy=True)
    return _reproject(back, local.segmentize(20.0))


def _to_crs(geom_lonlat, crs: str):
    tr = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return _reproject(tr, geom_lonlat.segmentize(0.001))


def plan_wms(cfg: SourceSettings, area_lonlat) -> list[Job]:
    area = _to_crs(area_lonlat, cfg.crs)
    span = cfg.chip_px * cfg.m_per_px
    minx, miny, maxx, maxy = area.bounds
    crs = pyproj.CRS(cfg.crs)
    latlon_order = crs.is_geographic  # WMS 1.3.0: EPSG:4326 BBOX is lat,lon
    jobs = []
    for col in range(math.floor(minx / span), math.ceil(maxx / span)):
        for row in range(math.floor(miny / span), math.ceil(maxy / span)):
            b = (col * span, row * span, (col + 1) * span, (row + 1) * span)
            if not area.intersects(shapely.box(*b)):
                continue
            bbox = (b[1], b[0], b[3], b[2]) if latlon_order else b
            params = {
                "SERVICE": "WMS", "VERSION": "1.3.0", "REQUEST": "GetMap", "LAYERS": cfg.layer, "STYLES": "",
                "CRS": cfg.crs, "BBOX": ",".join(_fmt(v) for v in bbox), "WIDTH": str(cfg.chip_px),
                "HEIGHT": str(cfg.chip_px), "FORMAT": cfg.format,
                "TRANSPARENT": "TRUE" if cfg.format == "image/png" else "FALSE",
            }
            url = cfg.url + ("&" if "?" in cfg.url else "?") + "&".join(f"{k}={v}" for k, v in params.items())
            jobs.append(Job(f"wms_{col}_{row}.tif", url, "image", cfg.crs, b, (cfg.chip_px, cfg.chip_px)))
    return jobs


def _fmt(v: float) -> str:
    return f"{v:.6f}".rstrip("0").rstrip(".")


def plan_xyz(cfg: SourceSettings, area_lonlat) -> list[Job]:
    w, s, e, n = area_lonlat.bounds
    jobs = []
    for t in mercantile.tiles(w, s, e, n, cfg.zoom):
        tb = mercantile.bounds(t)
        if not area_lonlat.intersects(shapely.box(tb.west, tb.south, tb.east, tb.north)):
            continue
        xb = mercantile.xy_bounds(t)
        url = cfg.url.format(z=t.z, x=t.x, y=t.y)
        jobs.append(Job(f"xyz_{t.z}_{t.x}_{t.y}.tif", url, "image", WEB_MERCATOR,
                        (xb.left, xb.bottom, xb.right, xb.top), (cfg.tile_px, cfg.tile_px)))
    return jobs


def plan_bulk(index_geojson: dict, area_lonlat, where: str) -> list[Job]:
    feats = index_geojson.get("features") if isinstance(index_geojson, dict) else None
    if not isinstance(feats, list):
        raise SourceError(f"{where}: tile index is not a GeoJSON FeatureCollection")
    jobs = []
    for k, f in enumerate(feats):
        props = f.get("properties") or {}
        name, url = props.get("TILENAME"), props.get("URL")
        if not name or not url:
            raise SourceError(f"{where}: feature {k} lacks TILENAME/URL")
        if not str(name).replace("_", "").replace("-", "").isalnum():
            raise SourceError(f"{where}: unsafe TILENAME {name!r}")
        try:
            geom = shape(f["geometry"])
        except Exception as exc:  # noqa: BLE001 - any malformed geometry
            raise SourceError(f"{where}: feature {name}: bad geometry: {exc}") from exc
        if not geom.intersects(area_lonlat):
            continue
        ext = os.path.splitext(url.split("?")[0])[1].lower() or ".bin"
        jobs.append(Job(f"bulk_{name}{ext}", url, "file", footprint=geom))
    return jobs


# ----------------------------------------------------------------------------- download


def _clean_stale(out_dir: Path) -> int:
    n = 0
    for p in out_dir.glob(".*.tmp-*"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def _done(out_dir: Path, job: Job) -> bool:
    return any((out_dir / (job.name + suf)).exists() for suf in ("", BLANK_SUFFIX, MISSING_SUFFIX))


def _stamp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{VALID_SUFFIX}")


def _file_state(target: Path) -> dict:
    st = target.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _stamp_valid(target: Path) -> None:
    """Record that ``target``, as it is now, passed validation."""
    atomic_write_text(_stamp_path(target), json.dumps(_file_state(target)))


def _stamp_matches(target: Path) -> bool:
    try:
        return json.loads(_stamp_path(target).read_text()) == _file_state(target)
    except (OSError, ValueError):
        return False


async def _recheck_finished(out_dir: Path, jobs: list[Job], concurrency: int) -> list[str]:
    """Validate finished bulk files without a matching stamp; delete the invalid ones (so they
    are fetched again) and return their names."""
    sem = asyncio.Semaphore(concurrency)

    async def check(job: Job) -> str | None:
        target = out_dir / job.name
        if not target.exists() or _stamp_matches(target):
            return None
        async with sem:
            why = await asyncio.to_thread(raster_problem, target, job.footprint)
        if not why:
            _stamp_valid(target)
            return None
        log.warning("%s: %s; fetching it again", target, why)
        target.unlink()
        _stamp_path(target).unlink(missing_ok=True)
        return job.name

    names = await asyncio.gather(*(check(j) for j in jobs if j.kind == "file"))
    return sorted(n for n in names if n)


def download(cfg: SourceSettings, area_lonlat, out_dir, progress: bool = True) -> DownloadReport:
    """Fetch everything ``cfg`` provides over ``area_lonlat`` into ``out_dir`` (resumable)."""
    return asyncio.run(_download(cfg, area_lonlat, Path(out_dir), progress))


async def _download(cfg: SourceSettings, area_lonlat, out_dir: Path, progress: bool) -> DownloadReport:
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = _clean_stale(out_dir)
    if stale:
        log.info("%s: removed %d stale temporary file(s) of an interrupted run", out_dir, stale)
    rep = DownloadReport()
    t0 = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
    conn = aiohttp.TCPConnector(limit=cfg.concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=conn, headers={"User-Agent": "vglpipe/0.1"}) as session:
        if cfg.protocol == "wms":
            jobs = plan_wms(cfg, area_lonlat)
        elif cfg.protocol == "xyz":
            jobs = plan_xyz(cfg, area_lonlat)
        else:
            # the (small) tile index is fetched on every run: tiles already on disk are not
            # fetched again, but their URLs may have moved
            index_path = out_dir / "tile_index.geojson"
            body = await _fetch(session, cfg, cfg.url, rep, validate=_validate_index)
            index = read_tile_index(body, cfg.url)
            atomic_write_text(index_path, json.dumps(index))
            jobs = plan_bulk(index, area_lonlat, cfg.url)
        rep.planned = len(jobs)
        rep.invalid = await _recheck_finished(out_dir, jobs, cfg.concurrency)
        todo = [j for j in jobs if not _done(out_dir, j)]
        rep.skipped_existing = len(jobs) - len(todo)
        bar = tqdm(total=len(jobs), initial=rep.skipped_existing, desc=f"{cfg.protocol} tiles", unit="tile",
                   disable=not progress)
        sem = asyncio.Semaphore(cfg.concurrency)

        async def one(job: Job):
            async with sem:
                try:
                    await _fetch_job(session, cfg, job, out_dir, rep)
                except (AuthError,):
                    raise
                except SourceError as exc:
                    rep.failed.append(f"{job.url}: {exc}")
                    log.error("giving up on %s: %s", job.url, exc)
                finally:
                    bar.update(1)

        try:
            await asyncio.gather(*(one(j) for j in todo))
        finally:
            bar.close()
    rep.seconds = time.perf_counter() - t0
    manifest = {"source": dataclasses.asdict(cfg), "report": rep.as_dict(),
                "files": sorted(j.name for j in jobs if (out_dir / j.name).exists())}
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
    if rep.blank:
        log.warning("%d blank image(s) reported, not used: %s", len(rep.blank), ", ".join(rep.blank[:5]))
    if rep.missing:
        log.warning("%d tile(s) not available on the server (404): %s", len(rep.missing), ", ".join(rep.missing[:5]))
    if rep.failed:
        raise SourceError(f"{len(rep.failed)} of {len(jobs)} download(s) failed for good, e.g. {rep.failed[0]}")
    return rep


async def _fetch_job(session, cfg: SourceSettings, job: Job, out_dir: Path, rep: DownloadReport):
    target = out_dir / job.name
    if job.kind == "file":
        try:
            await _fetch_to_file(session, cfg, job.url, rep, target, _file_validator(job))
        except _NotFound:
            rep.missing.append(job.name)
            atomic_write_text(out_dir / (job.name + MISSING_SUFFIX), job.url + "\n")
            return
        _stamp_valid(target)
        rep.fetched += 1
        return

    decoded: dict[str, Any] = {}

    def validate(body: bytes, ctype: str):
        decoded["img"] = _decode_image(body, ctype, job)

    try:
        await _fetch(session, cfg, job.url, rep, validate=validate)
    except _NotFound:
        rep.missing.append(job.name)
        atomic_write_text(out_dir / (job.name + MISSING_SUFFIX), job.url + "\n")
        return
    rgb, alpha = decoded["img"]
    why = _blank_reason(rgb, alpha)
    if why:
        rep.blank.append(job.name)
        atomic_write_text(out_dir / (job.name + BLANK_SUFFIX), f"{job.url}\n{why}\n")
        return
    _write_chip(target, rgb, alpha, job, cfg.acquired)
    rep.fetched += 1


def _decode_image(body: bytes, ctype: str, job: Job):
    if "xml" in ctype or body[:5] in (b"<?xml", b"<Serv"):
        # WMS reports errors as a ServiceExceptionReport with HTTP 200
        text = body[:500].decode("utf-8", "replace")
        raise SourceError(f"{job.url}: server returned an exception report instead of an image: {text}")
    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise _Retryable(f"{job.url}: response does not decode as an image ({len(body)} bytes, {ctype})",
                         reason="undecodable")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.dtype != np.uint8:
        raise SourceError(f"{job.url}: expected an 8-bit image, got {img.dtype}")
    h, w = img.shape[:2]
    if (w, h) != tuple(job.size):
        raise SourceError(f"{job.url}: image is {w}x{h}, expected {job.size[0]}x{job.size[1]}")
    alpha = img[..., 3] if img.shape[2] == 4 else None
    rgb = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2RGB)
    return rgb, alpha


def _blank_reason(rgb: np.ndarray, alpha: np.ndarray | None) -> str:
    if alpha is not None and not alpha.any():
        return "fully transparent"
    px = rgb.reshape(-1, 3) if alpha is None else rgb[alpha > 0]
    if px.size and int(px.max()) - int(px.min()) <= 2:
        return f"uniform colour {tuple(int(v) for v in px[0])}"
    return ""


def _write_chip(target: Path, rgb, alpha, job: Job, acquired: str):
    w, h = job.size
    b = job.bounds
    tf = rasterio.Affine((b[2] - b[0]) / w, 0, b[0], 0, -(b[3] - b[1]) / h, b[3])
    with atomic_path(target) as tmp:
        with rasterio.open(tmp, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs=job.crs,
                           transform=tf, tiled=True, blockxsize=256, blockysize=256, compress="DEFLATE",
                           photometric="RGB") as dst:
            dst.write(np.moveaxis(rgb, -1, 0))
            if alpha is not None and not alpha.all():
                dst.write_mask(np.where(alpha > 0, 255, 0).astype(np.uint8))
            if acquired:
                dst.update_tags(ACQUISITION_DATE=acquired)


ZIP_MAGIC = b"PK\x03\x04"


def read_tile_index(body: bytes, where: str) -> dict:
    """A bulk tile index as a lon/lat GeoJSON FeatureCollection.

    ``body`` is GeoJSON, or a zipped ESRI shapefile (any CRS, attributes TILENAME and URL).
    """
    if not body.startswith(ZIP_MAGIC):
        try:
            return json.loads(body)
        except ValueError as exc:
            raise SourceError(f"{where}: tile index is neither GeoJSON nor a zipped shapefile: {exc}") from exc
    import io

    import pyogrio.raw

    try:
        meta, _, wkb, fields = pyogrio.raw.read(io.BytesIO(body))
    except Exception as exc:  # noqa: BLE001 - any OGR failure means an unusable index
        raise SourceError(f"{where}: zipped tile index does not open as a shapefile: {exc}") from exc
    if not meta.get("crs"):
        raise SourceError(f"{where}: shapefile tile index has no CRS (.prj missing)")
    geoms = shapely.from_wkb(wkb)
    to_lonlat = pyproj.Transformer.from_crs(meta["crs"], "EPSG:4326", always_xy=True)
    geoms = _reproject(to_lonlat, geoms)
    columns = dict(zip(meta["fields"], fields))
    features = [
        {"type": "Feature", "geometry": shapely.geometry.mapping(g),
         "properties": {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in columns.items()}}
        for i, g in enumerate(geoms)
    ]
    return {"type": "FeatureCollection", "features": features}


def _validate_index(body: bytes, ctype: str):
    try:
        read_tile_index(body, "tile index")
    except SourceError as exc:
        raise _Retryable(str(exc), reason="undecodable") from exc


#: Pixels decoded per read while validating a raster (bounded memory for large bulk tiles).
_VALIDATE_READ_PX = 1 << 24
#: A bulk file must cover at least this fraction of the footprint its tile index declares.
MIN_FOOTPRINT_COVER = 0.5


def raster_problem(path, footprint=None) -> str:
    """Why the raster file ``path`` is unusable, or "" if it is fine.

    It must open with a size and a CRS, every block of every band and of the mask decode at
    full resolution and in every internal (GeoTIFF) overview, and, given ``footprint`` (the
    lon/lat geometry a tile index declares), cover at least half of that footprint.
    """
    try:
        with rasterio.open(path) as src:
            if src.width < 1 or src.height < 1 or src.crs is None:
                return f"no size or no CRS ({src.width}x{src.height}, {src.crs})"
            _decode_all(src)
            levels = len(src.overviews(1)) if src.driver == "GTiff" else 0
            covered = _footprint_cover(src, footprint)
        for level in range(levels):
            with rasterio.open(path, overview_level=level) as ovr:
                _decode_all(ovr)
    except rasterio.errors.RasterioError as exc:
        return f"does not decode: {_gdal_reason(exc)}"
    if covered < MIN_FOOTPRINT_COVER:
        return f"covers {covered:.0%} of the footprint its tile index declares (wrong or misplaced file)"
    return ""


def _gdal_reason(exc: Exception) -> str:
    """rasterio's message plus GDAL's own (rasterio chains it as the cause)."""
    cause = exc.__cause__
    return f"{exc} ({cause})" if cause is not None and str(cause) not in str(exc) else str(exc)


def _decode_all(src) -> None:
    """Read every pixel and mask value of ``src`` in strips of whole blocks (raises on a bad block)."""
    block_h = src.block_shapes[0][0]
    rows = max(block_h, _VALIDATE_READ_PX // max(src.width * src.count, 1) // block_h * block_h)
    for r0 in range(0, src.height, rows):
        win = Window(0, r0, src.width, min(rows, src.height - r0))
        src.read(window=win)
        src.dataset_mask(window=win)


def _footprint_cover(src, footprint) -> float:
    """Fraction of ``footprint`` (lon/lat) that the raster's extent covers (1.0 without one)."""
    if footprint is None or footprint.is_empty or footprint.area <= 0:
        return 1.0
    to_lonlat = pyproj.Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True)
    b = src.bounds
    extent = _reproject(to_lonlat, shapely.box(*b).segmentize(max(b.right - b.left, b.top - b.bottom) / 16))
    return float(footprint.intersection(extent).area / footprint.area)


def _file_validator(job: Job):
    """A check of a downloaded bulk file (at its temporary name) that raises _Retryable."""

    def check(path: Path) -> None:
        why = raster_problem(path, job.footprint)
        if why:
            raise _Retryable(f"{job.url}: bulk tile {why} ({path.stat().st_size} bytes)", reason="invalid")

    return check


def _retry_wait(cfg: SourceSettings):
    def wait(state) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return min(exc.retry_after, cfg.retry_after_max_s)
        base = min(cfg.backoff_s * 2 ** (state.attempt_number - 1), cfg.backoff_max_s)
        return base * (0.5 + random.random() / 2)  # full jitter within [base/2, base]

    return wait


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, (_Retryable, aiohttp.ClientError, asyncio.TimeoutError, ConnectionError))


async def _fetch(session, cfg: SourceSettings, url: str, rep: DownloadReport, validate) -> bytes:
    """GET ``url`` with retries; ``validate(body, content_type)`` raises _Retryable/SourceError."""

    async def once() -> bytes:
        async with session.get(url) as resp:
            _check_status(resp, url)
            body = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
        validate(body, ctype)
        return body

    return await _with_retries(cfg, url, rep, once)


async def _fetch_to_file(session, cfg: SourceSettings, url: str, rep: DownloadReport, target: Path, validate):
    """GET ``url`` with retries, streamed to a temporary name beside ``target``; ``validate(tmp)``
    (run in a thread) raises _Retryable/SourceError; only a valid file is renamed to ``target``."""

    async def once() -> None:
        with atomic_path(target) as tmp:
            async with session.get(url) as resp:
                _check_status(resp, url)
                with open(tmp, "wb") as fh:
                    async for chunk in resp.content.iter_chunked(1 << 20):
                        fh.write(chunk)
            await asyncio.to_thread(validate, tmp)

    await _with_retries(cfg, url, rep, once)


def _check_status(resp, url: str) -> None:
    if resp.status in (401, 403):
        raise AuthError(f"{url}: HTTP {resp.status} (credentials rejected)")
    if resp.status == 404:
        raise _NotFound(url)
    if resp.status == 429 or resp.status >= 500:
        ra = resp.headers.get("Retry-After")
        raise _Retryable(f"{url}: HTTP {resp.status}", retry_after=_parse_retry_after(ra), reason=str(resp.status))
    if resp.status != 200:
        raise SourceError(f"{url}: HTTP {resp.status}")


async def _with_retries(cfg: SourceSettings, url: str, rep: DownloadReport, once):
    """``await once()`` until it succeeds, retrying transient failures (counted in ``rep``)."""

    def before_sleep(state):
        rep.retries += 1
        exc = state.outcome.exception()
        reason = getattr(exc, "reason", None) or type(exc).__name__
        rep.retry_reasons[reason] = rep.retry_reasons.get(reason, 0) + 1
        log.debug("retrying %s after %s", url, exc)

    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(cfg.retries), wait=_retry_wait(cfg), retry=retry_if_exception(_is_transient),
            before_sleep=before_sleep, reraise=True,
        ):
            with attempt:
                rep.requests += 1
                return await once()
    except (_Retryable, aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
        raise SourceError(f"{url}: failed after {cfg.retries} attempt(s): {type(exc).__name__}: {exc}") from exc
    raise AssertionError("unreachable")


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def downloaded_rasters(out_dir) -> list[Path]:
    """The imagery files of a finished download directory (markers and manifest excluded)."""
    out_dir = Path(out_dir)
    return sorted(
        p for p in out_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in (".tif", ".tiff", ".jp2", ".jpg", ".png")
    )
