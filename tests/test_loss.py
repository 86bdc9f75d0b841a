"""vglpipe.train.loss: symmetric decoupled contrastive loss with geographic masking and label smoothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vglpipe.errors import InputError
from vglpipe.geo.sphere import EARTH_RADIUS_M, haversine_m
from vglpipe.train.loss import dcl_loss, pairwise_distance_m

SCALE = 6.0
BOSTON = (42.36, -71.06)


def slow_reference(street, aerial, s_ll, a_ll, mask_m, eps, decoupled) -> float:
    """The loss written from its definition with Python loops, in float64."""
    x = np.asarray(street, np.float64) @ np.asarray(aerial, np.float64).T
    b = x.shape[0]
    dist = [[float(haversine_m(s_ll[i][0], s_ll[i][1], a_ll[j][0], a_ll[j][1])) for j in range(b)] for i in range(b)]
    valid = [[i == j or dist[i][j] > mask_m for j in range(b)] for i in range(b)]

    def lse(values):
        m = max(values)
        return m + math.log(math.fsum(math.exp(v - m) for v in values))

    def query_loss(logits_row, valid_row, q):
        refs = [j for j in range(b) if valid_row[j]]
        if len(refs) < 2:
            return 0.0
        total = 0.0
        for j in refs:
            others = [logits_row[k] for k in refs if not (decoupled and k == j)]
            log_p = logits_row[j] - lse(others)
            weight = (1 - eps) if j == q else eps / (len(refs) - 1)
            total -= weight * log_p
        return total

    rows = [query_loss(x[i], valid[i], i) for i in range(b)]
    cols = [query_loss(x[:, j], [valid[i][j] for i in range(b)], j) for j in range(b)]
    return 0.5 * (sum(rows) / b + sum(cols) / b)


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1) * SCALE


def random_batch(b: int = 10, d: int = 16, seed: int = 0, spread_m: float = 300.0):
    """Embeddings with noisy positives; positions within a few hundred metres (so masks matter)."""
    g = torch.Generator().manual_seed(seed)
    street = unit(torch.randn(b, d, generator=g))
    aerial = unit(street + 1.2 * torch.randn(b, d, generator=g))
    deg = spread_m / 111_000
    s_ll = torch.tensor(BOSTON, dtype=torch.float64) + deg * torch.rand(b, 2, generator=g, dtype=torch.float64)
    a_ll = s_ll + 0.2 * deg * (torch.rand(b, 2, generator=g, dtype=torch.float64) - 0.5)
    return street, aerial, s_ll, a_ll


@pytest.mark.parametrize("decoupled", [True, False])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("mask_m", [0.0, 100.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_slow_reference(decoupled, eps, mask_m, seed):
    street, aerial, s_ll, a_ll = random_batch(seed=seed)
    out = dcl_loss(street, aerial, s_ll, a_ll, mask_m=mask_m, smoothing=eps, decoupled=decoupled)
    expected = slow_reference(street, aerial, s_ll.numpy(), a_ll.numpy(), mask_m, eps, decoupled)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_mask_is_active_in_the_random_batches():
    """Guard for the test above: the 100 m mask really removes some pairs, but not all."""
    _, _, s_ll, a_ll = random_batch()
    out = dcl_loss(*random_batch()[:2], s_ll, a_ll, mask_m=100.0, smoothing=0.1)
    assert 2 < out.refs_per_query.item() < 9.5


def test_stable_when_the_positive_dominates():
    """Logit gaps of ~70 make 1 − exp(−gap) round to 1 in float32; the result must still be exact."""
    b, d = 8, 32
    street = unit(torch.eye(b, d))
    aerial = street.clone()
    aerial[:, b] = -SCALE * 0.5  # negatives pushed apart, positives still aligned
    aerial = unit(aerial)
    s_ll = torch.tensor(BOSTON, dtype=torch.float64) + torch.arange(b, dtype=torch.float64)[:, None] * 0.01
    for eps in (0.0, 0.1):
        out = dcl_loss(street, aerial, s_ll, s_ll, mask_m=100.0, smoothing=eps)
        expected = slow_reference(street, aerial, s_ll.numpy(), s_ll.numpy(), 100.0, eps, True)
        assert torch.isfinite(out.loss)
        assert out.loss.item() == pytest.approx(expected, rel=1e-4)


def test_aligned_batch_has_low_loss_and_permuted_batch_high_loss():
    b = 16
    g = torch.Generator().manual_seed(3)
    street = unit(torch.randn(b, 64, generator=g))
    s_ll = torch.tensor(BOSTON, dtype=torch.float64) + torch.arange(b, dtype=torch.float64)[:, None] * 0.01
    aligned = dcl_loss(street, street.clone(), s_ll, s_ll, mask_m=100.0, smoothing=0.1)
    permuted = dcl_loss(street, street.roll(1, dims=0), s_ll, s_ll, mask_m=100.0, smoothing=0.1)
    assert aligned.loss.item() < permuted.loss.item() - 20
    assert aligned.recall_street_to_aerial.item() == aligned.recall_aerial_to_street.item() == 1.0
    assert permuted.recall_street_to_aerial.item() == permuted.recall_aerial_to_street.item() == 0.0


def _masked_pair_batch():
    """Street 0 and aerial 1 lie 10 m apart; everything else is kilometres apart."""
    b, d = 6, 16
    g = torch.Generator().manual_seed(5)
    street = unit(torch.randn(b, d, generator=g, dtype=torch.float64))
    aerial = unit(street + torch.randn(b, d, generator=g, dtype=torch.float64))
    ll = torch.tensor(BOSTON, dtype=torch.float64) + torch.arange(b, dtype=torch.float64)[:, None] * 0.05
    a_ll = ll.clone()
    a_ll[1] = ll[0] + torch.tensor([10 / 111_000, 0.0], dtype=torch.float64)
    return street, aerial, ll, a_ll


def _only_logit_01_changes(street: torch.Tensor, aerial: torch.Tensor) -> torch.Tensor:
    """aerial with row 1 moved along a direction orthogonal to every street embedding but street 0."""
    others = street[1:].T  # (d, b-1)
    q, _ = torch.linalg.qr(others)
    v = street[0] - q @ (q.T @ street[0])  # component of street 0 orthogonal to the others
    changed = aerial.clone()
    changed[1] = aerial[1] + 3.0 * v / v.norm()
    logits, new_logits = street @ aerial.T, street @ changed.T
    diff = (new_logits - logits).abs() > 1e-9
    assert diff.nonzero().tolist() == [[0, 1]]  # the construction touches exactly logit (0, 1)
    return changed


@pytest.mark.parametrize("decoupled", [True, False])
def test_masked_negative_has_no_effect(decoupled):
    street, aerial, s_ll, a_ll = _masked_pair_batch()
    changed = _only_logit_01_changes(street, aerial)
    kw = dict(smoothing=0.1, decoupled=decoupled)
    masked_before = dcl_loss(street, aerial, s_ll, a_ll, mask_m=30.0, **kw).loss
    masked_after = dcl_loss(street, changed, s_ll, a_ll, mask_m=30.0, **kw).loss
    assert masked_after.item() == pytest.approx(masked_before.item(), abs=1e-6)
    # Control: without the mask the same change does move the loss.
    open_before = dcl_loss(street, aerial, s_ll, a_ll, mask_m=0.0, **kw).loss
    open_after = dcl_loss(street, changed, s_ll, a_ll, mask_m=0.0, **kw).loss
    assert abs(open_after.item() - open_before.item()) > 1e-3


def test_reference_counts_and_metrics():
    street, aerial, s_ll, a_ll = _masked_pair_batch()
    out = dcl_loss(street, aerial, s_ll, a_ll, mask_m=30.0, smoothing=0.1)
    b = street.shape[0]
    assert out.refs_per_query.item() == pytest.approx((b * b - 1) / b)
    assert out.queries_per_ref.item() == pytest.approx((b * b - 1) / b)
    logits = street @ aerial.T
    beaten = [all(logits[i, j] <= logits[i, i] for j in range(b) if not (i == 0 and j == 1)) for i in range(b)]
    assert out.recall_street_to_aerial.item() == pytest.approx(np.mean(beaten))


def test_gradients_flow_and_stay_finite():
    street, aerial, s_ll, a_ll = random_batch()
    street.requires_grad_(True)
    aerial.requires_grad_(True)
    dcl_loss(street, aerial, s_ll, a_ll, mask_m=100.0, smoothing=0.1).loss.backward()
    for grad in (street.grad, aerial.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_all_pairs_masked_gives_zero_loss_and_finite_gradients():
    street, aerial, s_ll, _ = random_batch()
    s_ll = s_ll[:1].expand_as(s_ll).clone()  # everyone at the same spot
    street.requires_grad_(True)
    out = dcl_loss(street, aerial, s_ll, s_ll, mask_m=100.0, smoothing=0.1)
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert out.refs_per_query.item() == 1.0
    assert torch.isfinite(street.grad).all()
    assert math.isnan(out.recall_street_to_aerial.item())  # no query had a negative


def test_bf16_autocast_computes_the_loss_in_float32():
    street, aerial, s_ll, a_ll = random_batch()
    ref = dcl_loss(street, aerial, s_ll, a_ll, mask_m=100.0, smoothing=0.1).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = dcl_loss(street, aerial, s_ll, a_ll, mask_m=100.0, smoothing=0.1).loss
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(ref.item(), rel=1e-6)


def test_numpy_latlons_are_accepted():
    street, aerial, s_ll, a_ll = random_batch()
    a = dcl_loss(street, aerial, s_ll.numpy(), a_ll.numpy(), mask_m=100.0, smoothing=0.1).loss
    b = dcl_loss(street, aerial, s_ll, a_ll, mask_m=100.0, smoothing=0.1).loss
    assert a.item() == b.item()


def test_bad_shapes_are_input_errors():
    street, aerial, s_ll, a_ll = random_batch()
    with pytest.raises(InputError, match="embeddings"):
        dcl_loss(street, aerial[:-1], s_ll, a_ll, mask_m=100.0, smoothing=0.1)
    with pytest.raises(InputError, match="aerial_latlon"):
        dcl_loss(street, aerial, s_ll, a_ll[:, :1], mask_m=100.0, smoothing=0.1)
    with pytest.raises(InputError, match="smoothing"):
        dcl_loss(street, aerial, s_ll, a_ll, mask_m=100.0, smoothing=1.0)


def test_pairwise_distance_agrees_with_geo_sphere():
    rng = np.random.default_rng(0)
    a = np.column_stack([rng.uniform(-80, 80, 5), rng.uniform(-180, 180, 5)])
    b = np.column_stack([rng.uniform(-80, 80, 4), rng.uniform(-180, 180, 4)])
    ours = pairwise_distance_m(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    theirs = haversine_m(a[:, None, 0], a[:, None, 1], b[None, :, 0], b[None, :, 1])
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    deg = math.degrees(30.0 / EARTH_RADIUS_M)  # 30 m north
    here = torch.tensor([[42.0, -71.0]], dtype=torch.float64)
    north = torch.tensor([[42.0 + deg, -71.0]], dtype=torch.float64)
    assert pairwise_distance_m(here, north).item() == pytest.approx(30.0, rel=1e-9)
