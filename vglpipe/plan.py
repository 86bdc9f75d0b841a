"""``python -m vglpipe.plan``: the jobs of a config's run and its expected cost, stage by stage.

Nothing runs. The job counts per rule follow the workflow's structure (``rule all`` and the
rules' wildcards in rules/*.smk) for a run from scratch; ``tests/test_massachusetts.py`` checks
them against Snakemake's own dry run. The costs combine the validated config (the regions'
boundaries and their areas, cell size, LOD geometry, shards, the cluster section) with measured
figures kept in one file, ``docs/benchmark-figures.json``: the benchmarks' JSON figures
(``python -m vglpipe.bench NAME``), the photo counts of the paper, and the paper's and its
authors' statements. Every cost row names where its figure comes from; what no benchmark of this
project has measured (anything on a GPU, the bytes of real photos and orthophotos) says so
instead of giving a number.

    python -m vglpipe.plan --config config/massachusetts.yaml             # human-readable
    python -m vglpipe.plan --config config/massachusetts.yaml --markdown  # the README's tables
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyproj
import shapely

from vglpipe import cli
from vglpipe.errors import ConfigError
from vglpipe.settings import Settings

#: The measured figures (see its "about").
FIGURES = Path(__file__).resolve().parent.parent / "docs" / "benchmark-figures.json"
#: Web Mercator's extent: the side of zoom level 0, metres.
MERCATOR_SIDE_M = 2 * 20037508.342789244
GEOD = pyproj.Geod(ellps="WGS84")
#: Rules in the order the README lists them (Snakemake's Job stats order varies).
RULE_ORDER = ("demo_boundary", "demo_world", "demo_streetview", "region_boundary", "crawl", "orthophotos_download",
              "orthophotos_tile", "cells", "train", "embed_cells", "embed_photos", "index", "evaluate", "report",
              "all")


# ----------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Figure:
    value: float
    source: str  # e.g. "bench index `hnsw_bytes_per_cell`"


class Figures:
    """docs/benchmark-figures.json: benchmark figures, photo counts, the paper's statements."""

    def __init__(self, data: dict):
        self.data = data

    @classmethod
    def load(cls, path: str | Path = FIGURES) -> Figures:
        return cls(json.loads(Path(path).read_text()))

    def bench(self, name: str, key: str) -> Figure:
        try:
            return Figure(self.data["benchmarks"][name]["figures"][key], f"bench {name} `{key}`")
        except KeyError:
            raise ConfigError(f"benchmark figures: no figure {key!r} of benchmark {name!r}") from None

    def ref(self, key: str) -> Figure:
        entry = self.data["reference"][key]
        return Figure(entry["value"], entry["source"])

    def photo_groups(self, regions: list[str]) -> list[tuple[tuple[str, ...], Figure]]:
        """The photo counts whose regions (one, or several joined by '+') are all in ``regions``."""
        out = []
        for key, entry in self.data.get("photos", {}).items():
            group = tuple(key.split("+"))
            if key != "about" and set(group) <= set(regions):
                out.append((group, Figure(entry["value"], entry["source"])))
        return out


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Row:
    stage: str
    quantity: str
    expected: str
    basis: str


@dataclass
class Plan:
    config: str
    jobs: dict[str, int]  # rule -> jobs of a run from scratch
    per_job: dict[str, str]  # rule -> what one job asks for
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, stage: str, quantity: str, expected: str, basis: str) -> None:
        self.rows.append(Row(stage, quantity, expected, basis))


def job_counts(settings: Settings) -> dict[str, int]:
    """Jobs per rule of a run from scratch, as the workflow plans them (rules with no job left out)."""
    regions = settings.regions
    demo = [r for r in regions if r in settings.demo.regions]
    aerial = [r for r in regions if r in settings.config["aerial"]["sources"]]
    tests = [r for r in regions if settings.role(r) == "test"]
    exps = settings.experiments if tests else []
    pairs = len(exps) * len(tests)
    counts = {
        "demo_boundary": len(demo),
        "demo_world": len(demo),
        "demo_streetview": len(demo),
        "region_boundary": len(regions),
        "crawl": len(regions),
        "orthophotos_download": len(aerial),
        "orthophotos_tile": len(aerial),
        "cells": len(regions),
        "train": len(exps),
        "embed_cells": pairs * settings.embed.shards,
        "embed_photos": pairs,
        "index": pairs * len(settings.index.kinds),
        "evaluate": pairs,
        "report": pairs,
        "all": 1,
    }
    return {rule: n for rule, n in counts.items() if n}


