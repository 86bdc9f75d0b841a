"""Parquet tables: atomic writes, schema metadata, clear errors on bad input."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vglpipe.errors import InputError
from vglpipe.store.atomic import atomic_path

METADATA_KEY = b"vglpipe"


def _with_metadata(schema: pa.Schema, metadata: Mapping[str, Any] | None) -> pa.Schema:
    if metadata is None:
        return schema
    meta = dict(schema.metadata or {})
    meta[METADATA_KEY] = json.dumps(metadata, sort_keys=True).encode()
    return schema.with_metadata(meta)


def write_table(
    table: pa.Table,
    path: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
    row_group_size: int = 1 << 20,
) -> None:
    """Write ``table`` to ``path`` atomically; ``metadata`` is stored as JSON in the schema."""
    table = table.replace_schema_metadata(_with_metadata(table.schema, metadata).metadata)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")


def write_batches(
    batches: Iterable[pa.RecordBatch],
    schema: pa.Schema,
    path: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
) -> int:
    """Stream record batches (each becomes a row group) to ``path`` atomically, so a table
    larger than memory can be written; ``metadata`` as in :func:`write_table`. Returns the rows."""
    schema = _with_metadata(schema, metadata)
    rows = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The vglpipe metadata stored by :func:`write_table` (empty dict if none)."""
    meta = _schema(path).metadata or {}
    raw = meta.get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def read_table(
    path: str | os.PathLike, columns: Iterable[str] | None = None
) -> pa.Table:
    """Read ``columns`` of a Parquet file; a missing file or column raises InputError naming it."""
    path = Path(path)
    schema = _schema(path)
    if columns is not None:
        columns = list(columns)
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise InputError(
                f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(schema.names)})"
            )
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: cannot read Parquet table: {exc}") from exc


def _schema(path: str | os.PathLike) -> pa.Schema:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file: {exc}") from exc
