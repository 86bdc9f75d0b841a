"""Photo store integrity: a CRC-32 per photo in metadata.parquet, checked on read and by
``python -m vglpipe.store verify DIR``."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from shapely.geometry import mapping

from vglpipe.demo.fake_mapillary import load_source, make_random_source
from vglpipe.errors import ChecksumError, InputError
from vglpipe.settings import CrawlSettings, CrawlStage, to_json
from vglpipe.sources.mapillary import INSERT_PHOTO_SQL, CrawlState, export_metadata
from vglpipe.sources.mapillary.checkpoint import COLUMNS
from vglpipe.store.photos import METADATA_SCHEMA, PhotoStore, ShardWriter, encode_jpeg, shard_path
from vglpipe.store.tables import write_table

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "MLY|777|store-verify-test-token"
BOUNDS = (-71.0700, 42.3500, -71.0500, 42.3700)


def _verify(store: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vglpipe.store", "verify", str(store)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _flip_byte(store: PhotoStore, image_id: int) -> tuple[Path, int]:
    """Flip one byte in the middle of a stored JPEG's data (as a bad disk would)."""
    shard, offset, nbytes, _ = store.locate(image_id)
    path, pos = shard_path(store.root, shard), offset + nbytes // 2
    with open(path, "r+b") as fh:
        fh.seek(pos)
        b = fh.read(1)
        fh.seek(pos)
        fh.write(bytes([b[0] ^ 0x5A]))
    return path, offset


@pytest.fixture(scope="module")
def crawled(tmp_path_factory) -> Path:
    """A small real crawl (``python -m vglpipe.crawl`` against the fake Mapillary API)."""
    d = tmp_path_factory.mktemp("crawl")
    make_random_source(d / "src", BOUNDS, 60, seed=3, sizes=((160, 120),))
    region = d / "region.geojson"
    region.write_text(json.dumps({"type": "Feature", "properties": {},
                                  "geometry": mapping(shapely.box(*BOUNDS).buffer(-0.001))}))
    crawl = CrawlSettings.defaults(search_limit=30, timeout_s=2, backoff_s=0.01, backoff_max_s=0.1,
                                   shard_mb=200000 / 2**20)
    with load_source(d / "src", TOKEN) as fake:
        cmd = [sys.executable, "-m", "vglpipe.crawl", "--settings", to_json(CrawlStage(crawl)),
               "--region-geojson", str(region), "--out", str(d / "store"), "--base-url", fake.url, "--no-progress"]
        r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, MAPILLARY_ACCESS_TOKEN=TOKEN), capture_output=True,
                           text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return d / "store"


def test_crawl_records_a_crc32_per_photo_and_verify_passes(crawled):
    meta = pq.read_table(crawled / "metadata.parquet")
    assert meta.schema.field("crc32").type == pa.uint32()
    assert meta.num_rows > 20 and meta.column("crc32").null_count == 0
    with PhotoStore(crawled) as store:
        sums = dict(zip(meta.column("image_id").to_pylist(), meta.column("crc32").to_pylist()))
        assert all(zlib.crc32(store.read(i)) == sums[i] for i in store.ids().tolist())
    r = _verify(crawled)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{meta.num_rows} photo(s)" in r.stdout and f"{meta.num_rows} ok" in r.stdout


def test_flipped_byte_is_a_checksum_error_on_read_and_in_verify(crawled, tmp_path):
    store_dir = tmp_path / "store"
    shutil.copytree(crawled, store_dir)  # a copy to damage
    with PhotoStore(store_dir) as store:
        victim = int(store.ids()[len(store) // 2])
        other = int(store.ids()[0])
        shard, offset = _flip_byte(store, victim)
    with PhotoStore(store_dir) as store:
        with pytest.raises(ChecksumError) as err:
            store.read(victim)
        assert isinstance(err.value, InputError)
        msg = str(err.value)
        assert str(shard) in msg and f"offset {offset}" in msg and f"image {victim}" in msg
        assert store.read(other)  # the others still read
    with PhotoStore(store_dir, verify=False) as store:
        assert store.read(victim)  # the damaged bytes, when asked for without the check
    r = _verify(store_dir)
    assert r.returncode == 1
    assert f"offset {offset}: image {victim}: crc32" in r.stdout and "1 checksum mismatch(es)" in r.stdout


def test_verify_reports_truncated_shard_and_missing_store(crawled, tmp_path):
    store_dir = tmp_path / "store"
    shutil.copytree(crawled, store_dir)
    shard = shard_path(store_dir, 0)
    os.truncate(shard, shard.stat().st_size // 2)
    r = _verify(store_dir)
    assert r.returncode == 1 and "unreadable" in r.stdout and "shard truncated" in r.stdout
    r = _verify(tmp_path / "nothing")
    assert r.returncode == 2 and "metadata.parquet" in r.stderr


def _old_checkpoint(db_path: Path, rows: list[tuple]) -> None:
    """A checkpoint as written before checksums existed (no crc32 column)."""
    cols = ", ".join(f"{c} {'INTEGER' if c == 'image_id' else ''}" for c in COLUMNS)
    with sqlite3.connect(db_path) as db:
        db.execute(f"CREATE TABLE photos ({cols}, PRIMARY KEY (image_id))")
        db.executemany(f"INSERT INTO photos ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows)


def _row(image_id: int, loc: tuple[int, int, int]) -> tuple:
    values = {c: None for c in COLUMNS}
    values.update(image_id=image_id, lat=42.36, lon=-71.06, shard=loc[0], offset=loc[1], nbytes=loc[2])
    return tuple(values[c] for c in COLUMNS)


def test_checkpoint_from_before_checksums_gets_them_at_export(tmp_path):
    rng = np.random.default_rng(0)
    jpegs = {i: encode_jpeg(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for i in (11, 22, 33)}
    w = ShardWriter(tmp_path, shard_bytes=1 << 16)
    w.resume(0, 0)
    rows = [_row(i, w.append(i, data)) for i, data in jpegs.items()]
    w.close(finalize=True)
    _old_checkpoint(tmp_path / "crawl-state.sqlite", rows[:2])
    state = CrawlState(tmp_path / "crawl-state.sqlite")  # adds the column
    state.db.execute(INSERT_PHOTO_SQL, (*rows[2], zlib.crc32(jpegs[33])))  # as the resumed crawler writes it
    export_metadata(state.db, tmp_path / "metadata.parquet", {"test": True})
    state.close()
    meta = pq.read_table(tmp_path / "metadata.parquet")
    assert meta.schema.remove_metadata() == METADATA_SCHEMA
    got = dict(zip(meta.column("image_id").to_pylist(), meta.column("crc32").to_pylist()))
    assert got == {i: zlib.crc32(d) for i, d in jpegs.items()}
    assert _verify(tmp_path).returncode == 0


def test_store_without_checksums_reads_and_verify_says_unchecked(tmp_path):
    w = ShardWriter(tmp_path, shard_bytes=1 << 16)
    w.resume(0, 0)
    data = encode_jpeg(np.full((16, 16, 3), 90, np.uint8))
    s, off, n = w.append(5, data)
    w.close(finalize=True)
    legacy = pa.schema([f for f in METADATA_SCHEMA if f.name != "crc32"])
    write_table(pa.Table.from_pylist([{"image_id": 5, "lat": 0.0, "lon": 0.0, "shard": s, "offset": off,
                                       "nbytes": n}], schema=legacy), tmp_path / "metadata.parquet")
    with PhotoStore(tmp_path) as store:
        assert store.read(5) == data
    r = _verify(tmp_path)
    assert r.returncode == 0 and "1 without a recorded checksum" in r.stdout
