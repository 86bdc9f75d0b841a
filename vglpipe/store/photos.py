"""Sharded photo store: ``metadata.parquet`` + JPEGs packed into a few large tar shards.

Layout of a store directory (e.g. ``results/photos/{region}/``)::

    metadata.parquet          one row per stored photo (schema: :data:`METADATA_SCHEMA`)
    images/shard-00000.tar    POSIX tar (ustar) files of ~``shard_bytes`` each, members ``<image_id>.jpg``

A statewide crawl (11 M photos of ~60 KB) makes a few hundred 1 GiB shards instead of
millions of small files. Every row records ``shard``, ``offset`` (byte offset of the JPEG
data inside the shard) and ``nbytes``, so :class:`PhotoStore` reads one image with one
``pread``; the shards are also plain tar files that ``tar tf`` lists.

Shards are written append-only by :class:`ShardWriter`. A writer killed mid-append
leaves at most a torn tail behind the last *committed* end; reopening with that end
truncates the tail, so a resumed crawl never sees half-written members.

Integrity: each row records ``crc32`` (zlib CRC-32 of the photo's bytes, uint32; null in
stores written before it existed). :meth:`PhotoStore.read` checks it on every read and
raises :class:`~vglpipe.errors.ChecksumError` naming the shard, offset and image id;
``python -m vglpipe.store verify DIR`` (:func:`verify_store`) checks a whole store.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vglpipe.errors import ChecksumError, InputError
from vglpipe.store.tables import read_metadata, read_table

#: Mapillary image ids are positive decimal integers; they must fit an int64.
_ID_RE = re.compile(r"[1-9][0-9]{0,18}")
_INT64_MAX = (1 << 63) - 1

METADATA_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("lat", pa.float64(), nullable=False),  # served position (computed_geometry, else geometry)
        pa.field("lon", pa.float64(), nullable=False),
        pa.field("orig_lat", pa.float64()),  # raw device position (geometry), if served
        pa.field("orig_lon", pa.float64()),
        pa.field("captured_at", pa.timestamp("ms", tz="UTC")),
        pa.field("camera_type", pa.string()),
        pa.field("make", pa.string()),
        pa.field("model", pa.string()),
        pa.field("compass_angle", pa.float64()),
        pa.field("computed_compass_angle", pa.float64()),
        pa.field("sequence_id", pa.string()),
        pa.field("creator_id", pa.int64()),
        pa.field("creator_username", pa.string()),
        pa.field("width", pa.int32()),  # of the original photo (as served by the API)
        pa.field("height", pa.int32()),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("nbytes", pa.int32(), nullable=False),
        pa.field("crc32", pa.uint32()),  # zlib.crc32 of the JPEG bytes (null: not recorded)
    ]
)

SHARD_DIR = "images"


def validate_image_id(value: object) -> int:
    """Return ``value`` as a positive int64 image id, or raise InputError naming it.

    Accepts ints and decimal strings only; ``"../../x"``, ``"1e3"``, ``" 7"``, ``"-1"`` are rejected.
    Only ids that pass here are ever used to build a path or a tar member name.
    """
    if isinstance(value, bool):
        raise InputError(f"invalid image id {value!r}: not an integer")
    if isinstance(value, (int, np.integer)):
        if 0 < int(value) <= _INT64_MAX:
            return int(value)
        raise InputError(f"invalid image id {value!r}: out of range")
    if isinstance(value, str) and _ID_RE.fullmatch(value):
        iv = int(value)
        if iv <= _INT64_MAX:
            return iv
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise InputError(f"invalid image id {shown}: expected a positive decimal integer")


def shard_path(root: str | os.PathLike, shard: int) -> Path:
    return Path(root) / SHARD_DIR / f"shard-{int(shard):05d}.tar"


def crc32(data: bytes) -> int:
    """The checksum stored per photo (``crc32`` column): zlib's CRC-32, unsigned."""
    return zlib.crc32(data) & 0xFFFFFFFF


def shard_checksums(root: str | os.PathLike, shard: int, offsets, nbytes) -> list[int | None]:
    """CRC-32 of the photos at ``offsets`` / ``nbytes`` in one shard (None where the shard is
    missing or too short to hold them)."""
    try:
        fd = os.open(shard_path(root, shard), os.O_RDONLY)
    except OSError:
        return [None] * len(offsets)
    try:
        out = []
        for off, n in zip(offsets, nbytes):
            data = os.pread(fd, int(n), int(off))
            out.append(crc32(data) if len(data) == int(n) else None)
        return out
    finally:
        os.close(fd)


