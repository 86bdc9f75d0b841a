"""Mapillary Graph API v4: the token, request pacing, answer classification and parsing."""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from vglpipe.errors import AuthError, InputError, SourceError
from vglpipe.store.photos import validate_image_id

API_URL = "https://graph.mapillary.com"
TOKEN_ENV = "MAPILLARY_ACCESS_TOKEN"
#: The largest ``limit`` the search endpoint (GET /images) accepts.
API_MAX_LIMIT = 2000

#: Non-panoramic camera models of the Mapillary API (``camera_type``); everything else is skipped.
KEEP_CAMERA_TYPES = frozenset(
    {"perspective", "fisheye", "brown", "fisheye_opencv", "radial", "simple_radial"}
)
PANO_CAMERA_TYPES = frozenset({"spherical", "equirectangular"})

SEARCH_FIELDS = "id,computed_geometry,geometry,captured_at,is_pano,camera_type"
ENTITY_FIELDS = (
    "id,camera_type,is_pano,captured_at,computed_geometry,geometry,creator,sequence,"
    "height,width,make,model,compass_angle,computed_compass_angle,{thumb}"
)



# --------------------------------------------------------------------------- token


class Token:
    """The access token; ``str``/``repr`` are masked so it cannot leak through formatting."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        value = value.strip()
        if not value or any(c.isspace() for c in value):
            raise AuthError("Mapillary access token is empty or contains whitespace")
        self._value = value

    @property
    def value(self) -> str:
        return self._value

    def redact(self, text: str) -> str:
        return text.replace(self._value, "***") if self._value in text else text

    def __repr__(self) -> str:
        return "Token(***)"

    __str__ = __repr__


def load_token(token_file: str | os.PathLike | None = None, env_var: str = TOKEN_ENV) -> Token:
    """Token from ``token_file`` if given, else from the environment variable ``env_var``."""
    if token_file:
        path = Path(token_file)
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise AuthError(f"cannot read Mapillary token file {path}: {exc.strerror}") from None
        if not text:
            raise AuthError(f"Mapillary token file {path} is empty")
        return Token(text)
    text = os.environ.get(env_var, "").strip()
    if not text:
        raise AuthError(
            f"no Mapillary access token: set the environment variable {env_var} or pass a token file"
        )
    return Token(text)


class RedactFilter(logging.Filter):
    def __init__(self, token: Token):
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        red = self.token.redact(msg)
        if red is not msg and red != msg:
            record.msg, record.args = red, None
        return True


# --------------------------------------------------------------------------- parsing


class Transient(Exception):
    """A failure worth retrying (429, 5xx, reset, timeout, truncated body); ``retry_after``:
    the seconds the server asked to wait (its ``Retry-After`` header), or None."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(Transient):
    """The API's request limit was reached (HTTP 429 or a rate-limit error code)."""


class NotFound(Exception):
    pass


class Expired(Exception):
    """A signed thumbnail URL was refused (403/410): fetch a fresh one."""


def point(geom: Any) -> tuple[float, float] | None:
    """(lat, lon) of a GeoJSON Point ``{"type": "Point", "coordinates": [lon, lat]}``, or None."""
    if not isinstance(geom, dict):
        return None
    c = geom.get("coordinates")
    if not isinstance(c, (list, tuple)) or len(c) < 2:
        return None
    try:
        lon, lat = float(c[0]), float(c[1])
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return lat, lon


def _str(v: Any, cap: int = 256) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        v = str(v) if isinstance(v, (int, float)) else None
        if v is None:
            return None
    return v[:cap]


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    try:
        i = int(v)
    except (TypeError, ValueError):
        return None
    return i if -(1 << 63) <= i < (1 << 63) else None


