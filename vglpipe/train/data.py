"""Training samples (paper §3.4): a seeded stream over 5 m buckets, each sample a pure function of
its position in the stream.

Photos of the training regions are grouped by their 5 m training bucket (the cells stage's
``train_cell_id``). Pass e of the stream visits every bucket once in a seeded random order
(the paper's single pass is e = 0; a small demo world needs several), and stream position
k = e·n_buckets + j takes one photo of the j-th bucket of that order. Consecutive positions
therefore hold distinct buckets, so a batch has one photo per bucket. Everything random about
sample k — which photo of its bucket, the aerial cell's bearing θ ∈ [0, 2π) and offset
t ∈ [-t_max, t_max]², the colour jitter — is drawn from a generator seeded with (seed, k): a
sample can be rebuilt exactly (hard example mining scans samples and trains on the same
ones later; a resumed training continues the same stream), in any worker process.

The street view is the stored 640×480 letterboxed photo resized to the model's input; the
cell is the sampler's n LOD patches (same colour jitter on all of them, as the reference
code does), resized to the model's aerial input when the two differ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from vglpipe.errors import InputError
from vglpipe.geo.sphere import offset_m
from vglpipe.settings import LodSpec
from vglpipe.store.photos import PHOTO_HEIGHT, PhotoStore, decode_jpeg
from vglpipe.store.tables import read_table


@dataclass(frozen=True)
class RegionFiles:
    """Where one training region's inputs are."""

    name: str
    photos: Path  # photo store directory (metadata.parquet + shards)
    photo_cells: Path  # cells stage: image_id -> train_cell_id
    aerial_index: Path  # orthophoto stage: COG index


@dataclass(frozen=True)
class Jitter:
    """Colour jitter ranges (torchvision ColorJitter semantics)."""

    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15
    hue: float = 0.10


@dataclass(frozen=True)
class SampleSpec:
    street_size: tuple[int, int]  # (H, W) model input
    aerial_size: int  # model input side of each LOD patch
    lods: LodSpec  # what the sampler cuts (patch_px may differ from aerial_size)
    t_max_m: float
    jitter: Jitter
    seed: int


class TrainingPhotos:
    """The photos of all training regions, grouped by 5 m bucket (compressed: bucket -> photo rows)."""

    def __init__(self, regions: list[RegionFiles]):
        if not regions:
            raise InputError("no training regions (regions with role: train)")
        self.regions = regions
        ids, lat, lon, region, bucket = [], [], [], [], []
        for r_idx, r in enumerate(regions):
            meta = read_table(r.photos / "metadata.parquet", ["image_id", "lat", "lon"])
            cells = read_table(r.photo_cells, ["image_id", "train_cell_id"])
            m_ids = meta["image_id"].to_numpy()
            order = np.argsort(m_ids)
            c_ids = cells["image_id"].to_numpy()
            pos = np.searchsorted(m_ids[order], c_ids)
            if np.any(pos >= m_ids.size) or np.any(m_ids[order][np.minimum(pos, m_ids.size - 1)] != c_ids):
                raise InputError(f"{r.photo_cells}: image ids missing from {r.photos / 'metadata.parquet'}")
            rows = order[pos]
            ids.append(c_ids)
            lat.append(meta["lat"].to_numpy()[rows])
            lon.append(meta["lon"].to_numpy()[rows])
            region.append(np.full(c_ids.size, r_idx, np.int16))
            # buckets are per region (cell ids are global, but keep regions apart anyway)
            bucket.append(cells["train_cell_id"].to_numpy())
        self.image_id = np.concatenate(ids)
        self.lat = np.concatenate(lat)
        self.lon = np.concatenate(lon)
        self.region = np.concatenate(region)
        keys = np.stack([np.concatenate(region).astype(np.int64), np.concatenate(bucket)], 1)
        # photos sorted by (region, bucket, image_id): deterministic, whatever the tables' order
        order = np.lexsort((self.image_id, keys[:, 1], keys[:, 0]))
        for name in ("image_id", "lat", "lon", "region"):
            setattr(self, name, getattr(self, name)[order])
        keys = keys[order]
        if keys.shape[0] == 0:
            raise InputError("the training regions hold no photos")
        new = np.ones(keys.shape[0], bool)
        new[1:] = np.any(keys[1:] != keys[:-1], axis=1)
        self.bucket_start = np.flatnonzero(new)
        self.bucket_count = np.diff(np.append(self.bucket_start, keys.shape[0]))

    @property
    def n_photos(self) -> int:
        return int(self.image_id.size)

    @property
    def n_buckets(self) -> int:
        return int(self.bucket_start.size)


