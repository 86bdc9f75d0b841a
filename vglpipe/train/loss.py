"""Symmetric decoupled contrastive loss with geographic masking and label smoothing (paper §3.4).

Follows the reference code's `crossentropy` (geoloc/loss.py):

* logits = street @ aerial.T (embeddings are already unit vectors × scale);
* pair (i, j) is valid unless street photo i lies within `mask_m` metres of
  aerial cell j's centre (such a "negative" may show the same place); the
  diagonal (the positive pairs) is always valid;
* decoupled log-softmax: each entry's own term is left out of its denominator,
  log p_ij = x_ij − logsumexp_{k valid, k≠j} x_ik (for j = i: the positive is
  removed from the denominator, as in DCL);
* label smoothing: weight 1−ε on the positive, ε/(n_i − 1) on each of the
  other n_i − 1 valid references of query i;
* queries with fewer than 2 valid references contribute 0 but still count in
  the mean; the loss is the mean of the street→aerial (rows) and
  aerial→street (columns) losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vglpipe.errors import InputError
from vglpipe.geo.sphere import EARTH_RADIUS_M


@dataclass
class LossOutput:
    """The loss and detached batch metrics (0-dim tensors: call .item() when logging)."""

    loss: torch.Tensor
    recall_street_to_aerial: torch.Tensor  # in-batch R@1 over street queries with ≥ 2 valid refs
    recall_aerial_to_street: torch.Tensor  # in-batch R@1 over aerial queries with ≥ 2 valid refs
    refs_per_query: torch.Tensor  # mean number of valid aerial references per street query
    queries_per_ref: torch.Tensor  # mean number of valid street queries per aerial reference


def pairwise_distance_m(a_latlon: torch.Tensor, b_latlon: torch.Tensor) -> torch.Tensor:
    """(A, 2) × (B, 2) degrees → (A, B) great-circle metres (float64; as vglpipe.geo.sphere.haversine_m)."""
    a = torch.deg2rad(a_latlon.to(torch.float64))
    b = torch.deg2rad(b_latlon.to(torch.float64))
    lat1, lon1 = a[:, None, 0], a[:, None, 1]
    lat2, lon2 = b[None, :, 0], b[None, :, 1]
    h = torch.sin((lat2 - lat1) / 2) ** 2 + torch.cos(lat1) * torch.cos(lat2) * torch.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * torch.arcsin(torch.sqrt(h.clamp(0.0, 1.0)))


def valid_pairs(street_latlon: torch.Tensor, aerial_latlon: torch.Tensor, mask_m: float) -> torch.Tensor:
    """(B, B) bool: pair (i, j) may serve as a negative (farther than mask_m), or is the positive."""
    valid = pairwise_distance_m(street_latlon, aerial_latlon) > mask_m
    return valid | torch.eye(valid.shape[0], dtype=torch.bool, device=valid.device)


def dcl_loss(
    street: torch.Tensor,
    aerial: torch.Tensor,
    street_latlon: torch.Tensor | np.ndarray,
    aerial_latlon: torch.Tensor | np.ndarray,
    mask_m: float,
    smoothing: float,
    decoupled: bool = True,
) -> LossOutput:
    """Symmetric (decoupled) contrastive loss of a batch of B positive pairs (row i ↔ column i).

    street, aerial: (B, D) scaled embeddings; *_latlon: (B, 2) degrees (street
    camera positions, aerial cell centres); mask_m: pairs closer than this are
    no negatives; smoothing: label smoothing ε.
    """
    _check_inputs(street, aerial, street_latlon, aerial_latlon, smoothing)
    device = street.device
    street_ll = torch.as_tensor(street_latlon, device=device)
    aerial_ll = torch.as_tensor(aerial_latlon, device=device)
    valid = valid_pairs(street_ll, aerial_ll, mask_m)

    with torch.autocast(device_type=device.type, enabled=False):
        logits = street.float() @ aerial.float().T  # fp32 even under bf16 autocast
        loss_rows = _query_losses(logits, valid, smoothing, decoupled)  # street queries
        loss_cols = _query_losses(logits.T, valid.T, smoothing, decoupled)  # aerial queries
    loss = 0.5 * (loss_rows.mean() + loss_cols.mean())

    with torch.no_grad():
        return LossOutput(
            loss=loss,
            recall_street_to_aerial=_batch_recall(logits, valid),
            recall_aerial_to_street=_batch_recall(logits.T, valid.T),
            refs_per_query=valid.sum(1).float().mean(),
            queries_per_ref=valid.sum(0).float().mean(),
        )


def _query_losses(logits: torch.Tensor, valid: torch.Tensor, eps: float, decoupled: bool) -> torch.Tensor:
    """(B,) smoothed cross-entropy per query (row); 0 for rows with < 2 valid references."""
    n_valid = valid.sum(1)
    log_p = _decoupled_log_softmax(logits, valid) if decoupled else _log_softmax(logits, valid)
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    neg_weight = (eps / (n_valid - 1).clamp(min=1)).unsqueeze(1)
    target = torch.where(eye, torch.full_like(logits, 1.0 - eps), neg_weight.expand_as(logits))
    losses = -(torch.where(valid, log_p, 0.0) * target).sum(1)
    return torch.where(n_valid >= 2, losses, 0.0)


def _log_softmax(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return x.masked_fill(~valid, float("-inf")).log_softmax(dim=1).masked_fill(~valid, 0.0)


def _decoupled_log_softmax(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x_ij − log Σ_{k valid, k≠j} exp x_ik, computed stably (no 1 − exp(·) cancellation).

    For j other than the row's arg-max, Σ_{k≠j} is ≥ half of the full sum (it
    keeps the maximum), so subtracting exp(x_ij) from the full sum is exact to
    rounding. For j = arg-max the sum is recomputed without it. Rows without
    another valid entry yield garbage that the caller masks out (kept finite,
    so gradients stay NaN-free).
    """
    xm = x.masked_fill(~valid, float("-inf"))
    top, arg = xm.detach().max(dim=1, keepdim=True)  # finite: the diagonal is always valid
    total = torch.exp(xm - top).sum(1, keepdim=True)  # ≥ 1
    others = (total - torch.exp(xm - top)).clamp(min=torch.finfo(x.dtype).tiny)
    loo = top + torch.log(others)  # correct wherever j ≠ arg-max

    without_top = xm.scatter(1, arg, float("-inf"))
    top2 = without_top.detach().max(dim=1, keepdim=True).values
    top2 = torch.where(torch.isfinite(top2), top2, torch.zeros_like(top2))
    rest = torch.exp(without_top - top2).sum(1, keepdim=True)
    loo_at_top = top2 + torch.log(torch.where(rest > 0, rest, torch.ones_like(rest)))

    is_top = torch.zeros_like(valid).scatter(1, arg, True)
    loo = torch.where(is_top, loo_at_top.expand_as(loo), loo)
    return torch.where(valid, x - loo, 0.0)


def _batch_recall(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Share of queries (rows with ≥ 2 valid refs) whose positive beats every valid negative."""
    positive = logits.diagonal().unsqueeze(1)
    beaten = ((logits > positive) & valid).sum(1) == 0
    rows = valid.sum(1) >= 2
    return (beaten & rows).sum() / rows.sum()  # NaN if no row qualifies; no host sync


def _check_inputs(street, aerial, street_latlon, aerial_latlon, smoothing) -> None:
    if street.ndim != 2 or street.shape != aerial.shape:
        raise InputError(
            f"street and aerial embeddings must both be (B, D), got {tuple(street.shape)} and {tuple(aerial.shape)}"
        )
    b = street.shape[0]
    for name, ll in (("street_latlon", street_latlon), ("aerial_latlon", aerial_latlon)):
        if tuple(ll.shape) != (b, 2):
            raise InputError(f"{name} must be ({b}, 2) degrees, got {tuple(ll.shape)}")
    if not 0.0 <= smoothing < 1.0:
        raise InputError(f"label smoothing must be in [0, 1), got {smoothing}")
