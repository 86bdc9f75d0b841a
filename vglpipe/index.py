"""``python -m vglpipe.index``: a faiss index over a test region's cell embeddings.

    python -m vglpipe.index --config workflow_config.yaml --kind hnsw \\
        --embeddings results/embeddings/demo/demo-test --out results/index/demo/demo-test/hnsw

Builds the ``--kind`` index (flat, hnsw, compressed; settings: ``index``, 'auto' values resolved
for the region's size) over every ``cells-*.npy`` shard of the embedding directory. The index
directory records the weights id the embeddings came from, the layout and the settings, and
refuses queries from another model (:class:`vglpipe.search.CellIndex`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from vglpipe import cli
from vglpipe.errors import InputError
from vglpipe.settings import IndexStage, Settings

log = logging.getLogger("vglpipe.index")


def embedding_shards(directory: Path) -> tuple[list[tuple[str, str]], str, int]:
    """The (vectors, ids) shard files of an embedding directory, their weights id and dim."""
    from vglpipe.search.embedding import read_embeddings

    shards, wids, dims = [], set(), set()
    for vec in sorted(directory.glob("cells-*.npy")):
        if vec.name.endswith(".ids.npy"):
            continue
        vectors, _, info = read_embeddings(vec)
        wids.add(info["weights_id"])
        dims.add(int(info["dim"]))
        shards.append((str(vec), str(vec)[: -len(".npy")] + ".ids.npy"))
        del vectors
    if not shards:
        raise InputError(f"{directory}: no cell embeddings (cells-*.npy)")
    if len(wids) != 1:
        raise InputError(f"{directory}: shards embedded with different models ({sorted(wids)})")
    return shards, wids.pop(), dims.pop()


def main(args: argparse.Namespace) -> int:
    from vglpipe.search import build_index
    from vglpipe.search.spec import spec_for
    from vglpipe.search.shards import open_shards

    st = cli.stage_settings(args, IndexStage, Settings.index_stage)
    shards, weights_id, dim = embedding_shards(Path(args.embeddings))
    n_cells = len(open_shards(shards).ids())
    spec = spec_for(st.index, args.kind, n_cells, dim)
    meta = {"weights_id": weights_id, "layout": st.layout.test_layout().describe(),
            "embeddings": str(args.embeddings)}
    info = build_index(shards, spec, Path(args.out), meta)
    log.info("%s index of %d cells (%d-d): %.0f B/cell in RAM, built in %.1f s -> %s", args.kind, info.n_cells,
             info.dim, info.ram_bytes_per_cell, info.build_s, args.out)
    print(json.dumps({"kind": args.kind, "n_cells": info.n_cells, "ram_bytes_per_cell": round(info.ram_bytes_per_cell, 1),
                      "build_s": round(info.build_s, 2)}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vglpipe.index", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_settings_arguments(p)
    p.add_argument("--kind", required=True, choices=["flat", "hnsw", "compressed"])
    p.add_argument("--embeddings", required=True, help="the region's embedding directory (cells-*.npy)")
    p.add_argument("--out", required=True, help="index directory to write")
    return p


if __name__ == "__main__":
    sys.exit(cli.run(build_parser(), main))
