"""The §3.1 cell layout and the Mercator baseline: properties checked against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Polygon

from vglpipe.errors import ConfigError, RegionError
from vglpipe.geo.layout import (
    ConsistentLayout,
    MercatorLayout,
    band_edge_ratio,
    make_layout,
    pack_ids,
    unpack_ids,
)
from vglpipe.geo.sphere import EARTH_RADIUS_M, haversine_m

lats = st.floats(-85.0, 85.0, allow_nan=False)
lons = st.floats(-179.9, 179.9, allow_nan=False)
cell_sizes = st.sampled_from([1.0, 5.0, 30.0, 100.0]) | st.floats(0.5, 2000.0)
layouts = st.builds(
    make_layout,
    kind=st.sampled_from(["consistent", "mercator"]),
    cell_m=cell_sizes,
    reference_lat=st.floats(-60, 60),
)


# ---------------------------------------------------------------- supplementary S3


def test_s3_band_edge_ratio_matches_closed_form_and_paper_bound():
    """k over all bands within ±85.06° for l = 30 m: closed form tan(φmax)·l/r; the paper's ε is looser."""
    k = band_edge_ratio(30.0, 85.06)
    eps = 1 - k
    # Worst band: the last one fully below 85.06°; to first order 1 - cos(φb)/cos(φa) ≈ tan(φ)·l/r.
    closed_form = math.tan(math.radians(85.06)) * 30.0 / EARTH_RADIUS_M
    assert eps == pytest.approx(closed_form, rel=5e-3)
    assert eps == pytest.approx(5.4e-5, rel=0.01)  # ≈ 1.6 mm over 30 m
    assert eps * 30.0 == pytest.approx(1.63e-3, rel=0.01)  # metres of side difference
    # The paper states k > 1 - ε with ε ≈ 6.3e-4 (1.9 cm): true, but ~12x looser than the formula gives.
    assert k > 1 - 6.3e-4
    assert (6.3e-4) / eps > 10


def test_s3_bound_scales_with_cell_size():
    assert 1 - band_edge_ratio(60.0) == pytest.approx(2 * (1 - band_edge_ratio(30.0)), rel=0.01)


# ---------------------------------------------------------------- ids


@given(st.integers(-(2**30) + 1, 2**30 - 1), st.integers(-(2**31) + 1, 2**31 - 1))
def test_pack_unpack_round_trip(row, col):
    ids = pack_ids(np.array([row]), np.array([col]))
    assert ids.dtype == np.int64 and ids[0] >= 0
    r, c = unpack_ids(ids)
    assert (r[0], c[0]) == (row, col)


def test_ids_sort_row_major():
    rows = np.array([-2, -2, -1, 0, 0, 5])
    cols = np.array([-7, 3, -100, -1, 0, 2])
    ids = pack_ids(rows, cols)
    assert np.all(np.diff(ids) > 0)


# ---------------------------------------------------------------- point ↔ cell


@settings(max_examples=300)
@given(layouts, lats, lons)
def test_point_lies_in_its_cell(layout, lat, lon):
    row, col = layout.cell_of(np.array([lat]), np.array([lon]))
    south, north, west, east = layout.bounds(row, col)
    tol = 1e-9
    assert south[0] - tol <= lat <= north[0] + tol
    assert west[0] - tol <= lon <= east[0] + tol


@settings(max_examples=300)
@given(layouts, lats, lons)
def test_id_row_col_centre_round_trip(layout, lat, lon):
    row, col = layout.cell_of(np.array([lat]), np.array([lon]))
    ids = pack_ids(row, col)
    r2, c2 = unpack_ids(ids)
    assert (r2[0], c2[0]) == (row[0], col[0])
    clat, clon = layout.center_of_ids(ids)
    # The centre of a cell is assigned to that same cell.
    r3, c3 = layout.cell_of(clat, clon)
    assert (r3[0], c3[0]) == (row[0], col[0])
    assert np.array_equal(layout.ids_of(clat, clon), ids)


def test_consistent_layout_formulas():
    """φ_i = i·l/r and λ_ij = j·l/(r cos φ_i), as in the paper."""
    layout = ConsistentLayout(30.0)
    r = EARTH_RADIUS_M
    lat, lon = layout.center(np.array([1000, -4000]), np.array([7, -3]))
    phi = np.array([1000, -4000]) * 30.0 / r
    assert np.allclose(np.radians(lat), phi, rtol=0, atol=1e-15)
    assert np.allclose(np.radians(lon), np.array([7, -3]) * 30.0 / (r * np.cos(phi)), rtol=1e-12, atol=0)


