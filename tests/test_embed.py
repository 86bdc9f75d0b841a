"""The embed stage's cells command: shards of contiguous rows that together equal one run bit for
bit, a real kill -9 that resumes without redoing finished chunks, and low-coverage cells kept out
and listed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import REPO
from conftest_train import CENTER, tiny_settings, train_region  # noqa: F401  (fixture)
from vglpipe.errors import InputError
from vglpipe.geo.sphere import offset_m
from vglpipe.settings import Settings, to_json
from vglpipe.train.loop import Trainer

FAR = 12  # cells far outside the imagery


def embed_settings(shards: int, chunk_cells: int = 32) -> Settings:
    base = tiny_settings()
    cfg = {**base.config, "embed": {"shards": shards, "chunk_cells": chunk_cells, "batch_size": 16, "workers": 0,
                                    "min_coverage": 0.5}}
    return Settings(cfg)


@pytest.fixture(scope="module")
def inputs(train_region, tmp_path_factory):  # noqa: F811
    d = tmp_path_factory.mktemp("embed")
    Trainer(tiny_settings(steps=0).experiment("tiny"), [train_region], d / "model", progress=False).run()
    east, north = np.meshgrid(np.arange(-135, 136, 6.0), np.arange(-135, 136, 6.0))  # 46 × 46 cells
    lat, lon = offset_m(CENTER[0], CENTER[1], east.ravel(), north.ravel())
    lat = np.concatenate([lat, np.full(FAR, CENTER[0] + 0.2)])
    lon = np.concatenate([lon, CENTER[1] + 0.001 * np.arange(FAR)])
    ids = np.arange(lat.size, dtype=np.int64) * 7 + 1000
    cells = d / "cells.parquet"
    pq.write_table(pa.table({"id": ids, "lat": np.asarray(lat, float), "lon": np.asarray(lon, float)}), cells)
    return d / "model", cells, train_region.aerial_index, ids


def embed_cmd(inputs, out: Path, shards: int, shard: int) -> list[str]:
    model, cells, aerial, _ = inputs
    return [sys.executable, "-m", "vglpipe.embed", "cells", "--settings",
            to_json(embed_settings(shards).embed_stage("tiny")), "--model", str(model), "--cells", str(cells),
            "--aerial-index", str(aerial), "--shard", str(shard), "--out", str(out), "--device", "cpu",
            "--no-progress"]


def run(cmd) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def result(out: Path, shard: int) -> tuple[np.ndarray, np.ndarray]:
    return np.load(out / f"cells-{shard:03d}.npy"), np.load(out / f"cells-{shard:03d}.ids.npy")


@pytest.fixture(scope="module")
def one_shard(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("one-shard")
    run(embed_cmd(inputs, out, 1, 0))
    return out


def test_shards_together_equal_one_run_bit_for_bit(inputs, one_shard, tmp_path):
    for s in range(3):
        run(embed_cmd(inputs, tmp_path, 3, s))
    parts = [result(tmp_path, s) for s in range(3)]
    vec, ids = result(one_shard, 0)
    assert all(len(p[1]) for p in parts)  # every shard got rows
    assert np.array_equal(np.concatenate([p[1] for p in parts]), ids)
    assert np.array_equal(np.concatenate([p[0] for p in parts]).view(np.uint16), vec.view(np.uint16))
    assert vec.dtype == np.float16 and np.isfinite(vec.astype(np.float32)).all()


def test_low_coverage_cells_are_excluded_and_listed(inputs, one_shard):
    all_ids = inputs[3]
    _, ids = result(one_shard, 0)
    excluded = pq.read_table(one_shard / "cells-000.excluded.parquet")
    far = set(all_ids[-FAR:].tolist())
    assert far <= set(excluded.column("id").to_pylist())
    assert not far & set(ids.tolist())
    assert set(ids.tolist()) | set(excluded.column("id").to_pylist()) == set(all_ids.tolist())
    assert max(excluded.column("coverage_lod0").to_pylist()) < 0.5
    info = json.loads((one_shard / "cells-000.json").read_text())
    assert info["excluded_low_coverage"] == excluded.num_rows and info["embedded"] == ids.size
    assert info["upsampled_cells_per_lod"] == [0, 0]  # 0.4 m/px world, 1 m/px LOD 0


def test_kill9_mid_shard_resumes_without_redoing_finished_chunks(inputs, one_shard, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(embed_cmd(inputs, out, 1, 0), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    work = out / ".cells-000.work"
    deadline = time.monotonic() + 300
    while len(list(work.glob("chunk-*.npz"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "cells-000.npy").exists(), "the run ended before it could be killed"
    finished = {p.name: p.stat().st_mtime_ns for p in work.glob("chunk-*.npz")}
    assert len(finished) >= 3
    again = run(embed_cmd(inputs, out, 1, 0))
    n_chunks = -(-inputs[3].size // 32)
    assert f"resume: {len(finished)} of {n_chunks} chunks of shard 0 already embedded" in again.stderr
    vec, ids = result(out, 0)
    ref_vec, ref_ids = result(one_shard, 0)
    assert np.array_equal(ids, ref_ids) and np.array_equal(vec.view(np.uint16), ref_vec.view(np.uint16))


def test_cell_vectors_are_the_mean_over_quarter_turns(inputs):
    """embed.aerial_rotations: 4 makes a cell's vector the same whichever way its imagery is turned by
    quarter turns (the north-up vector is not), at the model's norm."""
    from vglpipe.aerial.sampler import AerialSampler
    from vglpipe.search.embedding import cell_vectors
    from vglpipe.train.loop import load_model

    model_dir, _, aerial, _ = inputs
    model, _, _ = load_model(model_dir, "cpu")
    lat, lon = offset_m(CENTER[0], CENTER[1], np.array([0.0, 30.0, -60.0, 45.0]), np.array([0.0, 15.0, 45.0, -80.0]))
    with AerialSampler(aerial, spec=tiny_settings().experiment("tiny").lods) as s:
        patches = torch.from_numpy(next(s.sample_cells(np.asarray(lat), np.asarray(lon))).patches.copy())
    turned = torch.rot90(patches, 1, dims=(-3, -2)).contiguous()
    cpu = torch.device("cpu")

    def vec(p, rotations):
        return cell_vectors(model, p, rotations, cpu, False, 8).astype(np.float64)

    north_up, four = vec(patches, 1), vec(patches, 4)
    scale = np.linalg.norm(north_up, axis=1)
    assert np.abs(vec(turned, 1) - north_up).max() > 1e-2 * scale.max()  # the tower itself is not invariant
    assert np.abs(vec(turned, 4) - four).max() < 2e-3 * scale.max()
    assert np.allclose(np.linalg.norm(four, axis=1), scale, rtol=2e-3)
    with pytest.raises(InputError, match="aerial_rotations"):
        vec(patches, 3)
