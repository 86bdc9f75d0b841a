# Crawl stage: street-view photos of each region into results/photos/{region}/
# (metadata.parquet + tar shards under images/; checkpoint crawl-state.sqlite).
# Built-in demo regions: render the synthetic street views, serve them with the local fake
# Mapillary API on 127.0.0.1 and crawl that with the real crawler. Other regions: crawl
# https://graph.mapillary.com with the token in $MAPILLARY_ACCESS_TOKEN.
# Only metadata.parquet is declared as output: Snakemake must never delete the shards or
# the checkpoint of an interrupted crawl, which the rerun resumes from.

CRAWL = config["crawl"]


def _builtin_region(region):
    boundary = config["regions"][region]["boundary"]
    return boundary[len("builtin:"):] if boundary.startswith("builtin:") else None


def _crawl_inputs(wc):
    inputs = {"boundary": f"resources/regions/{wc.region}.geojson"}
    if _builtin_region(wc.region):
        inputs["source"] = f"resources/streetview/{wc.region}/source.parquet"
    return inputs


def _crawl_args(wc):
    c = CRAWL
    args = (
        f"--search-per-minute {c['search_per_minute']!r} --entity-per-minute {c['entity_per_minute']!r} "
        f"--concurrency {c['concurrency']} --search-concurrency {c['search_concurrency']} "
        f"--max-box-deg {c['max_box_deg']!r} --search-limit {c['search_limit']} "
        f"--split-fraction {c['split_fraction']!r} --retries {c['retries']} --timeout-s {c['timeout_s']!r} "
        f"--shard-bytes {int(c['shard_mb'] * 2**20)} --jpeg-quality {c['jpeg_quality']} "
        f"--max-failed-fraction {c['max_failed_fraction']!r}"
    )
    if _builtin_region(wc.region):
        d = c["demo"]
        args += (
            f" --fake-source resources/streetview/{wc.region} --fake-fault-rate {d['fault_rate']!r}"
            f" --fake-latency-ms {d['latency_ms']!r} --timeout-s 5"
        )
    return args


rule render_streetview:
    """Demo regions only: render synthetic street-view photos of the region's world (the same
    world GeoTIFFs the orthophoto stage serves, so photos and aerial images agree)."""
    input:
        color="resources/worlds/{region}/color.tif",
        height="resources/worlds/{region}/height.tif",
    output:
        "resources/streetview/{region}/source.parquet",
    params:
        builtin=lambda wc: _builtin_region(wc.region) or "(not a built-in region)",
        n=CRAWL["demo"]["photos_per_region"],
        seed=CRAWL["demo"]["seed"],
    log:
        "logs/streetview/{region}.log",
    benchmark:
        "benchmarks/streetview/{region}.tsv"
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "python -m vglpipe.render --demo-region {params.builtin:q} --world-color {input.color:q} "
        "--world-height {input.height:q} --out resources/streetview/{wildcards.region} "
        "--n {params.n} --seed {params.seed} 2> {log:q}"


rule crawl:
    """Mapillary API v4 (or the demo's local fake) -> photo store; resumes after a kill."""
    input:
        unpack(_crawl_inputs),
    output:
        "results/photos/{region}/metadata.parquet",
    params:
        args=_crawl_args,
    log:
        "logs/crawl/{region}.log",
    benchmark:
        "benchmarks/crawl/{region}.tsv"
    threads: lambda wc: CRAWL["demo"]["threads"] if _builtin_region(wc.region) else CRAWL["threads"]
    resources:
        mem_mb=4000,
        runtime=24 * 60,
    shell:
        "python -m vglpipe.crawl --region-geojson {input.boundary:q} --out results/photos/{wildcards.region} "
        "{params.args} --image-workers {threads} > {log:q} 2>&1"