@settings(max_examples=200)
@given(st.floats(-84.9, 84.9), lons, st.sampled_from([5.0, 30.0, 100.0]))
def test_consistent_cells_are_l_metres_within_1cm(lat, lon, cell_m):
    layout = ConsistentLayout(cell_m)
    row, col = layout.cell_of(np.array([lat]), np.array([lon]))
    s, n, w, e = (float(v[0]) for v in layout.bounds(row, col))
    c = float(layout.center(row, col)[0][0])
    height = haversine_m(s, w, n, w)
    widths = [haversine_m(phi, w, phi, e) for phi in (s, c, n)]
    for size in (height, *widths):
        assert abs(size - cell_m) < 0.01


@settings(max_examples=200)
@given(st.floats(-84.9, 84.9), lons, st.floats(-60, 60))
def test_mercator_cells_shrink_as_cos_lat(lat, lon, reference_lat):
    layout = MercatorLayout(30.0, reference_lat=reference_lat)
    row, col = layout.cell_of(np.array([lat]), np.array([lon]))
    s, n, w, e = (float(v[0]) for v in layout.bounds(row, col))
    c = float(layout.center(row, col)[0][0])
    width = haversine_m(c, w, c, e)
    height = haversine_m(s, w, n, w)
    expected = 30.0 * math.cos(math.radians(c)) / math.cos(math.radians(reference_lat))
    assert width == pytest.approx(expected, rel=1e-6)
    assert height == pytest.approx(expected, rel=2e-3)  # square up to Mercator's local scale change


def test_mercator_matches_epsg3857_via_pyproj():
    """Row/column centres lie on a regular grid in EPSG:3857 (independent check with pyproj)."""
    from pyproj import Transformer

    layout = MercatorLayout(30.0)
    to_3857 = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    rows = np.array([170000, 170001, 170002, 180000])
    cols = np.array([-260000, -259999, -1, 5])
    lat, lon = layout.center(rows, cols)
    x, y = to_3857.transform(lon, lat)
    assert np.allclose(x, cols * 30.0, atol=1e-6)
    assert np.allclose(y, rows * 30.0, atol=1e-6)


def test_make_layout_rejects_unknown_kind():
    with pytest.raises(ConfigError, match="layout.kind"):
        make_layout("hexagonal", 30.0)


# ---------------------------------------------------------------- radius query


def brute_force_within(layout, lat, lon, radius_m):
    """Every cell in a generous window of rows/columns, filtered by haversine distance."""
    row0 = int(layout.row_of_lat(np.array([lat]))[0])
    height_m = float(layout.cell_size_m(np.array([row0]))[0][0])
    dr = int(math.ceil(radius_m / height_m)) + 3
    found = set()
    for r in range(row0 - dr, row0 + dr + 1):
        step = float(layout.col_step_deg(np.array([r]))[0])
        width_m = float(layout.cell_size_m(np.array([r]))[1][0])
        c0 = int(math.floor(lon / step + 0.5))
        dc = int(math.ceil(radius_m / width_m * 1.01)) + 3
        cols = np.arange(c0 - dc, c0 + dc + 1)
        rows = np.full(cols.shape, r)
        clat, clon = layout.center(rows, cols)
        d = haversine_m(lat, lon, clat, clon, layout.radius_m)
        found |= set(pack_ids(rows[d <= radius_m], cols[d <= radius_m]).tolist())
    return found


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["consistent", "mercator"]),
    st.sampled_from([5.0, 30.0]),
    st.floats(-80, 80),
    lons,
    st.sampled_from([0.0, 10.0, 29.9, 50.0, 137.0]),
)
def test_radius_query_equals_brute_force(kind, cell_m, lat, lon, radius_m):
    layout = make_layout(kind, cell_m)
    result = layout.cells_within(np.array([lat]), np.array([lon]), radius_m)
    assert set(result.ids.tolist()) == brute_force_within(layout, lat, lon, radius_m)
    assert len(set(result.ids.tolist())) == result.ids.size  # no duplicates
    assert np.all(result.distance_m <= radius_m)