class TrainStream(torch.utils.data.Dataset):
    """Stream position k -> one training sample (see the module docstring). Picklable; each worker
    opens its own photo stores and aerial samplers on first use."""

    def __init__(self, photos: TrainingPhotos, spec: SampleSpec, cache_mb: float = 256.0):
        self.photos = photos
        self.spec = spec
        self.cache_mb = cache_mb
        self._pid = None
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:  # the stream is unbounded; a DataLoader gets explicit positions
        return 2**62

    # ---- per-process resources
    def _open(self) -> None:
        from vglpipe.aerial.sampler import AerialSampler

        if self._pid == os.getpid():
            return
        self._stores = [PhotoStore(r.photos) for r in self.photos.regions]
        self._samplers = [AerialSampler(r.aerial_index, spec=self.spec.lods, cache_mb=self.cache_mb)
                          for r in self.photos.regions]
        self._pid = os.getpid()

    def __getstate__(self):
        state = dict(self.__dict__)
        for k in ("_stores", "_samplers"):
            state.pop(k, None)
        state["_pid"] = None
        return state

    # ---- the stream
    def bucket_order(self, epoch: int) -> np.ndarray:
        order = self._orders.get(epoch)
        if order is None:
            order = np.random.default_rng([self.spec.seed, 0, epoch]).permutation(self.photos.n_buckets)
            self._orders = {epoch: order}
        return order

    def photo_of(self, k: int, rng: np.random.Generator) -> int:
        epoch, j = divmod(k, self.photos.n_buckets)
        b = self.bucket_order(epoch)[j]
        return int(self.photos.bucket_start[b] + rng.integers(self.photos.bucket_count[b]))

    def __getitem__(self, k: int) -> dict:
        self._open()
        k = int(k)
        sp = self.spec
        rng = np.random.default_rng([sp.seed, 1, k])
        p = self.photo_of(k, rng)
        r = int(self.photos.region[p])
        lat, lon = float(self.photos.lat[p]), float(self.photos.lon[p])
        iid = int(self.photos.image_id[p])
        street = street_image(self._stores[r].read(iid), iid, sp.street_size)
        cell = self._samplers[r].sample_training(lat, lon, rng, sp.t_max_m)
        aerial = cell.patches
        if aerial.shape[1] != sp.aerial_size:
            aerial = np.stack([_resize(a, (sp.aerial_size, sp.aerial_size)) for a in aerial])
        street = jitter(street, sp.jitter, rng)
        aerial = jitter(aerial, sp.jitter, rng)  # one draw for all LODs
        street_t = torch.from_numpy(np.ascontiguousarray(street.transpose(2, 0, 1)))
        aerial_t = torch.from_numpy(np.ascontiguousarray(aerial.transpose(0, 3, 1, 2)))
        east, north = cell.offset
        a_lat, a_lon = offset_m(lat, lon, east, north)
        return {
            "street": street_t,  # (3, H, W) uint8 RGB
            "aerial": aerial_t,  # (n, 3, P, P) uint8 RGB
            "street_latlon": torch.tensor([lat, lon], dtype=torch.float64),
            "aerial_latlon": torch.tensor([float(a_lat), float(a_lon)], dtype=torch.float64),
            "coverage": torch.from_numpy(cell.coverage),
            "image_id": iid,
            "k": k,
        }


