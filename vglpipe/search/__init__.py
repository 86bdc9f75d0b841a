"""Cell search: indexes over cell embeddings (flat, HNSW, compressed) and the R@N<r metrics.

``build_index(shards, spec_for(settings.index, kind, n_cells, dim), out_dir, meta)`` writes an index directory;
``CellIndex.load(out_dir, expect={...})`` opens it and searches query embeddings in chunks;
:mod:`vglpipe.search.metrics` turns retrieved cells into R@N<r (paper §4.2).

The names below are imported on first use, so the embedding modules (GPU jobs) do not load faiss.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"CellIndex": "index", "IndexInfo": "index", "SearchResult": "index", "build_index": "index",
            "read_info": "index", "IndexSpec": "spec"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