def parse_entity(image_id: int, ent: Any) -> tuple[str | None, dict | None]:
    """Validate an entity answer; return ``(skip_reason, None)`` or ``(None, row)``."""
    if not isinstance(ent, dict):
        return "bad_record", None
    try:
        if validate_image_id(ent.get("id")) != image_id:
            return "bad_record", None
    except InputError:
        return "bad_record", None
    cam = ent.get("camera_type")
    if ent.get("is_pano") is True or cam in PANO_CAMERA_TYPES:
        return "panorama", None
    if cam is not None and cam not in KEEP_CAMERA_TYPES:
        return "camera_type", None
    pos = point(ent.get("computed_geometry")) or point(ent.get("geometry"))
    if pos is None:
        return "bad_record", None
    orig = point(ent.get("geometry"))
    creator = ent.get("creator") if isinstance(ent.get("creator"), dict) else {}
    seq = ent.get("sequence")
    if isinstance(seq, dict):
        seq = seq.get("id")
    cap = _int(ent.get("captured_at"))
    row = {
        "image_id": image_id,
        "lat": pos[0],
        "lon": pos[1],
        "orig_lat": orig[0] if orig else None,
        "orig_lon": orig[1] if orig else None,
        "captured_at": cap,
        "camera_type": _str(cam, 64),
        "make": _str(ent.get("make")),
        "model": _str(ent.get("model")),
        "compass_angle": _float(ent.get("compass_angle")),
        "computed_compass_angle": _float(ent.get("computed_compass_angle")),
        "sequence_id": _str(seq, 128),
        "creator_id": _int(creator.get("id")),
        "creator_username": _str(creator.get("username")),
        "width": _int(ent.get("width")),
        "height": _int(ent.get("height")),
    }
    for k in ("width", "height"):
        if row[k] is not None and not 0 < row[k] < 1 << 31:
            row[k] = None
    return None, row


# --------------------------------------------------------------------------- limiter


class RateLimiter:
    """Space calls evenly at ``per_minute`` (small burst allowance); ``per_minute <= 0``: unlimited.

    When the API answers "request limit reached" the configured rate is too high for it:
    :meth:`slow_down` stretches the spacing (at most once a second, up to ``max_slowdown``
    times), and every successful call lets it recover slowly towards the configured rate.
    """

    def __init__(self, per_minute: float, burst: int = 8, max_slowdown: float = 8.0):
        self.base_interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self.interval = self.base_interval
        self.max_interval = self.base_interval * max_slowdown
        self.burst = burst * self.interval
        self.next = 0.0
        self._slowed_at = -1e9

    async def acquire(self) -> None:
        if not self.interval:
            return
        now = asyncio.get_running_loop().time()
        t = max(self.next, now - self.burst)
        self.next = t + self.interval
        if t > now:
            await asyncio.sleep(t - now)

    def slow_down(self, factor: float = 1.5) -> None:
        if not self.interval:
            return
        now = asyncio.get_running_loop().time()
        if now - self._slowed_at >= 1.0:
            self._slowed_at = now
            self.interval = min(self.max_interval, self.interval * factor)

    def succeeded(self) -> None:
        if self.interval > self.base_interval:
            self.interval = max(self.base_interval, self.interval * 0.999)


def retry_after_s(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000": UTC all the same
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def classify_answer(status: int, body: bytes, what: str, token: Token,
                    retry_after: float | None = None) -> Exception:
    """The exception a non-200 API answer stands for (messages redacted of the token);
    ``retry_after`` (seconds, from the answer's header) rides on the retryable ones."""
    err: dict = {}
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            err = parsed["error"]
    except ValueError:
        pass
    message = token.redact(str(err.get("message", ""))[:200])
    # rate limits first: Graph-style rate-limit answers are also typed OAuthException
    if status == 429 or err.get("code") in (4, 17, 32, 613):
        return RateLimited(f"HTTP {status} {message}", retry_after)
    if status == 401 or err.get("code") in (102, 190) or (
        err.get("type") == "OAuthException" and status in (400, 403)
    ):
        # Graph-style invalid-token answers come as HTTP 400 with code 190 / OAuthException
        return AuthError(
            token.redact(f"Mapillary rejected the access token (HTTP {status}, {err.get('type') or 'unauthorized'}) "
                         f"for {what}: {message} — check MAPILLARY_ACCESS_TOKEN / the token file")
        )
    if status >= 500 or err.get("is_transient") or err.get("code") in (1, 2):
        return Transient(f"HTTP {status} {message}", retry_after)
    if status == 404 or err.get("code") == 100:
        return NotFound(f"HTTP {status} {message}")
    return SourceError(token.redact(f"{what} failed: HTTP {status}: {message or body[:200]!r}"))
