"""``python -m vglpipe.embed {cells,photos}``: embed a test region with a trained model.

    python -m vglpipe.embed cells --config workflow_config.yaml --experiment demo --model results/models/demo \\
        --cells results/cells/demo-test/cells_30m.parquet --aerial-index results/aerial/demo-test/index.parquet \\
        --shard 0 --out results/embeddings/demo/demo-test
    python -m vglpipe.embed photos --config workflow_config.yaml --experiment demo --model results/models/demo \\
        --photos results/photos/demo-test --photo-cells results/cells/demo-test/photo_cells.parquet \\
        --out results/embeddings/demo/demo-test

``cells`` embeds shard ``--shard`` of ``embed.shards`` (contiguous rows; resumable in chunks) with
the aerial tower; ``photos`` embeds the region's photos with the street-view tower. See
:mod:`vglpipe.search.embedding` for the files.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from vglpipe import cli
from vglpipe.errors import InputError
from vglpipe.settings import EmbedStage, Settings

log = logging.getLogger("vglpipe.embed")


def _setup(args):
    from vglpipe.model.geomodel import prepare_for
    from vglpipe.train.loop import load_model

    st = cli.stage_settings(args, EmbedStage, Settings.embed_stage, "experiment")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, weights_id, _ = load_model(Path(args.model), device)
    model, amp = prepare_for(model, device, st.embed.precision)
    workers = st.embed.workers if args.workers is None else args.workers
    return st, device, model, weights_id, amp, workers


def _cells(args) -> int:
    from vglpipe.search.embedding import embed_cell_shard

    st, device, model, wid, amp, workers = _setup(args)
    if st.lods.n_lods != model.config.n_lods:
        raise InputError(f"{args.model}: the model takes {model.config.n_lods} LODs, the experiment's aerial "
                         f"settings {st.lods.n_lods}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    e = st.embed
    info = embed_cell_shard(model, wid, Path(args.cells), Path(args.aerial_index), st.lods, out, args.shard, e.shards,
                            e.chunk_cells, e.batch_size, e.min_coverage, workers, device, amp,
                            progress=not args.no_progress, max_upsample=st.max_upsample,
                            rotations=e.aerial_rotations)
    print(json.dumps(info))
    return 0


def _photos(args) -> int:
    from vglpipe.search.embedding import embed_photos

    st, device, model, wid, amp, workers = _setup(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = embed_photos(model, wid, Path(args.photos), Path(args.photo_cells), out, st.embed.chunk_cells,
                        st.embed.batch_size, workers, device, amp, progress=not args.no_progress)
    print(json.dumps(info))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vglpipe.embed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, fn, help_ in (("cells", _cells, "embed one shard of a region's cells"),
                            ("photos", _photos, "embed a region's photos")):
        c = sub.add_parser(name, help=help_)
        cli.add_settings_arguments(c)
        c.add_argument("--experiment", help="the experiment (with --config)")
        c.add_argument("--model", required=True, help="trained model directory (model.json + model.safetensors)")
        c.add_argument("--out", required=True, help="the region's embedding directory")
        c.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
        c.add_argument("--workers", type=int, help="DataLoader workers instead of embed.workers")
        c.add_argument("--no-progress", action="store_true")
        c.set_defaults(fn=fn)
        if name == "cells":
            c.add_argument("--cells", required=True, help="cells_<l>m.parquet of the region")
            c.add_argument("--aerial-index", required=True, help="index.parquet of the region's COGs")
            c.add_argument("--shard", type=int, default=0, help="which of embed.shards (0-based)")
        else:
            c.add_argument("--photos", required=True, help="the region's photo store directory")
            c.add_argument("--photo-cells", required=True, help="photo_cells.parquet (the photos inside the region)")
    return p


def main(argv=None) -> int:
    return cli.run(build_parser(), lambda a: a.fn(a), argv)


if __name__ == "__main__":
    sys.exit(main())
