"""vglpipe.model: registry, GeoModel contract (every registered config), pooling, preprocessing, pretrained weights."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from conftest import wake_zero_init_branches
from vglpipe.errors import ConfigError, InputError, VglpipeError
from vglpipe.model import (
    GeoModel,
    ModelConfig,
    create_model,
    list_models,
    model_config,
    preprocess,
    register_model,
)
from vglpipe.model.pooling import AttentionPool, MeanPool
from vglpipe.model.weights import verify_loaded

BATCH = 2


def small_overrides(name: str) -> dict:
    """Keep the real architecture but shrink inputs of the large configs so CPU tests stay fast."""
    cfg = model_config(name)
    if cfg.street_size[0] * cfg.street_size[1] > 128 * 128 or cfg.aerial_size > 64:
        return {"street_size": (64, 96), "aerial_size": 32}
    return {}


def random_inputs(cfg: ModelConfig, batch: int = BATCH, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.street_size
    p = cfg.aerial_size
    street = torch.randn(batch, 3, h, w, generator=g)
    aerial = torch.randn(batch, cfg.n_lods, 3, p, p, generator=g)
    return street, aerial


@pytest.fixture(scope="module")
def model_cache() -> dict[str, tuple[GeoModel, torch.Tensor, torch.Tensor]]:
    return {}  # freed after this module (the paper models hold ~1 GB)


@pytest.fixture(params=list_models())
def built(request, model_cache) -> tuple[GeoModel, torch.Tensor, torch.Tensor]:
    """One model per registered config (random init), shared by this module's contract tests."""
    name = request.param
    if name not in model_cache:
        torch.manual_seed(0)
        model = create_model(name, **small_overrides(name))
        model_cache[name] = (model, *random_inputs(model.config))
    return model_cache[name]


# ---------------------------------------------------------------- contract over every registered config


def test_output_shapes(built):
    model, street, aerial = built
    with torch.no_grad():
        out = model(street, aerial)
    assert out.street.shape == (BATCH, model.config.dim)
    assert out.aerial.shape == (BATCH, model.config.dim)
    assert out.street.dtype == out.aerial.dtype == torch.float32


def test_embeddings_are_unit_vectors_times_scale_and_finite(built):
    model, street, aerial = built
    with torch.no_grad():
        out = model(street, aerial)
    for emb in (out.street, out.aerial):
        assert torch.isfinite(emb).all()
        torch.testing.assert_close(emb.norm(dim=1), torch.full((BATCH,), model.config.scale))


def test_every_trainable_parameter_gets_a_gradient(built):
    model, street, aerial = built
    wake_zero_init_branches(model)
    model.zero_grad(set_to_none=True)
    out = model(street, aerial)
    logits = out.street @ out.aerial.T
    target = torch.arange(BATCH)
    (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)).backward()
    dead = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0)
    ]
    assert not dead, f"parameters without a (finite, non-zero) gradient: {dead[:10]}"
    model.zero_grad(set_to_none=True)


def test_aerial_samples_are_embedded_independently(built):
    """Batched LOD handling must not mix samples: sample i's embedding is the same alone or in a batch."""
    model, _, aerial = built
    model.eval()
    with torch.no_grad():
        together = model.embed_aerial(aerial)
        alone = torch.cat([model.embed_aerial(aerial[i : i + 1]) for i in range(BATCH)])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- registry


def test_registry_has_the_required_configs():
    assert {"paper", "paper-ablation", "demo", "demo-resnet", "demo-mean", "demo-single-lod", "demo-shared"} <= set(list_models())


def test_paper_config_matches_the_paper():
    cfg = model_config("paper")
    assert (cfg.backbone, cfg.pretrained_tag) == ("convnext_base", "fb_in22k_ft_in1k_384")
    assert (cfg.street_size, cfg.aerial_size, cfg.n_lods) == ((480, 640), 384, 4)
    assert (cfg.pooling, cfg.heads, cfg.dim, cfg.shared_towers, cfg.scale) == ("mha", 64, 1024, False, 6.0)
    abl = model_config("paper-ablation")
    assert (abl.backbone, abl.street_size, abl.aerial_size) == ("convnext_small", (240, 320), 256)


