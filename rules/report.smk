# Report stage: one self-contained HTML report per experiment and test region, every configured
# experiment (and the untrained baseline) side by side.


rule report:
    """The evaluation as an HTML page: summary table, recall curves, by year and hour, examples."""
    input:
        unpack(report_inputs),
    output:
        report(
            "results/reports/{experiment}/{region}/index.html",
            caption="../docs/report-caption.rst",
            category="Reports",
            labels={"experiment": "{experiment}", "region": "{region}"},
        ),
    params:
        settings=stage_settings("report_stage"),
    log:
        "logs/report/{experiment}/{region}.log",
    benchmark:
        "benchmarks/report/{experiment}/{region}.tsv"
    conda:
        "../envs/geo.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "python -m vglpipe.report --settings {params.settings} --experiment {wildcards.experiment:q} "
        "--region {wildcards.region:q} --root . --out {output:q} > {log:q} 2>&1"
