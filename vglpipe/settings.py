"""Settings: the validated workflow configuration as frozen, typed objects.

The schema (``schemas/config.schema.yaml``) is the only place that holds a default and a
description. Here a validated config becomes frozen dataclasses whose fields mirror the
schema's keys (``tests/test_settings.py`` keeps the two in step), and every derived value
(t_max, the download margin, LOD sizes, the finest LOD's m/px, shard bytes) is computed once,
in :class:`Settings`.

Each stage reads one *stage bundle* (e.g. :class:`DownloadStage`): exactly the values the
stage uses, derived ones included. The workflow passes a bundle to the stage as JSON
(``--settings``) and lists it in the rule's ``params``, so Snakemake reruns a stage when,
and only when, one of its values changes. Run by hand, a stage builds the same bundle from a
config file (``--config workflow_config.yaml``) through the same :class:`Settings` method.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from vglpipe.config import load_config, validate_config, validate_node
from vglpipe.errors import ConfigError
from vglpipe.geo.layout import Layout, make_layout

T = TypeVar("T")

#: Demo regions' boundaries are drawn by the demo (rules/demo.smk) at this path.
DEMO_BOUNDARY = "resources/demo/{region}/boundary.geojson"
#: Prefix of the urls that the demo's fake servers replace with their loopback address.
FAKE_URL_PREFIX = "fake:/"


# ----------------------------------------------------------------------------- (de)serialisation


def _merge(base: Mapping, overrides: Mapping) -> dict:
    """``base`` with ``overrides`` merged in, recursively (mappings merge, other values replace)."""
    out = dict(base)
    for k, v in overrides.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _build(tp: Any, value: Any, where: str) -> Any:
    """``value`` (plain JSON data) as an instance of the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = set(value) - names
        missing = names - set(value)
        if unknown or missing:
            raise ConfigError(f"{where}: {tp.__name__} expects keys {sorted(names)}; "
                              f"unknown {sorted(unknown)}, missing {sorted(missing)}")
        return tp(**{k: _build(hints[k], value[k], f"{where}.{k}") for k in names})
    if origin in (dict, Mapping):
        _, vt = typing.get_args(tp)
        return types.MappingProxyType({str(k): _build(vt, v, f"{where}.{k}") for k, v in value.items()})
    if origin is tuple:
        args = typing.get_args(tp)
        inner = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        return tuple(_build(inner, v, where) if inner else v for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    """A settings object as compact, canonical JSON (what the workflow passes as ``--settings``)."""
    return json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"))


def from_json(cls: type[T], text: str) -> T:
    """Inverse of :func:`to_json`."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--settings is not valid JSON: {exc}") from None
    return _build(cls, data, cls.__name__)


class Section:
    """A frozen dataclass mirroring one object of the schema (``SCHEMA``: its dotted path,
    ``*`` for the values of a mapping); its fields are exactly the schema's keys."""

    SCHEMA: ClassVar[str]

    @classmethod
    def from_dict(cls: type[T], data: Mapping | None, where: str | None = None) -> T:
        """Validate ``data`` against the section's schema, fill in its defaults, build."""
        where = where or cls.SCHEMA.replace(".*", "")
        checked = validate_node(json.loads(json.dumps(dict(data or {}))), cls.SCHEMA, where)
        return _build(cls, checked, where)

    @classmethod
    def defaults(cls: type[T], **overrides: Any) -> T:
        """The schema's defaults, with ``overrides`` (handy in tests and benchmarks)."""
        return cls.from_dict(overrides)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return _plain(self)


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class LayoutSettings(Section):
    """Division of the earth into cells (paper §3.1, S3)."""

    SCHEMA: ClassVar[str] = "layout"
    kind: str
    earth_radius_m: float
    train_cell_m: float
    test_cell_m: float
    mercator_reference_lat: float

    def layout(self, cell_m: float) -> Layout:
        return make_layout(self.kind, cell_m, self.earth_radius_m, self.mercator_reference_lat)

    def train_layout(self) -> Layout:
        """The 5 m training buckets (paper §3.4)."""
        return self.layout(self.train_cell_m)

    def test_layout(self) -> Layout:
        """The search-region cells that get an embedding (paper §4.3)."""
        return self.layout(self.test_cell_m)

    @property
    def test_cell_tag(self) -> str:
        """'30' for 30.0, '2.5' for 2.5: the <l> in cells_<l>m.parquet."""
        return f"{self.test_cell_m:g}"


@dataclass(frozen=True)
class CrawlSettings(Section):
    """The Mapillary crawler (``vglpipe.sources.mapillary``)."""

    SCHEMA: ClassVar[str] = "crawl"
    base_url: str
    search_per_minute: float
    entity_per_minute: float
    concurrency: int
    threads: int
    search_concurrency: int
    max_box_deg: float
    min_box_deg: float
    search_limit: int
    split_fraction: float
    retries: int
    backoff_s: float
    backoff_max_s: float
    connections: int
    thumb_field: str
    commit_interval_s: float
    timeout_s: float
    shard_mb: float
    jpeg_quality: int
    max_failed_fraction: float

    @property
    def shard_bytes(self) -> int:
        return int(self.shard_mb * 2**20)


@dataclass(frozen=True)
class LodSpec(Section):
    """The n aerial images of a cell (paper §3.2): P×P px, LOD i at 2^i · m_per_px metres per pixel."""

    SCHEMA: ClassVar[str] = "aerial"
    patch_px: int
    m_per_px: float
    n_lods: int

    @classmethod
    def from_dict(cls, data: Mapping | None, where: str | None = None) -> LodSpec:
        full = validate_node({k: v for k, v in dict(data or {}).items() if k in ("patch_px", "m_per_px", "n_lods")},
                             "aerial", where or "aerial")
        return cls(patch_px=full["patch_px"], m_per_px=float(full["m_per_px"]), n_lods=full["n_lods"])

    def m_per_px_of(self, i: int) -> float:
        return self.m_per_px * (2**i)

    def side_m(self, i: int) -> float:
        """Metric side d_i = 2^i · d0 of LOD i (equation 1)."""
        return self.patch_px * self.m_per_px_of(i)

    @property
    def reach_m(self) -> float:
        """Half-diagonal of the coarsest LOD: how far it reaches from the cell centre at any bearing."""
        return self.side_m(self.n_lods - 1) * math.sqrt(2) / 2


@dataclass(frozen=True)
class CogSettings(Section):
    SCHEMA: ClassVar[str] = "aerial.cog"
    tile_px: int
    blocksize: int
    compress: str
    quality: int
    min_overviews: int


@dataclass(frozen=True)
class QualitySettings(Section):
    """Imagery quality checks of the tiling step and the patch sampler."""

    SCHEMA: ClassVar[str] = "aerial.quality"
    max_upsample: float
    max_skipped_fraction: float


@dataclass(frozen=True)
class SourceSettings(Section):
    """How one region's orthophotos are fetched (an ``aerial.sources.<region>`` entry)."""

    SCHEMA: ClassVar[str] = "aerial.sources.*"
    protocol: str
    url: str
    layer: str
    crs: str
    format: str
    m_per_px: float
    chip_px: int
    zoom: int
    tile_px: int
    acquired: str
    concurrency: int
    retries: int
    timeout_s: float
    backoff_s: float
    backoff_max_s: float
    retry_after_max_s: float

    @classmethod
    def from_dict(cls, data: Mapping | None, where: str | None = None) -> SourceSettings:
        src = super().from_dict(data, where)
        where = where or "aerial.sources"
        if src.protocol == "xyz" and not all(t in src.url for t in ("{z}", "{x}", "{y}")):
            raise ConfigError(f"{where}.url must contain {{z}}, {{x}} and {{y}} for xyz, got {src.url!r}")
        if src.protocol == "wms" and not src.layer:
            raise ConfigError(f"{where}.layer is required for wms")
        return src


@dataclass(frozen=True)
class ModelSettings(Section):
    """Which registered model (vglpipe.model) an experiment trains, and from which weights."""

    SCHEMA: ClassVar[str] = "model"
    name: str
    args: Mapping[str, Any]
    pretrained: bool
    pretrained_file: str


@dataclass(frozen=True)
class JitterSettings(Section):
    SCHEMA: ClassVar[str] = "train.jitter"
    brightness: float
    contrast: float
    saturation: float
    hue: float


@dataclass(frozen=True)
class MiningSettings(Section):
    SCHEMA: ClassVar[str] = "train.mining"
    enabled: bool
    first_scan_batches: int
    raise_factor: float
    raise_after_samples: int
    max_scan_batches: int


@dataclass(frozen=True)
class TrainSettings(Section):
    SCHEMA: ClassVar[str] = "train"
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    lr_final_factor: float
    weight_decay: float
    grad_clip_norm: float
    label_smoothing: float
    mask_m: float
    gnss_margin_m: float
    jitter: JitterSettings
    mining: MiningSettings
    seed: int
    workers: int
    checkpoint_every: int
    log_every: int
    precision: str


@dataclass(frozen=True)
class OrthophotoServerSettings(Section):
    SCHEMA: ClassVar[str] = "demo.regions.*.orthophoto_server"
    tile_format: str
    bulk_tile_m: float
    bulk_format: str
    alt_crs: str
    alt_crs_west_fraction: float
    fault_rate: float
    seed: int
    delay_s: float


@dataclass(frozen=True)
class DemoRegionSettings(Section):
    SCHEMA: ClassVar[str] = "demo.regions.*"
    seed: int
    center_lat: float
    center_lon: float
    size_m: float
    photos: int
    orthophoto_server: OrthophotoServerSettings


@dataclass(frozen=True)
class StreetviewSettings(Section):
    SCHEMA: ClassVar[str] = "demo.streetview"
    seed: int
    fault_rate: float
    latency_ms: float
    render_scale: float
    view_range_m: float


@dataclass(frozen=True)
class DemoSettings(Section):
    SCHEMA: ClassVar[str] = "demo"
    regions: Mapping[str, DemoRegionSettings]
    world_m_per_px: float
    streetview: StreetviewSettings


@dataclass(frozen=True)
class EmbedSettings(Section):
    SCHEMA: ClassVar[str] = "embed"
    shards: int
    chunk_cells: int
    batch_size: int
    min_coverage: float
    workers: int
    precision: str
    aerial_rotations: int


@dataclass(frozen=True)
class IndexSettings(Section):
    """The faiss indexes (vglpipe.search.spec.IndexSpec resolves 'auto' values for a region)."""

    SCHEMA: ClassVar[str] = "index"
    kinds: tuple[str, ...]
    search: str
    hnsw_m: int
    ef_construction: int
    ef_search: int
    hnsw_storage: str
    entry_points: int | str
    entry_probe: int
    seed_search: str
    nlist: int | str
    quantizer_m: int
    quantizer_ef: int
    pq_m: int | str
    pq_nbits: int
    opq: bool
    nprobe: int
    rerank: int
    train_size: int
    seed: int
    neighbour_weight: float


@dataclass(frozen=True)
class EvaluateSettings(Section):
    SCHEMA: ClassVar[str] = "evaluate"
    k: int
    ns: tuple[int, ...]
    radii_m: tuple[float, ...]
    min_stratum_count: int
    chunk: int


@dataclass(frozen=True)
class AblationSettings(Section):
    """An experiment's place in an ablation (``experiments.<name>.ablation``)."""

    SCHEMA: ClassVar[str] = "experiments.*.ablation"
    factor: str
    variant: str
    reference: Mapping[str, str]

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """The (factor, variant) pairs the experiment is in: its factor's, or one per factor of
        ``reference``; none when it is not part of an ablation."""
        if self.factor:
            return ((self.factor, self.variant),)
        return tuple(sorted(self.reference.items()))


@dataclass(frozen=True)
class PaperFinding(Section):
    """The paper's direction for one ablation factor (``report.ablations.<factor>``)."""

    SCHEMA: ClassVar[str] = "report.ablations.*"
    better: str
    source: str


@dataclass(frozen=True)
class ReportSettings(Section):
    SCHEMA: ClassVar[str] = "report"
    examples: int
    baseline: str
    radius_m: float
    map_m: float
    ablations: Mapping[str, PaperFinding]


@dataclass(frozen=True)
class TrainJobSettings(Section):
    SCHEMA: ClassVar[str] = "cluster.train"
    nodes: int
    gpus_per_node: int
    cpu_processes_per_node: int
    gpu_model: str
    cpus_per_process: int
    mem_mb_per_node: int
    runtime_min: int
    signal_before_end_s: int
    retries: int

    @property
    def processes_per_node(self) -> int:
        """One process per GPU; on CPUs, cpu_processes_per_node."""
        return self.gpus_per_node or self.cpu_processes_per_node

    @property
    def processes(self) -> int:
        return self.nodes * self.processes_per_node


@dataclass(frozen=True)
class EmbedJobSettings(Section):
    SCHEMA: ClassVar[str] = "cluster.embed"
    gpus: int
    gpu_model: str
    cpus: int
    mem_mb: int
    runtime_min: int
    retries: int


@dataclass(frozen=True)
class IndexJobSettings(Section):
    SCHEMA: ClassVar[str] = "cluster.index"
    cpus: int
    mem_mb: int
    runtime_min: int


@dataclass(frozen=True)
class ClusterSettings(Section):
    SCHEMA: ClassVar[str] = "cluster"
    train: TrainJobSettings
    embed: EmbedJobSettings
    index: IndexJobSettings


@dataclass(frozen=True)
class Experiment:
    """One experiment's effective settings: the global sections with its overrides merged in."""

    name: str
    description: str
    model: ModelSettings
    train: TrainSettings
    lods: LodSpec
    t_max_m: float  # derived: 0.5 · test_cell_m − train.gnss_margin_m


# ----------------------------------------------------------------------------- stage bundles


@dataclass(frozen=True)
class CellsStage:
    layout: LayoutSettings


@dataclass(frozen=True)
class CrawlStage:
    crawl: CrawlSettings


@dataclass(frozen=True)
class DownloadStage:
    source: SourceSettings
    margin_m: float  # derived: Settings.download_margin_m


@dataclass(frozen=True)
class TileStage:
    cog: CogSettings
    protocol: str
    acquired: str
    max_skipped_fraction: float  # aerial.quality.max_skipped_fraction
    finest_m_per_px: float  # derived: Settings.finest_m_per_px


@dataclass(frozen=True)
class TrainStage:
    experiment: Experiment


@dataclass(frozen=True)
class EmbedStage:
    embed: EmbedSettings
    lods: LodSpec  # the experiment's
    max_upsample: float  # aerial.quality.max_upsample


@dataclass(frozen=True)
class IndexStage:
    index: IndexSettings
    layout: LayoutSettings


@dataclass(frozen=True)
class EvaluateStage:
    evaluate: EvaluateSettings
    index: IndexSettings  # its search-time values
    layout: LayoutSettings
    timezone: str


@dataclass(frozen=True)
class AblationRun:
    """One experiment as one variant of an ablation factor (a reference experiment is one run
    per factor it is in)."""

    experiment: str
    factor: str
    variant: str
    seed: int  # the experiment's train.seed


@dataclass(frozen=True)
class ReportStage:
    report: ReportSettings
    evaluate: EvaluateSettings
    layout: LayoutSettings
    index: IndexSettings
    experiments: tuple[tuple[str, str], ...]  # (name, description), in report order (baseline last)
    ablation_runs: tuple[AblationRun, ...]  # derived: Settings.ablation_runs


@dataclass(frozen=True)
class DemoBoundaryStage:
    center_lat: float
    center_lon: float
    size_m: float


@dataclass(frozen=True)
class DemoWorldStage:
    seed: int
    center_lat: float
    center_lon: float
    size_m: float
    m_per_px: float
    margin_m: float  # derived: Settings.demo_world_margin_m


@dataclass(frozen=True)
class DemoStreetviewStage:
    photos: int
    seed: int
    world_seed: int  # mixed into the photo seed: regions get different photo ids
    render_scale: float
    view_range_m: float


@dataclass(frozen=True)
class FakeMapillaryStage:
    fault_rate: float
    latency_ms: float


# ----------------------------------------------------------------------------- the whole config


class Settings:
    """A validated workflow config: typed sections, derived values, and the stage bundles."""

    def __init__(self, config: Mapping, source: str = "workflow config"):
        self.config = validate_config(json.loads(json.dumps(dict(config))), source)
        self.source = source

    @classmethod
    def load(cls, path: str | Path) -> Settings:
        path = Path(path)
        return cls(load_config(path), source=str(path))

    # ---- sections
    @cached_property
    def layout(self) -> LayoutSettings:
        return LayoutSettings.from_dict(self.config["layout"])

    @cached_property
    def crawl(self) -> CrawlSettings:
        return CrawlSettings.from_dict(self.config["crawl"])

    @cached_property
    def lods(self) -> LodSpec:
        return LodSpec.from_dict(self.config["aerial"])

    @cached_property
    def cog(self) -> CogSettings:
        return CogSettings.from_dict(self.config["aerial"]["cog"])

    @cached_property
    def quality(self) -> QualitySettings:
        return QualitySettings.from_dict(self.config["aerial"]["quality"])

    @property
    def experiments(self) -> list[str]:
        return sorted(self.config["experiments"])

    def experiment(self, name: str) -> Experiment:
        """The experiment's effective settings (global sections + its overrides, validated)."""
        if name not in self.config["experiments"]:
            raise ConfigError(f"{self.source}: no experiment {name!r} "
                              f"(experiments: {', '.join(self.experiments) or 'none'})")
        exp = self.config["experiments"][name]
        where = f"experiments.{name}"
        model = ModelSettings.from_dict(_merge(self.config["model"], exp["model"]), f"{where}.model")
        train = TrainSettings.from_dict(_merge(self.config["train"], exp["train"]), f"{where}.train")
        unknown = set(exp["aerial"]) - {"patch_px", "m_per_px", "n_lods"}
        if unknown:
            raise ConfigError(f"{self.source}: unknown key(s) {', '.join(f'{where}.aerial.{k}' for k in sorted(unknown))}"
                              " (allowed: m_per_px, n_lods, patch_px)")
        lods = LodSpec.from_dict(_merge(self.config["aerial"], exp["aerial"]), f"{where}.aerial")
        t_max = max(0.5 * self.layout.test_cell_m - train.gnss_margin_m, 0.0)
        return Experiment(name=name, description=exp["description"], model=model, train=train, lods=lods,
                          t_max_m=t_max)

    def ablation(self, name: str) -> AblationSettings:
        """The experiment's place in an ablation. Kept out of :class:`Experiment` (what training
        reads): a label must not retrain a model or stop its checkpoint from resuming."""
        if name not in self.config["experiments"]:
            raise ConfigError(f"{self.source}: no experiment {name!r} "
                              f"(experiments: {', '.join(self.experiments) or 'none'})")
        return AblationSettings.from_dict(self.config["experiments"][name]["ablation"],
                                          f"experiments.{name}.ablation")

    @property
    def ablation_runs(self) -> tuple[AblationRun, ...]:
        """Every experiment's (factor, variant) pairs with its seed, by factor, variant, seed."""
        runs = [AblationRun(experiment=n, factor=f, variant=v, seed=self.experiment(n).train.seed)
                for n in self.experiments for f, v in self.ablation(n).pairs]
        return tuple(sorted(runs, key=lambda r: (r.factor, r.variant, r.seed, r.experiment)))

    @cached_property
    def train(self) -> TrainSettings:
        return TrainSettings.from_dict(self.config["train"])

    @cached_property
    def embed(self) -> EmbedSettings:
        return EmbedSettings.from_dict(self.config["embed"])

    @cached_property
    def index(self) -> IndexSettings:
        return IndexSettings.from_dict(self.config["index"])

    @cached_property
    def evaluate(self) -> EvaluateSettings:
        return EvaluateSettings.from_dict(self.config["evaluate"])

    @cached_property
    def report(self) -> ReportSettings:
        return ReportSettings.from_dict(self.config["report"])

    @cached_property
    def cluster(self) -> ClusterSettings:
        return ClusterSettings.from_dict(self.config["cluster"])

    # ---- what the heavy jobs ask the scheduler for (rules' threads/resources; derived here only)
    def train_threads(self, experiment: str) -> int:
        """CPUs per training process."""
        return self.cluster.train.cpus_per_process or self.experiment(experiment).train.workers + 1

    #: the train rule's resources (the same keys for every experiment; values per experiment)
    TRAIN_RESOURCES = ("mem_mb", "runtime", "nodes", "tasks", "mpi", "gpu", "tasks_per_gpu", "gpu_model",
                       "slurm_extra")

    def train_resources(self, experiment: str) -> dict:
        """The train rule's resources (snakemake-executor-plugin-slurm's names). With several
        processes the job has one task per process and ``mpi`` set: the rule's command then runs
        in the job's batch script and starts them with srun."""
        job = self.cluster.train
        if not self.experiment(experiment).train.steps:  # the untrained baseline: one process saves the weights
            return {"mem_mb": job.mem_mb_per_node, "runtime": 60, "nodes": 1, "tasks": 1, "mpi": "", "gpu": 0,
                    "tasks_per_gpu": 0, "gpu_model": "", "slurm_extra": ""}
        gpus = job.nodes * job.gpus_per_node
        return {"mem_mb": job.mem_mb_per_node, "runtime": job.runtime_min, "nodes": job.nodes,
                "tasks": job.processes, "mpi": "srun" if job.processes > 1 else "", "gpu": gpus,
                "tasks_per_gpu": 1 if gpus else 0, "gpu_model": job.gpu_model if gpus else "",
                "slurm_extra": f"--signal=TERM@{job.signal_before_end_s}" if job.signal_before_end_s else ""}

    def embed_threads(self) -> int:
        return self.cluster.embed.cpus or self.embed.workers + 1

    def embed_resources(self) -> dict:
        job = self.cluster.embed
        return {"mem_mb": job.mem_mb, "runtime": job.runtime_min, "gpu": job.gpus,
                "gpu_model": job.gpu_model if job.gpus else ""}

    def index_resources(self) -> dict:
        return {"mem_mb": self.cluster.index.mem_mb, "runtime": self.cluster.index.runtime_min}

    def timezone(self, region: str) -> str:
        return self._region(region)["timezone"]

    @cached_property
    def demo(self) -> DemoSettings:
        return DemoSettings.from_dict(self.config["demo"])

    @property
    def regions(self) -> list[str]:
        return sorted(self.config["regions"])

    def role(self, region: str) -> str:
        return self._region(region)["role"]

    def boundary(self, region: str) -> str:
        return self._region(region)["boundary"]

    def _region(self, region: str) -> dict:
        try:
            return self.config["regions"][region]
        except KeyError:
            raise ConfigError(f"{self.source}: no region {region!r} (regions: {', '.join(self.regions) or 'none'})") from None

    def source_of(self, region: str) -> SourceSettings:
        sources = self.config["aerial"]["sources"]
        if region not in sources:
            raise ConfigError(f"{self.source}: aerial.sources has no entry for region {region!r} "
                              f"(has: {', '.join(sorted(sources)) or 'none'})")
        return SourceSettings.from_dict(sources[region], f"aerial.sources.{region}")

    def demo_region(self, region: str) -> DemoRegionSettings:
        try:
            return self.demo.regions[region]
        except KeyError:
            raise ConfigError(f"{self.source}: {region!r} is not a demo region "
                              f"(demo.regions: {', '.join(sorted(self.demo.regions)) or 'none'})") from None

    # ---- derived values (the one place each is computed)
    @property
    def download_margin_m(self) -> float:
        """How far beyond a region's boundary imagery is needed: the coarsest LOD of an edge
        cell at any bearing plus the diagonal of the training offset (t_max = 0.5·l − l_Δ,
        paper §3.4), over the global settings and every experiment, rounded up to 10 m
        (434.4 + 14.1 -> 450 m for the paper's settings)."""
        t_max = max(0.5 * self.layout.test_cell_m - self.train.gnss_margin_m, 0.0)
        need = [self.lods.reach_m + t_max * math.sqrt(2)]
        need += [e.lods.reach_m + e.t_max_m * math.sqrt(2) for e in map(self.experiment, self.experiments)]
        return math.ceil(max(need) / 10) * 10.0

    @property
    def demo_world_margin_m(self) -> float:
        """How far a demo world extends beyond its region: what the orthophoto stage downloads
        and what the street views see (demo.streetview.view_range_m), whichever is farther."""
        return max(self.download_margin_m, float(self.demo.streetview.view_range_m))

    @property
    def finest_m_per_px(self) -> float:
        """Ground resolution of the finest LOD over the global settings and every experiment:
        what the orthophotos must provide without upsampling."""
        return min([self.lods.m_per_px] + [self.experiment(e).lods.m_per_px for e in self.experiments])

    # ---- checks of the whole config (the workflow runs them at start)
    def check(self) -> None:
        problems = []
        if not self.config["regions"]:
            problems.append("no regions configured (add at least one under `regions`)")
        for name in self.demo.regions:
            if name not in self.config["regions"]:
                problems.append(f"demo.regions.{name} is not listed under `regions`")
            elif self.boundary(name) != DEMO_BOUNDARY.format(region=name):
                problems.append(f"regions.{name}.boundary must be {DEMO_BOUNDARY.format(region=name)} "
                                f"(the demo draws it), got {self.boundary(name)!r}")
        for name, src in self.config["aerial"]["sources"].items():
            if name not in self.config["regions"]:
                problems.append(f"aerial.sources.{name} is not listed under `regions`")
            elif str(src.get("url", "")).startswith(FAKE_URL_PREFIX) and name not in self.demo.regions:
                problems.append(f"aerial.sources.{name}.url {src['url']!r} needs the demo's fake provider, "
                                f"but {name} is not under demo.regions")
            else:
                self.source_of(name)
        if self.experiments and not any(r["role"] == "train" for r in self.config["regions"].values()):
            problems.append("experiments need at least one region with role: train")
        if self.config["index"]["search"] not in self.config["index"]["kinds"]:
            problems.append(f"index.search {self.config['index']['search']!r} is not among index.kinds "
                            f"{self.config['index']['kinds']}")
        baseline = self.config["report"]["baseline"]
        if baseline and baseline not in self.config["experiments"]:
            problems.append(f"report.baseline {baseline!r} is not an experiment (experiments: "
                            f"{', '.join(self.experiments) or 'none'})")
        for name in self.experiments:
            self.experiment(name)
        problems += self._ablation_problems()
        if problems:
            raise ConfigError(f"{self.source} is invalid:\n  " + "\n  ".join(problems))

    def _ablation_problems(self) -> list[str]:
        problems = []
        for name in self.experiments:
            a, where = self.ablation(name), f"experiments.{name}.ablation"
            if a.factor and not a.variant:
                problems.append(f"{where}.factor {a.factor!r} needs a variant")
            if a.variant and not a.factor:
                problems.append(f"{where}.variant {a.variant!r} needs a factor")
            if a.factor and a.reference:
                problems.append(f"{where}: factor and reference exclude each other (one factor's variant, "
                                "or the reference settings of several factors)")
        seen: dict[tuple[str, str, int], str] = {}
        variants: dict[str, set[str]] = {}
        for run in self.ablation_runs:
            variants.setdefault(run.factor, set()).add(run.variant)
            key = (run.factor, run.variant, run.seed)
            if key in seen:
                problems.append(f"experiments {seen[key]} and {run.experiment} are both variant {run.variant!r} of "
                                f"{run.factor!r} with train.seed {run.seed}: a repeat needs another seed")
            seen.setdefault(key, run.experiment)
        for factor, finding in self.report.ablations.items():
            if factor in variants and finding.better not in variants[factor]:
                problems.append(f"report.ablations.{factor}.better {finding.better!r} is not a variant of "
                                f"{factor!r} (variants: {', '.join(sorted(variants[factor]))})")
        return problems

    # ---- stage bundles
    def cells_stage(self) -> CellsStage:
        return CellsStage(layout=self.layout)

    def crawl_stage(self) -> CrawlStage:
        return CrawlStage(crawl=self.crawl)

    def download_stage(self, region: str) -> DownloadStage:
        return DownloadStage(source=self.source_of(region), margin_m=self.download_margin_m)

    def tile_stage(self, region: str) -> TileStage:
        src = self.source_of(region)
        return TileStage(cog=self.cog, protocol=src.protocol, acquired=src.acquired,
                         max_skipped_fraction=self.quality.max_skipped_fraction, finest_m_per_px=self.finest_m_per_px)

    def train_stage(self, experiment: str) -> TrainStage:
        return TrainStage(experiment=self.experiment(experiment))

    def embed_stage(self, experiment: str) -> EmbedStage:
        return EmbedStage(embed=self.embed, lods=self.experiment(experiment).lods,
                          max_upsample=self.quality.max_upsample)

    def index_stage(self) -> IndexStage:
        return IndexStage(index=self.index, layout=self.layout)

    def evaluate_stage(self, region: str) -> EvaluateStage:
        return EvaluateStage(evaluate=self.evaluate, index=self.index, layout=self.layout,
                             timezone=self.timezone(region))

    def report_stage(self) -> ReportStage:
        names = self.experiments
        baseline = self.report.baseline
        ordered = [n for n in names if n != baseline] + ([baseline] if baseline else [])
        return ReportStage(report=self.report, evaluate=self.evaluate, layout=self.layout, index=self.index,
                           experiments=tuple((n, self.config["experiments"][n]["description"]) for n in ordered),
                           ablation_runs=self.ablation_runs)

    def demo_boundary_stage(self, region: str) -> DemoBoundaryStage:
        r = self.demo_region(region)
        return DemoBoundaryStage(center_lat=r.center_lat, center_lon=r.center_lon, size_m=r.size_m)

    def demo_world_stage(self, region: str) -> DemoWorldStage:
        r = self.demo_region(region)
        return DemoWorldStage(seed=r.seed, center_lat=r.center_lat, center_lon=r.center_lon, size_m=r.size_m,
                              m_per_px=self.demo.world_m_per_px, margin_m=self.demo_world_margin_m)

    def demo_streetview_stage(self, region: str) -> DemoStreetviewStage:
        r = self.demo_region(region)
        sv = self.demo.streetview
        return DemoStreetviewStage(photos=r.photos, seed=sv.seed, world_seed=r.seed, render_scale=sv.render_scale,
                                   view_range_m=sv.view_range_m)

    def fake_mapillary_stage(self) -> FakeMapillaryStage:
        sv = self.demo.streetview
        return FakeMapillaryStage(fault_rate=sv.fault_rate, latency_ms=sv.latency_ms)

    def fake_orthophoto_stage(self, region: str) -> OrthophotoServerSettings:
        return self.demo_region(region).orthophoto_server