def test_demo_ablations_differ_only_in_their_ablated_field():
    base = model_config("demo").to_dict()
    for name, key, value in [
        ("demo-mean", "pooling", "mean"),
        ("demo-single-lod", "n_lods", 1),
        ("demo-shared", "shared_towers", True),
    ]:
        variant = model_config(name).to_dict()
        assert variant[key] == value
        assert {k: v for k, v in variant.items() if k not in ("name", key)} == {
            k: v for k, v in base.items() if k not in ("name", key)
        }


def test_unknown_model_name_is_a_config_error_listing_the_valid_ones():
    with pytest.raises(ConfigError, match="papr") as info:
        model_config("papr")
    assert "paper-ablation" in str(info.value)


def test_unknown_override_key_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="embedding_dim") as info:
        create_model("demo", embedding_dim=512)
    assert "dim" in str(info.value) and "heads" in str(info.value)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"dim": 100, "heads": 8}, "dim"),
        ({"pooling": "max"}, "pooling"),
        ({"street_size": (96,)}, "street_size"),
        ({"n_lods": 0}, "n_lods"),
        ({"scale": 0.0}, "scale"),
    ],
)
def test_invalid_override_values_are_config_errors_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        model_config("demo", **overrides)


def test_bad_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="no_such_net"):
        create_model("demo", backbone="no_such_net", pretrained_tag=None)


def test_register_and_roundtrip_a_new_config():
    cfg = model_config("demo").replace(name="test-demo-tiny-dim", dim=64, heads=4)
    register_model(cfg)
    try:
        assert "test-demo-tiny-dim" in list_models()
        with pytest.raises(ConfigError, match="already registered"):
            register_model(cfg)
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
        assert create_model("test-demo-tiny-dim").street_pool.value.out_features == 64
    finally:
        from vglpipe.model import registry

        registry._REGISTRY.pop("test-demo-tiny-dim")


def test_input_spec_and_list_overrides():
    model = create_model("demo", street_size=[32, 48], aerial_size=32)
    spec = model.input_spec
    assert spec.street_size == (32, 48) and spec.aerial_size == 32 and spec.n_lods == model.config.n_lods
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- pooling


def test_attention_pool_matches_the_formula_with_softmax_over_all_tokens():
    torch.manual_seed(0)
    pool = AttentionPool(channels=6, dim=8, heads=2)
    tokens = torch.randn(3, 5, 6)
    x = F.layer_norm(tokens, (6,), pool.norm.weight, pool.norm.bias, eps=1e-5)
    expected = torch.zeros(3, 8)
    for b in range(3):
        for h in range(2):
            w = torch.softmax(x[b] @ pool.attn.weight[h], dim=0)  # over all 5 tokens
            values = x[b] @ pool.value.weight[h * 4 : (h + 1) * 4].T + pool.value.bias[h * 4 : (h + 1) * 4]
            expected[b, h * 4 : (h + 1) * 4] = (w[:, None] * values).sum(0)
    torch.testing.assert_close(pool(tokens), expected)
    assert pool.attn.bias is None


def test_mean_pool_matches_the_formula():
    torch.manual_seed(0)
    pool = MeanPool(channels=6, dim=4)
    tokens = torch.randn(3, 5, 6)
    x = F.layer_norm(tokens.mean(1), (6,), pool.norm.weight, pool.norm.bias, eps=1e-5)
    torch.testing.assert_close(pool(tokens), x @ pool.proj.weight.T + pool.proj.bias)


def test_aerial_embedding_pools_tokens_of_all_lods_jointly():
    """Every LOD influences the embedding; LOD order does not (one token set, no positions)."""
    torch.manual_seed(0)
    model = create_model("demo").eval()
    _, aerial = random_inputs(model.config, batch=1)
    with torch.no_grad():
        base = model.embed_aerial(aerial)
        for lod in range(model.config.n_lods):
            changed = aerial.clone()
            changed[:, lod] = torch.randn_like(changed[:, lod])
            assert not torch.allclose(model.embed_aerial(changed), base, atol=1e-4)
        reversed_lods = model.embed_aerial(aerial.flip(1))
    torch.testing.assert_close(reversed_lods, base, atol=1e-4, rtol=1e-4)


