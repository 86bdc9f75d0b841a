"""Region boundaries from GeoJSON: what is accepted, and clear errors naming the file."""

from __future__ import annotations

import json

import pytest
from shapely.geometry import Polygon, mapping

from vglpipe.errors import RegionError
from vglpipe.demo.regions import DemoRegion
from vglpipe.geo.region import load_boundary, write_boundary

SQUARE = Polygon([(-71.1, 42.3), (-71.0, 42.3), (-71.0, 42.4), (-71.1, 42.4)])


@pytest.mark.parametrize(
    "wrap",
    [
        lambda g: g,
        lambda g: {"type": "Feature", "properties": {}, "geometry": g},
        lambda g: {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": g}]},
    ],
)
def test_geometry_feature_and_collection_are_accepted(tmp_path, wrap):
    path = tmp_path / "r.geojson"
    path.write_text(json.dumps(wrap(mapping(SQUARE))))
    assert load_boundary(path).equals(SQUARE)


def test_round_trip_keeps_holes_and_parts(tmp_path):
    for name, region in {"a": DemoRegion(42.45, -71.23, 800.0), "b": DemoRegion(-33.9, 151.2, 2000.0)}.items():
        geom = region.boundary()
        assert len(geom.interiors) == 1
        write_boundary(geom, tmp_path / f"{name}.geojson", name)
        assert load_boundary(tmp_path / f"{name}.geojson").equals(geom)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "region boundary file not found"),
        ("{not json", "not a readable GeoJSON file"),
        (json.dumps({"type": "Point", "coordinates": [0, 0]}), "expected Polygon/MultiPolygon"),
        (json.dumps({"type": "FeatureCollection", "features": []}), "no polygon"),
        (json.dumps(mapping(Polygon([(500000, 4600000), (500100, 4600000), (500100, 4600100)]))), "out of lon/lat range"),
    ],
)
def test_bad_boundaries_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.geojson"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RegionError, match=message) as info:
        load_boundary(path)
    assert "bad.geojson" in str(info.value)


def test_antimeridian_crossing_is_refused(tmp_path):
    path = tmp_path / "fiji.geojson"
    ring = [(179.5, -17.0), (-179.5, -17.0), (-179.5, -16.0), (179.5, -16.0), (179.5, -17.0)]
    path.write_text(json.dumps(mapping(Polygon(ring))))
    with pytest.raises(RegionError, match="antimeridian"):
        load_boundary(path)


def test_small_self_intersection_is_repaired_and_reported(tmp_path, caplog):
    # a square whose closing edge crosses its first edge: a tiny second lobe
    ring = [(-71.1, 42.3), (-71.0, 42.3), (-71.0, 42.4), (-71.1, 42.4), (-71.099, 42.299), (-71.1, 42.3)]
    path = tmp_path / "sliver.geojson"
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    with caplog.at_level("WARNING"):
        geom = load_boundary(path)
    assert geom.is_valid and geom.area == pytest.approx(0.00995, rel=0.01)
    assert "repaired an invalid boundary" in caplog.text and "sliver.geojson" in caplog.text


def test_bowtie_boundary_is_refused(tmp_path):
    """A self-intersecting 'bowtie' would silently become a different MultiPolygon."""
    path = tmp_path / "bowtie.geojson"
    ring = [(-71.1, 42.3), (-71.0, 42.4), (-71.0, 42.3), (-71.1, 42.4), (-71.1, 42.3)]
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    with pytest.raises(RegionError, match=r"bowtie.geojson: the boundary is not a valid polygon .*changes its area"):
        load_boundary(path)
