"""Run a production stage against the demo's local fake servers.

``python -m vglpipe.demo serve-mapillary ... -- python -m vglpipe.crawl ...`` starts the fake
Mapillary API (a child process on a free loopback port, with a fresh random token), runs the
command with ``MAPILLARY_ACCESS_TOKEN`` set to that token and every ``fake:/`` in its
arguments replaced by the server's address, and stops the server when the command ends;
``serve-orthophotos`` does the same with the fake orthophoto provider (a thread). The stage
itself knows nothing of the demo: it gets a URL.

Children die with their parent (``PR_SET_PDEATHSIG``): a killed job leaves no server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from vglpipe.errors import InputError, SourceError
from vglpipe.settings import FAKE_URL_PREFIX, OrthophotoServerSettings

log = logging.getLogger("vglpipe.demo")

TOKEN_ENV = "MAPILLARY_ACCESS_TOKEN"


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_fake_mapillary(source: str | os.PathLike, token_file: Path, url_file: Path, latency_ms: float = 0.0,
                         fault_rate: float = 0.0, extra_args: list[str] | None = None, stderr=None):
    """Start the fake Mapillary API as a child process on a free loopback port; return ``(proc, url)``."""
    cmd = [sys.executable, "-m", "vglpipe.demo.fake_mapillary", "--source", str(source),
           "--token-file", str(token_file), "--url-file", str(url_file),
           "--latency-ms", str(latency_ms), "--fault-rate", str(fault_rate), *(extra_args or [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL,
                            preexec_fn=die_with_parent)
    deadline = time.monotonic() + 60
    while not url_file.exists():
        if proc.poll() is not None:
            raise SourceError(f"fake Mapillary API serving {source} exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            stop_process(proc)
            raise SourceError(f"fake Mapillary API serving {source} did not start within 60 s")
        time.sleep(0.05)
    return proc, url_file.read_text().strip()


@contextlib.contextmanager
def fake_mapillary(source: str | os.PathLike, token: str, latency_ms: float = 0.0, fault_rate: float = 0.0,
                   extra_args: list[str] | None = None) -> Iterator[str]:
    """The fake Mapillary API serving ``source`` (accepting ``token``) as a child process; yields its URL."""
    if not (Path(source) / "source.parquet").exists():
        raise InputError(f"{source}: no source.parquet (render the demo street views first)")
    tmp = Path(tempfile.mkdtemp(prefix="vgl-fake-"))
    try:
        token_file = tmp / "token"
        token_file.touch(mode=0o600)
        token_file.write_text(token)
        proc, url = start_fake_mapillary(source, token_file, tmp / "url", latency_ms, fault_rate, extra_args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the server has read the token: nothing is left if we are killed
    try:
        log.info("fake Mapillary API serving %s at %s (pid %d)", source, url, proc.pid)
        yield url
    finally:
        stop_process(proc)


@contextlib.contextmanager
def fake_orthophotos(world_color: str | os.PathLike, world_height: str | os.PathLike,
                     settings: OrthophotoServerSettings) -> Iterator[str]:
    """The fake orthophoto provider serving a synthetic world (a thread of this process); yields its URL."""
    from vglpipe.demo.fake_orthophotos import FakeOrthophotoServer, Faults, ServerConfig
    from vglpipe.demo.world import read_world

    world = read_world(world_color, world_height)
    cfg = ServerConfig(tile_format=settings.tile_format, bulk_tile_m=settings.bulk_tile_m,
                       bulk_format=settings.bulk_format, delay_s=settings.delay_s,
                       faults=Faults(rate=settings.fault_rate, seed=settings.seed))
    if settings.alt_crs:
        minx, _, maxx, _ = world.bounds
        cfg.alt_crs = settings.alt_crs
        cfg.alt_crs_split_x = minx + settings.alt_crs_west_fraction * (maxx - minx)
    with FakeOrthophotoServer(world, cfg) as server:
        log.info("fake orthophoto provider serving %s at %s", world_color, server.url)
        yield server.url


def with_url(args: Sequence[str], url: str) -> list[str]:
    """``args`` with every ``fake:/`` replaced by ``url/`` (also inside JSON arguments)."""
    return [a.replace(FAKE_URL_PREFIX, url.rstrip("/") + "/") for a in args]


def run_command(cmd: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` (dying with us; SIGTERM/SIGINT passed on) and return its exit code."""
    if not cmd:
        raise InputError("no command given after '--'")
    proc = subprocess.Popen(list(cmd), env={**os.environ, **(env or {})}, preexec_fn=die_with_parent)

    def forward(signum, _frame):
        proc.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def random_token() -> str:
    return "MLY|demo|" + secrets.token_hex(16)
