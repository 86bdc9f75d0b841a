# Index stage: the faiss indexes (index.kinds) over each test region's cell embeddings.


rule index:
    """All cell shards of an experiment and region -> one index of the given kind."""
    input:
        lambda wc: expand("results/embeddings/{experiment}/{region}/cells-{shard}.npy", shard=SHARDS, **wc),
    output:
        directory("results/index/{experiment}/{region}/{kind}"),
    params:
        settings=stage_settings("index_stage"),
        embeddings=lambda wc, input: os.path.dirname(input[0]),
    wildcard_constraints:
        kind="flat|hnsw|compressed",
    log:
        "logs/index/{experiment}/{region}/{kind}.log",
    benchmark:
        "benchmarks/index/{experiment}/{region}/{kind}.tsv"
    conda:
        "../envs/geo.yaml"
    threads: SETTINGS.cluster.index.cpus
    resources:
        **SETTINGS.index_resources(),
    shell:
        "python -m vglpipe.index --settings {params.settings} --kind {wildcards.kind} "
        "--embeddings {params.embeddings:q} --out {output:q} > {log:q} 2>&1"
