"""R@N<r (paper §4.2) on hand-made cases with known answers; stratified and streamed recall."""

from __future__ import annotations

import dataclasses

import math

import numpy as np
import pytest

from vglpipe.geo.layout import make_layout
from vglpipe.geo.sphere import haversine_m, offset_m
from vglpipe.search.metrics import (
    RecallCounter,
    cell_centres,
    first_correct_rank,
    first_correct_ranks,
    recall_at,
    recall_by,
    recall_key,
)

LAT, LON = 42.36, -71.06


def _around(distances_m, bearing_deg=30.0):
    """Points at the given distances (m) from (LAT, LON) along one bearing."""
    d = np.asarray(distances_m, dtype=float)
    b = math.radians(bearing_deg)
    return offset_m(LAT, LON, d * math.sin(b), d * math.cos(b))


def test_first_correct_rank_hand_made():
    # query 0: cells at 120, 40, 10 m -> first within 50 m is rank 2, within 25 m rank 3, within 5 m none
    # query 1: cells at 3, 300, 900 m -> rank 1 for every radius >= 3 m
    # query 2: nothing within 50 m (the "no cell within r" case) -> 0
    lat0, lon0 = _around([120, 40, 10])
    lat1, lon1 = _around([3, 300, 900], 200.0)
    lat2, lon2 = _around([60, 75, 1000], 95.0)
    top_lat, top_lon = np.stack([lat0, lat1, lat2]), np.stack([lon0, lon1, lon2])
    q_lat, q_lon = np.full(3, LAT), np.full(3, LON)
    assert haversine_m(LAT, LON, lat0, lon0) == pytest.approx([120, 40, 10], abs=0.01)
    assert list(first_correct_rank(top_lat, top_lon, q_lat, q_lon, 50.0)) == [2, 1, 0]
    ranks = first_correct_ranks(top_lat, top_lon, q_lat, q_lon, [5.0, 25.0, 50.0, 100.0])
    assert {r: list(v) for r, v in ranks.items()} == {5.0: [0, 1, 0], 25.0: [3, 1, 0], 50.0: [2, 1, 0], 100.0: [2, 1, 1]}
    assert ranks[50.0].dtype == np.int32


def test_padding_is_never_correct():
    lat, lon = _around([10, 20])
    top_lat = np.array([[np.nan, lat[0]], [np.nan, np.nan]])
    top_lon = np.array([[np.nan, lon[0]], [np.nan, np.nan]])
    assert list(first_correct_rank(top_lat, top_lon, [LAT, LAT], [LON, LON], 50.0)) == [2, 0]


def test_cell_centres_of_search_results():
    layout = make_layout("consistent", 30.0)
    ids = np.array([[layout.ids_of(LAT, LON), -1]])
    lat, lon = cell_centres(layout, ids)
    assert haversine_m(lat[0, 0], lon[0, 0], LAT, LON) < 30 and np.isnan(lat[0, 1]) and np.isnan(lon[0, 1])


def test_recall_at_known_answer():
    ranks = np.array([1, 2, 0, 5, 3, 0, 1, 10], np.int32)  # 8 queries, top-10 retrieved
    r = recall_at(ranks, k=10, ns=(1, 2, 5, 10))
    assert r == {"R@1<50m": 2 / 8, "R@2<50m": 3 / 8, "R@5<50m": 5 / 8, "R@10<50m": 6 / 8}
    assert recall_key(100, 25.0) == "R@100<25m"
    assert recall_at(ranks, k=10, ns=(1,), radius_m=25.0) == {"R@1<25m": 2 / 8}


def test_ties_follow_the_retrieval_order():
    """Two cells with the same score: the metric takes the order it is given, no tie-break in the
    query's favour. Here the wrong cell came first, so R@1 is 0 and R@2 is 1."""
    lat, lon = _around([500, 10])  # rank 1: 500 m away, rank 2: 10 m away (tied score)
    ranks = first_correct_rank(lat[None], lon[None], [LAT], [LON], 50.0)
    assert list(ranks) == [2]
    assert recall_at(ranks, k=2, ns=(1, 2)) == {"R@1<50m": 0.0, "R@2<50m": 1.0}


