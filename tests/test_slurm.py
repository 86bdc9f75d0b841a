"""The workflow through profiles/slurm on a real SLURM cluster (.ci/run starts a local one)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

import yaml

from conftest import demo_config, run_snakemake, write_config
from test_cells_stage import TOWN_TARGETS, write_inputs


def slurm_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return proc.returncode == 0 and any(s in proc.stdout for s in ("idle", "mixed"))


@pytest.mark.slurm
@pytest.mark.workflow
def test_cells_stage_on_slurm(workflow_dir):
    if not slurm_up():
        pytest.skip("no SLURM cluster answering sinfo (.ci/run starts one with ../shared/slurm/start-local-slurm.sh)")
    write_inputs(workflow_dir)
    (workflow_dir / "town.yaml").write_text(yaml.safe_dump({"regions": {"town": {"boundary": "town.geojson"}}}))
    run = run_snakemake(workflow_dir, *TOWN_TARGETS, "--configfile", "town.yaml", profile="profiles/slurm")
    out = run.stdout + run.stderr
    assert "submitted with SLURM jobid" in out
    assert (workflow_dir / "results/cells/town/cells_30m.parquet").exists()
    job_ids = sorted(set(re.findall(r"submitted with SLURM jobid (\d+)", out)))
    assert len(job_ids) == 1  # the cells job (boundary and photos were there already)
    acct = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
        capture_output=True, text=True, timeout=60,
    )
    states = dict(line.split("|") for line in acct.stdout.split())
    assert set(states) == set(job_ids) and set(states.values()) == {"COMPLETED"}, acct.stdout


@pytest.mark.slurm
@pytest.mark.workflow
def test_demo_crawl_on_slurm_gets_its_threads_as_cpus(workflow_dir):
    """A multi-threaded rule asks SLURM for its threads (and fits the node): the demo crawl
    chain (world, boundary, rendered photos, crawl) runs as SLURM jobs."""
    if not slurm_up():
        pytest.skip("no SLURM cluster answering sinfo (.ci/run starts one with ../shared/slurm/start-local-slurm.sh)")
    write_config(workflow_dir, "small.yaml", demo_config({"demo": {"regions": {"demo-test": {"photos": 40}}}},
                                                         regions=["demo-test"]))
    target = "results/photos/demo-test/metadata.parquet"
    run = run_snakemake(workflow_dir, target, "--configfile", "small.yaml", profile="profiles/slurm")
    out = run.stdout + run.stderr
    assert (workflow_dir / target).exists()
    jobs = dict(re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", out))
    assert sorted(jobs.values()) == ["crawl", "demo_streetview", "demo_world"], out  # boundaries: localrules
    acct = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State,AllocCPUS", "-j", ",".join(jobs)],
        capture_output=True, text=True, timeout=60,
    )
    rows = {r.split("|")[0]: r.split("|")[1:] for r in acct.stdout.split()}
    assert {s for s, _ in rows.values()} == {"COMPLETED"}, acct.stdout
    cpus = {jobs[j]: int(c) for j, (_, c) in rows.items()}
    assert cpus["crawl"] == 2 and cpus["demo_world"] == 1, cpus  # the demo config's crawl.threads
