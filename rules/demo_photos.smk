# Provisional: photo positions for the built-in demo regions until the crawl stage
# (rules/crawl.smk) renders and crawls real photos of the synthetic world.
rule demo_photo_positions:
    output:
        "results/photos/{region}/metadata.parquet",
    params:
        n=config["demo"]["photos_per_region"],
        seed=config["demo"]["seed"],
    log:
        "logs/photos/{region}.log",
    shell:
        "python -m vglpipe.sources.demo --region {wildcards.region:q} --n {params.n} "
        "--seed {params.seed} --out {output:q} 2> {log:q}"
