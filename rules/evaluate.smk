# Evaluate stage: every photo of a test region localized with the index.search index; R@N<r
# overall, by capture year and by local hour.


rule evaluate:
    """Retrieval of every test photo, recall.json and the recall tables by year and hour."""
    input:
        unpack(evaluate_inputs),
    output:
        retrieval="results/eval/{experiment}/{region}/retrieval.parquet",
        recall="results/eval/{experiment}/{region}/recall.json",
        by_year="results/eval/{experiment}/{region}/recall_by_year.csv",
        by_hour="results/eval/{experiment}/{region}/recall_by_hour.csv",
    params:
        settings=stage_settings("evaluate_stage", "region"),
        embeddings=lambda wc, input: os.path.dirname(input.photo_vectors),
        photos=lambda wc, input: os.path.dirname(input.photos),
        truth=evaluate_truth_arg,
        out=out_dir,
    log:
        "logs/evaluate/{experiment}/{region}.log",
    benchmark:
        "benchmarks/evaluate/{experiment}/{region}.tsv"
    conda:
        "../envs/geo.yaml"
    resources:
        mem_mb=8000,
        runtime=6 * 60,
    shell:
        "python -m vglpipe.evaluate --settings {params.settings} --index {input.index:q} "
        "--embeddings {params.embeddings:q} --photos {params.photos:q} {params.truth} --out {params.out:q} "
        "> {log:q} 2>&1"