def _member_header(image_id: int, size: int) -> bytes:
    """POSIX ustar header of a regular file ``<image_id>.jpg`` (mode 644, mtime 0, owner 0).

    Byte-identical to ``tarfile.TarInfo(...).tobuf(USTAR_FORMAT)`` for these fields, ~10×
    cheaper (it is written once per stored photo).
    """
    name = f"{validate_image_id(image_id)}.jpg".encode()
    if size >= 8**11:
        raise InputError(f"image {image_id}: {size} bytes is too large for a tar member")
    head = (name.ljust(100, b"\0") + b"0000644\0" + b"0000000\0" + b"0000000\0"
            + b"%011o\0" % size + b"00000000000\0")
    tail = b"0" + b"\0" * 100 + b"ustar\x0000" + b"\0" * 64 + b"\0" * 16  # devmajor/minor empty
    chksum = sum(head) + 8 * 32 + sum(tail)
    return (head + b"%06o\0 " % chksum + tail).ljust(512, b"\0")


_WRITE_BUFFER = 4 << 20
_ZEROS = bytes(512)


class ShardWriter:
    """Append JPEGs to tar shards; roll over to a new shard past ``shard_bytes``.

    ``resume(shard, committed_end)`` continues shard ``shard`` at byte ``committed_end``,
    truncating anything a killed writer left behind it. Call :meth:`sync` before recording
    appended items as committed: data is durable before the record that points at it.
    ``on_finalize(shard, size)`` is called when a shard gets its end-of-archive blocks.
    """

    def __init__(self, root: str | os.PathLike, shard_bytes: int = 1 << 30, on_finalize=None):
        if shard_bytes < 1 << 16:
            raise InputError(f"shard_bytes={shard_bytes}: must be at least 65536")
        self.root = Path(root)
        self.shard_bytes = int(shard_bytes)
        self.on_finalize = on_finalize
        self.shard = 0
        self.end = 0
        self._fh = None

    def resume(self, shard: int, committed_end: int) -> None:
        self.close(finalize=False)
        self.shard, self.end = int(shard), int(committed_end)
        path = shard_path(self.root, self.shard)
        if path.exists() and path.stat().st_size != self.end:
            os.truncate(path, self.end)

    def _ensure_open(self) -> None:
        if self._fh is None:
            path = shard_path(self.root, self.shard)
            path.parent.mkdir(parents=True, exist_ok=True)
            # a large buffer: the filesystem sees a write every few MB (not one per photo),
            # which parallel cluster filesystems much prefer; flush() comes before every commit
            fh = open(path, "r+b" if path.exists() else "w+b", buffering=_WRITE_BUFFER)
            fh.truncate(self.end)
            fh.seek(self.end)
            self._fh = fh

    def append(self, image_id: int, data: bytes) -> tuple[int, int, int]:
        """Append one JPEG; return ``(shard, offset, nbytes)`` of its data."""
        header = _member_header(image_id, len(data))
        if self.end > 0 and self.end + len(header) + len(data) + 1024 > self.shard_bytes:
            self.close(finalize=True)
        self._ensure_open()
        pad = (-len(data)) % 512
        self._fh.write(header)
        self._fh.write(data)
        self._fh.write(_ZEROS[:pad])
        offset = self.end + len(header)
        self.end = offset + len(data) + pad
        return self.shard, offset, len(data)

    def flush(self) -> None:
        """Hand buffered bytes to the OS (enough to survive a killed process)."""
        if self._fh is not None:
            self._fh.flush()

    def fileno(self) -> int | None:
        return None if self._fh is None else self._fh.fileno()

    def sync(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self, finalize: bool = False) -> None:
        """Close the current shard; ``finalize`` (if it holds data) writes the tar end blocks
        and moves on to the next shard number."""
        if finalize and self.end > 0:
            self._ensure_open()
            self._fh.seek(self.end)
            self._fh.write(b"\0" * 1024)
        if self._fh is not None:
            self.sync()
            self._fh.close()
            self._fh = None
        if finalize and self.end > 0:
            done, size = self.shard, self.end + 1024
            self.shard, self.end = self.shard + 1, 0
            if self.on_finalize is not None:
                self.on_finalize(done, size)


