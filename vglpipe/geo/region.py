"""Region boundaries: GeoJSON in, one validated (multi)polygon out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import shapely
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from vglpipe.errors import RegionError
from vglpipe.store.atomic import atomic_write_text

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
    geom = shapely.union_all([g if g.is_valid else shapely.make_valid(g) for g in geoms])
    geom = shapely.union_all([p for p in shapely.get_parts(geom) if p.geom_type == "Polygon"])
    if geom.is_empty or geom.area == 0:
        raise RegionError(f"{path}: the boundary encloses no area")
    minx, miny, maxx, maxy = geom.bounds
    if not (-180 <= minx and maxx <= 180 and -90 <= miny and maxy <= 90):
        raise RegionError(
            f"{path}: coordinates out of lon/lat range {geom.bounds}; GeoJSON must be WGS84 lon/lat"
        )
    return geom


def write_boundary(geom: BaseGeometry, path: str | os.PathLike, name: str) -> None:
    feature = {"type": "Feature", "properties": {"name": name}, "geometry": mapping(geom)}
    atomic_write_text(path, json.dumps({"type": "FeatureCollection", "features": [feature]}))
