"""The training loop (paper §3.4-3.5, §4.3): rounds of batches, hard example mining, AdamW with
warm-up + cosine decay, clipping, checkpoints that resume exactly.

A *round* is a list of batches (lists of stream positions, :mod:`vglpipe.train.data`): with
mining, the batches the last scan clustered; without, the next consecutive batches. A
DataLoader delivers each round's batches in order. Everything a resumed run needs to continue
bit for bit is in the checkpoint: weights, optimiser and schedule, step, the next unread
stream position, the rest of the current round, the mining schedule, and the torch RNG.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from vglpipe.errors import InputError, ResumeError
from vglpipe.model.geomodel import prepare_for
from vglpipe.settings import Experiment, _plain
from vglpipe.store.atomic import atomic_path, atomic_write_text
from vglpipe.train import distributed as dd
from vglpipe.train.data import BatchLoader, Jitter, RegionFiles, SampleSpec, TrainingPhotos, TrainStream, batches_of
from vglpipe.train.loss import dcl_loss
from vglpipe.train.mining import MiningSchedule, build_clusters

log = logging.getLogger("vglpipe.train")

WEIGHTS = "model.safetensors"
MODEL_INFO = "model.json"
CHECKPOINT_DIR = "checkpoint"
METRICS = "metrics.csv"
ROUND_BATCHES = 64  # batches per round without mining (one DataLoader each)


# ----------------------------------------------------------------------------- model construction


def build_model(exp: Experiment):
    """The experiment's model (random init from ``train.seed``, or the backbone's pretrained weights)."""
    from vglpipe.model import create_model

    torch.manual_seed(exp.train.seed)
    m = exp.model
    return create_model(m.name, pretrained=m.pretrained, pretrained_file=m.pretrained_file or None,
                        **{**dict(m.args), "n_lods": exp.lods.n_lods})


def fingerprint(exp: Experiment) -> dict:
    """What a checkpoint must agree on to be resumed: everything that changes the trained weights."""
    d = _plain(exp)
    for k in ("workers", "checkpoint_every", "log_every"):
        d["train"].pop(k)
    d.pop("description")
    d.pop("name")
    return d


def weights_id(path: Path) -> str:
    """A short content hash of a weights file: embeddings and indexes are tagged with it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def save_model(model: torch.nn.Module, exp: Experiment, out_dir: Path, steps_done: int) -> str:
    """Final weights + model.json (config, experiment, weights id); returns the weights id."""
    from vglpipe.model import GeoModel

    inner = model.module if hasattr(model, "module") else model
    assert isinstance(inner, GeoModel)
    state = {k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"experiment": exp.name})
    wid = weights_id(out_dir / WEIGHTS)
    info = {"weights_id": wid, "model_config": inner.config.to_dict(), "experiment": _plain(exp),
            "steps": steps_done}
    atomic_write_text(out_dir / MODEL_INFO, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return wid


def load_model(model_dir: Path, device: torch.device | str = "cpu"):
    """A trained model from ``model_dir`` (model.json + model.safetensors) and its weights id."""
    from vglpipe.model import create_model
    from vglpipe.model.config import ModelConfig

    model_dir = Path(model_dir)
    try:
        info = json.loads((model_dir / MODEL_INFO).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{model_dir / MODEL_INFO}: not a trained model ({exc})") from None
    model = create_model(ModelConfig.from_dict(info["model_config"]))
    state = load_file(str(model_dir / WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"{model_dir / WEIGHTS}: weights do not fit the model (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    wid = weights_id(model_dir / WEIGHTS)
    if wid != info["weights_id"]:
        raise InputError(f"{model_dir / WEIGHTS}: content does not match {MODEL_INFO} (weights id {wid} != "
                         f"{info['weights_id']})")
    return model.to(device).eval(), wid, info


# ----------------------------------------------------------------------------- optimisation


def make_optimizer(model: torch.nn.Module, t) -> torch.optim.Optimizer:
    """AdamW; decay (reference: 1e-6 · w per step, scaled by the schedule, not by lr) on weights of
    linear and conv layers only."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else rest).append(p)
    wd = t.weight_decay / t.lr
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}], lr=t.lr)


def lr_factor(step: int, t) -> float:
    """Linear warm-up, then cosine decay from 1 to ``lr_final_factor`` at the last step."""
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    span = max(t.steps - t.warmup_steps, 1)
    frac = min((step - t.warmup_steps) / span, 1.0)
    return t.lr_final_factor + (1 - t.lr_final_factor) * 0.5 * (1 + math.cos(math.pi * frac))


# ----------------------------------------------------------------------------- state


@dataclass
class LoopState:
    step: int = 0
    position: int = 0  # next unread stream position
    round: list[list[int]] = field(default_factory=list)  # batches still to train in this round
    mining: dict = field(default_factory=dict)
    samples: int = 0


@dataclass
class TrainSummary:
    experiment: str
    steps: int
    samples: int
    weights_id: str
    seconds: float
    samples_per_s: float
    data_wait_fraction: float
    final_loss: float | None
    final_batch_recall: float | None
    device: str
    world: int
    resumed_from: int


class Trainer:
    def __init__(self, exp: Experiment, regions: list[RegionFiles], out_dir: str | os.PathLike,
                 device: str | None = None, progress: bool = True, workers: int | None = None):
        self.exp, self.t = exp, exp.train
        self.out = Path(out_dir)
        self.progress = progress
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.rank = dd.init(self.device)
        if self.device.type == "cuda":
            # one GPU per process: SLURM may show each task only its own GPU
            self.device = torch.device("cuda", self.rank.local % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
        if self.t.batch_size % self.rank.world:
            raise InputError(f"train.batch_size {self.t.batch_size} is not divisible by the {self.rank.world} processes")
        self.workers = self.t.workers if workers is None else workers
        if self.device.type == "cpu":
            # the loader's workers take cores too: torch threads that wait for a busy core slow
            # every step down many times over
            torch.set_num_threads(max(1, dd.cores_per_process() - self.workers))
        self.model, self.amp = prepare_for(build_model(exp).to(self.device), self.device, self.t.precision)
        spec = self.model.input_spec
        self.photos = TrainingPhotos(regions)
        j = self.t.jitter
        self.stream = TrainStream(self.photos, SampleSpec(
            street_size=tuple(spec.street_size), aerial_size=spec.aerial_size, lods=exp.lods, t_max_m=exp.t_max_m,
            jitter=Jitter(j.brightness, j.contrast, j.saturation, j.hue), seed=self.t.seed))
        # the DataLoader draws its workers' base seed from this generator, not the global RNG
        self.loader = BatchLoader(self.stream, self.workers, torch.Generator().manual_seed(self.t.seed))
        self.net = self.model
        if self.rank.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.opt = make_optimizer(self.model, self.t)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, self.t))
        m = self.t.mining
        self.mining = MiningSchedule(first_scan_batches=m.first_scan_batches, raise_factor=m.raise_factor,
                                     raise_after_samples=m.raise_after_samples, max_scan_batches=m.max_scan_batches)
        self.state = LoopState()
        self._stop = False

    # ---- checkpoints
    @property
    def ckpt_dir(self) -> Path:
        return self.out / CHECKPOINT_DIR

    def save_checkpoint(self) -> None:
        """Write the checkpoint beside the current one, then swap: a kill at any point leaves a
        complete checkpoint (``checkpoint/`` or, between the two renames, ``checkpoint.old/``)."""
        if not self.rank.main:
            return
        d = self.ckpt_dir
        tmp, old = d.with_name(d.name + ".tmp"), d.with_name(d.name + ".old")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}, str(tmp / "weights.safetensors"))
        self.state.mining = self.mining.state_dict()
        torch.save({"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                    "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                   tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"loop": asdict(self.state), "fingerprint": fingerprint(self.exp)}))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if (d / "state.json").exists():
            shutil.rmtree(old, ignore_errors=True)
            d.rename(old)
        else:
            shutil.rmtree(d, ignore_errors=True)
        tmp.rename(d)
        shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint at step %d -> %s", self.state.step, d)

    def load_checkpoint(self) -> bool:
        d = self.ckpt_dir
        if not (d / "state.json").exists() and (d.with_name(d.name + ".old") / "state.json").exists():
            d = d.with_name(d.name + ".old")  # killed between the two renames
        if not (d / "state.json").exists():
            return False
        saved = json.loads((d / "state.json").read_text())
        want = fingerprint(self.exp)
        if saved["fingerprint"] != want:
            diff = sorted(_diff(saved["fingerprint"], want))
            raise ResumeError(f"{d}: the checkpoint was written with other settings (differs in: {', '.join(diff)}); "
                              f"delete {self.out} to train from scratch")
        self.model.load_state_dict(load_file(str(d / "weights.safetensors")))
        extra = torch.load(d / "optimizer.pt", weights_only=False)
        self.opt.load_state_dict(extra["optimizer"])
        self.sched.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["rng"])
        if extra["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(extra["cuda_rng"])
        self.state = LoopState(**saved["loop"])
        self.mining.load_state_dict(self.state.mining)
        return True

    # ---- one step
    def _to_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        street = batch["street"].to(self.device, non_blocking=True)
        aerial = batch["aerial"].to(self.device, non_blocking=True)
        # the backbone gives the images its own memory format (vglpipe.model.backbone.feature_tokens)
        return self.model.preprocess(street, layout="channels_first"), self.model.preprocess(aerial, layout="channels_first")

    def _embed(self, batch: dict, net) -> tuple[torch.Tensor, torch.Tensor]:
        street, aerial = self._to_device(batch)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = net(street, aerial)
        return out.street.float(), out.aerial.float()

    def _local(self, batch_ids: list[int]) -> list[int]:
        """This process's share of a global batch (contiguous, so gathering keeps the order)."""
        n = len(batch_ids) // self.rank.world
        return batch_ids[self.rank.rank * n:(self.rank.rank + 1) * n]

    # ---- mining
    def _scan(self) -> list[list[int]]:
        """Embed the next scan's samples with the current model and cluster them into batches."""
        b = self.t.batch_size
        n_batches = self.mining.next_scan_batches()
        pool = batches_of(self.state.position, n_batches, b)
        self.state.position += n_batches * b
        if n_batches == 1:
            return pool
        self.model.eval()
        s_emb, a_emb, s_ll, a_ll, ks = [], [], [], [], []
        with torch.no_grad():
            for batch in self.loader.batches([self._local(p) for p in pool]):
                s, a = self._embed(batch, self.model)
                s_emb.append(dd.gather_nograd(s, self.rank))
                a_emb.append(dd.gather_nograd(a, self.rank))
                s_ll.append(dd.gather_nograd(batch["street_latlon"].to(self.device), self.rank))
                a_ll.append(dd.gather_nograd(batch["aerial_latlon"].to(self.device), self.rank))
                ks.append(dd.gather_nograd(batch["k"].to(self.device), self.rank))
        self.model.train()
        # the last scan of a run may hold more batches than steps are left: only those are built
        clusters = build_clusters(torch.cat(s_emb), torch.cat(a_emb), torch.cat(s_ll), torch.cat(a_ll),
                                  cluster_size=b, mask_m=self.t.mask_m,
                                  n_clusters=min(n_batches, self.t.steps - self.state.step))
        k = torch.cat(ks).cpu().numpy()
        return [[int(k[i]) for i in c] for c in np.asarray(clusters)]

    def _next_round(self) -> list[list[int]]:
        if self.t.mining.enabled:
            return self._scan()
        n = min(ROUND_BATCHES, self.t.steps - self.state.step)
        rnd = batches_of(self.state.position, n, self.t.batch_size)
        self.state.position += n * self.t.batch_size
        return rnd

    # ---- the loop
    def run(self) -> TrainSummary:
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = self.load_checkpoint()
        start = self.state.step
        if resumed:
            log.info("resuming at step %d of %d (stream position %d)", start, self.t.steps, self.state.position)
        old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        metrics = _Metrics(self.out, self.rank.main, resumed, self.t.log_every, self.t.batch_size)
        bar = tqdm(total=self.t.steps, initial=start, desc=f"train {self.exp.name}", unit="step",
                   disable=not (self.progress and self.rank.main), dynamic_ncols=True, mininterval=2.0)
        t0 = time.perf_counter()
        wait = 0.0
        last = None
        try:
            self.model.train()
            while self.state.step < self.t.steps and not self._stop:
                if not self.state.round:
                    self.state.round = self._next_round()
                rnd = self.state.round
                it = self.loader.batches([self._local(b) for b in rnd])
                while self.state.round and self.state.step < self.t.steps:
                    tw = time.perf_counter()
                    batch = next(it)
                    wait += time.perf_counter() - tw
                    last = self._step(batch)
                    self.state.round.pop(0)
                    self.state.step += 1
                    self.state.samples += self.t.batch_size
                    if self.t.mining.enabled:
                        self.mining.trained(self.t.batch_size)
                    bar.update(1)
                    metrics.add(self.state.step, last, self.opt.param_groups[0]["lr"])
                    stop = dd.broadcast_flag(self._stop, self.rank, self.device)
                    if self.state.step % self.t.checkpoint_every == 0 or stop:
                        self.save_checkpoint()
                    if stop:
                        self._stop = True
                        break
                del it
        finally:
            self.loader.close()
            signal.signal(signal.SIGTERM, old_handler)
            bar.close()
            metrics.close()
        seconds = time.perf_counter() - t0
        done = self.state.step - start
        if self._stop:
            log.warning("stopped by SIGTERM at step %d; the checkpoint holds it, a rerun continues", self.state.step)
            raise SystemExit(143)
        wid = save_model(self.model, self.exp, self.out, self.state.step) if self.rank.main else ""
        summary = TrainSummary(
            experiment=self.exp.name, steps=self.state.step, samples=self.state.samples, weights_id=wid,
            seconds=round(seconds, 2), samples_per_s=round(done * self.t.batch_size / seconds, 2) if done else 0.0,
            data_wait_fraction=round(wait / seconds, 4) if done else 0.0,
            final_loss=None if last is None else round(last["loss"], 5),
            final_batch_recall=None if last is None else round(last["recall"], 4),
            device=str(self.device), world=self.rank.world, resumed_from=start)
        dd.barrier(self.rank)
        return summary

    def _on_sigterm(self, signum, frame) -> None:
        log.warning("SIGTERM: finishing this step, writing a checkpoint")
        self._stop = True

    def _step(self, batch: dict) -> dict:
        s, a = self._embed(batch, self.net)
        s_all, a_all = dd.gather(s, self.rank), dd.gather(a, self.rank)
        s_ll = dd.gather_nograd(batch["street_latlon"].to(self.device), self.rank)
        a_ll = dd.gather_nograd(batch["aerial_latlon"].to(self.device), self.rank)
        out = dcl_loss(s_all, a_all, s_ll, a_ll, mask_m=self.t.mask_m, smoothing=self.t.label_smoothing)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if self.t.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.t.grad_clip_norm)
        self.opt.step()
        self.sched.step()
        return {"loss": float(out.loss.detach()), "recall": float(out.recall_street_to_aerial),
                "recall_a2s": float(out.recall_aerial_to_street)}


class _Metrics:
    """metrics.csv and TensorBoard events (main process only), every ``every`` steps."""

    COLUMNS = ["step", "loss", "batch_recall_s2a", "batch_recall_a2s", "lr", "samples_per_s", "time"]

    def __init__(self, out: Path, main: bool, resumed: bool, every: int, batch_size: int):
        self.main, self.every, self.batch_size = main, every, batch_size
        self.t_last, self.step_last = time.perf_counter(), None
        self.acc: list[dict] = []
        if not main:
            return
        from torch.utils.tensorboard import SummaryWriter

        path = out / METRICS
        new = not (resumed and path.exists())
        self.fh = open(path, "w" if new else "a", newline="")
        self.csv = csv.writer(self.fh)
        if new:
            self.csv.writerow(self.COLUMNS)
        self.tb = SummaryWriter(str(out / "tensorboard"))
        self.batch = None

    def add(self, step: int, m: dict, lr: float) -> None:
        if not self.main:
            return
        self.acc.append(m)
        if step % self.every:
            return
        now = time.perf_counter()
        n = len(self.acc)
        loss = float(np.mean([a["loss"] for a in self.acc]))
        r1 = float(np.mean([a["recall"] for a in self.acc]))
        r2 = float(np.mean([a["recall_a2s"] for a in self.acc]))
        rate = n * self.batch_size / (now - self.t_last)
        self.csv.writerow([step, f"{loss:.5f}", f"{r1:.4f}", f"{r2:.4f}", f"{lr:.3e}", f"{rate:.3f}", f"{time.time():.0f}"])
        self.fh.flush()
        for k, v in (("loss", loss), ("batch_recall/street_to_aerial", r1), ("batch_recall/aerial_to_street", r2),
                     ("lr", lr), ("samples_per_s", rate)):
            self.tb.add_scalar(k, v, step)
        log.info("step %d: loss %.4f, in-batch recall@1 %.3f / %.3f, lr %.2e, %.0f samples/s", step, loss, r1, r2,
                 lr, rate)
        self.acc, self.t_last = [], now

    def close(self) -> None:
        if self.main:
            self.fh.close()
            self.tb.close()


def _diff(a, b, prefix="") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = set()
        for k in set(a) | set(b):
            out |= _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
