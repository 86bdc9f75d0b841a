"""timm backbones as feature extractors: creation, head removal, feature map → tokens."""

from __future__ import annotations

import timm
import torch
from torch import nn

from vglpipe.errors import ConfigError

from .config import ModelConfig


def create_backbone(config: ModelConfig) -> nn.Module:
    """A randomly initialised timm model whose classifier head is removed.

    Only `forward_features` is used; the head (e.g. ConvNeXt's final norm and fc)
    would hold parameters that never receive a gradient, so it is replaced by
    nn.Identity. The full timm name (with pretrained tag) is used so that
    `backbone.pretrained_cfg` describes the weights the config refers to.
    """
    name = config.pretrained_name or config.backbone
    try:
        model = timm.create_model(name, pretrained=False, **config.backbone_kwargs)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"model config {config.name!r}: timm cannot create backbone {name!r} "
            f"with backbone_kwargs={config.backbone_kwargs!r}: {exc}"
        ) from exc
    for prefix in head_prefixes(model):
        setattr(model, prefix, nn.Identity())
    return model


def head_prefixes(model: nn.Module) -> list[str]:
    """Top-level module names holding the classifier (per timm's pretrained_cfg)."""
    classifiers = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    if isinstance(classifiers, str):
        classifiers = (classifiers,)
    return sorted({c.split(".")[0] for c in classifiers})


def feature_tokens(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) images → (N, T, C) tokens of the backbone's final stage."""
    images = _match_memory_format(backbone, images)
    feats = backbone.forward_features(images)
    if feats.ndim == 3:  # already tokens (transformers)
        return feats
    if feats.ndim != 4:
        raise ValueError(f"backbone returned features of shape {tuple(feats.shape)}")
    if getattr(backbone, "output_fmt", "NCHW") == "NHWC":
        return feats.flatten(1, 2)
    return feats.flatten(2).transpose(1, 2)


def _match_memory_format(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Give the images channels_last layout if the backbone's stem weights have it."""
    stem = next((p for p in backbone.parameters() if p.ndim == 4), None)
    if (
        stem is not None
        and images.ndim == 4
        and stem.is_contiguous(memory_format=torch.channels_last)
        and not stem.is_contiguous()
    ):
        return images.contiguous(memory_format=torch.channels_last)
    return images
