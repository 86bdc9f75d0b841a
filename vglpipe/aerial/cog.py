"""Downloaded imagery -> Cloud-Optimized GeoTIFFs with overviews, plus a footprint index.

Inputs are any georeferenced rasters GDAL reads (WMS/XYZ chips written by the clients,
bulk JPEG 2000 / GeoTIFF tiles), possibly in several CRSs (MassGIS spans UTM 18N and
19N). Inputs are grouped by CRS; each group is mosaicked onto a grid aligned to its
finest resolution and cut into square output tiles of ``tile_px`` (names
``{epsg}_{col}_{row}.tif`` on a grid anchored at the CRS origin, so reruns and
neighbouring regions produce the same names). Each tile is written with rio-cogeo
(JPEG or WEBP, ``blocksize`` blocks (default 256), overviews by averaging, an internal mask for
nodata) through an atomic rename.

Coverage is never faked: source nodata / alpha / masks travel in the COG's mask; a tile
without any valid pixel is skipped and counted.

Inputs that are not 8-bit RGB are converted where that is sound: bands are taken by their
colour interpretation (red, green, blue; else the first three), so a 4th alpha or NIR band
is dropped (an alpha band still masks through GDAL's dataset mask); 16-bit inputs are
stretched to 8 bits per band linearly from the 2nd to the 98th percentile of the valid
pixels of *all* 16-bit inputs of the run (decimated reads), so neighbouring tiles share one
stretch. Inputs that cannot be used (unreadable, no CRS, rotated, fewer than 3 bands, a
data type other than uint8/uint16) are skipped and reported (:attr:`TilingReport.skipped`,
the index's metadata); above ``max_skipped_fraction`` of the inputs :func:`build_cogs`
raises a :class:`RasterError` naming them.

A finished COG is kept on a rerun only if it was made from the same inputs (name, size,
mtime) with the same options (a digest in its ``VGLPIPE_INPUTS`` tag); otherwise it is
rebuilt, so a re-downloaded or formerly skipped input always reaches its COGs.

The index records each COG's ground resolution (``m_per_px``: geodesic metres per pixel at
its centre, whatever its CRS) beside ``res_m`` (CRS units per pixel).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyproj
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.io import MemoryFile
from rasterio.warp import reproject, transform_bounds
from rio_cogeo.cogeo import cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles
from tqdm import tqdm

from vglpipe.errors import InputError, RasterError
from vglpipe.store.atomic import atomic_path
from vglpipe.store.tables import read_metadata, read_table, write_table

log = logging.getLogger(__name__)

INDEX_COLUMNS = [
    "file", "crs", "epsg", "minx", "miny", "maxx", "maxy",
    "lon_min", "lat_min", "lon_max", "lat_max",
    "res_m", "m_per_px", "width", "height", "overviews", "valid_fraction", "acquired", "source",
]
#: Columns of indexes written before ``m_per_px`` was recorded (still readable).
LEGACY_INDEX_COLUMNS = [c for c in INDEX_COLUMNS if c != "m_per_px"]
#: Percentiles of the 16-bit -> 8-bit stretch.
STRETCH_PERCENTILES = (2.0, 98.0)
#: Pixels per 16-bit input read (decimated) to find the stretch.
_STRETCH_SAMPLE_PX = 1 << 20
INPUTS_TAG = "VGLPIPE_INPUTS"


@dataclass
class CogOptions:
    tile_px: int = 4096
    blocksize: int = 256  # 256 rather than 512: cold training reads decode ~40 % fewer pixels
    compress: str = "JPEG"  # JPEG or WEBP
    quality: int = 90
    min_overviews: int = 3  # LODs 0.2/0.4/0.8/1.6 m need 3 overview levels


@dataclass
class TilingReport:
    cogs: list[Path] = field(default_factory=list)
    skipped_empty: int = 0  # output tiles without a single valid pixel
    inputs: int = 0
    inputs_without_data: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"file", "reason"} of unusable inputs
    converted: list[dict] = field(default_factory=list)  # {"file", "how"} of inputs converted to 8-bit RGB


@dataclass
class _Input:
    path: str
    crs: CRS
    transform: rasterio.Affine
    bounds: tuple[float, float, float, float]
    res: float
    acquired: str | None
    bands: tuple[int, int, int] = (1, 2, 3)  # red, green, blue (1-based)
    dtype: str = "uint8"
    count: int = 3
    stretch: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # 16-bit: per-band (low, high)


class _Unusable(Exception):
    """An input that cannot be tiled; the message says why (it is skipped and reported)."""


def _rgb_bands(src) -> tuple[int, int, int]:
    """The red, green and blue bands (1-based) by colour interpretation, else the first three."""
    ci = list(src.colorinterp)
    want = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(c in ci for c in want):
        return tuple(ci.index(c) + 1 for c in want)
    return (1, 2, 3)


def _inspect(path: str) -> _Input:
    """The input's geometry and how to read it as RGB; _Unusable if it cannot be tiled."""
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise _Unusable("no CRS (not georeferenced)")
            if src.count < 3:
                raise _Unusable(f"expected RGB imagery, got {src.count} band(s)")
            if src.dtypes[0] not in ("uint8", "uint16"):
                raise _Unusable(f"unsupported data type {src.dtypes[0]} (8- or 16-bit RGB expected)")
            if abs(src.transform.b) > 1e-12 or abs(src.transform.d) > 1e-12:
                raise _Unusable("rotated rasters are not supported")
            res = float(abs(src.transform.a))
            tags = src.tags()
            acq = tags.get("ACQUISITION_DATE") or tags.get("TIFFTAG_DATETIME")
            return _Input(str(path), src.crs, src.transform, tuple(src.bounds), res, acq,
                          bands=_rgb_bands(src), dtype=src.dtypes[0], count=src.count)
    except rasterio.errors.RasterioIOError as exc:
        raise _Unusable(f"cannot open raster: {exc}") from exc


