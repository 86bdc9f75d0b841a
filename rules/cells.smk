rule cells:
    """Photos -> 5 m training buckets and 30 m test cells; every test cell of the region."""
    input:
        photos="results/photos/{region}/metadata.parquet",
        boundary="resources/regions/{region}.geojson",
    output:
        photo_cells="results/cells/{region}/photo_cells.parquet",
        cells=f"results/cells/{{region}}/cells_{TEST_CELL_TAG}m.parquet",
        summary="results/cells/{region}/summary.json",
    params:
        settings=stage_settings("cells_stage"),
    log:
        "logs/cells/{region}.log",
    benchmark:
        "benchmarks/cells/{region}.tsv"
    conda:
        "../envs/geo.yaml"
    resources:
        mem_mb=cells_mem_mb,
        runtime=60,
    shell:
        "python -m vglpipe.cells --settings {params.settings} --photos {input.photos:q} "
        "--boundary {input.boundary:q} --out-photo-cells {output.photo_cells:q} --out-cells {output.cells:q} "
        "--out-summary {output.summary:q} 2> {log:q}"
