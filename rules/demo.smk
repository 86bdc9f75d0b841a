# The synthetic demo (vglpipe.demo): for each region under demo.regions, its boundary, its
# world (orthophoto + heights) and its rendered street-view photos. The crawl and orthophoto
# rules run the production clients against the demo's local fake servers (hooks in
# rules/common.smk); a config without demo regions plans none of these jobs.


rule demo_boundary:
    """A demo region's boundary: a notched square with a pond around its centre."""
    output:
        "resources/demo/{region}/boundary.geojson",
    params:
        settings=stage_settings("demo_boundary_stage", "region"),
    wildcard_constraints:
        region=one_of(DEMO_REGIONS),
    log:
        "logs/demo/boundary_{region}.log",
    conda:
        "../envs/geo.yaml"
    shell:
        "python -m vglpipe.demo boundary --settings {params.settings} --region {wildcards.region:q} "
        "--out {output:q} 2> {log:q}"


rule demo_world:
    """A demo region's world: orthophoto + height map GeoTIFFs covering what the download fetches."""
    output:
        color="resources/demo/{region}/world/color.tif",
        height="resources/demo/{region}/world/height.tif",
    params:
        settings=stage_settings("demo_world_stage", "region"),
    wildcard_constraints:
        region=one_of(DEMO_REGIONS),
    log:
        "logs/demo/world_{region}.log",
    benchmark:
        "benchmarks/demo/world_{region}.tsv"
    conda:
        "../envs/geo.yaml"
    resources:
        mem_mb=6000,
        runtime=30,
    shell:
        "python -m vglpipe.demo world --settings {params.settings} --out-color {output.color:q} "
        "--out-height {output.height:q} 2> {log:q}"


rule demo_streetview:
    """A demo region's street-view photos, rendered from its world, for the fake Mapillary API."""
    input:
        color="resources/demo/{region}/world/color.tif",
        height="resources/demo/{region}/world/height.tif",
        boundary="resources/demo/{region}/boundary.geojson",
    output:
        "resources/demo/{region}/streetview/source.parquet",
    params:
        settings=stage_settings("demo_streetview_stage", "region"),
        out=out_dir,
    wildcard_constraints:
        region=one_of(DEMO_REGIONS),
    log:
        "logs/demo/streetview_{region}.log",
    benchmark:
        "benchmarks/demo/streetview_{region}.tsv"
    conda:
        "../envs/geo.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "python -m vglpipe.demo streetview --settings {params.settings} --world-color {input.color:q} "
        "--world-height {input.height:q} --boundary {input.boundary:q} --out {params.out:q} 2> {log:q}"
