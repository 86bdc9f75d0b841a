"""Token pooling layers: (B, T, C) backbone tokens → (B, dim) embedding (before L2 normalisation)."""

from __future__ import annotations

import torch
from torch import nn

#: LayerNorm epsilon of the reference code's pooling layers.
NORM_EPS = 1e-5


class AttentionPool(nn.Module):
    """Multi-head attention pooling with one learnable query (paper §3.3).

    Written as the reference code's "SpatialSoftmax": with a single query the
    query·key product collapses into one linear map C → heads, so per head
    the attention is a softmax over ALL tokens (every position of every LOD).
    Values (C → dim) are split into `heads` groups of dim/heads channels; each
    group is averaged with its head's attention weights; groups are concatenated.
    """

    def __init__(self, channels: int, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.norm = nn.LayerNorm(channels, eps=NORM_EPS)
        self.attn = nn.Linear(channels, heads, bias=False)
        self.value = nn.Linear(channels, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.norm(tokens)
        weights = self.attn(x).float().softmax(dim=1)  # (B, T, heads), fp32 under autocast
        values = self.value(x).unflatten(-1, (self.heads, -1))  # (B, T, heads, dim/heads)
        pooled = torch.einsum("bth,bthc->bhc", weights.to(values.dtype), values)
        return pooled.flatten(1)


class MeanPool(nn.Module):
    """Mean over all tokens → LayerNorm → Linear (the reference code's "Mean", as Sample4Geo)."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=NORM_EPS)
        self.proj = nn.Linear(channels, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(tokens.mean(dim=1)))


def make_pooling(kind: str, channels: int, dim: int, heads: int) -> nn.Module:
    if kind == "mha":
        return AttentionPool(channels, dim, heads)
    if kind == "mean":
        return MeanPool(channels, dim)
    raise ValueError(f"unknown pooling {kind!r}")
