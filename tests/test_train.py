"""The training loop: exact resume after kill -9, refused resume with changed settings, several
processes (gloo) equal one, the untrained baseline, and the stream's properties."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from conftest_train import tiny_settings, train_region  # noqa: F401  (fixture)
from vglpipe.errors import ResumeError
from vglpipe.settings import to_json
from vglpipe.train.data import Jitter, SampleSpec, TrainingPhotos, TrainStream
from vglpipe.train.loop import Trainer, build_model, load_model, lr_factor


def train_cmd(region, out, settings, *extra) -> list[str]:
    r = f"{region.name}:{region.photos}:{region.photo_cells}:{region.aerial_index}"
    return [sys.executable, "-m", "vglpipe.train", "--settings", to_json(settings.train_stage("tiny")),
            "--region", r, "--out", str(out), "--no-progress", *extra]


def run(cmd, env=None, timeout=600):
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def checkpoint_step(out: Path) -> int:
    """The step of the complete checkpoint (checkpoint/, or checkpoint.old/ when killed mid-swap)."""
    for name in ("checkpoint", "checkpoint.old"):
        try:
            return json.loads((out / name / "state.json").read_text())["loop"]["step"]
        except (OSError, ValueError, KeyError):
            continue
    return -1


@pytest.mark.parametrize("precision", ["auto", "bf16"])  # bf16: autocast where the CPU has it (the demo)
def test_kill9_then_resume_gives_identical_weights(train_region, tmp_path, precision):
    settings = tiny_settings(steps=16, checkpoint_every=4, precision=precision)
    run(train_cmd(train_region, tmp_path / "clean", settings))
    out = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(train_region, out, settings), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while checkpoint_step(out) < 8 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert 8 <= checkpoint_step(out) < 16 and not (out / "model.safetensors").exists()
    resumed = run(train_cmd(train_region, out, settings))
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["resumed_from"] >= 8 and summary["steps"] == 16
    a, b = weights(tmp_path / "clean"), weights(out)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed training diverged from the uninterrupted one"
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) > 1


def test_resume_with_changed_settings_is_refused(train_region, tmp_path):
    trainer = Trainer(tiny_settings(steps=4).experiment("tiny"), [train_region], tmp_path, progress=False)
    trainer.run()
    changed = tiny_settings(steps=8, lr=0.002).experiment("tiny")
    with pytest.raises(ResumeError, match=r"differs in: train\.lr, train\.steps"):
        Trainer(changed, [train_region], tmp_path, progress=False).run()
    # what does not change the weights may change: more workers, other logging
    Trainer(tiny_settings(steps=4, log_every=1).experiment("tiny"), [train_region], tmp_path, progress=False).run()


def test_loader_workers_serve_every_round_and_scan_with_the_same_samples(train_region, tmp_path):
    """The DataLoader's workers live for the whole run (rounds and mining scans of several sizes
    share them): 2 workers train the weights that the main process alone trains, and they start
    although this process used OpenCV's threads before (a forked worker used to deadlock)."""
    settings = tiny_settings(steps=12, checkpoint_every=100)
    assert settings.experiment("tiny").train.mining.enabled
    out = {}
    for workers in (0, 2):  # 0 first: this process runs OpenCV's thread pool before the workers fork
        trainer = Trainer(settings.experiment("tiny"), [train_region], tmp_path / f"w{workers}", progress=False,
                          workers=workers)
        trainer.run()
        out[workers] = weights(tmp_path / f"w{workers}")
    assert trainer.mining.scan_batches > 1  # scans of several batches were clustered
    worst = max(float((out[0][k] - out[2][k]).abs().max()) for k in out[0])
    assert worst < 1e-4, f"largest weight difference {worst}"


