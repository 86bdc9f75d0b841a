# Orthophoto stage: provider imagery (WMS / XYZ tiles / bulk tiles) -> COGs + footprint index.
#   resources/aerial/{region}/downloads/   raw chips/tiles (resumable; manifest.json written last)
#   results/aerial/{region}/cogs/*.tif     Cloud-Optimized GeoTIFFs (JPEG, 256 blocks, overviews)
#   results/aerial/{region}/index.parquet  footprint index (file, CRS, bounds, res_m, ground m_per_px, date;
#                                          metadata: inputs skipped as unusable)
# Bulk files are validated before they count as downloaded (and again on a rerun if changed);
# tiling converts 16-bit / 4-band inputs, skips and reports unusable ones and fails above
# aerial.quality.max_skipped_fraction.
# Only manifest.json is declared as the download's output: Snakemake must never delete the
# tiles of an interrupted download, which the rerun resumes from.


rule orthophotos_download:
    """Fetch a region's imagery with the configured protocol client (resumable, retried, validated)."""
    input:
        unpack(download_inputs),
    output:
        "resources/aerial/{region}/downloads/manifest.json",
    params:
        settings=stage_settings("download_stage", "region"),
        wrapper=download_wrapper,
        out=out_dir,
    log:
        "logs/orthophotos/download_{region}.log",
    benchmark:
        "benchmarks/orthophotos/download_{region}.tsv"
    conda:
        "../envs/geo.yaml"
    resources:
        mem_mb=4000,
        runtime=24 * 60,
    shell:
        "{params.wrapper}python -m vglpipe.orthophotos download --settings {params.settings} "
        "--boundary {input.boundary:q} --out {params.out:q} --no-progress 2> {log:q}"


rule orthophotos_tile:
    """Downloaded imagery -> COGs with overviews (several source CRSs allowed) + index.parquet."""
    input:
        "resources/aerial/{region}/downloads/manifest.json",
    output:
        "results/aerial/{region}/index.parquet",
    params:
        settings=stage_settings("tile_stage", "region"),
        downloads=lambda wc, input: os.path.dirname(input[0]),
        cogs=lambda wc, output: os.path.join(os.path.dirname(output[0]), "cogs"),
    log:
        "logs/orthophotos/tile_{region}.log",
    benchmark:
        "benchmarks/orthophotos/tile_{region}.tsv"
    conda:
        "../envs/geo.yaml"
    resources:
        mem_mb=8000,
        runtime=6 * 60,
    shell:
        "python -m vglpipe.orthophotos tile --settings {params.settings} --downloads {params.downloads:q} "
        "--cogs {params.cogs:q} --index {output:q} --no-progress 2> {log:q}"
