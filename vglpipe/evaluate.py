"""``python -m vglpipe.evaluate``: localize every photo of a test region and measure R@N<r.

    python -m vglpipe.evaluate --config workflow_config.yaml --region demo-test \\
        --index results/index/demo/demo-test/hnsw --embeddings results/embeddings/demo/demo-test \\
        --photos results/photos/demo-test --out results/eval/demo/demo-test

Writes ``retrieval.parquet`` (per photo: top-k cell ids and scores, rank of the first cell
within each radius), ``recall.json`` (``"R@1<50m"`` ..., the chance level, counts),
``recall_by_year.csv`` and ``recall_by_hour.csv`` (local hour in ``regions.<r>.timezone``;
strata below ``evaluate.min_stratum_count`` flagged). With ``--true-positions`` (the demo knows
where each photo was really taken) the recall against those is reported too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from vglpipe import cli
from vglpipe.settings import EvaluateStage, Settings

log = logging.getLogger("vglpipe.evaluate")


def main(args: argparse.Namespace) -> int:
    from vglpipe.search import CellIndex
    from vglpipe.search.embedding import read_embeddings
    from vglpipe.search.evaluation import evaluate, load_queries
    from vglpipe.search.spec import SEARCH_FIELDS

    st = cli.stage_settings(args, EvaluateStage, Settings.evaluate_stage, "region")
    vectors, ids, info = read_embeddings(Path(args.embeddings) / "photos.npy")
    index = CellIndex.load(args.index, expect={"weights_id": info["weights_id"]})
    index.configure(**{k: getattr(st.index, k) for k in SEARCH_FIELDS})
    queries = load_queries(vectors, ids, Path(args.photos) / "metadata.parquet",
                           Path(args.true_positions) if args.true_positions else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    e = st.evaluate
    meta = {"weights_id": info["weights_id"], "index": str(args.index), "index_kind": index.info.spec.kind,
            "index_spec": dataclasses.asdict(index.spec), "layout": st.layout.test_layout().describe()}
    res = evaluate(index, st.layout.test_layout(), queries, out, e.k, e.ns, e.radii_m, e.min_stratum_count,
                   st.timezone, chunk=e.chunk, meta=meta)
    print(json.dumps({k: v for k, v in res.recall.items() if k.startswith("R@")}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vglpipe.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_settings_arguments(p)
    p.add_argument("--region", help="the test region (with --config: its time zone)")
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument("--embeddings", required=True, help="the region's embedding directory (photos.npy)")
    p.add_argument("--photos", required=True, help="the region's photo store (metadata.parquet: positions, times)")
    p.add_argument("--true-positions", help="a table with id, true_lat, true_lon (the demo's rendered source)")
    p.add_argument("--out", required=True, help="evaluation directory")
    return p


if __name__ == "__main__":
    sys.exit(cli.run(build_parser(), main))
