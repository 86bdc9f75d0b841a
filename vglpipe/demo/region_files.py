"""A demo region's files made in one call, without the workflow: its world's COGs, crawled photos
and the cells stage's photo table (tests and benchmarks that need a real training region)."""

from __future__ import annotations

from pathlib import Path


def make_region_files(directory: str | Path, settings, size_m: float, photos: int, seed: int = 7,
                      center: tuple[float, float] = (42.40, -71.10), world_m_per_px: float = 0.4,
                      cog_options=None):
    """World (seed ``seed``, ``size_m`` + the download margin on every side) -> COGs + index; ``photos``
    rendered photos crawled from the fake Mapillary API into a photo store; photo_cells.parquet.
    Returns the :class:`vglpipe.train.data.RegionFiles`; an already made directory is reused."""
    from vglpipe.aerial.cog import CogOptions, build_cogs, build_index
    from vglpipe.cells import assign_file
    from vglpipe.demo.fake_mapillary import load_source
    from vglpipe.demo.photos import RenderSettings, render_source
    from vglpipe.demo.regions import DemoRegion
    from vglpipe.demo.world import make_world, write_world
    from vglpipe.settings import CrawlSettings
    from vglpipe.sources.mapillary import Token, crawl
    from vglpipe.train.data import RegionFiles

    d = Path(directory)
    files = RegionFiles("region", d / "photos", d / "photo_cells.parquet", d / "index.parquet")
    if files.aerial_index.exists() and files.photo_cells.exists():
        return files
    region = DemoRegion(*center, size_m).boundary()
    world = make_world(seed, *center, size_m + 2 * settings.download_margin_m, m_per_px=world_m_per_px)
    write_world(world, d / "color.tif", d / "height.tif")
    rep = build_cogs([d / "color.tif"], d / "cogs", cog_options or CogOptions(), progress=False)
    build_index(rep.cogs, d / "index.parquet")
    render_source(world, region, d / "source", RenderSettings(n=photos, seed=seed, internal_scale=0.25))
    token = "MLY|demo|region-files"
    with load_source(d / "source", token) as fake:
        crawl(region, d / "photos", Token(token), CrawlSettings.defaults(base_url=fake.url, timeout_s=5.0),
              progress=False)
    layout = settings.layout
    assign_file(d / "photos" / "metadata.parquet", region, layout.train_layout(), layout.test_layout(),
                d / "photo_cells.parquet")
    return files
