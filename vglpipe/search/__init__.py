"""Cell search: indexes over cell embeddings (flat, HNSW, compressed) and the R@N<r metrics.

``build_index(shards, spec_for(settings.index, kind, n_cells, dim), out_dir, meta)`` writes an index directory;
``CellIndex.load(out_dir, expect={...})`` opens it and searches query embeddings in chunks;
:mod:`vglpipe.search.metrics` turns retrieved cells into R@N<r (paper §4.2).
"""

from vglpipe.search.index import CellIndex, IndexInfo, SearchResult, build_index, read_info
from vglpipe.search.spec import IndexSpec

__all__ = ["CellIndex", "IndexInfo", "IndexSpec", "SearchResult", "build_index", "read_info"]
