# Crawl stage: street-view photos of each region into results/photos/{region}/
# (metadata.parquet + tar shards under images/; checkpoint crawl-state.sqlite).
# Only metadata.parquet is declared as output: Snakemake must never delete the shards or
# the checkpoint of an interrupted crawl, which the rerun resumes from. The API's rate limits
# hold per access token: the profiles allow one real crawl at a time (resources mapillary_api=1).


rule crawl:
    """Mapillary API v4 (demo regions: the local fake) -> photo store; resumes after a kill."""
    input:
        unpack(crawl_inputs),
    output:
        "results/photos/{region}/metadata.parquet",
    params:
        settings=stage_settings("crawl_stage"),
        wrapper=crawl_wrapper,
        base_url=crawl_base_url,
        out=out_dir,
    log:
        "logs/crawl/{region}.log",
    benchmark:
        "benchmarks/crawl/{region}.tsv"
    conda:
        "../envs/geo.yaml"
    threads: SETTINGS.crawl.threads
    resources:
        mem_mb=4000,
        runtime=24 * 60,
        mapillary_api=lambda wc: 0 if is_demo(wc.region) else 1,
    shell:
        "{params.wrapper}python -m vglpipe.crawl --settings {params.settings} --region-geojson {input.boundary:q} "
        "--out {params.out:q} {params.base_url} --image-workers {threads} --no-progress > {log:q} 2>&1"
