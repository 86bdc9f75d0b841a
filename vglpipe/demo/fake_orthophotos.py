"""A local orthophoto provider that serves a synthetic world over real HTTP on 127.0.0.1.

Endpoints, in the real protocols' request/response formats:

* ``GET /wms?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS=world&CRS=EPSG:xxxx&BBOX=...
  &WIDTH=..&HEIGHT=..&FORMAT=image/png|image/jpeg[&TRANSPARENT=TRUE]`` — the world
  reprojected into the requested grid (any CRS pyproj knows; EPSG:4326 BBOX in lat,lon
  order as WMS 1.3.0 prescribes). Outside the world: transparent (PNG) or white (JPEG),
  as real servers do. ``REQUEST=GetCapabilities`` returns a minimal capabilities
  document; bad requests return a ``ServiceExceptionReport`` (HTTP 200, text/xml).
* ``GET /tile/{z}/{y}/{x}`` — ArcGIS-style Web Mercator tile cache (256 px); 404 for a tile
  outside the world.
* ``GET /bulk/index.geojson`` (or ``/bulk/index.zip``, a zipped shapefile in the world CRS) and ``GET /bulk/tiles/{TILENAME}.{tif|jp2}`` — a bulk tile
  archive: square tiles of ``bulk_tile_m`` metres in the world's CRS, or, west of
  ``alt_crs_split_x``, re-projected into ``alt_crs`` (MassGIS: UTM 18N and 19N).

Fault injection (:class:`Faults`) is deterministic per (request target, attempt): 429 with
``Retry-After``, 500, connection reset (RST), slow responses, truncated bodies; and
``blank_rate`` makes chosen images uniformly white (every time), which clients must
report. Every request is logged in :attr:`FakeOrthophotoServer.log`.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import logging
import os
import socket
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlparse

import cv2
import mercantile
import numpy as np
import pyproj
import rasterio
from rasterio.io import MemoryFile
from rasterio.warp import Resampling, reproject, transform_geom

from vglpipe.demo.world import World, read_world

log = logging.getLogger(__name__)

FAULT_KINDS = ("429", "500", "reset", "slow", "truncate")


@dataclass
class Faults:
    rate: float = 0.0  # probability that an attempt fails (per request target and attempt number)
    kinds: tuple[str, ...] = FAULT_KINDS
    max_per_target: int = 3  # after this many failures a target is served correctly
    retry_after_s: int = 1
    slow_s: float = 2.0
    blank_rate: float = 0.0  # fraction of image targets that are always served blank (white)
    seed: int = 0


def _u01(*parts) -> float:
    h = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


@dataclass
class ServerConfig:
    layer: str = "world"
    tile_format: str = "png"  # png | jpg for /tile
    bulk_tile_m: float = 300.0
    bulk_format: str = "tif"  # tif | jp2
    alt_crs: str = ""  # e.g. EPSG:32618
    alt_crs_split_x: float | None = None  # world-CRS easting west of which bulk tiles use alt_crs
    jpeg_quality: int = 92
    delay_s: float = 0.0  # every response waits this long (makes a download slow enough to kill)
    faults: Faults = field(default_factory=Faults)


class FakeOrthophotoServer:
    def __init__(self, world: World, config: ServerConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.world = world
        self.cfg = config or ServerConfig()
        self.log: list[str] = []
        self.injected: dict[str, int] = {}
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._bulk_cache: dict[str, bytes] = {}
        self._src = np.ascontiguousarray(np.moveaxis(world.color, -1, 0))
        server = self

        class Handler(_Handler):
            owner = server

        self.httpd = _QuietServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        h, p = self.httpd.server_address[:2]
        return f"http://{h}:{p}"

    def start(self) -> FakeOrthophotoServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-orthophotos", daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ rendering
    def render(self, crs: str, bounds, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """(h, w, 3) RGB and (h, w) alpha of the world in the requested grid (bilinear)."""
        minx, miny, maxx, maxy = bounds
        dst_tf = rasterio.Affine((maxx - minx) / width, 0, minx, 0, -(maxy - miny) / height, maxy)
        out = np.zeros((3, height, width), np.uint8)
        alpha = np.zeros((height, width), np.uint8)
        w = self.world
        for b in range(3):
            reproject(self._src[b], out[b], src_transform=w.transform, src_crs=w.crs, dst_transform=dst_tf,
                      dst_crs=crs, resampling=Resampling.bilinear)
        ones = np.full(w.shape, 255, np.uint8)
        reproject(ones, alpha, src_transform=w.transform, src_crs=w.crs, dst_transform=dst_tf, dst_crs=crs,
                  resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
        return np.ascontiguousarray(np.moveaxis(out, 0, -1)), alpha

    def world_lonlat_bounds(self):
        return rasterio.warp.transform_bounds(self.world.crs, "EPSG:4326", *self.world.bounds, densify_pts=21)

    def bulk_tiles(self) -> list[dict]:
        minx, miny, maxx, maxy = self.world.bounds
        s = self.cfg.bulk_tile_m
        tiles = []
        for col in range(int(np.floor(minx / s)), int(np.ceil(maxx / s))):
            for row in range(int(np.floor(miny / s)), int(np.ceil(maxy / s))):
                b = (col * s, row * s, (col + 1) * s, (row + 1) * s)
                crs = self.world.crs
                if self.cfg.alt_crs and self.cfg.alt_crs_split_x is not None and b[2] <= self.cfg.alt_crs_split_x:
                    crs = self.cfg.alt_crs
                name = f"T{col}_{row}"
                tiles.append({"name": name, "crs": crs, "world_bounds": b})
        return tiles

    def bulk_tile_bytes(self, name: str) -> bytes | None:
        with self._lock:
            if name in self._bulk_cache:
                return self._bulk_cache[name]
        t = next((t for t in self.bulk_tiles() if t["name"] == name), None)
        if t is None:
            return None
        b = t["world_bounds"]
        res = self.world.m_per_px
        if t["crs"] != self.world.crs:
            tb = rasterio.warp.transform_bounds(self.world.crs, t["crs"], *b, densify_pts=21)
            tb = (np.floor(tb[0] / res) * res, np.floor(tb[1] / res) * res, np.ceil(tb[2] / res) * res,
                  np.ceil(tb[3] / res) * res)
        else:
            tb = b
        wpx, hpx = int(round((tb[2] - tb[0]) / res)), int(round((tb[3] - tb[1]) / res))
        rgb, alpha = self.render(t["crs"], tb, wpx, hpx)
        driver = "JP2OpenJPEG" if self.cfg.bulk_format == "jp2" else "GTiff"
        opts = {"QUALITY": "100", "REVERSIBLE": "YES"} if driver == "JP2OpenJPEG" else {"compress": "DEFLATE"}
        profile = dict(driver=driver, width=wpx, height=hpx, count=3, dtype="uint8", crs=t["crs"],
                       transform=rasterio.Affine(res, 0, tb[0], 0, -res, tb[3]), **opts)
        if driver == "GTiff":
            profile["nodata"] = None
        if driver == "GTiff":
            with MemoryFile() as mem:
                with mem.open(**profile) as dst:
                    dst.write(np.moveaxis(rgb, -1, 0))
                    if not alpha.all():
                        dst.write_mask(alpha)
                data = mem.read()
        else:  # JPEG 2000 (CreateCopy-only driver: through a real temporary file); nodata 0 off the world
            rgb = rgb.copy()
            rgb[alpha == 0] = 0
            profile["nodata"] = 0
            with tempfile.TemporaryDirectory() as td:
                path = os.path.join(td, f"{name}.jp2")
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(np.moveaxis(rgb, -1, 0))
                with open(path, "rb") as fh:
                    data = fh.read()
        with self._lock:
            self._bulk_cache[name] = data
        return data

    # ------------------------------------------------------------------ faults
    def fault_for(self, target: str) -> str | None:
        f = self.cfg.faults
        with self._lock:
            n = self._attempts.get(target, 0)
            self._attempts[target] = n + 1
        if f.rate <= 0 or n >= f.max_per_target:
            return None
        if _u01(f.seed, target, n, "fail") < f.rate:
            return f.kinds[int(_u01(f.seed, target, n, "kind") * len(f.kinds))]
        return None

    def is_blank(self, target: str) -> bool:
        f = self.cfg.faults
        return f.blank_rate > 0 and _u01(f.seed, target, "blank") < f.blank_rate


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients that hang up (timeouts) are normal here
        log.debug("fake orthophoto server: connection from %s ended abruptly", client_address, exc_info=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    owner: FakeOrthophotoServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet; requests are in owner.log
        log.debug("fake orthophoto server: " + fmt, *args)

    def do_GET(self):  # noqa: N802
        srv = self.owner
        with srv._lock:
            srv.log.append(self.path)
        fault = srv.fault_for(self.path)
        if fault:
            with srv._lock:
                srv.injected[fault] = srv.injected.get(fault, 0) + 1
        if srv.cfg.delay_s:
            time.sleep(srv.cfg.delay_s)
        try:
            status, ctype, body, headers = self._route()
        except Exception as exc:  # noqa: BLE001 - the fake must answer, not die
            log.exception("fake server error")
            status, ctype, body, headers = 500, "text/plain", f"internal error: {exc}".encode(), {}
        if fault == "429":
            return self._send(429, "text/plain", b"Too Many Requests", {"Retry-After": str(srv.cfg.faults.retry_after_s)})
        if fault == "500":
            return self._send(500, "text/plain", b"Internal Server Error")
        if fault == "reset":
            return self._reset()
        if fault == "slow":
            time.sleep(srv.cfg.faults.slow_s)
        if fault == "truncate" and len(body) > 16:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            return self._reset()
        return self._send(status, ctype, body, headers)

    def _send(self, status, ctype, body: bytes, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _reset(self):
        try:
            self.wfile.flush()
        except OSError:
            pass
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    # ------------------------------------------------------------------ routes
    def _route(self):
        u = urlparse(self.path)
        parts = [p for p in u.path.split("/") if p]
        if parts[:1] == ["wms"]:
            return self._wms({k.upper(): v[0] for k, v in parse_qs(u.query, keep_blank_values=True).items()})
        if parts[:1] == ["tile"] and len(parts) == 4:
            try:
                z, y, x = (int(p) for p in parts[1:])
            except ValueError:
                return 400, "text/plain", b"bad tile address", {}
            return self._tile(z, x, y)
        if parts == ["bulk", "index.geojson"]:
            return self._bulk_index()
        if parts == ["bulk", "index.zip"]:
            return self._bulk_index_shapefile()
        if parts[:2] == ["bulk", "tiles"] and len(parts) == 3:
            name = parts[2].rsplit(".", 1)[0]
            data = self.owner.bulk_tile_bytes(name)
            if data is None:
                return 404, "text/plain", b"no such tile", {}
            ctype = "image/jp2" if parts[2].endswith(".jp2") else "image/tiff"
            return 200, ctype, data, {}
        return 404, "text/plain", b"not found", {}

    def _exception(self, code: str, text: str):
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<ServiceExceptionReport version="1.3.0" xmlns="http://www.opengis.net/ogc">'
            f'<ServiceException code="{code}">{text}</ServiceException></ServiceExceptionReport>'
        )
        return 200, "text/xml", xml.encode(), {}

    def _wms(self, q):
        srv = self.owner
        if q.get("SERVICE", "").upper() != "WMS":
            return self._exception("InvalidParameterValue", "SERVICE must be WMS")
        req = q.get("REQUEST", "")
        if req == "GetCapabilities":
            lon0, lat0, lon1, lat1 = srv.world_lonlat_bounds()
            xml = (
                '<?xml version="1.0" encoding="UTF-8"?><WMS_Capabilities version="1.3.0" '
                'xmlns="http://www.opengis.net/wms"><Service><Name>WMS</Name><Title>vglpipe fake</Title></Service>'
                '<Capability><Request><GetMap><Format>image/png</Format><Format>image/jpeg</Format></GetMap></Request>'
                f'<Layer><Name>{srv.cfg.layer}</Name><CRS>{srv.world.crs}</CRS><CRS>EPSG:3857</CRS><CRS>EPSG:4326</CRS>'
                f'<EX_GeographicBoundingBox><westBoundLongitude>{lon0}</westBoundLongitude><eastBoundLongitude>{lon1}'
                f'</eastBoundLongitude><southBoundLatitude>{lat0}</southBoundLatitude><northBoundLatitude>{lat1}'
                '</northBoundLatitude></EX_GeographicBoundingBox></Layer></Capability></WMS_Capabilities>'
            )
            return 200, "text/xml", xml.encode(), {}
        if req != "GetMap":
            return self._exception("OperationNotSupported", f"REQUEST={req}")
        if q.get("VERSION") != "1.3.0":
            return self._exception("InvalidParameterValue", "VERSION must be 1.3.0")
        if q.get("LAYERS") != srv.cfg.layer:
            return self._exception("LayerNotDefined", f"unknown layer {q.get('LAYERS')!r}")
        try:
            crs = pyproj.CRS(q["CRS"])
            bbox = [float(v) for v in q["BBOX"].split(",")]
            width, height = int(q["WIDTH"]), int(q["HEIGHT"])
        except (KeyError, ValueError, pyproj.exceptions.CRSError) as exc:
            return self._exception("MissingOrInvalidParameter", str(exc))
        if len(bbox) != 4 or not (0 < width <= 8192 and 0 < height <= 8192):
            return self._exception("InvalidParameterValue", "BBOX/WIDTH/HEIGHT")
        if crs.is_geographic:  # WMS 1.3.0 axis order for EPSG:4326 is lat, lon
            bbox = [bbox[1], bbox[0], bbox[3], bbox[2]]
        fmt = q.get("FORMAT", "image/png")
        if fmt not in ("image/png", "image/jpeg"):
            return self._exception("InvalidFormat", fmt)
        rgb, alpha = srv.render(q["CRS"], bbox, width, height)
        if srv.is_blank(self.path):
            rgb[...] = 255
            alpha[...] = 255
        return self._encode(rgb, alpha, "png" if fmt == "image/png" else "jpg",
                            transparent=q.get("TRANSPARENT", "FALSE").upper() == "TRUE")

    def _tile(self, z, x, y):
        srv = self.owner
        t = mercantile.Tile(x, y, z)
        lb = srv.world_lonlat_bounds()
        tb = mercantile.bounds(t)
        if tb.east <= lb[0] or tb.west >= lb[2] or tb.north <= lb[1] or tb.south >= lb[3]:
            return 404, "text/plain", b"Tile not found", {}
        xb = mercantile.xy_bounds(t)
        rgb, alpha = srv.render("EPSG:3857", (xb.left, xb.bottom, xb.right, xb.top), 256, 256)
        if not alpha.any():
            return 404, "text/plain", b"Tile not found", {}
        if srv.is_blank(self.path):
            rgb[...] = 255
            alpha[...] = 255
        return self._encode(rgb, alpha, srv.cfg.tile_format, transparent=True)

    def _encode(self, rgb, alpha, fmt, transparent):
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if fmt == "png":
            if transparent:
                img = np.dstack([bgr, alpha])
            else:
                img = bgr.copy()
                img[alpha == 0] = 255
            ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            ctype = "image/png"
        else:
            img = bgr.copy()
            img[alpha == 0] = 255
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.owner.cfg.jpeg_quality])
            ctype = "image/jpeg"
        assert ok
        return 200, ctype, buf.tobytes(), {}

    def _bulk_index(self):
        srv = self.owner
        feats = []
        for t in srv.bulk_tiles():
            poly = {"type": "Polygon", "coordinates": [[
                (t["world_bounds"][0], t["world_bounds"][1]), (t["world_bounds"][2], t["world_bounds"][1]),
                (t["world_bounds"][2], t["world_bounds"][3]), (t["world_bounds"][0], t["world_bounds"][3]),
                (t["world_bounds"][0], t["world_bounds"][1])]]}
            geom = transform_geom(srv.world.crs, "EPSG:4326", poly)
            ext = "jp2" if srv.cfg.bulk_format == "jp2" else "tif"
            feats.append({"type": "Feature", "geometry": geom, "properties": {
                "TILENAME": t["name"], "URL": f"{srv.url}/bulk/tiles/{t['name']}.{ext}", "CRS": t["crs"]}})
        return 200, "application/geo+json", json.dumps({"type": "FeatureCollection", "features": feats}).encode(), {}


    def _bulk_index_shapefile(self):
        """The index as a zipped ESRI shapefile with footprints in the world's CRS (as MassGIS)."""
        import io
        import tempfile
        import zipfile

        import pyogrio.raw
        import shapely

        srv = self.owner
        tiles = srv.bulk_tiles()
        ext = "jp2" if srv.cfg.bulk_format == "jp2" else "tif"
        wkb = np.array([shapely.to_wkb(shapely.box(*t["world_bounds"])) for t in tiles], dtype=object)
        names = np.array([t["name"] for t in tiles], dtype=object)
        urls = np.array([f"{srv.url}/bulk/tiles/{t['name']}.{ext}" for t in tiles], dtype=object)
        buf = io.BytesIO()
        with tempfile.TemporaryDirectory() as tmp:
            pyogrio.raw.write(f"{tmp}/tile_index.shp", wkb, field_data=[names, urls], fields=["TILENAME", "URL"],
                              crs=srv.world.crs, geometry_type="Polygon", driver="ESRI Shapefile")
            with zipfile.ZipFile(buf, "w") as zf:
                for name in sorted(os.listdir(tmp)):
                    zf.write(f"{tmp}/{name}", name)
        return 200, "application/zip", buf.getvalue(), {}


def main(argv=None) -> int:
    from vglpipe.cli import run

    p = argparse.ArgumentParser(prog="python -m vglpipe.demo.fake_orthophotos", description=__doc__.split("\n")[0])
    p.add_argument("--color", required=True)
    p.add_argument("--height", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--fault-rate", type=float, default=0.0)

    def _main(args):
        world = read_world(args.color, args.height)
        srv = FakeOrthophotoServer(world, ServerConfig(faults=Faults(rate=args.fault_rate)), port=args.port)
        print(srv.url, flush=True)
        try:
            srv.httpd.serve_forever()
        finally:
            srv.httpd.server_close()

    return run(p, _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