def _conversion(info: _Input) -> str:
    """How an input is converted to 8-bit RGB ("" for none)."""
    how = []
    if info.dtype == "uint16":
        lo, hi = info.stretch or ((0,) * 3, (65535,) * 3)
        how.append("16-bit stretched per band " + ", ".join(f"{a:g}-{b:g}" for a, b in zip(lo, hi)))
    if info.count > 3 or info.bands != (1, 2, 3):
        how.append(f"bands {info.bands} of {info.count} used as RGB")
    return "; ".join(how)


def _sample_valid(info: _Input) -> np.ndarray:
    """(3, n) values of the RGB bands at valid pixels of a decimated read."""
    try:
        with rasterio.open(info.path) as src:
            step = max(1, math.ceil(math.sqrt(src.width * src.height / _STRETCH_SAMPLE_PX)))
            shape = (max(1, src.height // step), max(1, src.width // step))
            v = src.read(info.bands, out_shape=shape)
            m = src.dataset_mask(out_shape=shape) > 0
    except rasterio.errors.RasterioError as exc:
        raise _Unusable(f"cannot read pixels: {exc}") from exc
    return v[:, m]


def _set_stretch(infos: list[_Input], report: TilingReport) -> list[_Input]:
    """Give the 16-bit inputs one shared per-band percentile stretch; returns the usable inputs."""
    wide = [i for i in infos if i.dtype == "uint16"]
    if not wide:
        return infos
    samples, usable = [], []
    for info in infos:
        if info.dtype != "uint16":
            usable.append(info)
            continue
        try:
            samples.append(_sample_valid(info))
            usable.append(info)
        except _Unusable as exc:
            _skip(report, info.path, str(exc))
    values = np.concatenate(samples, axis=1) if samples else np.zeros((3, 0))
    if values.shape[1]:
        lo, hi = np.percentile(values, STRETCH_PERCENTILES, axis=1)
        stretch = (tuple(float(v) for v in lo), tuple(float(max(b, a + 1)) for a, b in zip(lo, hi)))
    else:  # no valid pixel anywhere: the full 16-bit range (the inputs hold no data anyway)
        stretch = ((0.0,) * 3, (65535.0,) * 3)
    for info in usable:
        if info.dtype == "uint16":
            info.stretch = stretch
    return usable


def _to_8bit(values: np.ndarray, stretch) -> np.ndarray:
    """(3, h, w) 16-bit values -> uint8, linearly from low..high per band (clipped)."""
    out = np.empty(values.shape, np.uint8)
    for b, (lo, hi) in enumerate(zip(*stretch)):
        v = values[b].astype(np.float32)
        v -= lo
        v *= 255.0 / (hi - lo)
        np.clip(v + 0.5, 0, 255, out=v)
        out[b] = v
    return out


def _read_rgb_mask(info: _Input) -> tuple[np.ndarray, np.ndarray]:
    """(3, h, w) uint8 and (h, w) uint8 mask (255 valid) of a whole input; _Unusable if unreadable."""
    try:
        with rasterio.open(info.path) as src:
            rgb = src.read(info.bands)
            mask = src.dataset_mask()
    except rasterio.errors.RasterioError as exc:
        raise _Unusable(f"cannot read pixels: {exc}") from exc
    if info.stretch is not None:
        rgb = _to_8bit(rgb, info.stretch)
    return rgb, mask


def _skip(report: TilingReport, path: str, reason: str) -> None:
    report.skipped.append({"file": str(path), "reason": reason})
    log.warning("%s: skipped, %s", path, reason)


def _check_skipped(report: TilingReport, max_fraction: float) -> None:
    """RasterError if more than ``max_fraction`` of the inputs were skipped."""
    n = len(report.skipped)
    if n and n > max_fraction * report.inputs:
        names = "; ".join(f"{s['file']}: {s['reason']}" for s in report.skipped[:10])
        raise RasterError(f"{n} of {report.inputs} input raster(s) unusable (more than the allowed fraction "
                          f"{max_fraction:g}): {names}")


def build_cogs(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    opts: CogOptions | None = None,
    acquired: str | None = None,
    progress: bool = True,
    max_skipped_fraction: float = 0.0,
) -> TilingReport:
    """Mosaic ``inputs`` per CRS into COG tiles under ``out_dir``; existing finished COGs made from
    the same inputs are kept. Unusable inputs are skipped and reported; more than
    ``max_skipped_fraction`` of them raise a RasterError."""
    opts = opts or CogOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = TilingReport(inputs=len(inputs))
    if not inputs:
        raise InputError(f"no input rasters to tile into {out_dir}")
    infos = []
    for p in inputs:
        try:
            infos.append(_inspect(str(p)))
        except _Unusable as exc:
            _skip(report, str(p), str(exc))
    infos = _set_stretch(infos, report)
    _check_skipped(report, max_skipped_fraction)
    for info in infos:
        how = _conversion(info)
        if how:
            report.converted.append({"file": info.path, "how": how})
            log.info("%s: converted to 8-bit RGB (%s)", info.path, how)
    groups: dict[str, list[_Input]] = defaultdict(list)
    for info in infos:
        groups[info.crs.to_string()].append(info)
    jobs = []
    for crs_s, group in sorted(groups.items()):
        res = float(f"{min(i.res for i in group):.10g}")  # 0.19999999999998863 -> 0.2
        span = opts.tile_px * res
        minx = min(i.bounds[0] for i in group)
        miny = min(i.bounds[1] for i in group)
        maxx = max(i.bounds[2] for i in group)
        maxy = max(i.bounds[3] for i in group)
        c0, c1 = math.floor(minx / span + 1e-9), math.ceil(maxx / span - 1e-9)
        r0, r1 = math.floor(miny / span + 1e-9), math.ceil(maxy / span - 1e-9)
        for col in range(c0, c1):
            for row in range(r0, r1):
                tb = (col * span, row * span, (col + 1) * span, (row + 1) * span)
                members = [
                    i for i in group
                    if i.bounds[0] < tb[2] and i.bounds[2] > tb[0] and i.bounds[1] < tb[3] and i.bounds[3] > tb[1]
                ]
                if members:
                    jobs.append((crs_s, res, col, row, tb, members))
    reader = _Reader(report)
    for crs_s, res, col, row, tb, members in tqdm(jobs, desc="COG tiles", unit="tile", disable=not progress):
        epsg = CRS.from_string(crs_s).to_epsg() or "crs"
        target = out_dir / f"{epsg}_{col}_{row}.tif"
        members = [m for m in members if m.path not in reader.bad]
        digest = _inputs_digest(members, opts)
        if target.exists() and _cog_digest(target) == digest:
            report.cogs.append(target)
            continue
        rgb, mask = _mosaic(tb, res, crs_s, members, reader, opts.tile_px)
        if not mask.any():
            report.skipped_empty += 1
            target.unlink(missing_ok=True)
            log.warning("COG tile %s: no valid pixels in %d input(s), skipped", target.name, len(members))
            continue
        # the digest of the planned members: a skipped input that is later replaced changes it
        _write_cog(rgb, mask, tb, res, crs_s, target, opts, acquired or members[0].acquired, digest)
        report.cogs.append(target)
        reader.trim()
    report.inputs_without_data = sorted(reader.empty)
    for p in report.inputs_without_data:
        log.warning("%s: no valid pixels (all nodata), not used", p)
    _check_skipped(report, max_skipped_fraction)
    return report


class _Reader:
    """Whole inputs as 8-bit RGB + mask, cached; unreadable ones are skipped (reported once)."""

    def __init__(self, report: TilingReport):
        self.report = report
        self.cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.empty: set[str] = set()
        self.bad: set[str] = set()

    def get(self, m: _Input) -> tuple[np.ndarray, np.ndarray] | None:
        """The input's pixels, or None if it is unreadable or holds no valid pixel."""
        if m.path in self.bad:
            return None
        if m.path not in self.cache:
            try:
                self.cache[m.path] = _read_rgb_mask(m)
            except _Unusable as exc:
                self.bad.add(m.path)
                _skip(self.report, m.path, str(exc))
                return None
        rgb, mask = self.cache[m.path]
        if not mask.any():
            self.empty.add(m.path)
            return None
        return rgb, mask

    def trim(self) -> None:
        if len(self.cache) > 256:
            self.cache.clear()


def _inputs_digest(members: list[_Input], opts: CogOptions) -> str:
    """What a COG tile is made of: its inputs (name, size, mtime, conversion) and the options."""
    parts = [json.dumps(dataclasses.asdict(opts), sort_keys=True)]
    for m in sorted(members, key=lambda m: m.path):
        st = os.stat(m.path)
        parts.append(f"{os.path.basename(m.path)}:{st.st_size}:{st.st_mtime_ns}:{m.bands}:{m.stretch}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _cog_digest(path: Path) -> str | None:
    try:
        with rasterio.open(path) as src:
            return src.tags().get(INPUTS_TAG)
    except rasterio.errors.RasterioError:
        return None


def _mosaic(tb, res, crs_s, members, reader: _Reader, tile_px):
    """The tile's (3, n, n) RGB and (n, n) mask (255 valid) from the readable ``members``."""
    rgb = np.zeros((3, tile_px, tile_px), np.uint8)
    mask = np.zeros((tile_px, tile_px), np.uint8)
    dst_tf = rasterio.Affine(res, 0, tb[0], 0, -res, tb[3])
    for m in members:
        pixels = reader.get(m)
        if pixels is None:
            continue
        src_rgb, src_mask = pixels
        # same resolution and grid up to 1/1000 px: an exact pixel copy (no resampling)
        aligned = (
            abs(m.res - res) < 1e-6 * res
            and abs(((m.transform.c - tb[0]) / res) - round((m.transform.c - tb[0]) / res)) < 1e-3
            and abs(((tb[3] - m.transform.f) / res) - round((tb[3] - m.transform.f) / res)) < 1e-3
        )
        if aligned:  # exact pixel copy
            ox = int(round((m.transform.c - tb[0]) / res))
            oy = int(round((tb[3] - m.transform.f) / res))
            h, w = src_mask.shape
            x0, y0 = max(ox, 0), max(oy, 0)
            x1, y1 = min(ox + w, tile_px), min(oy + h, tile_px)
            if x1 <= x0 or y1 <= y0:
                continue
            sm = src_mask[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
            dm = mask[y0:y1, x0:x1]
            src_px = src_rgb[:, y0 - oy : y1 - oy, x0 - ox : x1 - ox]
            if sm.min() == 255 and dm.max() == 0:  # the usual case: a full chip on empty ground
                rgb[:, y0:y1, x0:x1] = src_px
                dm[...] = 255
            else:
                put = (sm > 0) & (dm == 0)
                np.copyto(rgb[:, y0:y1, x0:x1], src_px, where=put[None])
                dm[put] = 255
        else:  # resample (different grid or resolution): bilinear colour, nearest mask
            tmp = np.zeros_like(rgb)
            tmask = np.zeros_like(mask)
            for b in range(3):
                reproject(src_rgb[b], tmp[b], src_transform=m.transform, src_crs=m.crs, dst_transform=dst_tf,
                          dst_crs=crs_s, resampling=Resampling.bilinear, src_nodata=None, dst_nodata=None)
            reproject(src_mask, tmask, src_transform=m.transform, src_crs=m.crs, dst_transform=dst_tf,
                      dst_crs=crs_s, resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
            put = (tmask > 0) & (mask == 0)
            rgb[:, put] = tmp[:, put]
            mask[put] = 255
    return rgb, mask


def _write_cog(rgb, mask, tb, res, crs_s, target: Path, opts: CogOptions, acquired: str | None, digest: str):
    tile_px = rgb.shape[1]
    profile = dict(
        driver="GTiff", width=tile_px, height=tile_px, count=3, dtype="uint8", crs=crs_s,
        transform=rasterio.Affine(res, 0, tb[0], 0, -res, tb[3]),
    )
    cog_profile = cog_profiles.get(opts.compress.lower())
    cog_profile.update(blockxsize=opts.blocksize, blockysize=opts.blocksize)
    if opts.compress.upper() == "JPEG":
        cog_profile["jpeg_quality"] = opts.quality
    elif opts.compress.upper() == "WEBP":
        cog_profile["webp_level"] = opts.quality
    levels = max(opts.min_overviews, int(math.floor(math.log2(max(tile_px // opts.blocksize, 1)))))
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(rgb)
            ds.write_mask(mask)
            ds.update_tags(**{INPUTS_TAG: digest})
            if acquired:
                ds.update_tags(ACQUISITION_DATE=str(acquired))
        with mem.open() as src, atomic_path(target) as tmp:
            cog_translate(
                src, str(tmp), cog_profile, add_mask=True, overview_level=levels,
                overview_resampling="average", quiet=True, in_memory=True,
                config={"GDAL_TIFF_INTERNAL_MASK": True, "GDAL_TIFF_OVR_BLOCKSIZE": str(opts.blocksize)},
            )


def validate_cog(path) -> tuple[bool, list[str], list[str]]:
    """rio-cogeo's validator: (is_valid, errors, warnings)."""
    return cog_validate(str(path), quiet=True)


def ground_m_per_px(crs, transform, width: int, height: int) -> float:
    """Ground resolution (metres per pixel) at a raster's centre: the geometric mean of the
    geodesic lengths of one pixel's sides, for any CRS (projected or geographic)."""
    c, r = width / 2, height / 2
    xs, ys = zip(*(transform @ (c + dc, r + dr) for dc, dr in ((0, 0), (1, 0), (0, 1))))
    lon, lat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    geod = pyproj.Geod(ellps="WGS84")
    _, _, dx = geod.inv(lon[0], lat[0], lon[1], lat[1])
    _, _, dy = geod.inv(lon[0], lat[0], lon[2], lat[2])
    return float(math.sqrt(dx * dy))


def build_index(cogs: list[Path], index_path, acquired: str | None = None, source: str = "",
                skipped: list[dict] | None = None) -> pa.Table:
    """Footprint index of COGs (one row per file; bounds in the file's CRS and in WGS84, ground
    resolution); ``skipped`` (unusable inputs, :attr:`TilingReport.skipped`) goes into its metadata."""
    rows = {c: [] for c in INDEX_COLUMNS}
    index_path = Path(index_path)
    for p in sorted(cogs):
        try:
            with rasterio.open(p) as src:
                mask = src.dataset_mask(out_shape=(min(512, src.height), min(512, src.width)))
                lon0, lat0, lon1, lat1 = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
                vals = dict(
                    file=os.path.relpath(p, index_path.parent), crs=src.crs.to_string(), epsg=src.crs.to_epsg() or 0,
                    minx=src.bounds.left, miny=src.bounds.bottom, maxx=src.bounds.right, maxy=src.bounds.top,
                    lon_min=lon0, lat_min=lat0, lon_max=lon1, lat_max=lat1, res_m=float(abs(src.transform.a)),
                    m_per_px=round(ground_m_per_px(src.crs, src.transform, src.width, src.height), 6),
                    width=src.width, height=src.height, overviews=len(src.overviews(1)),
                    valid_fraction=float((mask > 0).mean()),
                    acquired=acquired or src.tags().get("ACQUISITION_DATE", ""), source=source,
                )
        except rasterio.errors.RasterioError as exc:
            raise RasterError(f"{p}: cannot read COG for the index: {exc}") from exc
        for k, v in vals.items():
            rows[k].append(v)
    table = pa.table(rows)
    write_table(table, index_path, metadata={"kind": "aerial-index", "columns": INDEX_COLUMNS,
                                             "skipped": list(skipped or [])})
    return table


def read_index(index_path) -> pa.Table:
    """The index's columns (an index written before ``m_per_px`` existed is read without it)."""
    try:
        return read_table(index_path, columns=INDEX_COLUMNS)
    except InputError:
        return read_table(index_path, columns=LEGACY_INDEX_COLUMNS)


def index_skipped(index_path) -> list[dict]:
    """The inputs the tiling step skipped as unusable ({"file", "reason"}), from the index's metadata."""
    return list(read_metadata(index_path).get("skipped", []))


def convergence_deg(crs: str, lat, lon):
    """Meridian convergence (degrees) of ``crs`` at (lat, lon) from pyproj."""
    return pyproj.Proj(crs).get_factors(lon, lat).meridian_convergence
