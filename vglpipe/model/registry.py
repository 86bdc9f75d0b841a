"""Named model configurations in timm's style: register, list, configure, create.

Add an architecture by registering a ModelConfig (usually `replace` of an
existing one) at the bottom of this file or from user code.
"""

from __future__ import annotations

import os
from typing import Any

from vglpipe.errors import ConfigError

from .config import ModelConfig
from .geomodel import GeoModel
from .weights import fetch_weights

_REGISTRY: dict[str, ModelConfig] = {}


def register_model(config: ModelConfig, *, overwrite: bool = False) -> ModelConfig:
    if config.name in _REGISTRY and not overwrite:
        raise ConfigError(f"model {config.name!r} is already registered")
    _REGISTRY[config.name] = config
    return config


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The registered config `name`, with some fields overridden (e.g. street_size=(64, 64))."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; registered models: {list_models()}")
    return _REGISTRY[name].replace(**overrides)


def create_model(
    name: str | ModelConfig,
    pretrained: bool = False,
    pretrained_file: str | os.PathLike | None = None,
    **overrides: Any,
) -> GeoModel:
    """Build a GeoModel from a registered name (or a ModelConfig, e.g. from a checkpoint).

    pretrained: load timm's ImageNet weights of `backbone.pretrained_tag` into both
    towers (from the Hugging Face hub or its local cache); fails fast offline.
    pretrained_file: load the backbone weights from this .safetensors/.pth file
    instead (implies pretrained). Loaded weights are verified in both towers.
    """
    config = name.replace(**overrides) if isinstance(name, ModelConfig) else model_config(name, **overrides)
    weights = fetch_weights(config, pretrained_file) if pretrained or pretrained_file is not None else None
    return GeoModel(config, weights)


# ---------------------------------------------------------------- built-in configs

#: Paper §4.3: ConvNeXt-B towers (ImageNet-22k→1k at 384 px), 480×640 street view,
#: 4 LODs of 384², MHA pooling with 64 heads, 1024-d embeddings, separate towers.
PAPER = register_model(
    ModelConfig(
        name="paper",
        backbone="convnext_base",
        pretrained_tag="fb_in22k_ft_in1k_384",
        street_size=(480, 640),
        aerial_size=384,
        n_lods=4,
        pooling="mha",
        heads=64,
        dim=1024,
        shared_towers=False,
        scale=6.0,
    )
)

#: Paper §4.3/§4.5 ablation setup: ConvNeXt-S, 240×320 street view, 4 LODs of 256².
PAPER_ABLATION = register_model(
    PAPER.replace(name="paper-ablation", backbone="convnext_small", street_size=(240, 320), aerial_size=256)
)

#: Trains on 2 CPU cores: timm's smallest real ConvNeXt (4 stages, depths 1-2-4-2,
#: widths 24-64). Measured train step (both towers, batch 64, 2 shared cores):
#: ~180-230 samples/s, vs ~45 for convnext_atto and ~75 for mobilenetv3_small_100.
DEMO = register_model(
    PAPER.replace(
        name="demo",
        backbone="test_convnext",
        pretrained_tag="r160_in1k",
        street_size=(96, 128),
        aerial_size=64,
        heads=8,
        dim=256,
    )
)

#: What the demo trains: `demo` with timm's smallest ResNet as both towers (BatchNorm, 3×3 convolutions),
#: its last stage dilated instead of strided (output stride 16): the attention pooling weighs 6×8
#: street-view tokens and 4×4 per LOD instead of 3×4 and 2×2. From random init on 2 CPU cores it
#: learns more per second than `demo`: on the six demo worlds in ~10 minutes (750 steps of 64 at
#: ~78 samples/s) R@1<50m on demo-test 7.9 / 8.7 % (train seeds 0 / 1), stride 32: 6.9 / 6.2 %,
#: `demo` (1,000 steps): 5.0 / 5.4 % (README).
DEMO_RESNET = register_model(DEMO.replace(name="demo-resnet", backbone="test_resnet", pretrained_tag="r160_in1k",
                                          backbone_kwargs={"output_stride": 16}))

# Ablations of the demo model (paper §4.5 in miniature).
register_model(DEMO.replace(name="demo-mean", pooling="mean"))
register_model(DEMO.replace(name="demo-single-lod", n_lods=1))
register_model(DEMO.replace(name="demo-shared", shared_towers=True))
