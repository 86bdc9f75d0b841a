"""The GPU path (bf16 autocast, channels_last): every registered model trains a step on the GPU
with finite gradients everywhere; GPU bf16 embeddings point where CPU fp32 ones do; the training
loop and the embed stage run on the GPU end to end. Skipped, with the reason shown, without CUDA
(CI has no GPU; these run where one is lent)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, wake_zero_init_branches
from conftest_train import tiny_settings, train_region  # noqa: F401  (fixture)
from vglpipe.model import create_model, list_models
from vglpipe.settings import to_json
from vglpipe.train.loss import dcl_loss
from vglpipe.train.loop import Trainer, load_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

CUDA = torch.device("cuda")


def inputs(model, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images through the model's own preprocess, as the data pipeline feeds them."""
    g = torch.Generator().manual_seed(seed)
    h, w = model.config.street_size
    p = model.config.aerial_size
    street = torch.randint(0, 256, (batch, h, w, 3), generator=g, dtype=torch.uint8)
    aerial = torch.randint(0, 256, (batch, model.config.n_lods, p, p, 3), generator=g, dtype=torch.uint8)
    return model.preprocess(street), model.preprocess(aerial)


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_a_step_in_bf16_channels_last(name):
    torch.manual_seed(0)
    model = create_model(name).to(CUDA).to(memory_format=torch.channels_last).train()
    wake_zero_init_branches(model)
    street, aerial = inputs(model, batch=4)
    street = street.to(CUDA).contiguous(memory_format=torch.channels_last)
    aerial = aerial.to(CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(street, aerial)
    assert out.street.dtype == out.aerial.dtype == torch.float32
    for emb in (out.street, out.aerial):
        assert torch.isfinite(emb).all()
        torch.testing.assert_close(emb.norm(dim=1), torch.full((4,), model.config.scale, device=CUDA))
    # positions 1 km apart: no pair is masked as a false negative
    ll = torch.tensor([[42.0 + 0.01 * i, -71.0] for i in range(4)], device=CUDA, dtype=torch.float64)
    loss = dcl_loss(out.street, out.aerial, ll, ll, mask_m=100.0, smoothing=0.1).loss
    assert torch.isfinite(loss)
    loss.backward()
    dead = [n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0)]
    assert not dead, f"parameters without a finite, non-zero gradient on the GPU: {dead[:10]}"


@pytest.mark.parametrize("name", list_models())
def test_gpu_bf16_embeddings_point_where_cpu_fp32_ones_do(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    street, aerial = inputs(model, batch=2, seed=1)
    with torch.no_grad():
        ref = model(street, aerial)
        gpu = model.to(CUDA).to(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = gpu(street.to(CUDA).contiguous(memory_format=torch.channels_last), aerial.to(CUDA))
    for a, b in ((low.street, ref.street), (low.aerial, ref.aerial)):
        cos = F.cosine_similarity(a.cpu(), b)
        assert cos.min() > 0.98, f"{name}: GPU bf16 vs CPU fp32 cosine {cos.tolist()}"


def test_training_loop_and_embed_stage_on_the_gpu(train_region, tmp_path):  # noqa: F811
    """A few training steps on the GPU (mining on, checkpoints), the weights saved and loaded; then
    the embed stage's command on the GPU gives the cells the CPU run gives (bf16 vs fp32)."""
    settings = tiny_settings(steps=8, checkpoint_every=4, mining={"enabled": True, "raise_after_samples": 16,
                                                                  "max_scan_batches": 4})
    out = tmp_path / "model"
    summary = Trainer(settings.experiment("tiny"), [train_region], out, progress=False).run()
    assert summary.device.startswith("cuda") and summary.steps == 8
    assert np.isfinite(summary.final_loss)
    model, _, _ = load_model(out, CUDA)
    assert all(torch.isfinite(p).all() for p in model.parameters())

    cells = tmp_path / "cells.parquet"
    from vglpipe.cells import enumerate_file
    from vglpipe.demo.regions import DemoRegion

    from conftest_train import CENTER, REGION_M

    enumerate_file(DemoRegion(*CENTER, REGION_M * 0.8).boundary(), settings.layout.test_layout(), cells)
    emb = {}
    for device in ("cpu", "cuda"):
        d = tmp_path / f"emb-{device}"
        cmd = [sys.executable, "-m", "vglpipe.embed", "cells", "--settings", to_json(settings.embed_stage("tiny")),
               "--model", str(out), "--cells", str(cells), "--aerial-index", str(train_region.aerial_index),
               "--shard", "0", "--out", str(d), "--device", device, "--no-progress"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        emb[device] = np.load(d / "cells-000.npy").astype(np.float32), np.load(d / "cells-000.ids.npy")
    assert np.array_equal(emb["cpu"][1], emb["cuda"][1]) and len(emb["cpu"][1]) > 20
    a, b = emb["cpu"][0], emb["cuda"][0]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.98, f"GPU vs CPU cell embeddings: min cosine {cos.min():.4f}"