def _per_job(settings: Settings) -> dict[str, str]:
    out = {"crawl": f"{settings.crawl.threads} CPUs (crawl.threads)"}
    for e in settings.experiments:
        r = settings.train_resources(e)
        gpus = f"{r['gpu']}x {r['gpu_model'] or 'GPU'}" if r["gpu"] else "no GPU"
        out["train"] = (f"{r['nodes']} node, {gpus}, {r['tasks']} processes x {settings.train_threads(e)} CPUs, "
                        f"{r['mem_mb']:,} MB, {r['runtime']:,} min")
        break
    r = settings.embed_resources()
    gpus = f"{r['gpu']}x {r['gpu_model'] or 'GPU'}" if r["gpu"] else "no GPU"
    out["embed_cells"] = out["embed_photos"] = (f"{gpus}, {settings.embed_threads()} CPUs, {r['mem_mb']:,} MB, "
                                                f"{r['runtime']:,} min")
    r = settings.index_resources()
    out["index"] = f"{settings.cluster.index.cpus} CPUs, {r['mem_mb']:,} MB, {r['runtime']:,} min"
    return out


@dataclass(frozen=True)
class RegionGeometry:
    boundary: object  # lon/lat (multi)polygon
    area_km2: float  # inside the boundary (geodesic)
    download: object  # the orthophoto download area (lon/lat): convex hull + margin
    download_km2: float


def _geodesic_km2(geom) -> float:
    return abs(GEOD.geometry_area_perimeter(geom)[0]) / 1e6


def region_geometry(settings: Settings, region: str, root: Path) -> RegionGeometry | None:
    """The region's boundary and download area; None while its boundary file does not exist (e.g. a
    demo region's, which the demo draws)."""
    from vglpipe.geo.region import load_boundary
    from vglpipe.sources.orthophoto import area_polygon

    path = root / settings.boundary(region)
    if not path.exists():
        return None
    boundary = load_boundary(path)
    download = area_polygon(boundary, settings.download_margin_m)
    return RegionGeometry(boundary, _geodesic_km2(boundary), download, _geodesic_km2(download))


def _projected_m2(geom_lonlat, crs: str) -> float:
    tr = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return shapely.transform(geom_lonlat.segmentize(0.01),
                             lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1]))).area


def download_requests(settings: Settings, region: str, geom: RegionGeometry) -> tuple[float, float, str]:
    """(requests, source pixels, how) of a region's orthophoto download: its area over the area of
    one XYZ tile (in Web Mercator) or one WMS chip (in the request CRS). Bulk archives: unknown
    before the tile index is read."""
    src = settings.source_of(region)
    if src.protocol == "xyz":
        side = MERCATOR_SIDE_M / 2**src.zoom
        n = _projected_m2(geom.download, "EPSG:3857") / side**2
        return n, n * src.tile_px**2, f"XYZ zoom {src.zoom}, {src.tile_px} px tiles"
    if src.protocol == "wms":
        side = src.chip_px * src.m_per_px
        n = _projected_m2(geom.download, src.crs) / side**2
        return n, n * src.chip_px**2, f"WMS {src.chip_px} px chips at {src.m_per_px:g} m/px in {src.crs}"
    return math.nan, math.nan, "bulk tiles (counted from the tile index at download time)"


