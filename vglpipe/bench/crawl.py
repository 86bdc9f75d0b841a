"""Crawl benchmark: the real crawler against the fake Mapillary API with ~100 ms latency.

The fake runs in its own process (as a remote API would), serving a synthetic source with
many boxes and images; the crawler runs in this process at the configured (default) rate
limits. Figures:

* ``rate_fraction``: achieved / configured request rate, the lower of the search phase
  (bbox searches vs ``search_per_minute``) and the entity phase (entity requests vs
  ``entity_per_minute``); goal ≥ 0.9.
* ``cpu_s_per_1k_requests``: CPU seconds of the crawler process (all threads) per 1,000 HTTP
  requests (searches + entities + thumbnails), and ``server_cpu_s_per_1k_requests`` for the fake.
  ``loop_cpu_s_per_1k_requests`` is the event loop thread's share: that thread must stay
  below one core, so it bounds the request rate of one crawler process.
* ``image_ms_per_1024_thumb``: CPU time to turn a real-size 1024×768 thumbnail into the stored
  640×480 JPEG (decode, greyscale check, letterbox, encode). The benchmark serves 640×480
  thumbnails (stored as served) so that the request machinery is what is measured on two
  shared cores; ``est_cores_real_crawl`` adds the image work back for a real crawl at the
  default limits.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import shapely

from vglpipe.demo.fake_mapillary import make_random_source
from vglpipe.demo.serve import start_fake_mapillary, stop_process
from vglpipe.settings import CrawlSettings
from vglpipe.sources.mapillary import Token, crawl, process_thumbnail

DEFAULTS = CrawlSettings.defaults()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=24000, help="images served (default 24000)")
    parser.add_argument("--boxes", type=int, default=1600, help="search boxes of 0.01° (default 1600)")
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--search-per-minute", type=float, default=DEFAULTS.search_per_minute)
    parser.add_argument("--entity-per-minute", type=float, default=DEFAULTS.entity_per_minute)
    parser.add_argument("--concurrency", type=int, default=DEFAULTS.concurrency)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")


def _cpu(who) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _image_ms(repeats: int = 20) -> float:
    import cv2

    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (1024, 768), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    data = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 88])[1].tobytes()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        process_thumbnail(data, 90, "bench")
        times.append(time.process_time() - t0)
    return 1000 * statistics.median(times)


def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="vgl-bench-crawl-"))
    try:
        side = int(np.ceil(np.sqrt(args.boxes)))
        x0, y0 = -72.0, 42.0
        bounds = (x0, y0, x0 + side * 0.01, y0 + side * 0.01)
        print(f"source: {args.images} images in {side}x{side} boxes of 0.01°, 640x480 thumbnails", flush=True)
        make_random_source(tmp / "src", bounds, args.images, seed=5, n_distinct_images=64, sizes=((640, 480),),
                           pano_fraction=0.0, grey_fraction=0.0, hostile=False, noise=0)
        token = Token("MLY|bench|" + "0" * 32)
        (tmp / "token").write_text(token.value)
        proc, url = start_fake_mapillary(tmp / "src", tmp / "token", tmp / "url", latency_ms=args.latency_ms)
        server = psutil.Process(proc.pid)
        try:
            cfg = DEFAULTS.replace(base_url=url, search_per_minute=args.search_per_minute,
                                   entity_per_minute=args.entity_per_minute, concurrency=args.concurrency)
            region = shapely.box(*bounds)
            # the crawler (event loop + image threads) is this process; the fake is a child
            c0, s0, w0 = _cpu(resource.RUSAGE_SELF), sum(server.cpu_times()[:2]), time.perf_counter()
            t0 = time.thread_time()  # crawl() runs its event loop in this thread
            result = crawl(region, tmp / "out", token, cfg, progress=False)
            loop_cpu = time.thread_time() - t0
            wall = time.perf_counter() - w0
            cpu = _cpu(resource.RUSAGE_SELF) - c0
            server_cpu = sum(server.cpu_times()[:2]) - s0
        finally:
            stop_process(proc)
        req = result.requests
        n_req = sum(req.values())
        search_rate = req.get("search", 0) / result.search_seconds
        entity_rate = req.get("entity", 0) / result.image_seconds
        frac_search = search_rate / (args.search_per_minute / 60)
        frac_entity = entity_rate / (args.entity_per_minute / 60)
        img_ms = _image_ms()
        cpu_per_1k = 1000 * cpu / n_req
        loop_per_1k = 1000 * loop_cpu / n_req
        # a real crawl at the default entity limit: entity + thumbnail request per image, plus the image work
        per_s = args.entity_per_minute / 60
        est_cores = per_s * (2 * cpu_per_1k / 1000 + img_ms / 1000)
        print(f"search: {req.get('search', 0)} requests in {result.search_seconds:.1f} s = {search_rate:.0f}/s "
              f"({frac_search:.1%} of {args.search_per_minute / 60:.0f}/s)")
        print(f"images: {req.get('entity', 0)} entity + {req.get('thumbnail', 0)} thumbnail requests in "
              f"{result.image_seconds:.1f} s = {entity_rate:.0f} entity/s ({frac_entity:.1%} of {per_s:.0f}/s), "
              f"{n_req / wall:.0f} requests/s overall")
        # every served photo is stored, failed or skipped for a named reason (all lie in the region)
        unaccounted = args.images - result.stored - result.failed - sum(result.skipped.values())
        print(f"stored {result.stored}, failed {result.failed}, retries {result.retries}, skipped {result.skipped}; "
              f"unaccounted {unaccounted}; "
              f"boxes split {result.boxes_split}, probed for a lower answer cap {result.boxes_probed}")
        print(f"crawler CPU {cpu:.1f} s (event loop + image threads) = "
              f"{cpu_per_1k:.2f} s per 1k requests, of which the event loop thread {loop_per_1k:.2f}; "
              f"fake server {server_cpu:.1f} s; "
              f"machine busy {(cpu + server_cpu) / wall / len(psutil.Process().cpu_affinity()):.0%}")
        print(f"ms per image (wall, summed over concurrent workers): {result.timing_ms_per_image}")
        print(f"1024x768 thumbnail -> 640x480 JPEG: {img_ms:.1f} ms CPU; a real crawl at the default limits needs "
              f"~{est_cores:.1f} cores")
        return {
            "rate_fraction": round(min(frac_search, frac_entity), 3),
            "rate_fraction_search": round(frac_search, 3),
            "rate_fraction_entity": round(frac_entity, 3),
            "cpu_s_per_1k_requests": round(cpu_per_1k, 3),
            "loop_cpu_s_per_1k_requests": round(loop_per_1k, 3),
            "server_cpu_s_per_1k_requests": round(1000 * server_cpu / n_req, 3),
            "requests": n_req,
            "requests_per_s": round(n_req / wall, 1),
            "stored": result.stored,
            "failed": result.failed,
            "unaccounted": unaccounted,
            "retries": sum(result.retries.values()),
            "latency_ms": args.latency_ms,
            "image_ms_per_1024_thumb": round(img_ms, 2),
            "est_cores_real_crawl": round(est_cores, 1),
            "wall_s": round(wall, 1),
        }
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
