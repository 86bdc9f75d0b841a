"""``python -m vglpipe.crawl``: crawl Mapillary (or the local fake) into a photo store.

Real region (token from ``$MAPILLARY_ACCESS_TOKEN`` or ``--token-file``)::

    python -m vglpipe.crawl --region-geojson ma.geojson --out results/photos/ma

Built-in demo region: start the fake API on 127.0.0.1 (a child process serving the rendered
street-view source), crawl it through the same crawler, stop it::

    python -m vglpipe.crawl --demo-region demo-test --fake-source resources/streetview/demo-test \\
        --out results/photos/demo-test

Rerunning after a kill resumes from ``OUT/crawl-state.sqlite``; the run writes
``OUT/metadata.parquet`` (last, atomically) once nothing is pending.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

from vglpipe.cli import run
from vglpipe.errors import InputError, SourceError
from vglpipe.geo.region import load_boundary
from vglpipe.sources.mapillary import CrawlConfig, Token, crawl, load_token

log = logging.getLogger("vglpipe.crawl")


def start_fake_process(source: str | os.PathLike, token_file: Path, url_file: Path, latency_ms: float = 0.0,
                       fault_rate: float = 0.0, extra_args: list[str] | None = None, stderr=None):
    """Start the fake Mapillary API as a child process on a free loopback port; return ``(proc, url)``."""
    cmd = [sys.executable, "-m", "vglpipe.sources.fakes.mapillary_server", "--source", str(source),
           "--token-file", str(token_file), "--url-file", str(url_file),
           "--latency-ms", str(latency_ms), "--fault-rate", str(fault_rate), *(extra_args or [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not url_file.exists():
        if proc.poll() is not None:
            raise SourceError(f"fake Mapillary API serving {source} exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            stop_process(proc)
            raise SourceError(f"fake Mapillary API serving {source} did not start within 60 s")
        time.sleep(0.05)
    return proc, url_file.read_text().strip()


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def fake_api(source: str | os.PathLike, token: Token, latency_ms: float = 0.0, fault_rate: float = 0.0,
             extra_args: list[str] | None = None) -> Iterator[str]:
    """Run the fake Mapillary API as a child process on a free loopback port; yield its base URL."""
    with tempfile.TemporaryDirectory(prefix="vgl-fake-") as tmp:
        token_file = Path(tmp) / "token"
        token_file.touch(mode=0o600)
        token_file.write_text(token.value)
        proc, url = start_fake_process(source, token_file, Path(tmp) / "url", latency_ms, fault_rate, extra_args)
        try:
            log.info("fake Mapillary API serving %s at %s (pid %d)", source, url, proc.pid)
            yield url
        finally:
            stop_process(proc)


def config_from_args(args: argparse.Namespace) -> CrawlConfig:
    cfg = CrawlConfig()
    for f in fields(CrawlConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            setattr(cfg, f.name, v)
    if args.no_progress:
        cfg.progress = False
    return cfg.validate()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vglpipe.crawl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--region-geojson", help="region polygon(s), GeoJSON lon/lat")
    where.add_argument("--demo-region", help="a built-in demo region (vglpipe.sources.demo)")
    p.add_argument("--out", required=True, help="photo store directory (metadata.parquet, images/, checkpoint)")
    p.add_argument("--token-file", help="file with the Mapillary access token (default: $MAPILLARY_ACCESS_TOKEN)")
    p.add_argument("--fake-source", help="serve this rendered source with the local fake API and crawl it")
    p.add_argument("--fake-latency-ms", type=float, default=0.0)
    p.add_argument("--fake-fault-rate", type=float, default=0.0)
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("crawl settings (defaults: CrawlConfig)")
    for f in fields(CrawlConfig):
        if f.name in ("progress",):
            continue
        typ = type(f.default)
        g.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=typ, default=None,
                       help=f"default {f.default}")
    return p


def main(args: argparse.Namespace) -> int:
    if args.demo_region:
        from vglpipe.sources.demo import demo_region

        region = demo_region(args.demo_region).boundary()
    else:
        region = load_boundary(args.region_geojson)
    cfg = config_from_args(args)
    if args.fake_source:
        if not (Path(args.fake_source) / "source.parquet").exists():
            raise InputError(f"{args.fake_source}: no source.parquet (render the demo street views first)")
        try:
            token = load_token(args.token_file)
        except SourceError:
            token = Token("MLY|demo|" + secrets.token_hex(16))  # the fake accepts whatever we hand it
        with fake_api(args.fake_source, token, args.fake_latency_ms, args.fake_fault_rate) as url:
            cfg.base_url = url
            result = crawl(region, args.out, token, cfg)
    else:
        token = load_token(args.token_file)
        result = crawl(region, args.out, token, cfg)
    print(json.dumps({"stored": result.stored, "skipped": result.skipped, "failed": result.failed,
                      "requests": result.requests, "retries": result.retries}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(run(build_parser(), main))