def test_the_last_scan_builds_only_the_batches_left_to_train(train_region, tmp_path, monkeypatch):
    """A scan larger than the steps left (here 4 batches when 3 steps remain) clusters only those
    steps' batches (the clustering is quadratic in the pool: at the demo's 3,000 steps the last
    scan holds 2,048 batches); the weights are those of building the whole pool's batches."""
    import vglpipe.train.loop as loop

    real, calls = loop.build_clusters, []

    def recording(*args, n_clusters=None, **kw):
        calls.append((len(args[0]) // kw["cluster_size"], n_clusters))
        return real(*args, n_clusters=n_clusters, **kw)

    def whole_pool(*args, n_clusters=None, **kw):
        return real(*args, **kw)

    settings = tiny_settings(steps=13, checkpoint_every=100)
    out = {}
    for name, fn in (("left", recording), ("whole", whole_pool)):
        monkeypatch.setattr(loop, "build_clusters", fn)
        Trainer(settings.experiment("tiny"), [train_region], tmp_path / name, progress=False).run()
        out[name] = weights(tmp_path / name)
    assert calls and calls[-1][1] < calls[-1][0], calls  # the last pool held more batches than were trained
    assert all(built <= pool for pool, built in calls)
    assert all(torch.equal(out["left"][k], out["whole"][k]) for k in out["left"])


def test_two_gloo_processes_equal_one_process(train_region, tmp_path):
    """DDP on CPU: ``--processes 2`` (started with torchrun, as on a workstation) splits the global
    batch over 2 ranks and gathers embeddings for the loss (and for mining): the weights of 1
    process with the same global batch."""
    settings = tiny_settings(steps=6, checkpoint_every=100)
    run(train_cmd(train_region, tmp_path / "one", settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = run(train_cmd(train_region, tmp_path / "two", settings, "--processes", "2"),
               env=dict(env, OMP_NUM_THREADS="1"))
    assert "starting 2 training processes with" in proc.stderr
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world"] == 2
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, f"largest weight difference {worst}"
    init = build_model(settings.experiment("tiny")).state_dict()
    assert max(float((a[k] - init[k]).abs().max()) for k in a) > 1e-3  # and training did change them


def test_the_launcher_uses_srun_in_a_slurm_batch_script_and_torchrun_elsewhere():
    from vglpipe.errors import InputError
    from vglpipe.train.distributed import launcher

    batch = {"SLURM_JOB_ID": "7"}  # a job's batch script, as Snakemake's SLURM job step leaves it
    cmd = launcher(8, nodes=2, cpus_per_process=6, env=batch)
    assert cmd[:5] == ["srun", "--kill-on-bad-exit=1", "--export=ALL", "--ntasks=8", "--nodes=2"]
    assert "--cpus-per-task=6" in cmd and cmd[-2:] == ["-m", "vglpipe.train"]
    assert launcher(1, env=batch)[3] == "--ntasks=1"  # one process runs as a step too (SLURM's --signal)
    step = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "8", "SLURM_PROCID": "3"}
    assert launcher(8, nodes=2, env=step) is None  # one of the copies srun started
    assert launcher(2, env={"WORLD_SIZE": "2", "RANK": "1"}) is None  # one of torchrun's
    assert launcher(1, env={}) is None
    assert launcher(4, env={})[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    with pytest.raises(InputError, match="several nodes need a SLURM job"):
        launcher(8, nodes=2, env={})


def test_untrained_baseline_and_model_round_trip(train_region, tmp_path):
    settings = tiny_settings(steps=0)
    summary = Trainer(settings.experiment("tiny"), [train_region], tmp_path, progress=False).run()
    model, wid, info = load_model(tmp_path)
    assert wid == summary.weights_id == info["weights_id"] and info["steps"] == 0
    again = Trainer(settings.experiment("tiny"), [train_region], tmp_path / "again", progress=False).run()
    assert again.weights_id == wid  # the same seed gives the same random weights
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(Exception, match="model"):
        load_model(tmp_path)


def test_stream_has_one_photo_per_bucket_per_batch_and_is_reproducible(train_region):
    exp = tiny_settings().experiment("tiny")
    photos = TrainingPhotos([train_region])
    spec = SampleSpec((48, 64), 32, exp.lods, exp.t_max_m, Jitter(), seed=3)
    stream = TrainStream(photos, spec)
    n = photos.n_buckets
    rng = np.random.default_rng(0)
    buckets = []
    for k in range(n):
        p = stream.photo_of(k, np.random.default_rng([3, 1, k]))
        buckets.append(int(np.searchsorted(photos.bucket_start, p, side="right")) - 1)
    assert sorted(buckets) == list(range(n))  # one pass visits every bucket once
    k = int(rng.integers(0, 3 * n))
    a, b = stream[k], TrainStream(photos, spec)[k]
    assert torch.equal(a["street"], b["street"]) and torch.equal(a["aerial"], b["aerial"])
    off = np.degrees(np.abs(a["aerial_latlon"].numpy() - a["street_latlon"].numpy()))
    assert a["coverage"].min() > 0.9 and off.max() < 1.0  # a cell near its photo, covered by imagery


def test_learning_rate_schedule():
    t = tiny_settings(steps=100, warmup_steps=10, lr_final_factor=0.1).experiment("tiny").train
    f = [lr_factor(s, t) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[100] == pytest.approx(0.1)


def test_bf16_precision_autocasts_on_a_cpu_that_computes_bf16(train_region, tmp_path):
    """train.precision bf16 trains in bf16 autocast on a CPU with native bf16 (else fp32, like auto); the
    steps are the same steps: the loss stays within a few per cent of fp32's."""
    from vglpipe.model.geomodel import cpu_computes_bf16

    done = {}
    for precision in ("auto", "bf16"):
        trainer = Trainer(tiny_settings(steps=12, precision=precision).experiment("tiny"), [train_region],
                          tmp_path / precision, progress=False)
        assert trainer.amp == (precision == "bf16" and cpu_computes_bf16())
        done[precision] = trainer.run()
    auto, bf16 = done["auto"], done["bf16"]
    assert np.isfinite(bf16.final_loss) and abs(bf16.final_loss - auto.final_loss) < 0.05 * auto.final_loss
    assert (bf16.weights_id != auto.weights_id) == cpu_computes_bf16()