def search_boxes(settings: Settings, boundary) -> int:
    """Bbox searches the crawl starts with: the crawl.max_box_deg boxes of a grid that meet the
    region's boundary."""
    step = settings.crawl.max_box_deg
    minx, miny, maxx, maxy = boundary.bounds
    xs = np.arange(math.floor(minx / step), math.ceil(maxx / step)) * step
    ys = np.arange(math.floor(miny / step), math.ceil(maxy / step)) * step
    gx, gy = np.meshgrid(xs, ys)
    boxes = shapely.box(gx.ravel(), gy.ravel(), gx.ravel() + step, gy.ravel() + step)
    shapely.prepare(boundary)
    return int(shapely.intersects(boundary, boxes).sum())


# ----------------------------------------------------------------------------- formatting


def _m(n: float) -> str:
    return f"{n / 1e6:,.1f} M" if n >= 1e6 else f"{n:,.0f}"


def _h(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h"


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:,.1f} GB"


def _num(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() or abs(v) >= 100 else f"{v:g}"


# ----------------------------------------------------------------------------- costs


def make_plan(config_path: str | Path, root: str | Path = ".", figures: Figures | None = None) -> Plan:
    settings = Settings.load(config_path)
    settings.check()
    root = Path(root)
    fig = figures or Figures.load()
    shown = Path(config_path)
    if shown.resolve().is_relative_to(root.resolve()):
        shown = shown.resolve().relative_to(root.resolve())  # as the workflow's --configfile names it
    plan = Plan(config=shown.as_posix(), jobs=job_counts(settings), per_job=_per_job(settings))
    geoms = {r: g for r in settings.regions if (g := region_geometry(settings, r, root)) is not None}
    if len(geoms) < len(settings.regions):
        plan.notes.append(f"boundary file not found for {', '.join(sorted(set(settings.regions) - set(geoms)))}: "
                          "not costed")
    regions = sorted(geoms)
    tests = [r for r in regions if settings.role(r) == "test"]
    photos = {group: f for group, f in fig.photo_groups(regions)}
    _crawl_rows(plan, settings, fig, geoms, photos)
    _aerial_rows(plan, settings, fig, geoms)
    test_cells = {r: geoms[r].area_km2 * 1e6 / settings.layout.test_cell_m**2 for r in regions}
    if test_cells:
        _cells_rows(plan, settings, fig, test_cells, tests, root)
    for exp in settings.experiments if tests else []:
        _train_rows(plan, settings, fig, exp, photos)
        test_photos = sum(f.value for g, f in photos.items() if set(g) <= set(tests))
        _embed_index_rows(plan, settings, fig, exp, tests, test_cells, test_photos)
    return plan


def _crawl_rows(plan: Plan, settings: Settings, fig: Figures, geoms: dict, photos: dict) -> None:
    crawl = settings.crawl
    rate = fig.bench("crawl", "rate_fraction")
    export = fig.bench("photo_export", "export_rows_per_s")
    entity_per_s = crawl.entity_per_minute / 60 * rate.value
    search_per_s = crawl.search_per_minute / 60 * rate.value
    cap = crawl.split_fraction * crawl.search_limit
    total_s = 0.0
    for group, count in photos.items():
        boxes = sum(search_boxes(settings, geoms[r].boundary) for r in group)
        searches = boxes + 4 / 3 * count.value / cap  # a capped box is searched again as 4 quadrants
        seconds = count.value / entity_per_s + searches / search_per_s
        total_s += seconds
        name = group[0] if len(group) == 1 else f"{len(group)} training regions"
        plan.add("crawl", f"photos: {name}", _m(count.value), count.source)
        plan.add("crawl", f"crawl time: {name}", _h(seconds),
                 f"{_m(count.value)} photos at crawl.entity_per_minute {_num(crawl.entity_per_minute)} x "
                 f"{rate.source} {rate.value}, plus ~{searches:,.0f} bbox searches at crawl.search_per_minute "
                 f"{_num(crawl.search_per_minute)}")
        plan.add("crawl", f"metadata.parquet export: {name}", f"{count.value / export.value:,.0f} s",
                 f"{export.source} {_num(export.value)} rows/s")
    if len(photos) > 1:
        plan.add("crawl", "crawl time, all regions one after another", _h(total_s),
                 "the API limits hold per access token: crawls sharing one token run one at a time")
    cores = fig.bench("crawl", "est_cores_real_crawl")
    plan.add("crawl", "CPU cores per crawl job", f"{crawl.threads} (crawl.threads)",
             f"needed at the default limits with real 1024 px thumbnails: up to {_num(cores.value)} ({cores.source})")
    plan.add("crawl", "photo store (640x480 JPEG, ~1 GiB tar shards)", "not measured here",
             f"bytes of a stored real photo at crawl.jpeg_quality {crawl.jpeg_quality}: no benchmark crawls real "
             "photos; measure it on a crawl of a small real area (e.g. the paper's 100 km2 Boston split)")
    missing = [r for r in geoms if not any(r in g for g in photos)]
    if missing:
        plan.notes.append(f"no photo count for {', '.join(missing)}: their crawl is not costed "
                          f"(add one under 'photos' in {FIGURES.name})")


def _aerial_rows(plan: Plan, settings: Settings, fig: Figures, geoms: dict) -> None:
    total_px = 0.0
    aerial = [r for r in geoms if r in settings.config["aerial"]["sources"]]
    for r in aerial:
        n, px, how = download_requests(settings, r, geoms[r])
        if not math.isnan(px):
            total_px += px
        plan.add("orthophotos", f"download: {r}",
                 "bulk" if math.isnan(n) else f"~{_m(n)} requests",
                 f"{how}; {geoms[r].download_km2:,.0f} km2: the boundary's convex hull + "
                 f"{settings.download_margin_m:,.0f} m (derived download margin)")
    if aerial:
        plan.add("orthophotos", "source pixels (all regions)", f"~{total_px / 1e12:,.2f} Tpx",
                 "requests x pixels per request; download speed depends on each provider: not measured here")
        plan.add("orthophotos", "COG storage", "not measured here",
                 f"bytes per pixel of real imagery in {settings.cog.compress} q{settings.cog.quality} COGs with "
                 "overviews: no benchmark tiles real orthophotos; measure on one provider tile")


def cells_mem_mb(settings: Settings, boundary: str | Path, figures: Figures | None = None) -> int:
    """Memory of a region's cells job: the cells benchmark's peak RSS scaled to the region's test
    cells (boundary area / cell side²), 1.5x headroom, at least 4,000 MB (rules/cells.smk)."""
    from vglpipe.geo.region import load_boundary

    if not Path(boundary).exists():
        return 4000
    fig = figures or Figures.load()
    rss, ma_cells = fig.bench("cells", "peak_rss_mb").value, fig.bench("cells", "ma_cells").value
    cells = _geodesic_km2(load_boundary(boundary)) * 1e6 / settings.layout.test_cell_m ** 2
    return max(4000, math.ceil(1.5 * rss * cells / ma_cells))


def _cells_rows(plan: Plan, settings: Settings, fig: Figures, test_cells: dict, tests: list[str],
                root: Path) -> None:
    enum_s, ma_cells = fig.bench("cells", "ma_enumerate_s"), fig.bench("cells", "ma_cells")
    rss = fig.bench("cells", "peak_rss_mb")
    side = settings.layout.test_cell_m
    for r in tests:
        plan.add("cells", f"{side:g} m cells: {r}", f"~{_m(test_cells[r])}",
                 f"boundary area / {side:g} m x {side:g} m; enumerated in ~{enum_s.value * test_cells[r] / ma_cells.value:.0f} s "
                 f"({enum_s.source} {enum_s.value} s per {_m(ma_cells.value)})")
    largest = max(test_cells, key=test_cells.get)
    asked = cells_mem_mb(settings, root / settings.boundary(largest), fig)
    plan.add("cells", f"largest cells job: {largest}", f"~{_m(test_cells[largest])} cells, "
             f"~{rss.value * test_cells[largest] / ma_cells.value / 1000:,.1f} GB; the job asks for {asked:,} MB",
             f"every region's {side:g} m cells are enumerated; RAM scaled from {rss.source} {_num(rss.value)} MB "
             f"per {_m(ma_cells.value)} (extrapolated), 1.5x headroom (rules/cells.smk)")


def _train_rows(plan: Plan, settings: Settings, fig: Figures, exp_name: str, photos: dict) -> None:
    exp = settings.experiment(exp_name)
    t = exp.train
    if not t.steps:
        plan.add("train", f"{exp_name}: training", "none", "train.steps 0: the initial weights")
        return
    samples = t.steps * t.batch_size
    trains = [r for r in settings.regions if settings.role(r) == "train"]
    train_photos = sum(f.value for g, f in photos.items() if set(g) <= set(trains))
    plan.add("train", f"{exp_name}: samples", _m(samples),
             f"train.steps {t.steps:,} x train.batch_size {t.batch_size}"
             + (f"; {_m(train_photos)} training photos, each seen at most once (§3.5)" if train_photos else ""))
    step = fig.bench("train --config paper", "step_s")
    step_hem = fig.bench("train --config paper --mining 8", "step_s")
    gpu = fig.bench("train --config paper", "gpu").value
    hem = t.mining.enabled
    gpu_h = t.steps * (step_hem if hem else step).value / 3600
    plan.add("train", f"{exp_name}: GPU-hours", f"~{gpu_h:,.0f} {gpu} GPU-h",
             f"train.steps {t.steps:,} x {(step_hem if hem else step).source} {(step_hem if hem else step).value} s "
             f"on one {gpu}" + (f" with mining scans of 8 batches, which wait for the loader (without mining: "
                                f"{step.source} {step.value} s, ~{t.steps * step.value / 3600:,.0f} GPU-h)" if hem else ""))
    gpus, days = fig.ref("train_gpus"), fig.ref("train_days")
    ref_samples = fig.ref("train_steps").value * fig.ref("train_batch_size").value
    plan.add("train", f"{exp_name}: GPU-hours of the reference code",
             f"~{gpus.value * days.value * 24 * samples / ref_samples:,.0f} {fig.ref('train_gpu_model').value} GPU-h",
             f"{_num(gpus.value)} GPUs x {days.value} days per {_m(ref_samples)} samples (the authors, "
             "statewide-visual-geolocalization issue #1), for comparison")
    mem = fig.bench("train --config paper", "peak_gpu_mem_gb")
    job = settings.cluster.train
    job_gpus = job.nodes * job.gpus_per_node
    plan.add("train", f"{exp_name}: GPU memory", f"{mem.value} GB for a batch of {fig.bench('train --config paper', 'batch_size').value} on one GPU",
             f"{mem.source} (peak allocated); with {job_gpus or 1} GPU(s) each holds the weights and "
             f"optimiser (~3 GB) and 1/{job_gpus or 1} of the activations")
    if job_gpus:
        wall_min = gpu_h / job_gpus * 60
        jobs = math.ceil(wall_min / job.runtime_min)
        plan.add("train", f"{exp_name}: wall time on cluster.train", f"~{wall_min / 60:,.0f} h = {jobs} job(s)",
                 f"the GPU-hours above over {job_gpus} GPUs, assuming DDP scales linearly (one GPU was measured); "
                 f"jobs of cluster.train.runtime_min {job.runtime_min:,} continue from the checkpoint "
                 f"(cluster.train.retries {job.retries}: up to {job.retries + 1} jobs)")
        if jobs > job.retries + 1:
            plan.notes.append(f"training needs ~{jobs} jobs of {job.runtime_min} min but cluster.train.retries "
                              f"allows {job.retries + 1}: raise it, or rerun the workflow")
        reads = 2 if hem else 1  # hard example mining reads every sample twice (§3.5)
        need = reads * t.batch_size / job_gpus / step.value
        per_worker = fig.bench("train --config paper", "loader_samples_per_s_per_worker")
        have = t.workers * per_worker.value
        plan.add("train", f"{exp_name}: data loading per GPU", f"{have:,.0f} samples/s for ~{need:,.0f} needed",
                 f"train.workers {t.workers} x {per_worker.source} {per_worker.value} (photo + 4 LODs of 384 px, "
                 f"one thread); needed: {reads} x the batch share of a GPU per {step.source} {step.value} s"
                 + (" (mining reads each sample twice, §3.5)" if hem else ""))
        if have < need:
            plan.notes.append(f"data loading: train.workers {t.workers} give ~{have:,.0f} samples/s per GPU, the GPU "
                              f"takes ~{need:,.0f}: raise train.workers (and the CPUs per process)")


def _embed_index_rows(plan: Plan, settings: Settings, fig: Figures, exp_name: str, tests: list[str],
                      test_cells: dict, test_photos: float) -> None:
    from vglpipe.model import model_config

    exp = settings.experiment(exp_name)
    dim = model_config(exp.model.name, **dict(exp.model.args)).dim
    cells = sum(test_cells[r] for r in tests)
    shards = settings.embed.shards
    per_core = fig.bench("aerial", "test_cells_per_s_per_core")
    workers = max(settings.embed_threads() - 1, 1)
    plan.add("embed", f"{exp_name}: cells", f"~{_m(cells)} in {shards * len(tests)} shard jobs",
             f"~{_m(cells / shards)} cells per shard (embed.shards {shards})")
    plan.add("embed", f"{exp_name}: aerial patch cutting", f"~{cells / per_core.value / 3600:,.1f} core-h",
             f"{per_core.source} {_num(per_core.value)} cells/s per core (4 LODs of 384 px); one shard with "
             f"{workers} workers: ~{cells / shards / (workers * per_core.value) / 60:,.0f} min")
    rate = fig.bench("embed --config paper", "cells_per_s")
    gpu = fig.bench("embed --config paper", "gpu").value
    runtime_s = settings.cluster.embed.runtime_min * 60
    gpu_h = cells / rate.value / 3600
    plan.add("embed", f"{exp_name}: aerial tower, GPU-hours", f"~{gpu_h:,.0f} {gpu} GPU-h",
             f"cells / {rate.source} {_num(rate.value)} cells/s end to end (the tower alone: "
             f"{_num(fig.bench('embed --config paper', 'model_cells_per_s').value)}); one shard: "
             f"~{_h(cells / shards / rate.value)} (cluster.embed.runtime_min {settings.cluster.embed.runtime_min:,})")
    if cells / shards / rate.value > runtime_s:
        plan.notes.append(f"an embed shard needs ~{_h(cells / shards / rate.value)}, more than "
                          "cluster.embed.runtime_min: raise embed.shards")
    if test_photos:
        prate = fig.bench("embed --config paper", "model_photos_per_s")
        plan.add("embed", f"{exp_name}: photos, street-view tower GPU-hours",
                 f"~{test_photos / prate.value / 3600:,.1f} {gpu} GPU-h",
                 f"{_m(test_photos)} photos of 480x640 / {prate.source} {_num(prate.value)} photos/s (the tower alone; "
                 f"JPEG decoding in embed.workers); one embed_photos job per region: "
                 f"~{_h(test_photos / len(tests) / prate.value)}")
    plan.add("embed", f"{exp_name}: cell embeddings on disk", _gb(cells * dim * 2),
             f"cells x {dim}-d fp16 (the paper's fp32 database: {fig.ref('database_gb').value} GB, §4.5)")
    ram, ram_source = {}, {}
    for kind in settings.index.kinds:
        if kind == "flat":
            ram[kind], ram_source[kind] = cells * dim * 2, f"cells x {dim}-d fp16"
            continue
        per_cell = fig.bench("index", f"{kind}_bytes_per_cell")
        build = fig.bench("index", f"{kind}_build_s")
        n = fig.bench("index", "n_cells").value
        ram[kind], ram_source[kind] = cells * per_cell.value, per_cell.source
        disk = ""
        if kind == "compressed":
            d = fig.bench("index", "compressed_disk_bytes_per_cell")
            disk = f" + {_gb(cells * d.value)} of fp16 vectors on disk ({d.source})"
        plan.add("index", f"{exp_name}: {kind} RAM", _gb(ram[kind]), f"{per_cell.source} {_num(per_cell.value)} B x cells{disk}")
        plan.add("index", f"{exp_name}: {kind} build time", f"~{_h(build.value * cells / n)}",
                 f"{build.source} {build.value} s per {_m(n)} cells on 2 cores, scaled linearly (extrapolated)")
    largest = max(ram, key=ram.get)
    need_mb = ram[largest] / 1e6
    have_mb = settings.cluster.index.mem_mb
    plan.add("index", "RAM asked per index job", f"{have_mb:,} MB (cluster.index.mem_mb)",
             f"largest index: {largest}, {need_mb:,.0f} MB ({ram_source[largest]} x cells): "
             f"{'fits' if have_mb >= need_mb else 'DOES NOT FIT'}")
    if have_mb < need_mb:
        plan.notes.append(f"cluster.index.mem_mb {have_mb:,} is below the largest index, ~{need_mb:,.0f} MB")
    kind = settings.index.search
    if test_photos and kind != "flat":
        ms = fig.bench("index", f"{kind}_ms_per_query")
        plan.add("evaluate", f"{exp_name}: search of every photo ({kind})", _h(test_photos * ms.value / 1000),
                 f"{_m(test_photos)} photos x {ms.source} {ms.value} ms (one thread); the index needs "
                 f"{_gb(ram[kind])} of RAM")


# ----------------------------------------------------------------------------- output


def markdown(plan: Plan) -> str:
    lines = [f"Jobs of a run from scratch (`snakemake -n --profile profiles/slurm --configfile {plan.config}`):", "",
             "| rule | jobs | each job asks for |", "|---|---:|---|"]
    for rule in RULE_ORDER:
        if rule in plan.jobs:
            lines.append(f"| `{rule}` | {plan.jobs[rule]} | {plan.per_job.get(rule, 'the rule’s resources')} |")
    lines.append(f"| total | {sum(plan.jobs.values())} | |")
    lines += ["", "Expected cost per stage:", "", "| stage | quantity | expected | from |", "|---|---|---|---|"]
    for row in plan.rows:
        lines.append(f"| {row.stage} | {row.quantity} | {row.expected} | {row.basis} |")
    if plan.notes:
        lines.append("")
        lines += [f"- {n}" for n in plan.notes]
    return "\n".join(lines) + "\n"


def text(plan: Plan) -> str:
    lines = [f"plan of {plan.config}", "", "jobs of a run from scratch:"]
    width = max(len(r) for r in plan.jobs)
    for rule in RULE_ORDER:
        if rule in plan.jobs:
            lines.append(f"  {rule:<{width}} {plan.jobs[rule]:>4}  {plan.per_job.get(rule, '')}".rstrip())
    lines.append(f"  {'total':<{width}} {sum(plan.jobs.values()):>4}")
    stage = None
    for row in plan.rows:
        if row.stage != stage:
            stage = row.stage
            lines += ["", f"{stage}:"]
        lines.append(f"  {row.quantity}: {row.expected}  [{row.basis}]")
    if plan.notes:
        lines += ["", "notes:"] + [f"  {n}" for n in plan.notes]
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> None:
    plan = make_plan(args.config, args.root, Figures.load(args.figures))
    sys.stdout.write(markdown(plan) if args.markdown else text(plan))
    if not args.markdown:
        figures = {"jobs": plan.jobs, "jobs_total": sum(plan.jobs.values())}
        print(json.dumps({"plan": str(args.config), **figures}))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vglpipe.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the workflow config (e.g. config/massachusetts.yaml)")
    p.add_argument("--root", default=".", help="the workflow's directory: region boundaries are relative to it")
    p.add_argument("--figures", default=str(FIGURES), help="the measured figures (default: %(default)s)")
    p.add_argument("--markdown", action="store_true", help="print the README's Markdown tables")
    return p


if __name__ == "__main__":
    sys.exit(cli.run(parser(), main))
