"""Storage helpers: atomic writes and Parquet tables."""

from vglpipe.store.atomic import atomic_path, atomic_write_bytes, atomic_write_text

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]