class PhotoStore:
    """Read access to a photo store: metadata table and random access to JPEG bytes by id."""

    def __init__(self, root: str | os.PathLike, verify: bool = True):
        self.root = Path(root)
        self.metadata_path = self.root / "metadata.parquet"
        self.info = read_metadata(self.metadata_path)
        self.verify = verify
        # only the locator columns and the checksum stay in memory (~32 bytes per photo)
        loc = read_table(self.metadata_path, columns=["image_id", "shard", "offset", "nbytes"])
        ids = loc.column("image_id").to_numpy()
        order = np.argsort(ids, kind="stable")
        self._ids = ids[order]
        self._shard = loc.column("shard").to_numpy()[order]
        self._offset = loc.column("offset").to_numpy()[order]
        self._nbytes = loc.column("nbytes").to_numpy()[order]
        self._crc = _checksums(self.metadata_path, len(ids))[order]  # -1: not recorded
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def metadata(self, columns: Iterable[str] | None = None) -> pa.Table:
        """The photo metadata table (``columns`` only, if given), read from disk."""
        return read_table(self.metadata_path, columns=columns)

    def ids(self) -> np.ndarray:
        return self._ids.copy()

    def __contains__(self, image_id: object) -> bool:
        i = np.searchsorted(self._ids, int(image_id))
        return i < len(self._ids) and self._ids[i] == int(image_id)

    def _row(self, image_id: int) -> tuple[int, int]:
        """(image id, row) of ``image_id``; InputError if it is not in the store."""
        iid = validate_image_id(image_id)
        i = int(np.searchsorted(self._ids, iid))
        if i >= len(self._ids) or self._ids[i] != iid:
            raise InputError(f"{self.metadata_path}: image {iid} not in the store")
        return iid, i

    def read(self, image_id: int) -> bytes:
        """JPEG bytes of ``image_id``: InputError if not in the store or the shard is short,
        ChecksumError if they do not match their recorded CRC-32 (with ``verify``)."""
        iid, i = self._row(image_id)
        shard, offset, n = int(self._shard[i]), int(self._offset[i]), int(self._nbytes[i])
        fd = self._fds.get(shard)
        if fd is None:
            path = shard_path(self.root, shard)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise InputError(f"{path}: cannot open shard: {exc.strerror}") from None
            self._fds[shard] = fd
        data = os.pread(fd, n, offset)
        if len(data) != n:
            raise InputError(f"{shard_path(self.root, shard)}: truncated (image {iid})")
        want = int(self._crc[i])
        if self.verify and want >= 0 and (got := crc32(data)) != want:
            raise ChecksumError(f"{shard_path(self.root, shard)}: offset {offset}: image {iid}: {n} bytes do not "
                                f"match their checksum (crc32 {got:08x}, recorded {want:08x}): "
                                "the stored photo is corrupt")
        return data

    def locate(self, image_id: int) -> tuple[int, int, int, int]:
        """``(shard, offset, nbytes, crc32)`` of ``image_id`` (crc32 -1 if not recorded)."""
        _, i = self._row(image_id)
        return int(self._shard[i]), int(self._offset[i]), int(self._nbytes[i]), int(self._crc[i])

    def iter_images(self, ids: Iterable[int] | None = None):
        for iid in self._ids if ids is None else ids:
            yield int(iid), self.read(int(iid))

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _checksums(metadata_path: Path, rows: int) -> np.ndarray:
    """The ``crc32`` column as int64 (-1 where null, or everywhere for a table without it)."""
    if "crc32" not in pq.read_schema(metadata_path).names:
        return np.full(rows, -1, np.int64)
    return read_table(metadata_path, columns=["crc32"]).column("crc32").cast(pa.int64()).fill_null(-1).to_numpy()


# --------------------------------------------------------------------------- verification


@dataclass
class VerifyReport:
    """What :func:`verify_store` found; ``problems`` holds one line per bad photo."""

    photos: int = 0
    shards: int = 0
    ok: int = 0
    unchecked: int = 0  # no checksum recorded (bytes readable and JPEG-framed)
    mismatched: int = 0
    unreadable: int = 0
    not_jpeg: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def bad(self) -> int:
        return self.mismatched + self.unreadable + self.not_jpeg

    def summary(self, root) -> str:
        return (f"{root}: {self.photos} photo(s) in {self.shards} shard(s): {self.ok} ok, "
                f"{self.mismatched} checksum mismatch(es), {self.unreadable} unreadable, {self.not_jpeg} not a "
                f"complete JPEG, {self.unchecked} without a recorded checksum")


