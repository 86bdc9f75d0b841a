"""The cells stage: photo assignment, region cells, the CLI, and a real Snakemake run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import shapely
import shapely.ops
import yaml
from pyproj import Geod

from conftest import run_snakemake, tool_env
from vglpipe.cells import assign_photos, enumerate_cells
from vglpipe.geo.layout import make_layout, unpack_ids
from vglpipe.geo.region import load_boundary, write_boundary
from vglpipe.demo.regions import DemoRegion, photo_positions
from vglpipe.settings import Settings, to_json
from vglpipe.store import atomic_path
from vglpipe.store.tables import read_metadata, read_table, write_table

REGION = DemoRegion(center_lat=42.36, center_lon=-71.06, size_m=800.0)
TOWN_TARGETS = ("results/cells/town/photo_cells.parquet", "results/cells/town/cells_30m.parquet")


def photos_table(n=600, seed=5):
    lat, lon = photo_positions(REGION, n, seed=seed, outside_fraction=0.1)
    ids = np.arange(1, lat.size + 1, dtype=np.int64) * 7919
    return ids, lat, lon


def test_assign_keeps_inside_photos_and_counts_the_rest():
    ids, lat, lon = photos_table()
    lat[3], lon[4] = np.nan, 400.0  # invalid coordinates
    ids[10] = ids[11]  # a repeated id
    geom = REGION.boundary()
    table, s = assign_photos(ids, lat, lon, geom, make_layout("consistent", 5), make_layout("consistent", 30))
    inside = shapely.intersects_xy(geom, lon, lat) & np.isfinite(lat) & (np.abs(lon) <= 180)
    assert s.photos_total == ids.size
    assert s.photos_invalid_coordinates == 2
    assert s.photos_duplicate_id == 1
    assert s.photos_inside + s.photos_outside_region + 3 == ids.size
    assert s.photos_outside_region > 0
    assert table.num_rows == s.photos_inside
    kept = table["image_id"].to_numpy()
    assert len(np.unique(kept)) == kept.size
    assert set(kept) <= set(ids[inside])
    # Every kept photo's cells contain the photo.
    lookup = {i: k for k, i in enumerate(ids) if k != 11}
    k = np.array([lookup[i] for i in kept])
    for column, cell_m in (("train_cell_id", 5), ("test_cell_id", 30)):
        layout = make_layout("consistent", cell_m)
        s_, n_, w_, e_ = layout.bounds(*unpack_ids(table[column].to_numpy()))
        assert np.all((s_ - 1e-9 <= lat[k]) & (lat[k] <= n_ + 1e-9) & (w_ - 1e-9 <= lon[k]) & (lon[k] <= e_ + 1e-9))


def test_enumerate_cells_table():
    table = enumerate_cells(REGION.boundary(), make_layout("consistent", 30))
    assert table.schema.names == ["id", "row", "col", "lat", "lon"]
    assert table.schema.field("id").type == pa.int64()
    assert shapely.contains_xy(REGION.boundary(), table["lon"].to_numpy(), table["lat"].to_numpy()).all()
    # ~ area / 30²: the 800 m square minus the notch and the pond.
    area_m2 = abs(Geod(ellps="WGS84").geometry_area_perimeter(REGION.boundary())[0])
    assert table.num_rows == pytest.approx(area_m2 / 900, rel=0.05)


def write_inputs(tmp_path, region_name="town"):
    """A user region: its GeoJSON boundary and photo metadata already there (crawled before).

    The user's boundary, the normalised boundary and the metadata are written in this order,
    so that Snakemake sees the metadata as up to date and does not re-crawl it.
    """
    ids, lat, lon = photos_table()
    boundary = tmp_path / f"{region_name}.geojson"
    write_boundary(REGION.boundary(), boundary, region_name)
    write_boundary(REGION.boundary(), tmp_path / "resources" / "regions" / f"{region_name}.geojson", region_name)
    photos = pa.table({"image_id": ids, "lat": lat, "lon": lon,
                       "captured_at": pa.array(np.zeros(ids.size, np.int64), pa.timestamp("ms", tz="UTC"))})
    photos_path = tmp_path / "results" / "photos" / region_name / "metadata.parquet"
    write_table(photos, photos_path)
    return photos_path, boundary, (ids, lat, lon)


def test_cli_writes_tables_with_layout_metadata(tmp_path):
    photos_path, boundary, _ = write_inputs(tmp_path)
    out = tmp_path / "out"
    config = tmp_path / "mercator.yaml"
    config.write_text(yaml.safe_dump({"layout": {"kind": "mercator", "mercator_reference_lat": 42.36}}))
    cmd = [sys.executable, "-m", "vglpipe.cells", "--config", str(config), "--photos", str(photos_path),
           "--boundary", str(boundary), "--out-photo-cells", str(out / "pc.parquet"), "--out-cells", str(out / "c.parquet"),
           "--out-summary", str(out / "s.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=tool_env())
    assert proc.returncode == 0, proc.stderr
    assert "outside (excluded)" in proc.stderr
    meta = read_metadata(out / "pc.parquet")
    assert meta["test_layout"] == {"kind": "mercator", "cell_m": 30.0, "earth_radius_m": 6378137.0, "reference_lat": 42.36}
    summary = json.loads((out / "s.json").read_text())
    assert summary["cells"] == read_table(out / "c.parquet").num_rows
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind


def test_cli_missing_column_names_file_and_column(tmp_path):
    bad = tmp_path / "photos.parquet"
    write_table(pa.table({"image_id": [1], "latitude": [42.0], "lon": [-71.0]}), bad)
    _, boundary, _ = write_inputs(tmp_path)
    cmd = [sys.executable, "-m", "vglpipe.cells", "--settings", to_json(Settings({}).cells_stage()),
           "--photos", str(bad), "--boundary", str(boundary), "--out-photo-cells", str(tmp_path / "pc.parquet"), "--out-cells", str(tmp_path / "c.parquet")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=tool_env())
    assert proc.returncode == 2
    assert "photos.parquet: missing column(s) lat" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "pc.parquet").exists()


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "t.parquet"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.workflow
def test_cells_stage_through_snakemake(workflow_dir):
    _, boundary, (ids, lat, lon) = write_inputs(workflow_dir)
    config = {"regions": {"town": {"boundary": "town.geojson", "role": "test"}}}
    (workflow_dir / "town.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(workflow_dir, *TOWN_TARGETS, "--configfile", "town.yaml")

    cells_dir = workflow_dir / "results" / "cells" / "town"
    photo_cells = read_table(cells_dir / "photo_cells.parquet")
    cells = read_table(cells_dir / "cells_30m.parquet")
    geom = load_boundary(boundary)
    inside = shapely.intersects_xy(geom, lon, lat)
    assert sorted(photo_cells["image_id"].to_pylist()) == sorted(ids[inside].tolist())
    layout = make_layout("consistent", 30)
    expected = enumerate_cells(geom, layout)
    assert cells["id"].to_pylist() == expected["id"].to_pylist()
    log = (workflow_dir / "logs" / "cells" / "town.log").read_text()
    assert f"{(~inside).sum()} outside (excluded)" in log
    assert (workflow_dir / "benchmarks" / "cells" / "town.tsv").exists()

    again = run_snakemake(workflow_dir, *TOWN_TARGETS, "--configfile", "town.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_swapped_lat_lon_boundary_is_refused_with_a_hint(tmp_path):
    photos_path, boundary, _ = write_inputs(tmp_path)
    geom = REGION.boundary()
    swapped = shapely.ops.transform(lambda x, y: (y, x), geom)
    write_boundary(swapped, tmp_path / "swapped.geojson", "swapped")
    cmd = [sys.executable, "-m", "vglpipe.cells", "--settings", to_json(Settings({}).cells_stage()),
           "--photos", str(photos_path), "--boundary", str(tmp_path / "swapped.geojson"),
           "--out-photo-cells", str(tmp_path / "pc.parquet"), "--out-cells", str(tmp_path / "c.parquet")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=tool_env())
    assert proc.returncode == 2
    assert "none of the" in proc.stderr and "[lat, lon]" in proc.stderr and "swapped.geojson" in proc.stderr
    assert not (tmp_path / "pc.parquet").exists()
