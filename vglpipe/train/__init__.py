"""Training pieces: the contrastive loss (paper §3.4) and hard example mining (§3.5)."""

from .loss import LossOutput, dcl_loss, pairwise_distance_m
from .mining import MiningSchedule, ScanPlan, build_clusters

__all__ = ["LossOutput", "MiningSchedule", "ScanPlan", "build_clusters", "dcl_loss", "pairwise_distance_m"]
