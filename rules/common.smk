# Shared by all rules files: the validated settings (fail at start, naming the key) and the
# input/params functions. Each rule passes its stage exactly the settings it reads (a
# vglpipe.settings stage bundle as JSON in `params`), so a changed value reruns exactly the
# stages that read it and those downstream.
import os
import re
import shlex

from vglpipe.errors import ConfigError
from vglpipe.settings import Settings, to_json

try:
    SETTINGS = Settings(config, source="workflow config (workflow_config.yaml or --configfile, with --config)")
    SETTINGS.check()
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

REGIONS = SETTINGS.regions
DEMO_REGIONS = sorted(SETTINGS.demo.regions)
AERIAL_REGIONS = [r for r in REGIONS if r in SETTINGS.config["aerial"]["sources"]]
TEST_CELL_TAG = SETTINGS.layout.test_cell_tag
EXPERIMENTS = SETTINGS.experiments
TRAIN_REGIONS = [r for r in REGIONS if SETTINGS.role(r) == "train"]
TEST_REGIONS = [r for r in REGIONS if SETTINGS.role(r) == "test"]
SHARDS = [f"{i:03d}" for i in range(SETTINGS.embed.shards)]
INDEX_KINDS = list(SETTINGS.index.kinds)

for _region in sorted(set(REGIONS) - set(AERIAL_REGIONS)):
    logger.warning(
        f"region {_region} has no aerial.sources entry: its orthophotos are not fetched "
        "(add one to train on it or test on it)"
    )


def one_of(names):
    """A wildcard regex matching exactly these names (nothing when empty)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def stage_settings(method, *args):
    """params function: the stage bundle ``SETTINGS.<method>(wildcards...)`` as shell-quoted JSON."""
    return lambda wc: shlex.quote(to_json(getattr(SETTINGS, method)(*(wc[a] for a in args))))


def out_dir(wc, output):
    """The directory of a rule's first output (stages that write a directory of files)."""
    return os.path.dirname(output[0])


def is_demo(region):
    return region in SETTINGS.demo.regions


def train_resource(key):
    """resources function: one of an experiment's training job resources (SETTINGS.train_resources)."""
    return lambda wc: SETTINGS.train_resources(wc.experiment)[key]


def cells_mem_mb(wc, input):
    """resources function: the cells job's memory from its region's area (vglpipe.plan)."""
    from vglpipe.plan import cells_mem_mb

    return cells_mem_mb(SETTINGS, input.boundary)


def train_inputs(wc):
    """Every training region's photos, photo cells and orthophoto index."""
    inputs = {}
    for r in TRAIN_REGIONS:
        inputs[f"{r}_photos"] = f"results/photos/{r}/metadata.parquet"
        inputs[f"{r}_cells"] = f"results/cells/{r}/photo_cells.parquet"
        inputs[f"{r}_aerial"] = f"results/aerial/{r}/index.parquet"
    return inputs


def train_region_args(wc, input):
    """--region NAME:PHOTOS_DIR:PHOTO_CELLS:AERIAL_INDEX per training region."""
    args = []
    for r in TRAIN_REGIONS:
        photos = os.path.dirname(input[f"{r}_photos"])
        spec = ":".join([r, photos, input[f"{r}_cells"], input[f"{r}_aerial"]])
        args.append(f"--region {shlex.quote(spec)}")
    return " ".join(args)


def evaluate_inputs(wc):
    inputs = {
        "index": f"results/index/{wc.experiment}/{wc.region}/{SETTINGS.index.search}",
        "photo_vectors": f"results/embeddings/{wc.experiment}/{wc.region}/photos.npy",
        "photos": f"results/photos/{wc.region}/metadata.parquet",
    }
    if is_demo(wc.region):
        inputs["truth"] = f"{demo_dir(wc.region)}/streetview/source.parquet"
    return inputs


def evaluate_truth_arg(wc, input):
    """Demo regions: the photos' true positions, evaluated beside the served (GNSS) ones."""
    return f"--true-positions {shlex.quote(input.truth)}" if is_demo(wc.region) else ""


def report_inputs(wc):
    inputs = {}
    for e in EXPERIMENTS:
        for name in ("recall.json", "recall_by_year.csv", "recall_by_hour.csv", "retrieval.parquet"):
            inputs[f"{e}_{name}"] = f"results/eval/{e}/{wc.region}/{name}"
        inputs[f"{e}_model"] = f"results/models/{e}/model.json"
        inputs[f"{e}_index"] = f"results/index/{e}/{wc.region}/{SETTINGS.index.search}"
    for i, shard in enumerate(SHARDS):
        inputs[f"cells_{i}"] = f"results/embeddings/{wc.experiment}/{wc.region}/cells-{shard}.npy"
    inputs["photo_vectors"] = f"results/embeddings/{wc.experiment}/{wc.region}/photos.npy"
    inputs["photos"] = f"results/photos/{wc.region}/metadata.parquet"
    inputs["aerial"] = f"results/aerial/{wc.region}/index.parquet"
    inputs["cells"] = f"results/cells/{wc.region}/summary.json"
    return inputs


# ---- demo hooks: the demo's fake servers wrap the production commands (rules/demo.smk)


def demo_dir(region):
    return f"resources/demo/{region}"


def crawl_inputs(wc):
    inputs = {"boundary": f"resources/regions/{wc.region}.geojson"}
    if is_demo(wc.region):
        inputs["source"] = f"{demo_dir(wc.region)}/streetview/source.parquet"
    return inputs


def crawl_wrapper(wc, input, output):
    """Demo regions: serve the rendered photos with the fake Mapillary API around the crawl."""
    if not is_demo(wc.region):
        return ""
    st = shlex.quote(to_json(SETTINGS.fake_mapillary_stage()))
    source = shlex.quote(os.path.dirname(input.source))
    out = shlex.quote(os.path.dirname(output[0]))
    return f"python -m vglpipe.demo serve-mapillary --settings {st} --source {source} --crawl-out {out} -- "


def crawl_base_url(wc):
    return "--base-url fake:/" if is_demo(wc.region) else ""


def download_inputs(wc):
    inputs = {"boundary": f"resources/regions/{wc.region}.geojson"}
    if is_demo(wc.region):
        inputs["world_color"] = f"{demo_dir(wc.region)}/world/color.tif"
        inputs["world_height"] = f"{demo_dir(wc.region)}/world/height.tif"
    return inputs


def download_wrapper(wc, input):
    """Demo regions: serve the region's world with the fake orthophoto provider around the download."""
    if not is_demo(wc.region):
        return ""
    st = shlex.quote(to_json(SETTINGS.fake_orthophoto_stage(wc.region)))
    return (f"python -m vglpipe.demo serve-orthophotos --settings {st} --world-color {shlex.quote(input.world_color)} "
            f"--world-height {shlex.quote(input.world_height)} -- ")


wildcard_constraints:
    region=one_of(REGIONS),
    experiment=one_of(EXPERIMENTS),


localrules:
    region_boundary,
    demo_boundary,