def verify_store(root: str | os.PathLike) -> VerifyReport:
    """Check every photo of a store: its bytes are there, match the recorded CRC-32, and are
    framed as a JPEG (SOI ... EOI). Reads shard by shard, in offset order."""
    meta_path = Path(root) / "metadata.parquet"
    t = read_table(meta_path, columns=["image_id", "shard", "offset", "nbytes"])
    ids, shards = t.column("image_id").to_numpy(), t.column("shard").to_numpy()
    offsets, nbytes = t.column("offset").to_numpy(), t.column("nbytes").to_numpy()
    crcs = _checksums(meta_path, len(ids))
    rep = VerifyReport(photos=len(ids), shards=len(np.unique(shards)))
    for s in np.unique(shards):
        rows = np.flatnonzero(shards == s)
        rows = rows[np.argsort(offsets[rows], kind="stable")]
        _verify_shard(root, int(s), [(int(ids[i]), int(offsets[i]), int(nbytes[i]), int(crcs[i])) for i in rows], rep)
    return rep


def _verify_shard(root, shard: int, rows, rep: VerifyReport) -> None:
    path = shard_path(root, shard)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        rep.unreadable += len(rows)
        rep.problems.append(f"{path}: cannot open shard ({exc.strerror}): {len(rows)} photo(s) unreadable")
        return
    try:
        for iid, off, n, want in rows:
            data = os.pread(fd, n, off)
            where = f"{path}: offset {off}: image {iid}"
            if len(data) != n:
                rep.unreadable += 1
                rep.problems.append(f"{where}: only {len(data)} of {n} bytes (shard truncated)")
            elif want >= 0 and crc32(data) != want:
                rep.mismatched += 1
                rep.problems.append(f"{where}: crc32 {crc32(data):08x}, recorded {want:08x}")
            elif not (data[:2] == b"\xff\xd8" and data.rstrip(b"\0")[-2:] == b"\xff\xd9"):
                rep.not_jpeg += 1
                rep.problems.append(f"{where}: not a complete JPEG")
            elif want < 0:
                rep.unchecked += 1
            else:
                rep.ok += 1
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- images

#: The stored photo format (paper §4.1, S2): resized and padded to 640×480.
PHOTO_WIDTH, PHOTO_HEIGHT = 640, 480


def letterbox(img: np.ndarray, width: int = PHOTO_WIDTH, height: int = PHOTO_HEIGHT) -> np.ndarray:
    """Resize ``img`` (H, W[, C]) to fit ``width``×``height`` keeping its aspect ratio; pad black, centred."""
    import cv2

    h, w = img.shape[:2]
    if h < 1 or w < 1:
        raise InputError(f"cannot letterbox an empty image of shape {img.shape}")
    scale = min(width / w, height / h)
    nw = min(width, max(1, round(w * scale)))
    nh = min(height, max(1, round(h * scale)))
    # INTER_AREA only for strong downscaling (it is ~6x slower; bilinear aliases little above 1/2)
    interp = cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR
    resized = img if (nw, nh) == (w, h) else cv2.resize(img, (nw, nh), interpolation=interp)
    out = np.zeros((height, width) + img.shape[2:], dtype=img.dtype)
    y0, x0 = (height - nh) // 2, (width - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = resized
    return out


def is_greyscale(img: np.ndarray, tol: int = 8, max_fraction: float = 0.002, step: int = 4) -> bool:
    """True if (almost) every pixel has R≈G≈B (JPEG chroma noise tolerated); checks every ``step``-th pixel."""
    if img.ndim == 2 or img.shape[2] == 1:
        return True
    sub = img[::step, ::step].astype(np.int16)
    spread = np.abs(sub[..., 0] - sub[..., 1]) + np.abs(sub[..., 1] - sub[..., 2])
    return float(np.mean(spread > tol)) <= max_fraction


def decode_jpeg(data: bytes, what: str = "image") -> np.ndarray:
    """Decode JPEG (or PNG) bytes to a BGR array; InputError naming ``what`` if unreadable or truncated."""
    import cv2

    if len(data) < 4 or not (data[:2] == b"\xff\xd8" and data.rstrip(b"\0")[-2:] == b"\xff\xd9"):
        if not data.startswith(b"\x89PNG"):
            raise InputError(f"{what}: not a complete JPEG ({len(data)} bytes)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"{what}: cannot decode image ({len(data)} bytes)")
    return img


def encode_jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise InputError(f"cannot encode image of shape {img.shape} as JPEG")
    return buf.tobytes()


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF header without decoding it; None if not found."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        seglen = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return w, h
        i += 2 + seglen
    return None
