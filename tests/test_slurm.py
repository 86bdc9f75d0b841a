"""The workflow through profiles/slurm on a real SLURM cluster (.ci/run starts a local one)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from safetensors.torch import load_file

from conftest import copy_workflow, deep_merge, demo_config, run_snakemake, tool_env, write_config
from test_cells_stage import TOWN_TARGETS, write_inputs
from test_demo_workflow import small_config


def slurm_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return proc.returncode == 0 and any(s in proc.stdout for s in ("idle", "mixed"))


def need_slurm() -> None:
    if not slurm_up():
        pytest.skip("no SLURM cluster answering sinfo (.ci/run starts one with ../shared/slurm/start-local-slurm.sh)")


@pytest.mark.slurm
@pytest.mark.workflow
def test_cells_stage_on_slurm(workflow_dir):
    need_slurm()
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
    need_slurm()
    write_config(workflow_dir, "small.yaml", demo_config({"crawl": {"threads": 2},
                                                          "demo": {"regions": {"demo-test": {"photos": 40}}}},
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
    assert cpus["crawl"] == 2 and cpus["demo_world"] == 1, cpus  # crawl.threads of the test's config


# ---- the method half as SLURM jobs: training with 2 processes (gloo; launched exactly as on GPUs),
# embed shards, index; scancel and rerun

#: CI's cluster is one node with 2 CPUs: training as 2 processes of 1 CPU each (srun, gloo)
SLURM_CONFIG = {
    "cluster": {"train": {"cpu_processes_per_node": 2, "cpus_per_process": 1, "mem_mb_per_node": 3000,
                          "runtime_min": 20},
                "embed": {"mem_mb": 2500, "runtime_min": 15}, "index": {"cpus": 1, "mem_mb": 2000, "runtime_min": 10}},
    "train": {"steps": 96},  # long enough (~15 s of steps) to be requeued and cancelled mid-way
    "embed": {"shards": 3},
}
DATA_TARGETS = ["results/cells/demo-train/photo_cells.parquet", "results/aerial/demo-train/index.parquet",
                "results/cells/demo-test/cells_30m.parquet", "results/cells/demo-test/photo_cells.parquet",
                "results/aerial/demo-test/index.parquet"]
TARGETS = ["results/index/demo/demo-test/hnsw"]
SHARD_FILES = [f"results/embeddings/demo/demo-test/cells-{i:03d}.npy" for i in range(3)]


def sacct(job_ids, fields: str) -> list[list[str]]:
    out = subprocess.run(["sacct", "-n", "-P", "-o", fields, "-j", ",".join(job_ids)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def submitted(text: str) -> dict[str, str]:
    """SLURM job id -> rule (and wildcards), from Snakemake's output."""
    return dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\S+?)/\d+\.log", text))


@pytest.fixture(scope="module")
def slurm_data(tmp_path_factory) -> Path:
    """The small demo's data stages (run here, not on SLURM: the crawl chain's SLURM run is tested above)."""
    need_slurm()
    wd = tmp_path_factory.mktemp("slurm-data")
    copy_workflow(wd)
    write_config(wd, "slurm.yaml", deep_merge(small_config(), SLURM_CONFIG))
    run_snakemake(wd, *DATA_TARGETS, "--configfile", "slurm.yaml")
    return wd


def copy_of(data: Path, dest: Path) -> Path:
    shutil.copytree(data, dest, symlinks=True, ignore=shutil.ignore_patterns(".snakemake"))
    return dest


@pytest.fixture(scope="module")
def slurm_run(slurm_data, tmp_path_factory) -> tuple[Path, str]:
    """Train (2 processes), 3 embed shards and the index as SLURM jobs, uninterrupted."""
    wd = copy_of(slurm_data, tmp_path_factory.mktemp("slurm-run") / "wd")
    run = run_snakemake(wd, *TARGETS, "--configfile", "slurm.yaml", profile="profiles/slurm")
    return wd, run.stdout + run.stderr


@pytest.mark.slurm
@pytest.mark.workflow
def test_train_embed_and_index_run_as_slurm_jobs_with_their_resources(slurm_run):
    wd, out = slurm_run
    jobs = submitted(out)
    rules = sorted(r.split("/")[0] for r in jobs.values())
    assert rules == ["embed_cells"] * 3 + ["index", "train"], jobs
    rows = sacct(jobs, "JobID,State,AllocCPUS,ReqMem,Timelimit,NTasks")
    by_id = {r[0]: r for r in rows}
    for job, rule in jobs.items():
        assert by_id[job][1] == "COMPLETED", rows
        cpus, mem, limit = by_id[job][2:5]
        want = {"train": ("2", "3000M", "00:20:00"), "embed_cells": ("1", "2500M", "00:15:00"),
                "index": ("1", "2000M", "00:10:00")}[rule.split("/")[0]]
        assert (cpus, mem, limit) == want, (rule, by_id[job])
    train = next(j for j, r in jobs.items() if r.startswith("train"))
    step = by_id[f"{train}.0"]  # the training processes: one job step of 2 tasks started by srun
    assert step[1] == "COMPLETED" and step[5] == "2" and step[2] == "2", rows
    summary = yaml.safe_load((wd / "results/models/demo/summary.json").read_text())
    assert summary["world"] == 2 and summary["steps"] == 96
    assert (wd / "results/index/demo/demo-test/hnsw").is_dir()


