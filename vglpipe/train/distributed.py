"""Several training processes (one per GPU, or CPU processes with gloo): setup from the launcher's
environment, and gathering embeddings so the loss sees the global batch.

Launchers: ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) or ``srun`` inside a
SLURM job (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; the master is the job's first node, the
port derived from the job id). A single process needs neither.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _first_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    m = re.match(r"([^\[,]+)(?:\[(\d+))?", nodelist)
    return m.group(1) + (m.group(2) or "") if m else "127.0.0.1"


def _is_rank(env) -> bool:
    """Whether this process is already one of several started by a launcher."""
    if int(env.get("WORLD_SIZE", "1")) > 1:
        return True
    return "SLURM_STEP_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1


def launcher(processes: int, nodes: int = 1, cpus_per_process: int = 0, env=None) -> list[str] | None:
    """The command prefix that starts ``processes`` copies of ``python -m vglpipe.train``, or None
    where this process trains alone or already is one of the copies.

    In the batch script of a SLURM job (SLURM_JOB_ID without SLURM_STEP_ID) the copies are a job
    step of ``processes`` tasks on ``nodes`` nodes started by ``srun`` (one process, too, runs as
    a step); elsewhere, on one machine, ``torchrun --standalone``. The step's geometry is passed
    explicitly: Snakemake's SLURM job step drops the job's SLURM_NTASKS etc. from the environment.
    """
    from vglpipe.errors import InputError

    env = os.environ if env is None else env
    if _is_rank(env):
        return None
    if "SLURM_JOB_ID" in env and "SLURM_STEP_ID" not in env:
        # even one process runs as a step: SLURM's --signal (SIGTERM before the time limit)
        # reaches steps, not the batch script's children
        cmd = ["srun", "--kill-on-bad-exit=1", "--export=ALL", f"--ntasks={processes}", f"--nodes={nodes}"]
        if cpus_per_process:
            cmd.append(f"--cpus-per-task={cpus_per_process}")
        return cmd + [sys.executable, "-m", "vglpipe.train"]
    if processes == 1:
        return None
    if nodes > 1:
        raise InputError(f"--nodes {nodes}: several nodes need a SLURM job (snakemake --profile profiles/slurm)")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", "vglpipe.train"]


def cores_per_process(env=None) -> int:
    """The CPUs this process may use: its affinity, shared with the other copies on the node
    when a launcher (torchrun) did not pin them."""
    env = os.environ if env is None else env
    cores = len(os.sched_getaffinity(0))
    return max(1, cores // int(env.get("LOCAL_WORLD_SIZE", "1")))


def init(device: torch.device) -> Rank:
    """Join the process group the launcher set up (a no-op for a single process)."""
    env = os.environ
    if "WORLD_SIZE" in env and int(env["WORLD_SIZE"]) > 1:
        r = Rank(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    elif int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        r = Rank(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
        env.setdefault("MASTER_ADDR", _first_host(env.get("SLURM_STEP_NODELIST", env.get("SLURM_NODELIST", ""))))
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    else:
        return Rank()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=r.rank, world_size=r.world)
    return r


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def gather(x: torch.Tensor, rank: Rank) -> torch.Tensor:
    """All ranks' ``x`` concatenated in rank order, differentiable (grads flow back to each rank)."""
    if rank.world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated for a private API (_functional_collectives) only
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x), dim=0)


def gather_nograd(x: torch.Tensor, rank: Rank) -> torch.Tensor:
    if rank.world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(rank.world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def broadcast_flag(flag: bool, rank: Rank, device: torch.device) -> bool:
    """True on every rank if it is True on any (e.g. a SIGTERM seen by one of them)."""
    if rank.world == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(rank: Rank) -> None:
    if rank.world > 1:
        dist.barrier()
