# Orthophoto stage: provider imagery (WMS / XYZ tiles / bulk tiles) -> COGs + footprint index.
#   resources/aerial/{region}/downloads/   raw chips/tiles (resumable; manifest.json written last)
#   results/aerial/{region}/cogs/*.tif     Cloud-Optimized GeoTIFFs (JPEG, 512 blocks, overviews)
#   results/aerial/{region}/index.parquet  footprint index (file, CRS, bounds, resolution, date)
# A source URL starting with "fake:" (the demo) is served from the region's synthetic world
# (resources/worlds/{region}/) by the local fake server, through the same client as a state.
# Only manifest.json is declared as the download's output: Snakemake must never delete the
# tiles of an interrupted download, which the rerun resumes from.
import json

AERIAL = config["aerial"]
# regions whose orthophotos this workflow fetches (those with an aerial.sources entry)
AERIAL_REGIONS = [r for r in REGIONS if r in AERIAL["sources"]]


def _aerial_source(region):
    sources = AERIAL["sources"]
    if region not in sources:
        raise WorkflowError(f"aerial.sources has no entry for region {region!r} (has: {sorted(sources)})")
    return sources[region]


def _aerial_is_fake(region):
    return str(_aerial_source(region)["url"]).startswith("fake:")


def _aerial_download_inputs(wc):
    inputs = {"boundary": f"resources/regions/{wc.region}.geojson"}
    if _aerial_is_fake(wc.region):
        inputs["world_color"] = f"resources/worlds/{wc.region}/color.tif"
        inputs["world_height"] = f"resources/worlds/{wc.region}/height.tif"
    return inputs


def _aerial_fake_args(wc, input):
    if not _aerial_is_fake(wc.region):
        return ""
    return f"--fake-world-color {input.world_color} --fake-world-height {input.world_height}"


rule orthophotos_world:
    """Demo regions: the synthetic world (orthophoto + DSM) that the fake provider serves."""
    output:
        color="resources/worlds/{region}/color.tif",
        height="resources/worlds/{region}/height.tif",
    params:
        builtin=lambda wc: config["regions"][wc.region]["boundary"].removeprefix("builtin:"),
        margin=AERIAL["world"]["margin_m"],
        m_per_px=AERIAL["world"]["m_per_px"],
    log:
        "logs/orthophotos/world_{region}.log",
    benchmark:
        "benchmarks/orthophotos/world_{region}.tsv"
    resources:
        mem_mb=6000,
        runtime=30,
    shell:
        "python -m vglpipe.orthophotos world --region {params.builtin:q} --margin-m {params.margin} "
        "--m-per-px {params.m_per_px} --out-color {output.color:q} --out-height {output.height:q} 2> {log:q}"


rule orthophotos_download:
    """Fetch a region's imagery with the configured protocol client (resumable, retried, validated)."""
    input:
        unpack(_aerial_download_inputs),
    output:
        "resources/aerial/{region}/downloads/manifest.json",
    params:
        source=lambda wc: json.dumps(_aerial_source(wc.region), sort_keys=True),
        margin=AERIAL["download_margin_m"],
        fake=_aerial_fake_args,
    log:
        "logs/orthophotos/download_{region}.log",
    benchmark:
        "benchmarks/orthophotos/download_{region}.tsv"
    resources:
        mem_mb=4000,
        runtime=24 * 60,
    shell:
        "python -m vglpipe.orthophotos download --region {wildcards.region:q} --boundary {input.boundary:q} "
        "--margin-m {params.margin} --source-json {params.source:q} {params.fake} "
        "--out resources/aerial/{wildcards.region}/downloads 2> {log:q}"


rule orthophotos_tile:
    """Downloaded imagery -> COGs with overviews (several source CRSs allowed) + index.parquet."""
    input:
        "resources/aerial/{region}/downloads/manifest.json",
    output:
        "results/aerial/{region}/index.parquet",
    params:
        cog=AERIAL["cog"],
        acquired=lambda wc: _aerial_source(wc.region).get("acquired", ""),
        protocol=lambda wc: _aerial_source(wc.region)["protocol"],
    log:
        "logs/orthophotos/tile_{region}.log",
    benchmark:
        "benchmarks/orthophotos/tile_{region}.tsv"
    resources:
        mem_mb=8000,
        runtime=6 * 60,
    shell:
        "python -m vglpipe.orthophotos tile --downloads resources/aerial/{wildcards.region}/downloads "
        "--cogs results/aerial/{wildcards.region}/cogs --index {output:q} "
        "--tile-px {params.cog[tile_px]} --blocksize {params.cog[blocksize]} --compress {params.cog[compress]} "
        "--quality {params.cog[quality]} --min-overviews {params.cog[min_overviews]} "
        "--acquired {params.acquired:q} --source {params.protocol:q} --no-progress 2> {log:q}"
