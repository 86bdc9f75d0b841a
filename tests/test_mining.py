"""vglpipe.train.mining: greedy hard-example clustering and the scan-size schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vglpipe.errors import ConfigError, InputError
from vglpipe.geo.sphere import haversine_m
from vglpipe.train.mining import MiningSchedule, ScanPlan, build_clusters

BOSTON = np.array([42.36, -71.06])
M_PER_DEG = 111_000.0


def slow_reference(street, aerial, s_ll, a_ll, cluster_size, mask_m) -> np.ndarray:
    """The reference's greedy clustering written plainly (numpy, loops)."""
    n = len(street)
    free = np.ones(n, bool)
    clusters = []
    while free.any():
        members = [int(np.argmax(free))]
        while len(members) < cluster_size:
            candidates = [j for j in range(n) if free[j] and j not in members]
            far = [
                j
                for j in candidates
                if all(haversine_m(s_ll[m, 0], s_ll[m, 1], a_ll[j, 0], a_ll[j, 1]) > mask_m for m in members)
            ]
            if far:
                scores = [sum(float(street[m] @ aerial[j]) for m in members) for j in far]
                members.append(far[int(np.argmax(scores))])
            else:
                members.append(candidates[0])
        free[members] = False
        clusters.append(members)
    return np.array(clusters)


def synthetic_pool(n: int, d: int = 32, topics: int = 8, seed: int = 0, spread_m: float = 2000.0):
    """Embeddings around a few shared 'topics' (confusable samples), positions spread over a few km."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, d))
    topic = rng.integers(0, topics, n)
    street = centres[topic] + 0.7 * rng.normal(size=(n, d))
    aerial = street + 0.5 * rng.normal(size=(n, d))
    street /= np.linalg.norm(street, axis=1, keepdims=True)
    aerial /= np.linalg.norm(aerial, axis=1, keepdims=True)
    s_ll = BOSTON + rng.uniform(0, spread_m / M_PER_DEG, size=(n, 2))
    a_ll = s_ll + rng.uniform(-5, 5, size=(n, 2)) / M_PER_DEG
    return 6 * street, 6 * aerial, s_ll, a_ll


def assert_partition(clusters: np.ndarray, n: int, cluster_size: int) -> None:
    assert clusters.shape == (n // cluster_size, cluster_size)
    assert np.array_equal(np.sort(clusters.ravel()), np.arange(n))


def mean_negative_similarity(street, aerial, clusters) -> float:
    sims = []
    for members in clusters:
        s = street[members] @ aerial[members].T
        sims.append(s[~np.eye(len(members), dtype=bool)].mean())
    return float(np.mean(sims))


# ---------------------------------------------------------------- clustering


@pytest.mark.parametrize("as_torch", [False, True])
def test_clusters_partition_the_pool(as_torch):
    street, aerial, s_ll, a_ll = synthetic_pool(256)
    args = [torch.from_numpy(a) for a in (street, aerial, s_ll, a_ll)] if as_torch else [street, aerial, s_ll, a_ll]
    clusters = build_clusters(*args, cluster_size=16, mask_m=30.0)
    assert isinstance(clusters, np.ndarray)
    assert_partition(clusters, 256, 16)


def test_matches_the_slow_reference():
    street, aerial, s_ll, a_ll = synthetic_pool(96, spread_m=150.0)  # dense: the mask matters
    fast = build_clusters(street, aerial, s_ll, a_ll, cluster_size=8, mask_m=30.0)
    slow = slow_reference(street, aerial, s_ll, a_ll, cluster_size=8, mask_m=30.0)
    np.testing.assert_array_equal(fast, slow)


def test_similarity_matrix_and_streaming_paths_agree():
    street, aerial, s_ll, a_ll = synthetic_pool(512, seed=1)
    with_matrix = build_clusters(street, aerial, s_ll, a_ll, cluster_size=32, mask_m=30.0)
    streaming = build_clusters(street, aerial, s_ll, a_ll, cluster_size=32, mask_m=30.0, max_matrix_bytes=0)
    np.testing.assert_array_equal(with_matrix, streaming)


@pytest.mark.parametrize("max_matrix_bytes", [2**31, 0])
def test_the_first_clusters_are_those_of_the_whole_partition(max_matrix_bytes):
    """A training's last scan builds only the clusters it still trains on: the same ones."""
    street, aerial, s_ll, a_ll = synthetic_pool(256, spread_m=300.0, seed=2)
    whole = build_clusters(street, aerial, s_ll, a_ll, cluster_size=16, mask_m=30.0, max_matrix_bytes=max_matrix_bytes)
    for k in (1, 5, 16):
        first = build_clusters(street, aerial, s_ll, a_ll, cluster_size=16, mask_m=30.0,
                               max_matrix_bytes=max_matrix_bytes, n_clusters=k)
        np.testing.assert_array_equal(first, whole[:k])
    for bad in (0, 17):
        with pytest.raises(InputError, match=f"n_clusters={bad}"):
            build_clusters(street, aerial, s_ll, a_ll, cluster_size=16, mask_m=30.0, n_clusters=bad)


