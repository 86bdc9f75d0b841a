"""Model configuration: one frozen record per registered architecture."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vglpipe.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Pooling layers a config may name (see vglpipe.model.pooling).
POOLINGS = ("mha", "mean")


@dataclass(frozen=True)
class InputSpec:
    """What the model expects as input; the data pipeline and `localize` read it from here."""

    street_size: tuple[int, int]  # (H, W) of a street-view photo
    aerial_size: int  # side of each square aerial (LOD) patch
    n_lods: int  # aerial patches per cell
    mean: tuple[float, float, float]  # per-channel mean of [0, 1] RGB
    std: tuple[float, float, float]


@dataclass(frozen=True)
class ModelConfig:
    """A two-tower geolocalization model (defaults: the paper's §4.3 setup)."""

    name: str
    backbone: str  # timm architecture name, e.g. "convnext_base"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs
    street_size: tuple[int, int] = (480, 640)  # (H, W)
    aerial_size: int = 384
    n_lods: int = 4
    pooling: str = "mha"  # "mha" | "mean"
    heads: int = 64  # attention heads of the "mha" pooling
    dim: int = 1024  # embedding dimension
    shared_towers: bool = False  # one backbone for both domains (pooling layers stay separate)
    scale: float = 6.0  # embeddings are unit vectors times this, so logits = scale² · cos
    pretrained_tag: str | None = "fb_in22k_ft_in1k_384"  # timm pretrained tag of `backbone`
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        # Normalise containers (YAML/JSON give lists), then validate.
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("backbone_kwargs", dict(self.backbone_kwargs or {}))
        set_("street_size", _int_tuple(self, "street_size", self.street_size, 2))
        set_("mean", _float_tuple(self, "mean", self.mean))
        set_("std", _float_tuple(self, "std", self.std))
        self._validate()

    def _validate(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"model config {self.name!r}: {key}={getattr(self, key)!r} {why}")

        if not self.name or not isinstance(self.name, str):
            raise bad("name", "must be a non-empty string")
        if not self.backbone or not isinstance(self.backbone, str):
            raise bad("backbone", "must name a timm architecture")
        if min(self.street_size) < 1:
            raise bad("street_size", "must be positive")
        for key in ("aerial_size", "n_lods", "heads", "dim"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(key, "must be a positive integer")
        if self.pooling not in POOLINGS:
            raise bad("pooling", f"is not one of {list(POOLINGS)}")
        if self.pooling == "mha" and self.dim % self.heads:
            raise bad("dim", f"must be divisible by heads={self.heads}")
        if not self.scale > 0:
            raise bad("scale", "must be positive")
        if min(self.std) <= 0:
            raise bad("std", "must be positive")

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.street_size, self.aerial_size, self.n_lods, self.mean, self.std)

    @property
    def pretrained_name(self) -> str | None:
        """timm name with tag, e.g. "convnext_base.fb_in22k_ft_in1k_384" (None: no tag)."""
        return f"{self.backbone}.{self.pretrained_tag}" if self.pretrained_tag else None

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with some fields changed (unknown keys → ConfigError naming them)."""
        unknown = sorted(set(overrides) - set(field_names()))
        if unknown:
            raise ConfigError(f"unknown model config key(s) {unknown} for {self.name!r}; valid keys: {field_names()}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists, dicts) for checkpoints and YAML."""
        out = {f: getattr(self, f) for f in field_names()}
        out["backbone_kwargs"] = dict(self.backbone_kwargs)
        for key in ("street_size", "mean", "std"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        unknown = sorted(set(data) - set(field_names()))
        if unknown:
            raise ConfigError(f"unknown model config key(s) {unknown}; valid keys: {field_names()}")
        return cls(**data)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ModelConfig)]


def _int_tuple(cfg: ModelConfig, key: str, value: Any, n: int) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != n or any(o != v for o, v in zip(out, value)):
        raise ConfigError(f"model config {cfg.name!r}: {key}={value!r} must be {n} integers")
    return out


def _float_tuple(cfg: ModelConfig, key: str, value: Any) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3:
        raise ConfigError(f"model config {cfg.name!r}: {key}={value!r} must be 3 numbers (RGB)")
    return out  # type: ignore[return-value]
