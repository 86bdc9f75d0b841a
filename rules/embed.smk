# Embed stage: every cell of each test region with the aerial tower, in embed.shards jobs of
# contiguous rows (resumable chunks in a hidden work directory next to the outputs), and the
# region's photos with the street-view tower.


rule embed_cells:
    """One shard of a test region's cells -> fp16 embeddings (+ ids, low-coverage cells listed)."""
    input:
        weights="results/models/{experiment}/model.safetensors",
        info="results/models/{experiment}/model.json",
        cells=f"results/cells/{{region}}/cells_{TEST_CELL_TAG}m.parquet",
        aerial="results/aerial/{region}/index.parquet",
    output:
        vectors="results/embeddings/{experiment}/{region}/cells-{shard}.npy",
        ids="results/embeddings/{experiment}/{region}/cells-{shard}.ids.npy",
        excluded="results/embeddings/{experiment}/{region}/cells-{shard}.excluded.parquet",
    params:
        settings=stage_settings("embed_stage", "experiment"),
        model=lambda wc, input: os.path.dirname(input.weights),
        out=out_dir,
        shard=lambda wc: int(wc.shard),
    wildcard_constraints:
        shard=r"\d{3}",
    log:
        "logs/embed/{experiment}/{region}/cells-{shard}.log",
    benchmark:
        "benchmarks/embed/{experiment}/{region}/cells-{shard}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: SETTINGS.embed_threads()
    resources:
        **SETTINGS.embed_resources(),
    retries: SETTINGS.cluster.embed.retries
    shell:
        "python -m vglpipe.embed cells --settings {params.settings} --model {params.model:q} "
        "--cells {input.cells:q} --aerial-index {input.aerial:q} --shard {params.shard} --out {params.out:q} "
        "--no-progress > {log:q} 2>&1"


rule embed_photos:
    """A test region's photos (those inside it) -> fp16 street-view embeddings."""
    input:
        weights="results/models/{experiment}/model.safetensors",
        info="results/models/{experiment}/model.json",
        photos="results/photos/{region}/metadata.parquet",
        photo_cells="results/cells/{region}/photo_cells.parquet",
    output:
        vectors="results/embeddings/{experiment}/{region}/photos.npy",
        ids="results/embeddings/{experiment}/{region}/photos.ids.npy",
    params:
        settings=stage_settings("embed_stage", "experiment"),
        model=lambda wc, input: os.path.dirname(input.weights),
        photos=lambda wc, input: os.path.dirname(input.photos),
        out=out_dir,
    log:
        "logs/embed/{experiment}/{region}/photos.log",
    benchmark:
        "benchmarks/embed/{experiment}/{region}/photos.tsv"
    conda:
        "../envs/torch.yaml"
    threads: SETTINGS.embed_threads()
    resources:
        **SETTINGS.embed_resources(),
    retries: SETTINGS.cluster.embed.retries
    shell:
        "python -m vglpipe.embed photos --settings {params.settings} --model {params.model:q} "
        "--photos {params.photos:q} --photo-cells {input.photo_cells:q} --out {params.out:q} "
        "--no-progress > {log:q} 2>&1"
