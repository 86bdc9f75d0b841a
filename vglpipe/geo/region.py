"""Region boundaries: GeoJSON in, one validated (multi)polygon out."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import shapely
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from vglpipe.errors import RegionError
from vglpipe.store.atomic import atomic_write_text

log = logging.getLogger("vglpipe.regions")

#: A self-intersecting boundary is repaired only if that changes its area by at most this fraction.
MAX_REPAIR_AREA_CHANGE = 0.01


def _repaired(g: BaseGeometry, path: Path) -> BaseGeometry:
    """A valid version of ``g``; a repair that changes the enclosed area noticeably is refused."""
    if g.is_valid:
        return g
    fixed = shapely.make_valid(g)
    fixed = shapely.union_all([p for p in shapely.get_parts(fixed) if p.geom_type == "Polygon"])
    before, after = abs(g.area), fixed.area
    change = abs(after - before) / max(before, after, 1e-30)
    reason = shapely.is_valid_reason(g)
    if change > MAX_REPAIR_AREA_CHANGE:
        raise RegionError(
            f"{path}: the boundary is not a valid polygon ({reason}); repairing it changes its area from "
            f"{before:.6g} to {after:.6g} square degrees ({100 * change:.0f} %): fix the polygon (e.g. a ring that "
            "crosses itself, or rings in the wrong order)")
    log.warning("%s: repaired an invalid boundary (%s): area %.6g -> %.6g square degrees (%.2f %%)",
                path, reason, before, after, 100 * change)
    return fixed


def _geometries(obj: dict, path: Path) -> list[BaseGeometry]:
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind == "FeatureCollection":
        return [g for f in obj.get("features", []) for g in _geometries(f, path)]
    if kind == "Feature":
        return _geometries(obj.get("geometry") or {}, path)
    if kind in ("Polygon", "MultiPolygon"):
        try:
            return [shape(obj)]
        except (ValueError, TypeError, AttributeError, IndexError) as exc:
            raise RegionError(f"{path}: malformed {kind}: {exc}") from exc
    raise RegionError(f"{path}: expected Polygon/MultiPolygon features, found {kind!r}")


def load_boundary(path: str | os.PathLike) -> BaseGeometry:
    """Read a GeoJSON boundary (geometry, Feature or FeatureCollection) as one geometry."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise RegionError(f"{path}: region boundary file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegionError(f"{path}: not a readable GeoJSON file: {exc}") from exc
    geoms = _geometries(obj, path)
    if not geoms:
        raise RegionError(f"{path}: no polygon in the boundary file")
    geom = shapely.union_all([_repaired(g, path) for g in geoms])
    geom = shapely.union_all([p for p in shapely.get_parts(geom) if p.geom_type == "Polygon"])
    if geom.is_empty or geom.area == 0:
        raise RegionError(f"{path}: the boundary encloses no area")
    minx, miny, maxx, maxy = geom.bounds
    if not (-180 <= minx and maxx <= 180 and -90 <= miny and maxy <= 90):
        raise RegionError(
            f"{path}: coordinates out of lon/lat range {geom.bounds}; GeoJSON must be WGS84 lon/lat"
        )
    if maxx - minx > 180:
        raise RegionError(
            f"{path}: the boundary spans {maxx - minx:.0f}° of longitude ({minx:.3f} to {maxx:.3f}): regions that "
            "cross the antimeridian (±180°) are not supported; split it into one region on each side")
    return geom


def write_boundary(geom: BaseGeometry, path: str | os.PathLike, name: str) -> None:
    feature = {"type": "Feature", "properties": {"name": name}, "geometry": mapping(geom)}
    atomic_write_text(path, json.dumps({"type": "FeatureCollection", "features": [feature]}))
