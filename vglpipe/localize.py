"""``python -m vglpipe.localize``: where were my photos taken? The best cells of a built index.

    python -m vglpipe.localize my_photo.jpg other.png --model results/models/demo \\
        --index results/index/demo/demo-test/hnsw --top 10 --out where.json --geojson where.geojson \\
        --html where.html --aerial results/aerial/demo-test/index.parquet

Each photo (any size and aspect; EXIF orientation applied) is letterboxed to 640×480 like the
training photos, embedded with the model's street-view tower and searched in the index (built
from the same model's cell embeddings; another model's index is refused). Writes the ranked
cells with centre lat/lon and score as JSON (``--out``, default stdout) and as GeoJSON points
(``--geojson``); ``--html`` (with ``--aerial``, the region's orthophoto index) draws each
photo beside the orthophoto around its best cell with the score heatmap, as in the report.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vglpipe import cli
from vglpipe.errors import InputError
from vglpipe.store.atomic import atomic_write_text

log = logging.getLogger("vglpipe.localize")


def read_photo(path: Path) -> np.ndarray:
    """A photo file as an upright RGB array (EXIF orientation applied); InputError naming the file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def street_input(rgb: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Letterbox to the stored photos' 640×480, then resize to the model's street-view input."""
    import cv2

    from vglpipe.store.photos import letterbox

    boxed = letterbox(rgb)
    h, w = size_hw
    return cv2.resize(boxed, (w, h), interpolation=cv2.INTER_AREA)


@dataclass
class Localization:
    photo: str
    cell_ids: np.ndarray
    scores: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    query: np.ndarray

    def as_dict(self) -> dict:
        return {"photo": self.photo, "results": [
            {"rank": i + 1, "cell_id": int(c), "lat": round(float(a), 7), "lon": round(float(o), 7),
             "score": round(float(s), 4)}
            for i, (c, a, o, s) in enumerate(zip(self.cell_ids, self.lat, self.lon, self.scores)) if c >= 0]}


def localize(paths: list[Path], model_dir: Path, index_dir: Path, top: int, device: str | None = None) -> list[Localization]:
    from vglpipe.geo.layout import layout_from_description
    from vglpipe.search import CellIndex
    from vglpipe.train.loop import load_model

    photos = [read_photo(p) for p in paths]  # bad files are named before anything is loaded
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, weights_id, _ = load_model(model_dir, dev)
    index = CellIndex.load(index_dir, expect={"weights_id": weights_id})
    layout = layout_from_description(index.meta["layout"])
    images = np.stack([street_input(rgb, tuple(model.config.street_size)) for rgb in photos])
    with torch.no_grad():
        x = model.preprocess(torch.from_numpy(images).to(dev), layout="channels_last")
        q = model.embed_street(x).float().cpu().numpy()
    res = index.search(q, min(top, len(index)))
    out = []
    for i, p in enumerate(paths):
        ids = res.ids[i]
        lat, lon = layout.center_of_ids(np.maximum(ids, 0))
        out.append(Localization(str(p), ids, res.scores[i], lat, lon, q[i]))
    return out


def geojson(locs: list[Localization]) -> dict:
    feats = []
    for loc in locs:
        for r in loc.as_dict()["results"]:
            feats.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [r["lon"], r["lat"]]},
                          "properties": {"photo": loc.photo, "rank": r["rank"], "score": r["score"],
                                         "cell_id": r["cell_id"]}})
    return {"type": "FeatureCollection", "features": feats}


def html_page(locs: list[Localization], paths: list[Path], index_dir: Path, aerial: Path, out: Path,
              map_m: float = 300.0) -> None:
    import cv2

    from vglpipe.aerial.sampler import AerialSampler
    from vglpipe.geo.layout import layout_from_description
    from vglpipe.report import Example, write_localization_page
    from vglpipe.report.assemble import local_en
    from vglpipe.search import CellIndex
    from vglpipe.settings import LodSpec

    index = CellIndex.load(index_dir)
    layout = layout_from_description(index.meta["layout"])
    spec = LodSpec(patch_px=512, m_per_px=2 * map_m / 512, n_lods=1)
    pages = []
    with AerialSampler(aerial, spec=spec) as sampler:
        for loc, path in zip(locs, paths):
            lat0, lon0 = float(loc.lat[0]), float(loc.lon[0])  # the map is centred on the best cell
            near = layout.cells_within(lat0, lon0, map_m * math.sqrt(2)).ids
            near = near[np.isin(near, index.ids)]
            rgb = read_photo(path)
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
            c_lat, c_lon = layout.center_of_ids(near)
            ex = Example(photo_jpeg=jpeg.tobytes(), image_id=path.name, creator_username="", captured_at=None,
                         lat=lat0, lon=lon0, success=None, rank=None, ortho=sampler.sample(lat0, lon0).patches[0],
                         ortho_extent_m=(-map_m, map_m, -map_m, map_m), cells_en_m=local_en(lat0, lon0, c_lat, c_lon),
                         cell_scores=index.exact_scores(loc.query, near), topk_en_m=local_en(lat0, lon0, loc.lat, loc.lon),
                         topk_scores=loc.scores, ground_truth_known=False)
            pages.append(ex)
    if len(pages) == 1:
        write_localization_page(out, f"Where was {paths[0].name} taken?", pages[0],
                                {"best cell": f"{locs[0].lat[0]:.6f}, {locs[0].lon[0]:.6f}"})
    else:
        for ex, path in zip(pages, paths):
            write_localization_page(out.with_name(f"{out.stem}-{path.stem}{out.suffix}"),
                                    f"Where was {path.name} taken?", ex, {})


def main(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.photos]
    for p in paths:
        if not p.is_file():
            raise InputError(f"{p}: no such photo file")
    if args.html and not args.aerial:
        raise InputError("--html needs --aerial (the region's orthophoto index.parquet)")
    locs = localize(paths, Path(args.model), Path(args.index), args.top, args.device)
    doc = json.dumps([loc.as_dict() for loc in locs], indent=2)
    if args.out:
        atomic_write_text(args.out, doc + "\n")
    else:
        print(doc)
    if args.geojson:
        atomic_write_text(args.geojson, json.dumps(geojson(locs)) + "\n")
    if args.html:
        html_page(locs, paths, Path(args.index), Path(args.aerial), Path(args.html))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vglpipe.localize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", nargs="+", help="photo files (JPEG, PNG, ...)")
    p.add_argument("--model", required=True, help="trained model directory (model.json + model.safetensors)")
    p.add_argument("--index", required=True, help="index directory built from this model's cell embeddings")
    p.add_argument("--top", type=int, default=10, help="best cells per photo (default 10)")
    p.add_argument("--out", help="JSON output (default: stdout)")
    p.add_argument("--geojson", help="GeoJSON output (points with rank and score)")
    p.add_argument("--html", help="an HTML map per photo (needs --aerial)")
    p.add_argument("--aerial", help="the region's orthophoto index.parquet (for --html)")
    p.add_argument("--device", help="cpu, cuda (default: cuda if available)")
    return p


if __name__ == "__main__":
    sys.exit(cli.run(build_parser(), main))
