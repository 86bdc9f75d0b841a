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
    from vglpipe.aerial.cog import CogOptions, build_cogs, build_index
    from vglpipe.cells import assign_file
    from vglpipe.demo.fake_mapillary import load_source
    from vglpipe.demo.photos import RenderSettings, render_source
    from vglpipe.demo.regions import DemoRegion
    from vglpipe.demo.world import make_world, write_world
    from vglpipe.settings import CrawlSettings
    from vglpipe.sources.mapillary import Token, crawl
    from vglpipe.train.data import RegionFiles

    d: Path = tmp_path_factory.mktemp("train-region")
    settings = tiny_settings()
    margin = settings.download_margin_m
    region = DemoRegion(*CENTER, REGION_M).boundary()
    world = make_world(5, *CENTER, REGION_M + 2 * margin, m_per_px=0.4)
    write_world(world, d / "color.tif", d / "height.tif")
    rep = build_cogs([d / "color.tif"], d / "cogs", CogOptions(tile_px=1024, blocksize=256, min_overviews=2),
                     progress=False)
    build_index(rep.cogs, d / "index.parquet")
    render_source(world, region, d / "source", RenderSettings(n=150, seed=1, internal_scale=0.25))
    token = "MLY|test|tiny-train-region"
    with load_source(d / "source", token) as fake:
        crawl(region, d / "photos", Token(token), CrawlSettings.defaults(base_url=fake.url, timeout_s=5.0),
              progress=False)
    layout = settings.layout
    assign_file(d / "photos" / "metadata.parquet", region, layout.train_layout(), layout.test_layout(),
                d / "photo_cells.parquet")
    return RegionFiles("tiny", d / "photos", d / "photo_cells.parquet", d / "index.parquet")