def test_n_larger_than_k_or_the_number_of_cells():
    ranks = np.array([1, 3, 0], np.int32)
    with pytest.raises(ValueError, match=r"R@100 needs the top 100 cells, but only the top 5"):
        recall_at(ranks, k=5, ns=(1, 100))
    # an index of 4 cells searched with k=5: the list held every cell, so R@100 = R@5
    assert recall_at(ranks, k=5, ns=(1, 5, 100), n_cells=4) == {"R@1<50m": 1 / 3, "R@5<50m": 2 / 3, "R@100<50m": 2 / 3}
    # an index of 30 cells searched with k=100 (padded results): N up to 100 is fine
    assert recall_at(ranks, k=100, ns=(100,)) == {"R@100<50m": 2 / 3}
    assert math.isnan(recall_at(np.zeros(0, np.int32), k=5, ns=(1,))["R@1<50m"])
    with pytest.raises(ValueError, match="within 0..5"):
        recall_at(np.array([6]), k=5, ns=(1,))


def test_streaming_counter_equals_one_shot():
    rng = np.random.default_rng(0)
    ranks = rng.integers(0, 101, 10_000).astype(np.int32)
    counter = RecallCounter(k=100)
    other = RecallCounter(k=100)
    for i, chunk in enumerate(np.array_split(ranks, 7)):
        (counter if i % 2 else other).add(chunk)
    counter.merge(other)
    assert counter.count == ranks.size
    assert counter.recall() == recall_at(ranks, k=100)
    with pytest.raises(ValueError, match="same k"):
        counter.merge(RecallCounter(k=10))


def test_recall_by_strata_counts_and_min_count_flag():
    ranks = np.array([1, 0, 2, 1, 1, 0, 7], np.int32)
    keys = {"year": [2015, 2015, 2021, 2021, 2021, 2021, None], "night": [0, 0, 0, 0, 0, 1, 1]}
    table = recall_by(ranks, keys, k=10, ns=(1, 10), min_count=2)
    rows = {(None if (isinstance(y, float) and math.isnan(y)) else int(y), int(n)): row
            for y, n, row in zip(table["year"], table["night"], table.to_dict("records"))}
    assert set(rows) == {(2015, 0), (2021, 0), (2021, 1), (None, 1)}
    assert rows[(2015, 0)]["count"] == 2 and rows[(2015, 0)]["R@1<50m"] == 0.5 and not rows[(2015, 0)]["low_count"]
    assert rows[(2021, 0)]["count"] == 3 and rows[(2021, 0)]["R@1<50m"] == pytest.approx(2 / 3)
    assert rows[(2021, 0)]["R@10<50m"] == 1.0
    # strata below min_count are kept and flagged
    assert rows[(2021, 1)]["count"] == 1 and rows[(2021, 1)]["low_count"] and rows[(2021, 1)]["R@10<50m"] == 0.0
    assert rows[(None, 1)]["count"] == 1 and rows[(None, 1)]["low_count"] and rows[(None, 1)]["R@1<50m"] == 0.0
    assert table["count"].sum() == ranks.size
    assert list(table.columns) == ["year", "night", "count", "R@1<50m", "R@10<50m", "low_count"]
    with pytest.raises(ValueError, match="key rows"):
        recall_by(ranks[:3], keys, k=10, ns=(1,))


def test_end_to_end_with_an_index(tmp_path):
    """Cell ids from a search -> centres -> ranks -> recall: a photo at its own cell's centre is
    localized at rank 1; a photo 1 km away from every retrieved cell is not."""
    from vglpipe.search import CellIndex, build_index
    from vglpipe.search.spec import recommended_spec
    from vglpipe.search.synthetic import CellField, make_cells, write_shards

    cells = make_cells(400)
    shards = write_shards(cells, CellField(32, seed=0), tmp_path / "s", n_shards=1)
    plain = dataclasses.replace(recommended_spec("flat", 1), neighbour_weight=0.0)  # ranks by own score
    build_index(shards, plain, tmp_path / "idx", {})
    index = CellIndex.load(tmp_path / "idx")
    q = np.load(shards[0][0])[[10, 20]].astype(np.float32)
    ids = index.search(q, 3).ids
    lat, lon = cell_centres(make_layout("consistent", 30.0), ids)
    photo_lat, photo_lon = offset_m(cells.lat[[10, 20]], cells.lon[[10, 20]], np.array([0.0, 0.0]), np.array([0.0, 5000.0]))
    ranks = first_correct_rank(lat, lon, photo_lat, photo_lon, 50.0)
    assert list(ranks) == [1, 0]
    assert recall_at(ranks, k=3, ns=(1, 3)) == {"R@1<50m": 0.5, "R@3<50m": 0.5}