def test_seed_is_the_first_unassigned_sample():
    street, aerial, s_ll, a_ll = synthetic_pool(64)
    clusters = build_clusters(street, aerial, s_ll, a_ll, cluster_size=8, mask_m=30.0)
    assigned: set[int] = set()
    for members in clusters:
        assert members[0] == min(set(range(64)) - assigned)
        assigned |= set(members.tolist())


def test_no_two_members_closer_than_the_mask_when_the_pool_allows_it():
    """8 sites 1 km apart with 8 samples each (a few metres apart): each cluster takes one per site."""
    rng = np.random.default_rng(0)
    sites = BOSTON + np.arange(8)[:, None] * np.array([1000.0, 0.0]) / M_PER_DEG
    s_ll = np.repeat(sites, 8, axis=0) + rng.uniform(0, 3, size=(64, 2)) / M_PER_DEG
    a_ll = s_ll + rng.uniform(-2, 2, size=(64, 2)) / M_PER_DEG
    perm = rng.permutation(64)
    s_ll, a_ll = s_ll[perm], a_ll[perm]
    street = rng.normal(size=(64, 16))
    aerial = street.copy()  # same-site samples look alike: greedy would love to group them
    clusters = build_clusters(street, aerial, s_ll, a_ll, cluster_size=8, mask_m=30.0)
    assert_partition(clusters, 64, 8)
    for members in clusters:
        for i in members:
            for j in members:
                if i != j:
                    assert haversine_m(s_ll[i, 0], s_ll[i, 1], a_ll[j, 0], a_ll[j, 1]) > 30.0


def test_crowded_pool_still_partitions():
    """Everything at one spot: the mask cannot be honoured, clusters are still complete."""
    street, aerial, _, _ = synthetic_pool(64)
    ll = np.repeat(BOSTON[None], 64, axis=0)
    assert_partition(build_clusters(street, aerial, ll, ll, cluster_size=8, mask_m=30.0), 64, 8)


def test_mined_batches_are_harder_than_random_batches():
    street, aerial, s_ll, a_ll = synthetic_pool(1024, seed=2)
    mined = build_clusters(street, aerial, s_ll, a_ll, cluster_size=32, mask_m=30.0)
    random = np.random.default_rng(0).permutation(1024).reshape(32, 32)
    hard, easy = (mean_negative_similarity(street, aerial, c) for c in (mined, random))
    assert hard > easy + 5.0  # logits scale 36: mined negatives are far more similar


def test_pool_not_a_multiple_of_cluster_size_is_an_input_error():
    street, aerial, s_ll, a_ll = synthetic_pool(100)
    with pytest.raises(InputError, match="100 samples.*cluster_size=16"):
        build_clusters(street, aerial, s_ll, a_ll, cluster_size=16, mask_m=30.0)


