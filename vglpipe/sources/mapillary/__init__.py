"""Mapillary Graph API v4 crawler: all non-panoramic images of a region into a sharded photo store.

How a crawl works (paper §4.1, S2):

1. **Search.** The region's bounding box is cut into a grid of boxes of at most
   ``max_box_deg`` (0.01°) per side, aligned to multiples of that size; boxes that miss the
   region polygon are dropped. ``GET /images?bbox=…&fields=id,computed_geometry,…&limit=2000``
   returns a *capped sample* (no pagination), so a box whose answer holds ≥ 95 % of the
   cap (the limit, at most the API's 2000) is split into four and searched again. A server
   may cap lower: an answer as large as any before it (≥ 20 images) is probed by searching its
   quadrants, and if they hold more, that size is learned as the cap (kept in the
   checkpoint). Points outside the polygon are dropped; search-phase skips are counted once
   per record (a point on the shared edge of two boxes comes in both answers).
2. **Entities.** ``GET /{id}?fields=camera_type,…,thumb_1024_url`` per image; panoramas
   (spherical/equirectangular/``is_pano``) and unknown camera types are skipped, the
   thumbnail is downloaded exactly as served (signed URLs keep their escapes; a 403/410 on an
   expired one re-queries the entity for a fresh one), greyscale photos are skipped, the
   rest is letterboxed to 640×480 and appended to a tar shard of the photo store.
3. **Export.** When nothing is pending, ``metadata.parquet`` is written atomically.

All HTTP goes through one aiohttp session (an asyncio client sustains ~2k requests/s per
process on loopback, a thread pool of ``requests`` ~550); two rate limiters (search, entity)
space the API calls at the configured per-minute limits, and enough workers run to reach
them with ~100 ms latency. Transient failures (429, 5xx, ``is_transient`` API errors,
timeouts, resets, truncated JSON or JPEG) are retried with exponential backoff and jitter
(hand-rolled: tenacity's per-attempt overhead was ~10 % of the client's CPU), waiting at
least a server's ``Retry-After`` (up to ``backoff_max_s``); a thumbnail served as the same
undecodable bytes 3 times is damaged for good and skipped (``bad_image``); a 401
stops the crawl at once. Thumbnail work (decode, greyscale check, letterbox, JPEG) runs
in a thread pool fed in batches; a thumbnail that already is a 640×480 JPEG is stored as
served. Note the image work dominates a real crawl's CPU (~8-10 ms per 1024 px thumbnail):
``python -m vglpipe.bench crawl`` prints the cores needed at the default limits.

Checkpointing: progress lives in ``crawl-state.sqlite`` beside the store (WAL; finished
images are committed about once a second from an I/O thread). Shard data is fsynced
*before* the rows that point at it are committed, and a
restart truncates each shard back to its committed end, so a crawl killed at any point (even
``kill -9``) redoes no committed box or image and loses none.

The access token is held by :class:`Token` (its ``repr``/``str`` are masked), sent only in the
``Authorization: OAuth …`` header of API requests (never to thumbnail hosts, never in a URL)
and masked out of every log line and error message the crawler writes.
"""

from vglpipe.sources.mapillary.api import API_URL, TOKEN_ENV, RateLimiter, Token, load_token, parse_entity
from vglpipe.sources.mapillary.boxes import box_bounds, root_boxes
from vglpipe.sources.mapillary.checkpoint import INSERT_PHOTO_SQL, CrawlState, export_metadata
from vglpipe.sources.mapillary.crawler import Crawler, CrawlResult, crawl
from vglpipe.sources.mapillary.images import process_thumbnail

__all__ = [
    "API_URL", "TOKEN_ENV", "INSERT_PHOTO_SQL", "CrawlResult", "CrawlState", "Crawler", "RateLimiter", "Token",
    "box_bounds", "crawl", "export_metadata", "load_token", "parse_entity", "process_thumbnail", "root_boxes",
]
