rule region_boundary:
    """The region's boundary as a normalised GeoJSON (checked: polygons, lon/lat)."""
    input:
        lambda wc: SETTINGS.boundary(wc.region),
    output:
        "resources/regions/{region}.geojson",
    log:
        "logs/regions/{region}.log",
    conda:
        "../envs/geo.yaml"
    shell:
        "python -m vglpipe.regions --region {wildcards.region:q} --boundary {input:q} --out {output:q} 2> {log:q}"