def test_wrong_number_of_lods_is_an_input_error():
    model = create_model("demo")
    with pytest.raises(InputError, match="n_lods"):
        model.embed_aerial(torch.randn(1, 1, 3, 64, 64))


def test_uint8_images_are_rejected_by_the_towers():
    model = create_model("demo")
    with pytest.raises(InputError, match="preprocess"):
        model.embed_street(torch.zeros(1, 3, 96, 128, dtype=torch.uint8))


# ---------------------------------------------------------------- preprocessing, devices, precision


def test_preprocess_normalises_both_layouts_identically():
    model = create_model("demo")
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, size=(2, 4, 5, 3), dtype=np.uint8)
    a = model.preprocess(nhwc)
    b = model.preprocess(torch.from_numpy(nhwc).permute(0, 3, 1, 2))
    assert a.shape == (2, 3, 4, 5) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    mean, std = np.array(model.config.mean), np.array(model.config.std)
    expected = ((nhwc / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    torch.testing.assert_close(a, torch.from_numpy(expected).float())


def test_preprocess_handles_aerial_stacks_and_rejects_floats():
    aerial = torch.zeros(2, 4, 8, 8, 3, dtype=torch.uint8)
    assert preprocess(aerial, (0.5,) * 3, (0.25,) * 3).shape == (2, 4, 3, 8, 8)
    with pytest.raises(InputError, match="uint8"):
        preprocess(torch.zeros(1, 3, 8, 8), (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(InputError, match="layout"):
        preprocess(torch.zeros(1, 3, 8, 3, dtype=torch.uint8), (0.5,) * 3, (0.25,) * 3)


def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    model = create_model("demo").eval()
    street, aerial = random_inputs(model.config)
    with torch.no_grad():
        ref = model(street, aerial)
        cl_model = model.to(memory_format=torch.channels_last)
        cl = cl_model(street, aerial)
        torch.testing.assert_close(cl.street, ref.street, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(cl.aerial, ref.aerial, atol=1e-4, rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = cl_model(street, aerial)
    assert low.street.dtype == torch.float32
    assert torch.isfinite(low.street).all() and torch.isfinite(low.aerial).all()
    torch.testing.assert_close(low.street.norm(dim=1), torch.full((BATCH,), model.config.scale))
    # bf16 is coarse, but the embeddings must still point the same way.
    assert F.cosine_similarity(low.street, ref.street).min() > 0.9


# ---------------------------------------------------------------- pretrained weights


def backbone_file(tmp_path: Path, suffix: str = ".safetensors", arch: str | None = None) -> tuple[Path, dict]:
    """A timm checkpoint (with classifier head) of the demo backbone, filled with recognisable values."""
    arch = arch or model_config("demo").backbone
    state = timm.create_model(arch).state_dict()
    g = torch.Generator().manual_seed(123)
    state = {
        k: (
            torch.randint(0, 100, v.shape, generator=g)
            if v.dtype == torch.long
            else torch.rand(v.shape, generator=g) + 7.0
        )
        for k, v in state.items()
    }
    path = tmp_path / f"backbone{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path, state


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("name", ["demo", "demo-shared"])
def test_pretrained_file_lands_in_both_towers(tmp_path, suffix, name):
    path, state = backbone_file(tmp_path, suffix)
    model = create_model(name, pretrained=True, pretrained_file=path)
    towers = [model.street_backbone, model.aerial_tower_backbone]
    for backbone in towers:
        current = backbone.state_dict()
        loaded = [k for k in state if not k.startswith("head.")]
        assert set(loaded) == set(current)  # head removed; everything else came from the file
        for key in loaded:
            torch.testing.assert_close(current[key], state[key], rtol=0, atol=0, msg=key)
    if name == "demo":
        assert model.street_backbone is not model.aerial_backbone
    # ...and the towers compute with them: same weights → same tokens for the same image.
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(towers[0].forward_features(x), towers[1].forward_features(x))


def test_pretrained_file_with_renamed_keys_fails_naming_the_file(tmp_path):
    _, state = backbone_file(tmp_path)
    path = tmp_path / "renamed.safetensors"
    save_file({f"encoder.{k}": v for k, v in state.items()}, str(path))
    with pytest.raises(InputError, match="renamed.safetensors") as info:
        create_model("demo", pretrained=True, pretrained_file=path)
    assert "missing" in str(info.value) and "unexpected" in str(info.value)


def test_pretrained_file_with_a_wrong_shape_fails_naming_the_tensor(tmp_path):
    _, state = backbone_file(tmp_path)
    key = "stages.3.blocks.0.conv_dw.weight"
    state[key] = torch.zeros(3, 1, 7, 7)
    path = tmp_path / "wrongshape.safetensors"
    save_file(state, str(path))
    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        create_model("demo", pretrained=True, pretrained_file=path)


def test_pretrained_file_of_another_architecture_fails(tmp_path):
    path, _ = backbone_file(tmp_path, arch="test_convnext2")
    with pytest.raises(InputError, match="do not fit"):
        create_model("demo", pretrained=True, pretrained_file=path)


def test_missing_or_unreadable_pretrained_file_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "convnext.safetensors"
    with pytest.raises(InputError, match="nowhere/convnext.safetensors"):
        create_model("demo", pretrained=True, pretrained_file=missing)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(InputError, match="garbage.safetensors"):
        create_model("demo", pretrained=True, pretrained_file=garbage)


def test_verification_notices_weights_changed_after_loading(tmp_path):
    path, state = backbone_file(tmp_path)
    model = create_model("demo", pretrained=True, pretrained_file=path)
    loaded = {k: v for k, v in state.items() if not k.startswith("head.")}
    verify_loaded(model.aerial_backbone, loaded, "test file", "aerial")  # passes as loaded
    with torch.no_grad():
        model.aerial_backbone.stem[0].weight.add_(1.0)  # e.g. a re-initialisation after loading
    with pytest.raises(InputError, match="aerial tower"):
        verify_loaded(model.aerial_backbone, loaded, "test file", "aerial")


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return constants


@pytest.mark.timeout(60)
def test_hub_weights_offline_fail_fast_with_instructions(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(empty_hub_cache, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        create_model("paper", pretrained=True)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "convnext_base.fb_in22k_ft_in1k_384" in message and "pretrained_file" in message


@pytest.mark.timeout(60)
def test_hub_weights_unreachable_server_fails_fast(empty_hub_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(empty_hub_cache, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(empty_hub_cache, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    start = time.monotonic()
    with pytest.raises(VglpipeError, match="could not fetch pretrained weights"):
        create_model("demo", pretrained=True)
    assert time.monotonic() - start < 15


def test_config_without_pretrained_tag_cannot_fetch_hub_weights():
    with pytest.raises(ConfigError, match="pretrained_tag"):
        create_model("demo", pretrained=True, pretrained_tag=None)


def test_unknown_pretrained_tag_is_a_config_error_listing_known_tags():
    with pytest.raises(ConfigError, match="bogus") as info:
        create_model("demo", pretrained=True, pretrained_tag="bogus")
    assert "r160_in1k" in str(info.value)


def test_original_facebook_convnext_checkpoint_layout_is_converted(tmp_path):
    """Files in the ConvNeXt authors' layout (e.g. dl.fbaipublicfiles .pth) go through timm's filter."""
    import re

    _, state = backbone_file(tmp_path)

    def fb_name(key: str) -> str:
        key = re.sub(r"^stem\.", "downsample_layers.0.", key)
        key = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
        key = key.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        return key.replace("head.fc.", "head.").replace("head.norm.", "norm.")

    path = tmp_path / "convnext_fb.pth"
    torch.save({"model": {fb_name(k): v for k, v in state.items()}}, path)
    model = create_model("demo", pretrained=True, pretrained_file=path)
    current = model.aerial_backbone.state_dict()
    for key, value in state.items():
        if not key.startswith("head."):
            torch.testing.assert_close(current[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("precision", ["auto", "bf16", "fp32"])
def test_precision_settings_choose_layout_and_autocast(precision):
    from vglpipe.model.geomodel import cpu_computes_bf16, prepare_for

    model, amp = prepare_for(create_model("demo"), torch.device("cpu"), precision)
    conv = next(p for p in model.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) == (precision != "fp32")
    assert amp == (precision == "bf16" and cpu_computes_bf16())
