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
