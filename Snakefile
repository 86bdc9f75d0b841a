# vglpipe: statewide cross-view visual geolocalization. Table of contents only: settings and
# helpers in rules/common.smk, one file per stage in rules/<stage>.smk, each rule running
# `python -m vglpipe.<stage>`.
from snakemake.utils import min_version

min_version("9.0")


# The shipped demo experiment, unless --configfile names the user's own, which replaces it.
if not workflow.overwrite_configfiles:

    configfile: "workflow_config.yaml"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/regions.smk"
include: "rules/crawl.smk"
include: "rules/orthophotos.smk"
include: "rules/cells.smk"
include: "rules/train.smk"
include: "rules/embed.smk"
include: "rules/index.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        expand("results/cells/{region}/photo_cells.parquet", region=REGIONS),
        expand("results/cells/{region}/cells_{tag}m.parquet", region=REGIONS, tag=TEST_CELL_TAG),
        expand("results/aerial/{region}/index.parquet", region=AERIAL_REGIONS),
        expand("results/index/{experiment}/{region}/{kind}", experiment=EXPERIMENTS, region=TEST_REGIONS,
               kind=INDEX_KINDS),
        expand("results/reports/{experiment}/{region}/index.html", experiment=EXPERIMENTS, region=TEST_REGIONS),
