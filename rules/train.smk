# Train stage: one model per experiment on the photos and orthophotos of the training regions
# (role: train). results/models/{experiment}/checkpoint/ is not declared: Snakemake never
# deletes it, and a killed or preempted training continues from it. Resources come from the
# config's cluster.train: with several processes the job has one SLURM task per process and
# the command starts them (srun in a SLURM job, torchrun elsewhere).


rule train:
    """Two-tower model, symmetric DCL loss, hard example mining (paper §3.3-3.5)."""
    input:
        unpack(train_inputs),
    output:
        weights="results/models/{experiment}/model.safetensors",
        info="results/models/{experiment}/model.json",
    params:
        settings=stage_settings("train_stage", "experiment"),
        regions=train_region_args,
        out=out_dir,
    log:
        "logs/train/{experiment}.log",
    benchmark:
        "benchmarks/train/{experiment}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: lambda wc: SETTINGS.train_threads(wc.experiment)
    resources:
        **{k: train_resource(k) for k in SETTINGS.TRAIN_RESOURCES},
    retries: SETTINGS.cluster.train.retries
    shell:
        "python -m vglpipe.train --settings {params.settings} {params.regions} --out {params.out:q} "
        "--processes {resources.tasks} --nodes {resources.nodes} --cpus-per-process {threads} --no-progress > {log:q} 2>&1"
