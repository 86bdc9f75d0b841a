"""Photo store: id validation, letterboxing, tar shards (append, roll over, resume, random access)."""

from __future__ import annotations

import tarfile

import cv2
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vglpipe.errors import InputError
from vglpipe.store.photos import (
    METADATA_SCHEMA,
    PhotoStore,
    ShardWriter,
    decode_jpeg,
    encode_jpeg,
    is_greyscale,
    letterbox,
    shard_path,
    validate_image_id,
)
from vglpipe.store.tables import write_table


@pytest.mark.parametrize("good", ["1", "123456789012345", 42, np.int64(7), str((1 << 63) - 1)])
def test_validate_image_id_accepts(good):
    assert validate_image_id(good) == int(good)


@pytest.mark.parametrize(
    "bad", ["../../x", "", "0", "-1", "1e3", " 7", "7 ", "12/3", "\u0661\u0662", str(1 << 63), 0, -5, True, None, 1.5, "0x10"]
)
def test_validate_image_id_rejects(bad):
    with pytest.raises(InputError, match="invalid image id"):
        validate_image_id(bad)


def _content_box(img):
    nz = np.argwhere(img.max(axis=2) > 0)
    (y0, x0), (y1, x1) = nz.min(0), nz.max(0)
    return x0, y0, x1 - x0 + 1, y1 - y0 + 1


@settings(max_examples=40, deadline=None)
@given(w=st.integers(8, 2000), h=st.integers(8, 2000))
def test_letterbox_keeps_aspect_ratio_and_pads_to_640x480(w, h):
    img = np.full((h, w, 3), 200, np.uint8)
    out = letterbox(img)
    assert out.shape == (480, 640, 3) and out.dtype == np.uint8
    x, y, cw, ch = _content_box(out)
    # fills one dimension exactly, the other within rounding; centred
    assert cw == 640 or ch == 480
    assert abs(cw / ch - w / h) <= (w / h) * (1.0 / min(cw, ch)) + 1e-9
    assert abs(x - (640 - cw - x)) <= 1 and abs(y - (480 - ch - y)) <= 1
    # the padding is black
    if cw < 640:
        assert out[:, :x].max(initial=0) == 0 and out[:, x + cw :].max(initial=0) == 0
    if ch < 480:
        assert out[:y].max(initial=0) == 0 and out[y + ch :].max(initial=0) == 0


@pytest.mark.parametrize("w,h", [(1024, 768), (1024, 576), (576, 1024), (300, 300), (640, 480)])
def test_letterbox_examples(w, h):
    x, y, cw, ch = _content_box(letterbox(np.full((h, w, 3), 9, np.uint8)))
    expect = {(1024, 768): (640, 480), (1024, 576): (640, 360), (576, 1024): (270, 480),
              (300, 300): (480, 480), (640, 480): (640, 480)}[(w, h)]
    assert (cw, ch) == expect


def test_greyscale_and_jpeg_checks():
    rng = np.random.default_rng(0)
    colour = cv2.resize(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8), (64, 48))
    grey = cv2.cvtColor(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    assert not is_greyscale(decode_jpeg(encode_jpeg(colour)))
    assert is_greyscale(decode_jpeg(encode_jpeg(grey)))
    data = encode_jpeg(colour)
    with pytest.raises(InputError, match="thumb 5: not a complete JPEG"):
        decode_jpeg(data[: len(data) // 2], "thumb 5")


def _table(rows):
    cols = {f.name: [r.get(f.name) for r in rows] for f in METADATA_SCHEMA}
    return pa.Table.from_pydict(cols, schema=METADATA_SCHEMA)


def test_shards_roll_over_are_tar_files_and_random_access(tmp_path):
    rng = np.random.default_rng(1)
    blobs = {int(i): rng.bytes(int(rng.integers(1000, 30000))) for i in rng.integers(1, 10**12, 40)}
    w = ShardWriter(tmp_path, shard_bytes=1 << 17)
    w.resume(0, 0)
    rows = []
    for iid, data in blobs.items():
        s, off, n = w.append(iid, data)
        rows.append({"image_id": iid, "lat": 0.0, "lon": 0.0, "shard": s, "offset": off, "nbytes": n})
    w.close(finalize=True)
    shards = sorted({r["shard"] for r in rows})
    assert len(shards) > 3
    for s in shards:
        assert shard_path(tmp_path, s).stat().st_size <= 1 << 17
        with tarfile.open(shard_path(tmp_path, s)) as tar:
            for m in tar.getmembers():
                assert tar.extractfile(m).read() == blobs[int(m.name[:-4])]
    write_table(_table(rows), tmp_path / "metadata.parquet")
    with PhotoStore(tmp_path) as store:
        assert len(store) == len(blobs)
        for iid, data in blobs.items():
            assert iid in store and store.read(iid) == data
        with pytest.raises(InputError, match="not in the store"):
            store.read(5)
        with pytest.raises(InputError, match="invalid image id"):
            store.read("../../x")
        assert sorted(store.metadata(["image_id"]).column("image_id").to_pylist()) == sorted(blobs)


def test_resume_truncates_torn_tail(tmp_path):
    w = ShardWriter(tmp_path, shard_bytes=1 << 20)
    w.resume(0, 0)
    w.append(11, b"a" * 1000)
    w.sync()
    committed = w.end
    w.append(12, b"b" * 5000)  # never committed: the writer is "killed" here
    w._fh.flush()
    w2 = ShardWriter(tmp_path, shard_bytes=1 << 20)
    w2.resume(0, committed)
    assert shard_path(tmp_path, 0).stat().st_size == committed
    s, off, n = w2.append(13, b"c" * 700)
    w2.close(finalize=True)
    with tarfile.open(shard_path(tmp_path, 0)) as tar:
        assert [m.name for m in tar.getmembers()] == ["11.jpg", "13.jpg"]
    assert shard_path(tmp_path, 0).read_bytes()[off : off + n] == b"c" * 700


@pytest.mark.parametrize("iid,size", [(1, 0), (123456789012345, 60000), (9, 8**11 - 1)])
def test_fast_tar_header_matches_tarfile(iid, size):
    from vglpipe.store.photos import _member_header

    ti = tarfile.TarInfo(f"{iid}.jpg")
    ti.size, ti.mtime, ti.mode = size, 0, 0o644
    assert _member_header(iid, size) == ti.tobuf(format=tarfile.USTAR_FORMAT)


def test_write_batches_streams_and_is_atomic(tmp_path):
    from vglpipe.store.tables import read_metadata, read_table, write_batches

    schema = pa.schema([pa.field("a", pa.int64())])
    batches = [pa.RecordBatch.from_pydict({"a": list(range(i, i + 3))}, schema=schema) for i in (0, 3, 6)]
    path = tmp_path / "t.parquet"
    assert write_batches(iter(batches), schema, path, metadata={"k": "v"}) == 9
    assert read_table(path).column("a").to_pylist() == list(range(9))
    assert read_metadata(path) == {"k": "v"}

    def failing():
        yield batches[0]
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        write_batches(failing(), schema, path)
    assert read_table(path).num_rows == 9  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]  # no temporary left behind
    empty = tmp_path / "empty.parquet"
    assert write_batches([], schema, empty) == 0
    assert read_table(empty).schema.remove_metadata() == schema
