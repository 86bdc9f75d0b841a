"""In-batch retrieval of held-out photos: street view → aerial R@1 among the batch's cells, the
training objective's own yardstick (chance: 1 / batch size), without colour jitter."""

from __future__ import annotations

import numpy as np
import torch

from vglpipe.settings import Experiment

from .data import Jitter, RegionFiles, SampleSpec, TrainingPhotos, TrainStream, collate


def in_batch_recall(model, exp: Experiment, regions: list[RegionFiles], batches: int = 25,
                    batch_size: int = 16, seed: int = 99) -> float:
    """Mean street→aerial R@1 over ``batches`` batches of one photo per 5 m bucket of ``regions``
    (each with its training-mode aerial cell: random bearing and offset ≤ t_max)."""
    spec = model.input_spec
    stream = TrainStream(TrainingPhotos(regions), SampleSpec(
        tuple(spec.street_size), spec.aerial_size, exp.lods, exp.t_max_m, Jitter(0.0, 0.0, 0.0, 0.0), seed=seed))
    was_training = model.training
    model.eval()
    hits = []
    try:
        with torch.no_grad():
            for i in range(batches):
                batch = collate([stream[k] for k in range(i * batch_size, (i + 1) * batch_size)])
                out = model(model.preprocess(batch["street"], layout="channels_first"),
                            model.preprocess(batch["aerial"], layout="channels_first"))
                sim = out.street.float() @ out.aerial.float().T
                hits.append((sim.argmax(1) == torch.arange(batch_size)).float().mean().item())
    finally:
        model.train(was_training)
    return float(np.mean(hits))