def wait_for(predicate, what: str, timeout: float = 300.0, proc: subprocess.Popen | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"snakemake ended ({proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def text_or_empty(path: Path) -> str:
    """A job's log; empty while there is none (Snakemake deletes a job's log as the job starts, requeued too)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def start_snakemake(wd: Path, log: Path) -> subprocess.Popen:
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--profile", "profiles/slurm", *TARGETS,
           "--configfile", "slurm.yaml"]
    return subprocess.Popen(cmd, cwd=wd, env=tool_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)


def running(job: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip() == "RUNNING"


def cancel(job: str, proc: subprocess.Popen) -> None:
    subprocess.run(["scancel", job], check=True, timeout=30)
    assert proc.wait(timeout=300) != 0  # Snakemake reports the cancelled job as failed
    states = {r[0]: r[1] for r in sacct([job], "JobID,State")}
    assert states[job].startswith("CANCELLED"), states


@pytest.fixture
def reap_leftovers(tmp_path):
    """After the test, kill what cancelled jobs left running in its directory: the local cluster's
    proctrack/linuxproc loses a job step's processes once their parent is gone, so scancel does not
    reach them (an idle `snakemake --executor slurm-jobstep` was found reparented to init)."""
    yield
    for p in psutil.process_iter(["cwd"]):
        cwd = p.info.get("cwd")
        if cwd and Path(cwd).is_relative_to(tmp_path):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.mark.slurm
@pytest.mark.workflow
def test_training_requeued_then_cancelled_and_a_cancelled_embed_shard_rerun_redo_only_unfinished_work(
        slurm_run, slurm_data, tmp_path, reap_leftovers):
    ref, _ = slurm_run
    wd = copy_of(slurm_data, tmp_path / "wd")
    log = tmp_path / "snakemake.log"

    def checkpoint_step() -> int:
        try:
            return yaml.safe_load(ckpt.read_text())["loop"]["step"]
        except (OSError, TypeError, KeyError, yaml.YAMLError):
            return -1

    def state(job: str) -> str:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30)
        return out.stdout.strip()

    # 0. requeue the training job (as SLURM does after a preemption): SIGTERM, checkpoint, back to
    # the queue (released at once here), and it continues from the checkpoint
    proc = start_snakemake(wd, log)
    ckpt = wd / "results/models/demo/checkpoint/state.json"
    train_log = wd / "logs/train/demo.log"
    wait_for(ckpt.exists, "the first training checkpoint", proc=proc)
    train = next(j for j, r in submitted(log.read_text()).items() if r.startswith("train"))
    subprocess.run(["scontrol", "requeue", train], check=True, timeout=30)
    wait_for(lambda: state(train) == "PENDING", "the requeued job pending", proc=proc)
    subprocess.run(["scontrol", "update", f"JobId={train}", "StartTime=now"], check=True, timeout=30)
    found = wait_for(lambda: re.search(r"resuming at step (\d+) of 96", text_or_empty(train_log)),
                     "the requeued job resuming", proc=proc)
    resumed = int(found.group(1))
    assert resumed > 0

    # 1. cancel training after a checkpoint of the requeued job
    wait_for(lambda: checkpoint_step() > resumed, "a checkpoint after the requeue", proc=proc)
    cancel(train, proc)
    assert not (wd / "results/models/demo/model.safetensors").exists()
    step = checkpoint_step()
    assert resumed < step < 96
    assert "SIGTERM: finishing this step, writing a checkpoint" in train_log.read_text()

    # 2. rerun: training continues; cancel one embed shard while another is finished
    proc = start_snakemake(wd, log)

    def finished_and_running():
        done = [f for f in SHARD_FILES if (wd / f).exists()]
        shards = {j: r for j, r in submitted(log.read_text()).items() if r.startswith("embed_cells")}
        live = [j for j, r in shards.items() if not (wd / SHARD_FILES[int(r[-3:])]).exists() and running(j)]
        return (done, live[0]) if done and live else None

    done, shard_job = wait_for(finished_and_running, "a finished shard beside a running one", proc=proc)
    cancel(shard_job, proc)
    assert f"resuming at step {step} of 96" in train_log.read_text()
    kept = {f: (wd / f).stat().st_mtime_ns for f in SHARD_FILES if (wd / f).exists()}
    assert set(done) <= set(kept) and len(kept) < 3

    # 3. the same command again finishes the rest only
    run = run_snakemake(wd, *TARGETS, "--configfile", "slurm.yaml", profile="profiles/slurm")
    rerun = sorted(r.split("/")[0] for r in submitted(run.stdout + run.stderr).values())
    assert rerun == ["embed_cells"] * (3 - len(kept)) + ["index"], rerun
    assert {f: (wd / f).stat().st_mtime_ns for f in kept} == kept  # finished shards were kept

    # the outputs equal the uninterrupted run's
    a, b = load_file(str(ref / "results/models/demo/model.safetensors")), \
        load_file(str(wd / "results/models/demo/model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    for f in SHARD_FILES:
        assert np.array_equal(np.load(ref / f), np.load(wd / f)), f
