"""Embedding throughput: every cell of a region through the whole embed path (multi-LOD patches
cut from the COGs in DataLoader workers, then the aerial tower), as the embed stage runs it.

Setup (not timed): a synthetic region of ``--world-m`` metres with its COGs (as ``bench train``
makes it) and the config's model with random weights; cells are embedded at the config's
``embed.aerial_rotations`` turns (each turn is one more pass of the aerial tower). Figures: ``cells_per_s``,
``data_wait_fraction`` and, for comparison, ``sampler_cells_per_s`` (patches only, one process)
``model_cells_per_s`` (the aerial tower only, on random patches, one turn) and ``model_photos_per_s`` (the
street-view tower only, on random photos: the photo half of the embed stage). ``--config demo`` runs the demo
model on the CPU; ``--config paper`` the paper's model (ConvNeXt-B, 4 x 384²) on a GPU, with the
GPU's name.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from vglpipe.bench._util import peak_rss_mb
from vglpipe.bench.train import CONFIGS
from vglpipe.demo.region_files import make_region_files


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", choices=sorted(CONFIGS), default="demo")
    p.add_argument("--world-m", type=float, default=1200.0, help="side of the synthetic region, metres")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--chunk-cells", type=int, default=4096,
                   help="cells per chunk; workers take whole chunks, so a small region needs small chunks to use them all")
    p.add_argument("--workdir", help="keep the synthetic region here (default: a temporary directory)")


def run(args: argparse.Namespace) -> dict:
    from vglpipe.cells import enumerate_file
    from vglpipe.demo.regions import DemoRegion
    from vglpipe.model import create_model
    from vglpipe.model.geomodel import prepare_for
    from vglpipe.search.embedding import embed_cell_shard
    from vglpipe.settings import Settings

    cfg = CONFIGS[args.config]()
    settings = Settings({**cfg, "experiments": {"bench": {}}})
    exp = settings.experiment("bench")
    tmp = tempfile.TemporaryDirectory() if args.workdir is None else None
    wd = Path(args.workdir or tmp.name)
    wd.mkdir(parents=True, exist_ok=True)
    region = make_region_files(wd, settings, args.world_m, 50)
    cells = wd / "cells.parquet"
    n = enumerate_file(DemoRegion(42.40, -71.10, args.world_m).boundary(), settings.layout.test_layout(), cells)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model, amp = prepare_for(create_model(exp.model.name, n_lods=exp.lods.n_lods).to(device).eval(), device,
                             settings.embed.precision)
    P = model.config.aerial_size
    H, W = model.config.street_size
    # the towers alone, on random images (cells: the aerial tower; photos: the street-view tower)
    cells_x = torch.randint(0, 255, (args.batch_size, exp.lods.n_lods, P, P, 3), dtype=torch.uint8)
    photos_x = torch.randint(0, 255, (args.batch_size, H, W, 3), dtype=torch.uint8)
    model_rate = _tower_rate(model.embed_aerial, model, cells_x, device, amp)
    photo_rate = _tower_rate(model.embed_street, model, photos_x, device, amp)
    # the sampler alone
    from vglpipe.aerial.sampler import AerialSampler
    from vglpipe.store.tables import read_table

    tab = read_table(cells, ["lat", "lon"])
    with AerialSampler(region.aerial_index, spec=exp.lods) as s:
        t = time.perf_counter()
        got = sum(len(part.index) for part in s.sample_cells(tab["lat"].to_numpy(), tab["lon"].to_numpy()))
    sampler_rate = got / (time.perf_counter() - t)
    # the whole path, as the stage runs it
    out = wd / f"emb-{time.time_ns()}"
    out.mkdir()
    info = embed_cell_shard(model, "bench", cells, region.aerial_index, exp.lods, out, 0, 1, args.chunk_cells,
                            args.batch_size, 0.5, args.workers, device, amp, progress=False,
                            rotations=settings.embed.aerial_rotations)
    figures = {"config": args.config, "model": exp.model.name, "device": device.type, "cells": n, "cells_per_s": info["cells_per_s"],
               "aerial_rotations": settings.embed.aerial_rotations,
               "data_wait_fraction": info["data_wait_fraction"], "sampler_cells_per_s": round(sampler_rate, 1),
               "model_cells_per_s": round(model_rate, 1), "model_photos_per_s": round(photo_rate, 1),
               "workers": args.workers, "batch_size": args.batch_size, "chunk_cells": args.chunk_cells,
               "peak_rss_mb": round(peak_rss_mb(), 1)}
    if device.type == "cuda":
        figures["gpu"] = torch.cuda.get_device_name()
    print(f"{n} cells: {figures['cells_per_s']} cells/s end to end ({args.workers} workers, data wait "
          f"{100 * (figures['data_wait_fraction'] or 0):.0f} %); sampler alone {sampler_rate:.0f} cells/s, "
          f"aerial tower alone {model_rate:.0f} cells/s, street-view tower alone {photo_rate:.0f} photos/s", flush=True)
    return figures


def _tower_rate(tower, model, x: torch.Tensor, device: torch.device, amp: bool, reps: int = 5) -> float:
    """Images per second through one tower (uint8 batch ``x`` moved to the device each time), after one
    untimed batch."""
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for i in range(reps + 1):
            if i == 1:
                if amp:
                    torch.cuda.synchronize()
                t = time.perf_counter()
            tower(model.preprocess(x.to(device), layout="channels_last"))
        if amp:
            torch.cuda.synchronize()
    return reps * len(x) / (time.perf_counter() - t)
