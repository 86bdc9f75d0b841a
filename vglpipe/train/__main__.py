"""``python -m vglpipe.train``: train one experiment's model on the training regions.

    python -m vglpipe.train --config workflow_config.yaml --experiment demo \\
        --region demo-train:results/photos/demo-train:results/cells/demo-train/photo_cells.parquet:results/aerial/demo-train/index.parquet \\
        --out results/models/demo

``--region NAME:PHOTOS_DIR:PHOTO_CELLS:AERIAL_INDEX`` once per training region. Writes
``OUT/model.safetensors`` + ``OUT/model.json`` (last), ``OUT/metrics.csv``, TensorBoard events
under ``OUT/tensorboard`` and ``OUT/summary.json``; ``OUT/checkpoint/`` is kept between runs:
a killed or preempted (SIGTERM) training continues from it. ``--processes N`` trains one model
with N processes and the batch split between them: in a SLURM job's batch script this command
starts them with ``srun`` (one per task), elsewhere with ``torchrun``; a command started by
either launcher is one of the copies.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

from vglpipe import cli
from vglpipe.errors import InputError
from vglpipe.settings import Settings, TrainStage
from vglpipe.store.atomic import atomic_write_text

log = logging.getLogger("vglpipe.train")


def parse_region(text: str):
    from vglpipe.train.data import RegionFiles

    parts = text.split(":")
    if len(parts) != 4 or not all(parts):
        raise InputError(f"--region {text!r}: expected NAME:PHOTOS_DIR:PHOTO_CELLS:AERIAL_INDEX")
    name, photos, cells, index = parts
    for p in (Path(photos) / "metadata.parquet", Path(cells), Path(index)):
        if not p.exists():
            raise InputError(f"--region {name}: {p} does not exist")
    return RegionFiles(name, Path(photos), Path(cells), Path(index))


def main(args: argparse.Namespace) -> int:
    from vglpipe.train import distributed as dd

    launch = dd.launcher(args.processes, args.nodes, args.cpus_per_process)
    if launch is not None:  # become the launcher of the copies (srun or torchrun), which train
        log.info("starting %d training processes with %s", args.processes, " ".join(launch[:3]))
        sys.stdout.flush()
        sys.stderr.flush()
        os.execvp(launch[0], launch + sys.argv[1:])

    from vglpipe.train.loop import Trainer

    st = cli.stage_settings(args, TrainStage, Settings.train_stage, "experiment")
    regions = [parse_region(r) for r in args.region]
    trainer = Trainer(st.experiment, regions, args.out, device=args.device, progress=not args.no_progress,
                      workers=args.workers)
    try:
        summary = trainer.run()
    finally:
        dd.shutdown()
    if trainer.rank.main:
        atomic_write_text(Path(args.out) / "summary.json", json.dumps(asdict(summary), indent=2) + "\n")
        print(json.dumps(asdict(summary)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vglpipe.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_settings_arguments(p)
    p.add_argument("--experiment", help="the experiment to train (with --config)")
    p.add_argument("--region", action="append", required=True, metavar="NAME:PHOTOS:PHOTO_CELLS:AERIAL_INDEX",
                   help="a training region's inputs (repeat for several)")
    p.add_argument("--out", required=True, help="model directory")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--workers", type=int, help="DataLoader workers instead of train.workers")
    p.add_argument("--processes", type=int, default=1,
                   help="training processes (one per GPU, or CPU processes with gloo): started as one srun "
                        "step in a SLURM job's batch script, else with torchrun")
    p.add_argument("--nodes", type=int, default=1, help="nodes the processes are spread over (SLURM only)")
    p.add_argument("--cpus-per-process", type=int, default=0, help="CPUs of each process's SLURM task")
    p.add_argument("--no-progress", action="store_true")
    return p


if __name__ == "__main__":
    sys.exit(cli.run(build_parser(), main))

