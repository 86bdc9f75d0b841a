"""``python -m vglpipe.crawl``: crawl Mapillary into a photo store.

    python -m vglpipe.crawl --config workflow_config.yaml --region-geojson ma.geojson --out results/photos/ma

The token comes from ``$MAPILLARY_ACCESS_TOKEN`` or ``--token-file``; the API's address from
``crawl.base_url`` (``--base-url`` overrides it, e.g. for a local proxy or the demo's fake).
Rerunning after a kill resumes from ``OUT/crawl-state.sqlite``; the run writes
``OUT/metadata.parquet`` (last, atomically) once nothing is pending.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from vglpipe import cli
from vglpipe.errors import ConfigError
from vglpipe.geo.region import load_boundary
from vglpipe.settings import CrawlStage, Settings
from vglpipe.sources.mapillary import crawl, load_token

log = logging.getLogger("vglpipe.crawl")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vglpipe.crawl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_settings_arguments(p)
    p.add_argument("--region-geojson", required=True, help="region polygon(s), GeoJSON lon/lat")
    p.add_argument("--out", required=True, help="photo store directory (metadata.parquet, images/, checkpoint)")
    p.add_argument("--token-file", help="file with the Mapillary access token (default: $MAPILLARY_ACCESS_TOKEN)")
    p.add_argument("--base-url", help="API base URL instead of crawl.base_url")
    p.add_argument("--image-workers", type=int, default=0, help="threads for thumbnail work (default: one per core)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(args: argparse.Namespace) -> int:
    settings = cli.stage_settings(args, CrawlStage, Settings.crawl_stage).crawl
    if args.base_url:
        if not args.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"--base-url {args.base_url!r}: must be an http(s) URL")
        settings = dataclasses.replace(settings, base_url=args.base_url)
    region = load_boundary(args.region_geojson)
    token = load_token(args.token_file)
    result = crawl(region, args.out, token, settings, image_workers=args.image_workers,
                   progress=not args.no_progress)
    print(json.dumps({"stored": result.stored, "skipped": result.skipped, "failed": result.failed,
                      "requests": result.requests, "retries": result.retries}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(build_parser(), main))
