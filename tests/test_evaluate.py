"""Evaluation of a region against a real faiss index: retrieval table, recall by year and hour,
the chance level; and localize's handling of one's own (bad) files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from vglpipe.geo.layout import make_layout
from vglpipe.geo.sphere import haversine_m, offset_m
from vglpipe.search import CellIndex, build_index
from vglpipe.search.evaluation import Queries, chance_counts, chance_recall, evaluate, local_year_hour
from vglpipe.search.spec import recommended_spec
from vglpipe.store.tables import read_table


def world(tmp_path, n_side=20, dim=16, seed=0):
    """A 20x20 patch of 30 m cells with random unit embeddings; queries near some cells, each
    with its own cell's embedding plus noise."""
    layout = make_layout("consistent", 30.0)
    lat0, lon0 = 42.36, -71.06
    r0, c0 = layout.cell_of(np.array([lat0]), np.array([lon0]))
    rows, cols = np.meshgrid(np.arange(n_side) + r0[0], np.arange(n_side) + c0[0], indexing="ij")
    from vglpipe.geo.layout import pack_ids

    ids = pack_ids(rows.ravel(), cols.ravel())
    rng = np.random.default_rng(seed)
    vec = rng.normal(size=(ids.size, dim)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    np.save(tmp_path / "cells.npy", vec.astype(np.float16))
    np.save(tmp_path / "cells.ids.npy", ids)
    build_index([(str(tmp_path / "cells.npy"), str(tmp_path / "cells.ids.npy"))], recommended_spec("flat", ids.size),
                tmp_path / "index", {"weights_id": "w", "layout": layout.describe()})
    m = 300
    pick = rng.integers(0, ids.size, m)
    clat, clon = layout.center_of_ids(ids[pick])
    qlat, qlon = offset_m(clat, clon, rng.uniform(-10, 10, m), rng.uniform(-10, 10, m))
    noise = np.where(np.arange(m)[:, None] < m // 2, 0.05, 3.0)  # half easy, half hopeless
    q = vec[pick] + noise * rng.normal(size=(m, dim)).astype(np.float32)
    years = np.array(["2015-06-01T13:00", "2021-01-01T02:30"], dtype="datetime64[ms]")
    cap = years[np.arange(m) % 2]
    return layout, ids, Queries(np.arange(1, m + 1, dtype=np.int64), q.astype(np.float16), qlat, qlon, cap,
                                qlat + 1e-4, qlon)


def test_evaluate_writes_tables_and_recall_as_defined(tmp_path):
    layout, ids, queries = world(tmp_path)
    index = CellIndex.load(tmp_path / "index")
    out = tmp_path / "eval"
    out.mkdir()
    res = evaluate(index, layout, queries, out, k=100, ns=(1, 5, 10, 50, 100), radii=(25.0, 50.0, 100.0),
                   min_count=200, timezone="America/New_York", chunk=64, meta={"weights_id": "w"})
    table = read_table(out / "retrieval.parquet").to_pandas()
    assert len(table) == 300 and table["top_ids"].iloc[0].shape == (100,)
    # R@N<r by the definition: any of the top N cells has its centre within r
    for r in (25.0, 50.0, 100.0):
        top = np.stack(table["top_ids"].to_numpy())
        lat, lon = layout.center_of_ids(top)
        d = haversine_m(table["lat"].to_numpy()[:, None], table["lon"].to_numpy()[:, None], lat, lon)
        for n in (1, 10, 100):
            assert res.recall[f"R@{n}<{r:g}m"] == pytest.approx(float((d[:, :n] <= r).any(axis=1).mean()))
    doc = json.loads((out / "recall.json").read_text())
    assert doc["R@1<50m"] > 0.4 and doc["n_queries"] == 300 and doc["k"] == 100
    assert 0 < doc["chance"]["R@1<50m"] < 0.1 and doc["chance"]["R@100<100m"] <= 1
    assert "true_positions" in doc
    by_year = pd.read_csv(out / "recall_by_year.csv")
    assert list(by_year["year"]) == [2015, 2020] and by_year["count"].sum() == 300  # 2021-01-01 02:30 UTC is 2020 in Boston
    assert by_year["flagged"].all()  # 150 < min_count 200
    by_hour = pd.read_csv(out / "recall_by_hour.csv")
    assert set(by_hour["hour"]) == {9, 21}  # 13:00 UTC = 09:00 EDT, 02:30 UTC = 21:30 EST


def test_chance_recall_matches_random_rankings():
    counts = np.array([0, 1, 5, 9])
    n = 50
    exact = chance_recall(counts, n, (1, 5, 50))
    rng = np.random.default_rng(0)
    sim = {1: [], 5: [], 50: []}
    for _ in range(4000):
        for N in sim:
            hits = [rng.permutation(n)[:N].min() < c if c else False for c in counts]
            sim[N].append(np.mean(hits))
    for N in sim:
        assert exact[N] == pytest.approx(np.mean(sim[N]), abs=0.01)
    assert exact[50] == pytest.approx(0.75)  # every cell retrieved: all queries with a cell within r


def test_chance_counts_only_count_indexed_cells():
    layout = make_layout("consistent", 30.0)
    lat, lon = np.array([42.36]), np.array([-71.06])
    near = layout.cells_within(lat, lon, 50.0).ids
    assert chance_counts(layout, near, lat, lon, 50.0)[0] == near.size
    assert chance_counts(layout, near[:2], lat, lon, 50.0)[0] == 2


def test_local_hour_in_time_zone_and_solar():
    cap = np.array(["2021-07-01T16:00"], dtype="datetime64[ms]")
    assert local_year_hour(cap, np.array([-71.0]), "America/New_York")[1][0] == 12
    assert local_year_hour(cap, np.array([-75.0]), "solar")[1][0] == 11


@pytest.mark.parametrize("content, message", [(b"not an image at all", "not a readable image"),
                                                (b"\xff\xd8\xff\xe0" + b"\0" * 40, "not a readable image")])
def test_localize_names_a_bad_photo_file(tmp_path, content, message):
    bad = tmp_path / "holiday.jpg"
    bad.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "vglpipe.localize", str(bad), "--model", str(tmp_path / "m"),
                           "--index", str(tmp_path / "i")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "holiday.jpg" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_localize_reads_exif_orientation(tmp_path):
    from PIL import Image

    from vglpipe.localize import read_photo

    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "p.jpg", exif=exif)
    assert read_photo(tmp_path / "p.jpg").shape == (40, 20, 3)