def test_bad_inputs_are_input_errors():
    street, aerial, s_ll, a_ll = synthetic_pool(64)
    with pytest.raises(InputError, match="aerial_latlon"):
        build_clusters(street, aerial, s_ll, a_ll[:-1], cluster_size=8, mask_m=30.0)
    street[3, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        build_clusters(street, aerial, s_ll, a_ll, cluster_size=8, mask_m=30.0)


# ---------------------------------------------------------------- schedule


def run_schedule(schedule: MiningSchedule, steps: range, queue: list[int]) -> list[tuple[int, ScanPlan]]:
    """Drive the schedule like a training loop: scans fill the queue, mined training steps drain it."""
    plans = []
    for step in steps:
        plan = schedule.before_step(step, queue_empty=queue[0] == 0)
        if plan is not None:
            plans.append((step, plan))
            queue[0] += plan.batches
        if schedule.started:
            assert queue[0] > 0, "a mined training step found the queue empty"
            queue[0] -= 1
    return plans


def test_schedule_trace_by_hand():
    schedule = MiningSchedule(batch_size=10, raise_after_samples=30, max_scan_batches=8)
    plans = run_schedule(schedule, range(20), [0])
    assert [(s, p.batches, p.raised) for s, p in plans] == [
        (2, 2, True),  # 30 samples trained: first scan, already raised from 1 to 2 batches
        (4, 2, False),  # queue empty again, < 30 samples since the raise
        (6, 4, True),
        (10, 8, True),
        (18, 8, False),  # raise due, but capped at max_scan_batches
    ]
    assert all(p.samples == p.batches * 10 for _, p in plans)


def test_schedule_with_reference_defaults():
    schedule = MiningSchedule(batch_size=30)  # first 1, factor 2, after 5000 samples, max 16384 batches
    plans = run_schedule(schedule, range(6000), [0])
    first_step, first = plans[0]
    assert first_step == 166 and first.batches == 2  # 167 steps × 30 = 5010 ≥ 5000 samples
    sizes = [p.batches for _, p in plans]
    assert sizes == sorted(sizes) and max(sizes) <= 16384
    raises = [(s, p.batches) for s, p in plans if p.raised]
    for (s0, b0), (s1, b1) in zip(raises, raises[1:]):
        assert b1 == 2 * b0 and (s1 - s0) * 30 >= 5000


def test_random_sampling_until_the_first_scan():
    schedule = MiningSchedule(batch_size=30)
    for step in range(100):
        assert schedule.before_step(step, queue_empty=True) is None
    assert not schedule.started


def run_rounds(schedule: MiningSchedule, steps: int, batch_size: int) -> list[tuple[int, int]]:
    """Drive the schedule like a round-based loop: (start step, scan batches) of every round."""
    rounds, step = [], 0
    while step < steps:
        n = schedule.next_scan_batches()
        rounds.append((step, n))
        for _ in range(n):
            schedule.trained(batch_size)
            step += 1
    return rounds


def test_round_api_trace_by_hand():
    schedule = MiningSchedule(raise_after_samples=30, max_scan_batches=8)
    sizes = [n for _, n in run_rounds(schedule, 30, batch_size=10)]
    assert sizes[:9] == [1, 1, 1, 2, 2, 4, 8, 8, 8]  # 1 = a random batch; raises after ≥ 30 samples


def test_round_api_and_per_step_api_scan_the_same_sizes():
    """The round form is the reference rule with the upcoming batch counted one step later."""
    per_step = run_schedule(MiningSchedule(batch_size=30), range(40_000), [0])
    rounds = [(s, n) for s, n in run_rounds(MiningSchedule(), 40_000, batch_size=30) if n > 1]
    k = min(len(per_step), len(rounds)) - 1  # the last round may be cut off
    assert k > 10
    assert [p.batches for _, p in per_step[:k]] == [n for _, n in rounds[:k]]
    assert [s + 1 for s, _ in per_step[:k]] == [s for s, _ in rounds[:k]]


def test_schedule_state_round_trips_and_resumes_identically():
    a = MiningSchedule(batch_size=10, raise_after_samples=30, max_scan_batches=64)
    queue_a = [0]
    run_schedule(a, range(23), queue_a)
    b = MiningSchedule(batch_size=10, raise_after_samples=30, max_scan_batches=64)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    queue_b = list(queue_a)
    assert run_schedule(a, range(23, 200), queue_a) == run_schedule(b, range(23, 200), queue_b)


def test_schedule_rejects_bad_settings_and_state():
    with pytest.raises(ConfigError, match="max_scan_batches"):
        MiningSchedule(batch_size=30, first_scan_batches=8, max_scan_batches=4)
    with pytest.raises(ConfigError, match="batch_size"):
        MiningSchedule(batch_size=0)
    with pytest.raises(ConfigError, match="raise_factor"):
        MiningSchedule(batch_size=30, raise_factor=0.5)
    with pytest.raises(InputError, match="samples_since_raise"):
        MiningSchedule(batch_size=30).load_state_dict({"scan_batches": 4, "started": True})
