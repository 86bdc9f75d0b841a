"""``python -m vglpipe.demo <command>``: the synthetic demo's steps (rules/demo.smk).

    boundary           draw a demo region's boundary (a notched square with a pond)
    world              draw its world: orthophoto + height map GeoTIFFs (UTM, 0.2 m/px)
    streetview         render its street-view photos into a source directory for the fake API
    serve-mapillary    run a command against the fake Mapillary API serving such a source
    serve-orthophotos  run a command against the fake orthophoto provider serving a world

Settings come from ``--settings JSON`` (the workflow) or ``--config FILE --region NAME``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vglpipe import cli
from vglpipe.settings import (
    DemoBoundaryStage,
    DemoStreetviewStage,
    DemoWorldStage,
    FakeMapillaryStage,
    OrthophotoServerSettings,
    Settings,
)

log = logging.getLogger("vglpipe.demo")


def _boundary(args) -> int:
    from vglpipe.demo.regions import DemoRegion
    from vglpipe.geo.region import write_boundary

    st = cli.stage_settings(args, DemoBoundaryStage, Settings.demo_boundary_stage, "region")
    geom = DemoRegion(st.center_lat, st.center_lon, st.size_m).boundary()
    write_boundary(geom, args.out, args.region or "demo")
    return 0


def _world(args) -> int:
    from vglpipe.demo.world import make_world, write_world

    st = cli.stage_settings(args, DemoWorldStage, Settings.demo_world_stage, "region")
    size = st.size_m + 2 * st.margin_m
    world = make_world(st.seed, st.center_lat, st.center_lon, size, st.m_per_px)
    write_world(world, args.out_color, args.out_height)
    log.info("world: seed %d, %.0f m square at %.2f m/px, %s", st.seed, size, st.m_per_px, world.crs)
    return 0


def _streetview(args) -> int:
    from vglpipe.demo.photos import RenderSettings, render_source
    from vglpipe.demo.world import read_world
    from vglpipe.geo.region import load_boundary

    st = cli.stage_settings(args, DemoStreetviewStage, Settings.demo_streetview_stage, "region")
    world = read_world(args.world_color, args.world_height)
    region = load_boundary(args.boundary)
    render_source(world, region, args.out, RenderSettings(n=st.photos, seed=(st.seed, st.world_seed),
                                                          internal_scale=st.render_scale,
                                                          view_range_m=st.view_range_m))
    return 0


def _command(args) -> list[str]:
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    return cmd


def _serve_mapillary(args) -> int:
    from vglpipe.demo.serve import TOKEN_ENV, fake_mapillary, random_token, run_command, with_url

    st = cli.stage_settings(args, FakeMapillaryStage, Settings.fake_mapillary_stage)
    if args.crawl_out:
        reset_if_source_changed(Path(args.crawl_out), Path(args.source) / "source.parquet")
    token = random_token()
    with fake_mapillary(args.source, token, st.latency_ms, st.fault_rate) as url:
        return run_command(with_url(_command(args), url), env={TOKEN_ENV: token})


def reset_if_source_changed(crawl_out: Path, source: Path) -> None:
    """A crawl checkpoint of photos rendered before is of another (fake) Mapillary: start over."""
    import hashlib
    import shutil

    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    stamp = crawl_out / "demo-source.sha256"
    if crawl_out.exists() and (not stamp.exists() or stamp.read_text().strip() != digest):
        log.warning("%s holds a crawl of other rendered photos: starting the crawl over", crawl_out)
        shutil.rmtree(crawl_out)
    crawl_out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest + "\n")


def _serve_orthophotos(args) -> int:
    from vglpipe.demo.serve import fake_orthophotos, run_command, with_url

    st = cli.stage_settings(args, OrthophotoServerSettings, Settings.fake_orthophoto_stage, "region")
    with fake_orthophotos(args.world_color, args.world_height, st) as url:
        return run_command(with_url(_command(args), url))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vglpipe.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def command(name, fn, help_):
        c = sub.add_parser(name, help=help_)
        cli.add_settings_arguments(c)
        c.add_argument("--region", help="the demo region (with --config)")
        c.set_defaults(fn=fn)
        return c

    c = command("boundary", _boundary, "draw a demo region's boundary GeoJSON")
    c.add_argument("--out", required=True)
    c = command("world", _world, "draw a demo region's world (orthophoto + height GeoTIFFs)")
    c.add_argument("--out-color", required=True)
    c.add_argument("--out-height", required=True)
    c = command("streetview", _streetview, "render a demo region's street-view photos")
    c.add_argument("--world-color", required=True)
    c.add_argument("--world-height", required=True)
    c.add_argument("--boundary", required=True, help="the region's boundary GeoJSON")
    c.add_argument("--out", required=True, help="source directory (source.parquet + shards)")
    c = command("serve-mapillary", _serve_mapillary, "run a command against the fake Mapillary API")
    c.add_argument("--source", required=True, help="rendered source directory")
    c.add_argument("--crawl-out", help="the crawl's photo store: emptied first if it holds a crawl of another source")
    c.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    c = command("serve-orthophotos", _serve_orthophotos, "run a command against the fake orthophoto provider")
    c.add_argument("--world-color", required=True)
    c.add_argument("--world-height", required=True)
    c.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run")
    return p


def main(argv=None) -> int:
    return cli.run(build_parser(), lambda a: a.fn(a), argv)


if __name__ == "__main__":
    sys.exit(main())
