"""Training throughput: the data path per worker and the training loop (model + loader).

Setup (not timed): a synthetic world of ``--world-m`` metres with its COGs and ``--photos``
rendered photos in a photo store, as the demo makes them. Then

* ``loader_samples_per_s_per_worker``: training samples (photo decode + resize, a rotated
  multi-LOD cell cut from the COGs, colour jitter) built by one process, one thread, warm;
* ``samples_per_s`` and ``data_wait_fraction``: the training loop (forward, loss, backward,
  step) with the config's DataLoader workers, after ``--warmup`` steps; with ``--mining N`` the
  mining scans (one forward pass per sample, between steps) count as waiting;
* ``peak_rss_mb`` of this process.

``--config demo`` (the demo's model, aerial input, batch and precision from workflow_config.yaml,
2 CPU cores) by default; ``--config paper`` measures the paper's model on a GPU (``step_s``, ``peak_gpu_mem_gb`` and the GPU's name).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from vglpipe.bench._util import peak_rss_mb
from vglpipe.bench._workflow import demo_config
from vglpipe.demo.region_files import make_region_files


def _demo() -> dict:
    """What the demo trains and embeds, read from workflow_config.yaml: its model, aerial input, batch and
    cell rotations."""
    cfg = demo_config()
    return {"model": cfg["model"], "aerial": {k: v for k, v in cfg["aerial"].items() if k != "sources"},
            "train": {k: cfg["train"][k] for k in ("batch_size", "workers", "mining", "precision")
                      if k in cfg["train"]},
            "embed": {k: v for k, v in cfg.get("embed", {}).items() if k == "aerial_rotations"}}


def _paper() -> dict:
    return {"model": {"name": "paper", "pretrained": False},
            "train": {"batch_size": 30, "workers": 8, "mining": {"enabled": False}}}


#: --config name -> the function that builds it (read when a bench runs, not on import)
CONFIGS = {"demo": _demo, "paper": _paper}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", choices=sorted(CONFIGS), default="demo")
    p.add_argument("--world-m", type=float, default=600.0, help="side of the synthetic region, metres")
    p.add_argument("--photos", type=int, default=400)
    p.add_argument("--steps", type=int, default=30, help="timed training steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--loader-samples", type=int, default=300)
    p.add_argument("--workers", type=int, help="DataLoader workers (default: the config's)")
    p.add_argument("--batch-size", type=int, help="global batch (default: the config's)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="train.precision (default: the config's)")
    p.add_argument("--mining", type=int, default=0, metavar="N",
                   help="hard example mining with a fixed scan of N batches per round (each sample is embedded "
                        "once more in the scan); 0: off")
    p.add_argument("--workdir", help="keep the synthetic region here (default: a temporary directory)")


def run(args: argparse.Namespace) -> dict:
    from vglpipe.settings import Settings
    from vglpipe.train.data import Jitter, SampleSpec, TrainingPhotos, TrainStream
    from vglpipe.train.loop import Trainer

    cfg = CONFIGS[args.config]()
    train = {**cfg["train"], "steps": args.warmup + args.steps, "log_every": 10**6, "checkpoint_every": 10**6}
    if args.batch_size:
        train["batch_size"] = args.batch_size
    if args.precision:
        train["precision"] = args.precision
    if args.mining:
        train["mining"] = {"enabled": True, "first_scan_batches": args.mining, "max_scan_batches": args.mining}
    settings = Settings({**cfg, "train": train, "experiments": {"bench": {}}})
    exp = settings.experiment("bench")
    tmp = tempfile.TemporaryDirectory() if args.workdir is None else None
    wd = Path(args.workdir or tmp.name)
    wd.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    region = make_region_files(wd, settings, args.world_m, args.photos)
    print(f"setup: {args.world_m:.0f} m region, {args.photos} photos, {time.perf_counter() - t0:.1f} s", flush=True)

    # the data path alone: one process, one thread, warm caches
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    from vglpipe.model import model_config

    mc = model_config(exp.model.name)
    j = exp.train.jitter
    stream = TrainStream(TrainingPhotos([region]), SampleSpec(tuple(mc.street_size), mc.aerial_size, exp.lods,
                                                              exp.t_max_m, Jitter(j.brightness, j.contrast, j.saturation, j.hue), 0))
    for k in range(50):
        stream[k]
    t = time.perf_counter()
    for k in range(50, 50 + args.loader_samples):
        stream[k]
    loader_rate = args.loader_samples / (time.perf_counter() - t)
    print(f"data path: {loader_rate:.0f} samples/s per worker (1 thread)", flush=True)
    torch.set_num_threads(torch.get_num_interop_threads() or 1)

    # the training loop: warm-up steps, then timed ones
    out = wd / f"train-{time.time_ns()}"
    trainer = Trainer(exp, [region], out, progress=False, workers=args.workers)
    device = str(trainer.device)
    warm = _WarmTimer()
    summary = warm.run(trainer, args.warmup)
    figures = {
        "config": args.config, "model": exp.model.name, "device": device.split(":")[0],
        "samples_per_s": round(warm.timed_samples / warm.timed_s, 1),
        "loader_samples_per_s_per_worker": round(loader_rate, 1),
        "data_wait_fraction": round(warm.wait_s / warm.timed_s, 4),
        "workers": trainer.workers, "batch_size": exp.train.batch_size, "steps": args.steps, "mining": args.mining,
        "precision": exp.train.precision, "bf16": trainer.amp, "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if device.startswith("cuda"):
        figures.update(step_s=round(warm.timed_s / args.steps, 4), gpu=torch.cuda.get_device_name(),
                       peak_gpu_mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2))
    print(f"training ({figures['device']}{', bf16' if trainer.amp else ''}, {trainer.workers} workers, "
          f"batch {exp.train.batch_size}): "
          f"{figures['samples_per_s']} samples/s, data wait {100 * figures['data_wait_fraction']:.1f} % "
          f"(final loss {summary.final_loss})", flush=True)
    return figures


class _WarmTimer:
    """Runs a Trainer, timing the steps after the warm-up: wall time per step, and the part of it
    spent outside the step (waiting for the loader's next batch)."""

    def run(self, trainer, warmup: int):
        orig_step = trainer._step
        self.timed_s = self.wait_s = 0.0
        self.timed_samples = 0
        state = {"n": 0, "prev_end": None}

        def step(batch):
            start = time.perf_counter()
            out = orig_step(batch)
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            end = time.perf_counter()
            if state["n"] >= warmup and state["prev_end"] is not None:
                self.wait_s += start - state["prev_end"]
                self.timed_s += end - state["prev_end"]
                self.timed_samples += trainer.t.batch_size
            state["n"] += 1
            state["prev_end"] = end
            return out

        trainer._step = step
        return trainer.run()
