"""Two-tower geolocalization models (paper §3.3) with a timm-style registry."""

from .config import IMAGENET_MEAN, IMAGENET_STD, InputSpec, ModelConfig
from .geomodel import GeoModel, GeoOutput, preprocess
from .registry import create_model, list_models, model_config, register_model
from .weights import BackboneWeights

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneWeights",
    "GeoModel",
    "GeoOutput",
    "InputSpec",
    "ModelConfig",
    "create_model",
    "list_models",
    "model_config",
    "preprocess",
    "register_model",
]
