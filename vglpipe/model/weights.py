"""Pretrained backbone weights: fetch (hub or local file), load strictly, verify they arrived.

Weights that silently fail to load (renamed keys, a different architecture, a
model re-initialised after loading) cost days of training; every step here
fails loudly instead, naming the file or weights.
"""

from __future__ import annotations

import importlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from vglpipe.errors import ConfigError, InputError

from .backbone import head_prefixes
from .config import ModelConfig

#: Seconds to wait for a TCP connection to the weights server before giving up.
PROBE_TIMEOUT_S = 5.0
_HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")
_PROXY_VARS = ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
# Buffers that checkpoints may legitimately omit.
_OPTIONAL_KEY_SUFFIXES = ("num_batches_tracked",)


@dataclass(frozen=True)
class BackboneWeights:
    """A backbone state dict in timm's layout, and where it came from (for messages)."""

    state_dict: dict[str, torch.Tensor]
    source: str


# ---------------------------------------------------------------- fetching


def fetch_weights(config: ModelConfig, pretrained_file: str | os.PathLike | None) -> BackboneWeights:
    """The backbone weights of `config`: from `pretrained_file` if given, else from the hub."""
    if pretrained_file is not None:
        return read_weights_file(pretrained_file)
    return fetch_hub_weights(config)


def read_weights_file(path: str | os.PathLike) -> BackboneWeights:
    """Read a .safetensors or .pth/.bin backbone checkpoint (InputError naming the file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"pretrained weights file {str(path)!r} does not exist")
    try:
        state = timm.models.load_state_dict(str(path), use_ema=False)
    except Exception as exc:  # noqa: BLE001 (any reader error means: unusable file)
        raise InputError(f"cannot read pretrained weights file {str(path)!r}: {exc}") from exc
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"pretrained weights file {str(path)!r} does not hold a state dict of tensors")
    return BackboneWeights(dict(state), f"file {str(path)!r}")


def fetch_hub_weights(config: ModelConfig) -> BackboneWeights:
    """timm's published weights for `config.pretrained_name` (local HF cache first).

    Fails within seconds when the server is unreachable (instead of the hub
    client's minute of retries) with a ConfigError saying how to pass a file.
    """
    name = config.pretrained_name
    if name is None:
        raise ConfigError(
            f"model config {config.name!r} has no pretrained_tag, so there are no hub weights; "
            "pass pretrained_file=PATH or pretrained=False"
        )
    try:
        pcfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # unknown tag
        pcfg = None
    if pcfg is None:
        known = timm.list_pretrained(f"{config.backbone}.*")
        raise ConfigError(f"model config {config.name!r}: timm has no pretrained weights {name!r}; known: {known}")
    if pcfg.hf_hub_id:
        cached = _hub_cache_file(pcfg.hf_hub_id)
        if cached is not None:
            return read_weights_file(cached)
        where, server = f"https://huggingface.co/{pcfg.hf_hub_id}", _hub_endpoint()
    elif pcfg.url:
        where = server = pcfg.url
    else:
        raise ConfigError(f"timm knows no download location for {name!r}; pass pretrained_file=PATH")

    def failed(reason: str) -> ConfigError:
        return ConfigError(
            f"could not fetch pretrained weights {name!r} from {where}: {reason}. "
            f"Without internet access, download {where} (model.safetensors) on another machine "
            f"and pass the local file: create_model(..., pretrained_file=PATH)"
        )

    if _hub_offline():
        raise failed("HF_HUB_OFFLINE is set and the weights are not in the local cache")
    unreachable = _unreachable(server)
    if unreachable:
        raise failed(unreachable)
    try:
        if pcfg.hf_hub_id:
            state = timm.models.load_state_dict_from_hf(pcfg.hf_hub_id)
        else:
            state = torch.hub.load_state_dict_from_url(pcfg.url, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (network and hub errors all mean: not fetched)
        raise failed(f"{type(exc).__name__}: {exc}") from exc
    return BackboneWeights(dict(state), f"hub weights {name!r}")


def _hub_cache_file(repo_id: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in _HUB_FILENAMES:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return found
    return None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    return flag or bool(constants.HF_HUB_OFFLINE)


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _unreachable(url: str) -> str | None:
    """Why a TCP connection to `url`'s server fails (None: reachable, or behind a proxy)."""
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return None  # the proxy decides; let the download try
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"server {parsed.hostname}:{port} unreachable ({exc})"


# ---------------------------------------------------------------- loading


def load_into_backbone(backbone: nn.Module, weights: BackboneWeights) -> dict[str, torch.Tensor]:
    """Load `weights` into `backbone` (head already removed); returns the state dict used.

    Applies the architecture's timm checkpoint filter (original → timm layout),
    drops the classifier head, then requires an exact key and shape match.
    """
    state = _filtered(backbone, weights.state_dict)
    heads = tuple(p + "." for p in head_prefixes(backbone))
    state = {k: v for k, v in state.items() if not k.startswith(heads)}
    expected = backbone.state_dict()

    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_KEY_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if keys:
            problems.append(f"{len(keys)} {label} (e.g. {keys[:4]})")
    if problems:
        arch = getattr(backbone, "pretrained_cfg", {}).get("architecture", type(backbone).__name__)
        raise InputError(
            f"pretrained weights from {weights.source} do not fit backbone {arch!r}: "
            + "; ".join(problems)
            + " (the file must be a timm checkpoint of exactly this architecture)"
        )
    backbone.load_state_dict(state, strict=False)  # strictness checked above (optional buffers aside)
    return state


def verify_loaded(backbone: nn.Module, state: dict[str, torch.Tensor], source: str, tower: str) -> None:
    """Every tensor of `state` must equal the backbone's now (after all model init)."""
    current = backbone.state_dict()
    differing = [k for k, v in state.items() if not torch.equal(current[k].detach().cpu(), v.to(current[k].dtype))]
    if differing:
        raise InputError(
            f"pretrained weights from {source} did not arrive in the {tower} tower: "
            f"{len(differing)} of {len(state)} tensors differ (e.g. {differing[:4]})"
        )


def _filtered(backbone: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply timm's checkpoint_filter_fn of the backbone's architecture, if it has one."""
    arch = getattr(backbone, "pretrained_cfg", {}).get("architecture")
    module = importlib.import_module(timm.models.model_entrypoint(arch).__module__) if arch else None
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is None:
        return dict(state)
    try:
        return dict(filter_fn(dict(state), backbone))
    except Exception:  # noqa: BLE001 (an unrecognised layout is reported by the key check)
        return dict(state)
