"""Hard example mining (paper §3.5): greedy clustering of a scanned pool, and the scan-size schedule.

Mirrors the reference code's geoloc/hem.py (`sample_cluster`, `Sampler.scan_if_needed`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vglpipe.errors import ConfigError, InputError

from .loss import pairwise_distance_m

#: Above this many bytes the pool's similarity matrix is not materialised;
#: similarities are then computed one cluster member at a time (same result).
MAX_MATRIX_BYTES = 2**31

ArrayLike = np.ndarray | torch.Tensor


# ---------------------------------------------------------------- clustering


def build_clusters(
    street_emb: ArrayLike,
    aerial_emb: ArrayLike,
    street_latlon: ArrayLike,
    aerial_latlon: ArrayLike,
    cluster_size: int,
    mask_m: float,
    *,
    device: torch.device | str | None = None,
    max_matrix_bytes: int = MAX_MATRIX_BYTES,
    n_clusters: int | None = None,
) -> np.ndarray:
    """Partition a pool of n samples into n / cluster_size hard batches → (n_clusters, cluster_size) indices.

    Greedy, as the reference: a cluster starts at the first unassigned sample
    (the pool arrives shuffled), then repeatedly takes the unassigned sample
    whose aerial embedding has the highest summed similarity with the street
    embeddings of the members so far. Samples whose aerial cell lies within
    mask_m of a member's street position would be masked out of the loss, so
    they are taken only when nothing else is left (then the first such one).

    Runs on `device` (default: the embeddings' device): one Python step per
    sample, each a few vector operations of length n, without host syncs.
    `n_clusters` (default all n / cluster_size) builds only the first ones: the
    clusters are built in order, so they are those of the whole partition, at
    n_clusters / (n / cluster_size) of its (quadratic) cost.
    """
    street, aerial, s_ll, a_ll = _pool_tensors(street_emb, aerial_emb, street_latlon, aerial_latlon, device)
    n = street.shape[0]
    if cluster_size < 1 or n % cluster_size:
        raise InputError(f"mining pool of {n} samples is not a multiple of cluster_size={cluster_size}")
    n_clusters = n // cluster_size if n_clusters is None else n_clusters
    if not 1 <= n_clusters <= n // cluster_size:
        raise InputError(f"n_clusters={n_clusters} is not between 1 and the pool's {n // cluster_size} clusters")

    sim = street @ aerial.T if n * n * street.element_size() <= max_matrix_bytes else None

    def similarity_row(i: torch.Tensor) -> torch.Tensor:  # street_i · aerial_j for all j
        return sim.index_select(0, i)[0] if sim is not None else aerial @ street.index_select(0, i)[0]

    free = torch.ones(n, dtype=torch.bool, device=street.device)
    clusters = torch.empty((n_clusters, cluster_size), dtype=torch.long, device=street.device)
    for c in range(n_clusters):
        score = torch.zeros(n, dtype=street.dtype, device=street.device)
        near = torch.zeros(n, dtype=torch.bool, device=street.device)
        for k in range(cluster_size):
            i = _first(free) if k == 0 else _next_member(score, free, near)
            clusters[c, k : k + 1] = i
            free.index_fill_(0, i, False)
            score += similarity_row(i)
            near |= pairwise_distance_m(s_ll.index_select(0, i), a_ll)[0] <= mask_m
    return clusters.cpu().numpy()


def _first(flags: torch.Tensor) -> torch.Tensor:
    """(1,) index of the first True."""
    return flags.to(torch.uint8).argmax().view(1)


def _next_member(score: torch.Tensor, free: torch.Tensor, near: torch.Tensor) -> torch.Tensor:
    """(1,) index: best-scoring free sample not near a member, else the first free one."""
    ok = free & ~near
    best = torch.where(ok, score, float("-inf")).argmax().view(1)
    return torch.where(ok.any(), best, _first(free))


def _pool_tensors(street, aerial, street_ll, aerial_ll, device):
    if device is None:
        device = street.device if torch.is_tensor(street) else "cpu"

    def emb(x: ArrayLike) -> torch.Tensor:
        t = torch.as_tensor(x, device=device).detach()
        return t if t.dtype == torch.float64 else t.float()

    street_t, aerial_t = emb(street), emb(aerial)
    s_ll = torch.as_tensor(street_ll, device=device).to(torch.float64)
    a_ll = torch.as_tensor(aerial_ll, device=device).to(torch.float64)
    n = street_t.shape[0]
    if street_t.ndim != 2 or street_t.shape != aerial_t.shape:
        raise InputError(
            f"street and aerial embeddings must both be (n, D), got {tuple(street_t.shape)} and {tuple(aerial_t.shape)}"
        )
    for name, ll in (("street_latlon", s_ll), ("aerial_latlon", a_ll)):
        if tuple(ll.shape) != (n, 2):
            raise InputError(f"{name} must be ({n}, 2) degrees, got {tuple(ll.shape)}")
    if not (torch.isfinite(street_t).all() and torch.isfinite(aerial_t).all()):
        raise InputError("mining pool embeddings contain NaN or infinite values")
    return street_t, aerial_t, s_ll, a_ll


# ---------------------------------------------------------------- schedule


@dataclass(frozen=True)
class ScanPlan:
    """Scan (embed) the next `batches` × batch_size samples now and cluster them."""

    batches: int
    samples: int
    raised: bool  # the scan size was just multiplied by raise_factor


class MiningSchedule:
    """How many batches the next mining pool holds, and when that number grows (paper §3.5).

    The scan size (in batches) starts at first_scan_batches and is multiplied by
    raise_factor (capped at max_scan_batches) at the next scan once at least
    raise_after_samples samples were trained since the last raise. A scan of
    1 batch is plain random sampling (nothing to cluster). Two ways to drive it:

    * rounds: report every trained batch with `trained(n)`; when the mined
      batches of the last scan are used up, `next_scan_batches()` says how many
      batches to scan next;
    * per step, exactly as the reference Sampler's `scan_if_needed`:
      `before_step(step, queue_empty)` before every training step returns a
      ScanPlan when a pool must be scanned now (needs `batch_size`). The
      upcoming batch already counts as trained, and the queue is refilled only
      once it is empty; until the first scan batches are sampled at random.
      With first_scan_batches=1 the first scan therefore happens after
      raise_after_samples samples, with 2 batches.
    """

    _STATE_KEYS = ("scan_batches", "samples_since_raise", "started")

    def __init__(
        self,
        first_scan_batches: int = 1,
        raise_factor: float = 2.0,
        raise_after_samples: int = 5000,
        max_scan_batches: int = 16384,
        *,
        batch_size: int | None = None,
        pre_scan_batches: int = 0,
    ):
        self.first_scan_batches = first_scan_batches
        self.raise_factor = raise_factor
        self.raise_after_samples = raise_after_samples
        self.max_scan_batches = max_scan_batches
        self.batch_size = batch_size
        self.pre_scan_batches = pre_scan_batches
        self._validate()
        self.scan_batches = first_scan_batches
        self.samples_since_raise = 0
        self.started = False  # before_step only: a scan happened, batches now come from the queue

    def _validate(self) -> None:
        for key in ("first_scan_batches", "max_scan_batches"):
            if not _positive_int(getattr(self, key)):
                raise ConfigError(f"mining schedule: {key}={getattr(self, key)!r} must be a positive integer")
        if self.batch_size is not None and not _positive_int(self.batch_size):
            raise ConfigError(f"mining schedule: batch_size={self.batch_size!r} must be a positive integer")
        if self.max_scan_batches < self.first_scan_batches:
            raise ConfigError(
                f"mining schedule: max_scan_batches={self.max_scan_batches} < first_scan_batches={self.first_scan_batches}"
            )
        if not self.raise_factor >= 1:
            raise ConfigError(f"mining schedule: raise_factor={self.raise_factor!r} must be ≥ 1")
        if self.raise_after_samples < 0 or self.pre_scan_batches < 0:
            raise ConfigError("mining schedule: raise_after_samples and pre_scan_batches must be ≥ 0")

    @property
    def raise_due(self) -> bool:
        return self.samples_since_raise >= self.raise_after_samples

    def trained(self, samples: int) -> None:
        """Count samples trained on (call after each training batch)."""
        self.samples_since_raise += samples

    def next_scan_batches(self) -> int:
        """Batches to scan now; raises the scan size first if due."""
        if self.raise_due:
            self.scan_batches = min(math.ceil(self.raise_factor * self.scan_batches), self.max_scan_batches)
            self.samples_since_raise = 0
        return self.scan_batches

    def before_step(self, step: int, queue_empty: bool) -> ScanPlan | None:
        """The reference's per-step rule: a ScanPlan if a pool must be scanned before this step."""
        if self.batch_size is None:
            raise ConfigError("mining schedule: before_step needs batch_size")
        self.trained(self.batch_size)
        if not (queue_empty and (self.raise_due or self.scan_batches > 1) and step >= self.pre_scan_batches):
            return None
        self.started = True
        before = self.scan_batches
        batches = self.next_scan_batches()
        return ScanPlan(batches, batches * self.batch_size, raised=batches > before)

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self._STATE_KEYS}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = sorted(set(self._STATE_KEYS) - set(state))
        if missing:
            raise InputError(f"mining schedule state lacks {missing}")
        self.scan_batches = int(state["scan_batches"])
        self.samples_since_raise = int(state["samples_since_raise"])
        self.started = bool(state["started"])


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
