"""GeoModel: street-view tower and aerial tower mapping into one embedding space (paper §3.3)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vglpipe.errors import InputError

from .backbone import create_backbone, feature_tokens
from .config import InputSpec, ModelConfig
from .pooling import make_pooling
from .weights import BackboneWeights, load_into_backbone, verify_loaded

log = logging.getLogger("vglpipe.model")


@dataclass
class GeoOutput:
    street: torch.Tensor  # (B, dim) float32, norm == config.scale
    aerial: torch.Tensor  # (B, dim) float32, norm == config.scale


class GeoModel(nn.Module):
    """Two towers (timm backbone + token pooling); embeddings are L2-normalised × scale.

    Inputs are float images normalised with `preprocess` (the config's mean/std).
    Any image size works (convolutional backbone, pooling over all tokens), but
    `input_spec` states what the model was configured and trained for.
    With `shared_towers` one backbone serves both domains; the pooling layers
    stay separate (as in the reference code).
    """

    def __init__(self, config: ModelConfig, weights: BackboneWeights | None = None):
        super().__init__()
        self.config = config
        self.street_backbone = create_backbone(config)
        self.aerial_backbone = None if config.shared_towers else create_backbone(config)
        channels = self.street_backbone.num_features
        self.street_pool = make_pooling(config.pooling, channels, config.dim, config.heads)
        self.aerial_pool = make_pooling(config.pooling, channels, config.dim, config.heads)
        if weights is not None:
            self._load_pretrained(weights)

    # ------------------------------------------------------------ inputs

    @property
    def input_spec(self) -> InputSpec:
        return self.config.input_spec

    def preprocess(self, images: torch.Tensor | np.ndarray, layout: str = "auto") -> torch.Tensor:
        """uint8 RGB images (..., H, W, 3) or (..., 3, H, W) → normalised float (..., 3, H, W)."""
        return preprocess(images, self.config.mean, self.config.std, layout=layout)

    # ------------------------------------------------------------ towers

    def embed_street(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised street-view images → (B, dim) embeddings."""
        _check_shape(images, 4, "street images (B, 3, H, W)")
        tokens = feature_tokens(self.street_backbone, images)
        return self._finish(self.street_pool(tokens))

    def embed_aerial(self, images: torch.Tensor) -> torch.Tensor:
        """(B, n_lods, 3, P, P) normalised aerial patches → (B, dim) cell embeddings.

        The backbone runs once on all B·n patches; each sample's tokens from all
        its LODs are concatenated and pooled together.
        """
        _check_shape(images, 5, "aerial images (B, n_lods, 3, P, P)")
        b, n = images.shape[:2]
        if n != self.config.n_lods:
            raise InputError(
                f"aerial images have {n} LODs per cell, model {self.config.name!r} expects n_lods={self.config.n_lods}"
            )
        tokens = feature_tokens(self.aerial_tower_backbone, images.flatten(0, 1))  # (B·n, T, C)
        tokens = tokens.reshape(b, n * tokens.shape[1], tokens.shape[2])  # (B, n·T, C)
        return self._finish(self.aerial_pool(tokens))

    def forward(self, street: torch.Tensor, aerial: torch.Tensor) -> GeoOutput:
        return GeoOutput(self.embed_street(street), self.embed_aerial(aerial))

    @property
    def aerial_tower_backbone(self) -> nn.Module:
        return self.street_backbone if self.aerial_backbone is None else self.aerial_backbone

    def _finish(self, pooled: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 even under bf16 autocast: the loss multiplies these.
        return F.normalize(pooled.float(), dim=-1, eps=1e-6) * self.config.scale

    # ------------------------------------------------------------ weights

    def _load_pretrained(self, weights: BackboneWeights) -> None:
        towers = {"street": self.street_backbone}
        if self.aerial_backbone is not None:
            towers["aerial"] = self.aerial_backbone
        loaded = {tower: load_into_backbone(bb, weights) for tower, bb in towers.items()}
        # Check after everything is built: nothing may have overwritten the weights.
        for tower, bb in towers.items():
            verify_loaded(bb, loaded[tower], weights.source, tower)


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX, as oneDNN sees it); elsewhere bf16
    autocast is emulated and slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the check
        return False


def prepare_for(model: GeoModel, device: torch.device, precision: str) -> tuple[GeoModel, bool]:
    """The one place that says what a ``precision`` setting (train/embed: "auto" | "bf16" | "fp32")
    means: "auto" and "bf16" give the model channels_last layout (faster convolutions on GPUs and
    CPUs); "auto" asks for bf16 autocast on CUDA, "bf16" also on a CPU that computes bf16 natively
    (fp32 on other CPUs, logged); returns the model and whether to autocast."""
    if precision in ("auto", "bf16"):
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        return model, precision != "fp32"
    if precision == "bf16" and device.type == "cpu":
        if cpu_computes_bf16():
            return model, True
        log.info("precision bf16: this CPU has no native bf16 (AVX512-BF16/AMX); computing in fp32")
    return model, False


def preprocess(
    images: torch.Tensor | np.ndarray,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    layout: str = "auto",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 RGB → ((x / 255) − mean) / std, channels first, on the input's device.

    layout: "channels_last" (..., H, W, 3), "channels_first" (..., 3, H, W) or
    "auto" (decided by which axis has size 3; ambiguous shapes must be explicit).
    """
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.dtype != torch.uint8:
        raise InputError(f"preprocess expects uint8 images (0..255), got dtype {x.dtype}")
    if x.ndim < 3:
        raise InputError(f"preprocess expects images (..., H, W, 3) or (..., 3, H, W), got shape {tuple(x.shape)}")
    layout = _resolve_layout(x.shape, layout)
    if layout == "channels_last":
        x = x.movedim(-1, -3)
    shape = (3, 1, 1)
    mean_t = torch.tensor(mean, dtype=dtype, device=x.device).view(shape)
    std_t = torch.tensor(std, dtype=dtype, device=x.device).view(shape)
    return (x.to(dtype) / 255.0 - mean_t) / std_t


def _resolve_layout(shape: torch.Size, layout: str) -> str:
    last, first = shape[-1] == 3, shape[-3] == 3
    if layout == "auto":
        if last and first:
            raise InputError(f"cannot tell the channel axis of images of shape {tuple(shape)}; pass layout=")
        if not (last or first):
            raise InputError(f"images of shape {tuple(shape)} have no RGB axis of size 3")
        return "channels_last" if last else "channels_first"
    if layout not in ("channels_last", "channels_first"):
        raise InputError(f"layout={layout!r} is not 'auto', 'channels_last' or 'channels_first'")
    if not (last if layout == "channels_last" else first):
        raise InputError(f"images of shape {tuple(shape)} are not {layout} RGB")
    return layout


def _check_shape(images: torch.Tensor, ndim: int, what: str) -> None:
    if images.ndim != ndim or images.shape[-3] != 3:
        raise InputError(f"expected {what}, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        raise InputError(f"expected normalised float {what}; run preprocess() on uint8 images first")
