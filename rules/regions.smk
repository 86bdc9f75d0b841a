rule region_boundary:
    """The region's boundary as a normalised GeoJSON (built-in demo region or user file)."""
    output:
        "resources/regions/{region}.geojson",
    params:
        boundary=lambda wc: config["regions"][wc.region]["boundary"],
    log:
        "logs/regions/{region}.log",
    shell:
        "python -m vglpipe.regions --region {wildcards.region:q} --boundary {params.boundary:q} "
        "--out {output:q} 2> {log:q}"
