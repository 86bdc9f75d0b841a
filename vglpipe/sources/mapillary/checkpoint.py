"""The crawl checkpoint (``crawl-state.sqlite``) and the export of its rows to ``metadata.parquet``."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pyarrow as pa

from vglpipe.errors import ResumeError
from vglpipe.store.photos import METADATA_SCHEMA, shard_checksums
from vglpipe.store.tables import write_batches

PENDING, STORED = 0, 1
SKIP_REASONS = {
    2: "panorama",
    3: "camera_type",
    4: "greyscale",
    5: "outside_region",
    6: "not_found",
    7: "bad_record",
    8: "no_thumbnail",
    9: "bad_image",
}
FAILED = 10  # transient failures that outlasted the retries; retried on the next run
REASON_CODE = {v: k for k, v in SKIP_REASONS.items()}

# box status codes
BOX_PENDING, BOX_DONE, BOX_SPLIT = 0, 1, 2
#: reasons of the ``search_skips`` table (reported beside the image skip reasons)
SEARCH_SKIP_REASONS = ("outside_region_search", "bad_search_record")


# --------------------------------------------------------------------------- state


log = logging.getLogger(__name__)

#: checksum column: recorded by the crawler as it stores a photo; checkpoints written before it
#: existed get it at export, from the stored bytes
CHECKSUM = "crc32"
#: the columns of a photo row as checkpoints held them before the checksum
COLUMNS = [f.name for f in METADATA_SCHEMA if f.name != CHECKSUM]
#: a stored photo's row: ``metadata.parquet``'s columns (the checksum last)
ROW_COLUMNS = COLUMNS + [CHECKSUM]
#: stores one photo row (a tuple in ``ROW_COLUMNS`` order) in the checkpoint
INSERT_PHOTO_SQL = (f"INSERT OR REPLACE INTO photos ({', '.join(ROW_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(ROW_COLUMNS))})")


class CrawlState:
    """The crawl checkpoint: an SQLite database (WAL) beside the photo store."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = self.connect()
        cols = ", ".join(f"{c} {'INTEGER' if c in ('image_id',) else ''}" for c in COLUMNS)
        self.db.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
            CREATE TABLE IF NOT EXISTS boxes (key TEXT PRIMARY KEY, status INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS images (id INTEGER PRIMARY KEY, status INTEGER NOT NULL);
            CREATE INDEX IF NOT EXISTS images_status ON images(status);
            CREATE TABLE IF NOT EXISTS photos ({cols}, {CHECKSUM} INTEGER, PRIMARY KEY (image_id));
            CREATE TABLE IF NOT EXISTS shards (idx INTEGER PRIMARY KEY, end_ INTEGER, finalized INTEGER);
            -- search records skipped before the image phase, once per record (a point on the
            -- shared edge of two boxes comes in both answers); item: the image id, or
            -- 'raw:<id as served>' for an invalid one ('raw:<digest>' for a record without one)
            CREATE TABLE IF NOT EXISTS search_skips (item TEXT PRIMARY KEY, reason TEXT NOT NULL);
            """
        )
        _add_checksum_column(self.db)

    def connect(self) -> sqlite3.Connection:
        # WAL + NORMAL: a committed transaction survives a killed process (kill -9); the shard
        # data it points at is fsynced before it is committed, so even a power loss leaves no
        # row pointing at missing bytes (only the newest commits may be redone).
        db = sqlite3.connect(self.path, isolation_level=None, timeout=60, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def check_fingerprint(self, fp: dict) -> None:
        want = json.dumps(fp, sort_keys=True)
        row = self.db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('fingerprint', ?)", (want,))
        elif row[0] != want:
            old = json.loads(row[0])
            diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
            raise ResumeError(
                f"{self.path}: checkpoint was written for a different crawl (differs in: "
                f"{', '.join(diff)}); delete the directory to start over"
            )

    def count(self, sql: str, *args) -> int:
        return int(self.db.execute(sql, args).fetchone()[0])

    def close(self) -> None:
        self.db.close()


def _add_checksum_column(db: sqlite3.Connection) -> None:
    """Checkpoints written before the checksum existed get the column (null: computed at export)."""
    if CHECKSUM not in {row[1] for row in db.execute("PRAGMA table_info(photos)")}:
        db.execute(f"ALTER TABLE photos ADD COLUMN {CHECKSUM} INTEGER")


def fill_checksums(db: sqlite3.Connection, root: Path) -> int:
    """Compute the CRC-32 of every stored photo that has none yet from its bytes in the shards
    under ``root`` (shard by shard, in offset order); returns how many are still missing
    (photos whose shard is missing or short)."""
    _add_checksum_column(db)
    shards = [r[0] for r in db.execute(f"SELECT DISTINCT shard FROM photos WHERE {CHECKSUM} IS NULL ORDER BY shard")]
    missing = 0
    for shard in shards:
        rows = db.execute(f"SELECT image_id, offset, nbytes FROM photos WHERE shard=? AND {CHECKSUM} IS NULL "
                          "ORDER BY offset", (shard,)).fetchall()
        sums = shard_checksums(root, shard, [r[1] for r in rows], [r[2] for r in rows])
        missing += sum(c is None for c in sums)
        db.execute("BEGIN")
        db.executemany(f"UPDATE photos SET {CHECKSUM}=? WHERE image_id=?",
                       [(c, r[0]) for c, r in zip(sums, rows) if c is not None])
        db.execute("COMMIT")
    return missing


def metadata_batches(db: sqlite3.Connection, chunk_rows: int):
    cur = db.execute(f"SELECT {', '.join(ROW_COLUMNS)} FROM photos ORDER BY image_id")
    while rows := cur.fetchmany(chunk_rows):
        arrays = []
        for f, values in zip(METADATA_SCHEMA, zip(*rows)):
            if pa.types.is_timestamp(f.type):
                arrays.append(pa.array(values, type=pa.int64()).cast(f.type))
            else:
                arrays.append(pa.array(values, type=f.type))
        yield pa.RecordBatch.from_arrays(arrays, schema=METADATA_SCHEMA)


def export_metadata(db: sqlite3.Connection, path: Path, metadata: dict, chunk_rows: int = 1 << 16) -> int:
    """Write the checkpoint's photo rows, by image id, to ``metadata.parquet`` in chunks of
    ``chunk_rows`` (memory stays flat: a statewide crawl holds ~11 M rows), with the CRC-32 of
    each photo's stored bytes (computed here only for rows of older checkpoints that have none)."""
    missing = fill_checksums(db, Path(path).parent)
    if missing:
        log.warning("%s: %d photo(s) without a checksum (their shard is missing or short)", path, missing)
    return write_batches(metadata_batches(db, chunk_rows), METADATA_SCHEMA, path, metadata=metadata)

