"""The workflow through profiles/slurm on a real SLURM cluster (.ci/run starts a local one)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

import yaml

from conftest import run_snakemake
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