def street_image(jpeg: bytes, image_id: int, size_hw: tuple[int, int]) -> np.ndarray:
    """A stored (letterboxed 640×480) photo as the model's (H, W, 3) uint8 RGB input; decoded at
    the smallest JPEG scale (1/2, 1/4, 1/8) that is still at least the input size."""
    h = size_hw[0]
    factor = next((f for f in (8, 4, 2) if PHOTO_HEIGHT // f >= h), 1)
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
             8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), flags)
    if img is None:
        img = decode_jpeg(jpeg, f"image {image_id}")  # raises InputError naming the image
    return cv2.cvtColor(_resize(img, size_hw), cv2.COLOR_BGR2RGB)


def _resize(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    h, w = size_hw
    if img.shape[:2] == (h, w):
        return img
    interp = cv2.INTER_AREA if img.shape[0] > h else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def jitter(img: np.ndarray, j: Jitter, rng: np.random.Generator) -> np.ndarray:
    """Colour jitter of a uint8 RGB image (H, W, 3) or a stack of them (..., H, W, 3), the same
    factors for all, drawn from ``rng``; torchvision ColorJitter's operations in a fixed order
    (brightness, contrast, saturation, hue), done with OpenCV (fast on small images)."""
    b, c, s = (float(rng.uniform(1 - v, 1 + v)) for v in (j.brightness, j.contrast, j.saturation))
    h = float(rng.uniform(-j.hue, j.hue))
    shape = img.shape
    flat = img.reshape(-1, shape[-3], shape[-2], 3)
    out = np.empty_like(flat)
    for i, im in enumerate(flat):
        x = im.astype(np.float32) * b
        np.clip(x, 0, 255, out=x)
        grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)
        x = x * c + float(grey.mean()) * (1 - c)
        np.clip(x, 0, 255, out=x)
        grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)
        x = x * s + grey[..., None] * (1 - s)
        np.clip(x, 0, 255, out=x)
        u8 = x.astype(np.uint8)
        if h:
            hsv = cv2.cvtColor(u8, cv2.COLOR_RGB2HSV_FULL)
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(h * 256))) % 256
            u8 = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
        out[i] = u8
    return out.reshape(shape)


def collate(samples: list[dict]) -> dict:
    out = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else torch.tensor(vals)
    return out


def batches_of(start: int, count: int, batch_size: int) -> list[list[int]]:
    """``count`` consecutive batches of stream positions from ``start``."""
    return [list(range(start + i * batch_size, start + (i + 1) * batch_size)) for i in range(count)]


def worker_init(_worker_id: int) -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


class BatchLoader:
    """One DataLoader for the whole run: its workers start once and serve every pass (a training
    round, a mining scan); ``batches(b)`` yields the batches ``b`` (lists of stream positions) in
    order. Samples do not depend on worker seeds; ``generator`` keeps the loader from drawing on the
    global RNG."""

    def __init__(self, stream: TrainStream, workers: int, generator: torch.Generator | None = None):
        if workers:
            # the workers are forked from this process: a child that finds OpenCV's thread pool of
            # the parent running deadlocks in its first OpenCV call, so the pool is stopped here
            cv2.setNumThreads(1)
        self._pass: list[list[int]] = []
        self._dl = torch.utils.data.DataLoader(
            stream, batch_sampler=self, num_workers=workers, collate_fn=collate,
            worker_init_fn=worker_init, pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if workers else None, persistent_workers=workers > 0, generator=generator,
        )

    def batches(self, batches: list[list[int]]):
        """An iterator over the collated ``batches``; the previous pass's iterator is discarded."""
        self._pass = [list(b) for b in batches]
        return iter(self._dl)

    def close(self) -> None:
        """Stop the workers (the DataLoader keeps them in its iterator, which stops them when dropped)."""
        self._dl._iterator = None

    # the DataLoader's batch sampler: the current pass
    def __iter__(self):
        return iter(self._pass)

    def __len__(self) -> int:
        return len(self._pass)