def test_radius_query_many_points_keeps_point_index():
    layout = make_layout("consistent", 30.0)
    rng = np.random.default_rng(3)
    lat = rng.uniform(41, 43, 500)
    lon = rng.uniform(-73, -70, 500)
    res = layout.cells_within(lat, lon, 50.0, chunk=64)
    for k in (0, 17, 499):
        assert set(res.ids[res.point == k].tolist()) == brute_force_within(layout, lat[k], lon[k], 50.0)
    # A 50 m disc holds ~π·50²/30² ≈ 8.7 cell centres on average.
    assert 7.5 < res.ids.size / 500 < 10


# ---------------------------------------------------------------- polygon enumeration


def star(lat0, lon0, radii_m, phase=0.0):
    k = len(radii_m)
    ang = phase + np.arange(k) * 2 * np.pi / k
    dn = np.asarray(radii_m) * np.sin(ang)
    de = np.asarray(radii_m) * np.cos(ang)
    lat = lat0 + np.degrees(dn / EARTH_RADIUS_M)
    lon = lon0 + np.degrees(de / (EARTH_RADIUS_M * np.cos(np.radians(lat0))))
    return list(zip(lon, lat))


def brute_force_polygon(layout, geom):
    minx, miny, maxx, maxy = geom.bounds
    rows = np.arange(layout.row_of_lat(np.array([miny]))[0] - 2, layout.row_of_lat(np.array([maxy]))[0] + 3)
    out = set()
    for r in rows:
        step = float(layout.col_step_deg(np.array([r]))[0])
        cols = np.arange(math.floor(minx / step) - 2, math.ceil(maxx / step) + 3)
        rr = np.full(cols.shape, r)
        lat, lon = layout.center(rr, cols)
        inside = shapely.contains_xy(geom, lon, lat)
        out |= set(pack_ids(rr[inside], cols[inside]).tolist())
    return out


@st.composite
def regions(draw):
    lat0 = draw(st.floats(-70, 70))
    lon0 = draw(st.floats(-170, 170))
    k = draw(st.integers(3, 24))
    radii = draw(st.lists(st.floats(60, 600), min_size=k, max_size=k))
    outer = star(lat0, lon0, radii)
    holes = []
    if draw(st.booleans()):
        hk = draw(st.integers(3, 10))
        holes.append(star(lat0, lon0, [0.4 * min(radii)] * hk, phase=0.1))
    poly = Polygon(outer, holes)
    if draw(st.booleans()):
        far = star(lat0 + np.degrees(1500 / EARTH_RADIUS_M), lon0, draw(st.lists(st.floats(60, 300), min_size=3, max_size=8)))
        return MultiPolygon([poly, Polygon(far)])
    return poly


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["consistent", "mercator"]), st.sampled_from([5.0, 30.0]), regions())
def test_polygon_cells_equal_brute_force(kind, cell_m, geom):
    assume(geom.is_valid)
    layout = make_layout(kind, cell_m)
    row, col = layout.cells_in_polygon(geom)
    ids = pack_ids(row, col)
    assert len(set(ids.tolist())) == ids.size
    differ = set(ids.tolist()) ^ brute_force_polygon(layout, geom)
    # Only a centre lying exactly on the boundary may go either way.
    if differ:
        lat, lon = layout.center_of_ids(np.array(sorted(differ)))
        assert np.all(shapely.distance(geom.boundary, shapely.points(lon, lat)) < 1e-9)
    assert np.all(np.diff(ids) > 0)  # row-major order


def test_polygon_with_hole_excludes_hole_cells():
    outer = star(42.36, -71.06, [500] * 32)
    hole = star(42.36, -71.06, [200] * 32)
    layout = make_layout("consistent", 30.0)
    full = set(pack_ids(*layout.cells_in_polygon(Polygon(outer))).tolist())
    ring = set(pack_ids(*layout.cells_in_polygon(Polygon(outer, [hole]))).tolist())
    hole_cells = set(pack_ids(*layout.cells_in_polygon(Polygon(hole))).tolist())
    assert ring == full - hole_cells
    # Areas: ~π(500² − 200²)/30² cells.
    assert len(ring) == pytest.approx(math.pi * (500**2 - 200**2) / 900, rel=0.05)


@pytest.mark.parametrize("geom", [Polygon(), shapely.Point(0, 0).buffer(0), shapely.LineString([(0, 0), (1, 1)])])
def test_polygon_enumeration_rejects_non_areas(geom):
    with pytest.raises(RegionError):
        make_layout("consistent", 30.0).cells_in_polygon(geom)
