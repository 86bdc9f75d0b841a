"""A fingerprint of the demo's data tables (rows and values), to tell whether the demo world changed.

    python tests/demo_fingerprint.py WORKDIR > tests/data/demo_small_fingerprint.json

regenerates the reference after an intended change of the demo (say so in the commit).
Where photos land in the tar shards (``shard``, ``offset``) depends on the crawler's timing
and is left out; the photos' bytes are in (a hash per region).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

REGIONS = ("demo-train", "demo-test")
TABLES = {
    "photos": ("results/photos/{r}/metadata.parquet", ("shard", "offset")),
    "photo_cells": ("results/cells/{r}/photo_cells.parquet", ()),
    "cells": ("results/cells/{r}/cells_30m.parquet", ()),
    "aerial_index": ("results/aerial/{r}/index.parquet", ("file",)),
}


def _table_hash(path: Path, drop) -> dict:
    t = pq.read_table(path)
    t = t.drop_columns([c for c in drop if c in t.column_names])
    df = t.to_pandas().sort_values(t.column_names[0]).reset_index(drop=True)
    return {"rows": len(df), "sha256": hashlib.sha256(df.to_csv(index=False, float_format="%.9g").encode()).hexdigest()}


def fingerprint(workdir: str | Path) -> dict:
    from vglpipe.store.photos import PhotoStore

    workdir = Path(workdir)
    out = {}
    for r in REGIONS:
        for name, (rel, drop) in TABLES.items():
            out[f"{r}/{name}"] = _table_hash(workdir / rel.format(r=r), drop)
        store = PhotoStore(workdir / f"results/photos/{r}")
        h = hashlib.sha256()
        for i in sorted(int(i) for i in store.ids()):
            h.update(store.read(i))
        out[f"{r}/photo_bytes"] = h.hexdigest()
    return out


if __name__ == "__main__":
    print(json.dumps(fingerprint(sys.argv[1]), indent=2, sort_keys=True))
