"""A tiny training region made with the demo's machinery: a 300 m world, its COGs, ~150 rendered
photos crawled from the fake Mapillary API, and the cells stage's photo table."""

from __future__ import annotations

from pathlib import Path

import pytest

from vglpipe.settings import Settings

CENTER = (42.45, -71.23)
REGION_M = 300.0


def tiny_settings(**train) -> Settings:
    """A small model and LODs that train in seconds on a CPU (the demo architecture, scaled down)."""
    return Settings({
        "model": {"name": "demo", "pretrained": False,
                  "args": {"street_size": [48, 64], "aerial_size": 32, "dim": 32, "heads": 4}},
        "aerial": {"patch_px": 32, "m_per_px": 1.0, "n_lods": 2},
        "train": {"steps": 12, "batch_size": 8, "workers": 0, "warmup_steps": 2, "lr": 0.001,
                  "checkpoint_every": 4, "log_every": 2,
                  "mining": {"raise_after_samples": 16, "max_scan_batches": 4}, **train},
        "experiments": {"tiny": {}},
    })


@pytest.fixture(scope="session")
def train_region(tmp_path_factory):
    from vglpipe.aerial.cog import CogOptions
    from vglpipe.demo.region_files import make_region_files

    d: Path = tmp_path_factory.mktemp("train-region")
    return make_region_files(d, tiny_settings(), REGION_M, photos=150, seed=5, center=CENTER,
                             cog_options=CogOptions(tile_px=1024, blocksize=256, min_overviews=2))
