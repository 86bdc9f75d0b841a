# vglpipe: statewide cross-view visual geolocalization. Table of contents only;
# each stage lives in rules/<stage>.smk and runs `python -m vglpipe.<stage>`.

configfile: "workflow_config.yaml"


include: "rules/common.smk"
include: "rules/regions.smk"
include: "rules/crawl.smk"
include: "rules/cells.smk"
include: "rules/orthophotos.smk"


rule all:
    input:
        expand("results/cells/{region}/photo_cells.parquet", region=REGIONS),
        expand("results/cells/{region}/cells_{tag}m.parquet", region=REGIONS, tag=TEST_CELL_TAG),
        expand("results/aerial/{region}/index.parquet", region=AERIAL_REGIONS),
