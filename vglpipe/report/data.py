"""Inputs of the HTML report: plain dataclasses, validated when constructed.

The report stage fills these from evaluation outputs; the report library never
reads pipeline files itself. Conventions used throughout:

* Recall values are **fractions in [0, 1]** (not percent); the report prints
  percent. A value above 1 raises :class:`~vglpipe.errors.InputError` (it is
  almost always a percent passed by mistake).
* Recall keys are spelled exactly like the paper's metric, ``"R@N<rm"``, e.g.
  ``"R@1<50m"``, ``"R@100<25m"`` (§4.2: a query counts as localized within
  radius r at N if one of the N top-scored cells has its centre within r metres
  of the photo's true position). Any positive integers N and r are accepted;
  the usual grid is N in {1, 5, 10, 50, 100} and r in {25, 50, 100}.
* Positions in an :class:`Example` are local metres, east/north of the
  example's reference point (the ground truth when it is known).
* Every string may come from outside (Mapillary user names, file names,
  configuration values): the templates escape all of them.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vglpipe.errors import InputError

RECALL_KEY = re.compile(r"^R@([1-9][0-9]*)<([1-9][0-9]*)m$")

#: A fact value: what the report can show in a key/value table.
FactValue = str | int | float | bool | None | dt.datetime | dt.date


def parse_recall_key(key: str) -> tuple[int, int]:
    """``"R@10<50m"`` -> ``(10, 50)``; anything else raises InputError."""
    m = RECALL_KEY.match(key) if isinstance(key, str) else None
    if m is None:
        raise InputError(f"recall key {key!r} is not of the form 'R@N<rm' (e.g. 'R@1<50m')")
    return int(m.group(1)), int(m.group(2))


def recall_key(n: int, r: int) -> str:
    return f"R@{n}<{r}m"


def _check_recall_dict(what: str, values: Mapping[str, float]) -> dict[str, float]:
    out = {}
    for key, value in dict(values).items():
        parse_recall_key(key)
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{what}[{key!r}] = {value!r} is not a number") from None
        if not (0.0 <= v <= 1.0):
            raise InputError(f"{what}[{key!r}] = {v!r} is outside [0, 1] (recall is a fraction, not percent)")
        out[key] = v
    return out


STRATUM_COLUMNS = ("year", "hour")


def _check_strata(what: str, table: pd.DataFrame | None, expected: str) -> pd.DataFrame | None:
    """Validate a by-year / by-hour table; returns a normalized copy (sorted by stratum)."""
    if table is None:
        return None
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"{what} must be a pandas DataFrame, not {type(table).__name__}")
    if table.empty:
        return None
    missing = [c for c in ("count", "flagged") if c not in table.columns]
    if missing:
        raise InputError(f"{what} lacks column(s) {missing}; has {list(table.columns)}")
    if expected in table.columns:
        stratum = expected
    else:
        others = [
            c for c in table.columns if c not in ("count", "flagged") and not RECALL_KEY.match(str(c))
        ]
        if len(others) != 1:
            raise InputError(
                f"{what} needs a stratum column named {expected!r}; has {list(table.columns)}"
            )
        stratum = others[0]
    recall_cols = [c for c in table.columns if RECALL_KEY.match(str(c))]
    if not recall_cols:
        raise InputError(f"{what} has no recall column (named like 'R@1<50m'); has {list(table.columns)}")
    t = table[[stratum, "count", "flagged", *recall_cols]].copy()
    t = t.rename(columns={stratum: expected})
    try:
        t[expected] = t[expected].astype("int64")
        t["count"] = t["count"].astype("int64")
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what}: stratum and count must be integers ({exc})") from None
    if (t["count"] < 0).any():
        raise InputError(f"{what}: negative count")
    if expected == "hour" and not t["hour"].between(0, 23).all():
        raise InputError(f"{what}: hour outside 0..23: {sorted(set(t['hour']) - set(range(24)))}")
    if t[expected].duplicated().any():
        raise InputError(f"{what}: duplicate {expected} value(s)")
    t["flagged"] = t["flagged"].astype(bool)
    for c in recall_cols:
        col = pd.to_numeric(t[c], errors="coerce").astype("float64")
        bad = col.notna() & ~col.between(0.0, 1.0)
        if bad.any():
            raise InputError(f"{what}[{c!r}] has values outside [0, 1] (recall is a fraction)")
        t[c] = col
    return t.sort_values(expected).reset_index(drop=True)


def _check_facts(what: str, facts: Mapping[str, Any] | None) -> dict[str, Any]:
    if facts is None:
        return {}
    if not isinstance(facts, Mapping):
        raise InputError(f"{what} must be a mapping of name -> value, not {type(facts).__name__}")
    return {str(k): v for k, v in facts.items()}


@dataclass
class ExperimentResult:
    """One evaluated model (a row of the Table-2-style summary).

    name: short label used in tables and legends ("demo model", "untrained").
    description: one line saying what it is ("demo model, 2,000 steps",
        "same architecture, random weights (untrained baseline)").
    recall: ``{"R@1<50m": 0.606, ...}`` fractions in [0, 1].
    chance: recall of a uniformly random ranking of the same cells, same keys.
    n_queries: number of query photos evaluated.
    by_year / by_hour: optional tables with a stratum column ``year`` /
        ``hour`` (local hour 0-23), ``count`` (photos in the stratum), one or
        more recall columns named like the recall keys, and ``flagged`` (bool:
        fewer photos than the evaluation's minimum; drawn, but marked).
    min_stratum_count: the evaluation's minimum count, shown in the legend when given.
    facts: anything worth showing about the run (checkpoint fingerprint,
        training steps, index kind and parameters, timings ...), name -> value.
    """

    name: str
    description: str
    recall: dict[str, float]
    chance: dict[str, float]
    n_queries: int
    by_year: pd.DataFrame | None = None
    by_hour: pd.DataFrame | None = None
    min_stratum_count: int | None = None
    facts: dict[str, FactValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise InputError(f"experiment name must be a non-empty string, got {self.name!r}")
        what = f"experiment {self.name!r}"
        self.description = "" if self.description is None else str(self.description)
        self.recall = _check_recall_dict(f"{what} recall", self.recall)
        self.chance = _check_recall_dict(f"{what} chance", self.chance)
        if not self.recall:
            raise InputError(f"{what} has no recall values")
        try:
            self.n_queries = int(self.n_queries)
        except (TypeError, ValueError):
            raise InputError(f"{what}: n_queries {self.n_queries!r} is not an integer") from None
        if self.n_queries < 0:
            raise InputError(f"{what}: n_queries is negative")
        self.by_year = _check_strata(f"{what} by_year", self.by_year, "year")
        self.by_hour = _check_strata(f"{what} by_hour", self.by_hour, "hour")
        self.facts = _check_facts(f"{what} facts", self.facts)


def _as_xy(what: str, a: Any, allow_empty: bool = True) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.size == 0 and allow_empty:
        return arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise InputError(f"{what} must have shape (k, 2) (east, north metres), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{what} holds non-finite values")
    return arr


def _as_vec(what: str, a: Any, n: int) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64).reshape(-1)
    if arr.shape[0] != n:
        raise InputError(f"{what} has {arr.shape[0]} values for {n} positions")
    return arr


@dataclass
class Example:
    """One query photo's localization, drawn like the paper's Fig. 1/5/9.

    photo_jpeg: the query photo, encoded (JPEG or PNG bytes).
    image_id, creator_username: attribution, shown as "USER/IMAGE_ID" (outside strings).
    captured_at: capture time (datetime or already formatted string), or None.
    lat, lon: the reference point in degrees: the ground-truth position when
        ``ground_truth_known`` (the evaluation case), else e.g. the top-1 cell
        (the ``localize`` case for one's own photo).
    success, rank: whether it counts as localized (the caller's criterion,
        usually R@1<r) and the rank (1-based) of the first cell within r of the
        ground truth among the retrieved ones, or None if none was.
    ortho: RGB uint8 array (H, W, 3), the orthophoto around the reference point.
    ortho_extent_m: (west, east, south, north) of ``ortho`` in metres relative
        to the reference point, e.g. (-300, 300, -300, 300).
    cells_en_m: (K, 2) cell centres (east, north metres); cell_scores: (K,) scores.
    topk_en_m: (k, 2) the top-k predicted cell centres in rank order (row i has
        rank i+1), may lie far outside the orthophoto; topk_scores: (k,).
    radius_m: the r of the metric (circle drawn around the ground truth).
    cell_size_m: side of the square cells; estimated from the centres if None.
    experiment: name of the experiment that produced the scores (informational).
    """

    photo_jpeg: bytes
    image_id: str
    creator_username: str
    captured_at: dt.datetime | str | None
    lat: float
    lon: float
    success: bool | None
    rank: int | None
    ortho: np.ndarray
    ortho_extent_m: tuple[float, float, float, float]
    cells_en_m: np.ndarray
    cell_scores: np.ndarray
    topk_en_m: np.ndarray
    topk_scores: np.ndarray
    radius_m: float = 50.0
    cell_size_m: float | None = None
    ground_truth_known: bool = True
    experiment: str | None = None

    def __post_init__(self) -> None:
        self.image_id = str(self.image_id)
        what = f"example {self.image_id!r}"
        self.creator_username = "" if self.creator_username is None else str(self.creator_username)
        if not isinstance(self.photo_jpeg, (bytes, bytearray, memoryview)) or len(self.photo_jpeg) == 0:
            raise InputError(f"{what}: photo_jpeg must be non-empty encoded image bytes")
        self.photo_jpeg = bytes(self.photo_jpeg)
        self.lat, self.lon = float(self.lat), float(self.lon)
        if not (-90 <= self.lat <= 90 and -180 <= self.lon <= 180):
            raise InputError(f"{what}: position ({self.lat}, {self.lon}) is not a lat/lon in degrees")
        ortho = np.asarray(self.ortho)
        if ortho.ndim != 3 or ortho.shape[2] != 3 or ortho.dtype != np.uint8 or min(ortho.shape[:2]) < 2:
            raise InputError(f"{what}: ortho must be an RGB uint8 array (H, W, 3), got {ortho.dtype} {ortho.shape}")
        self.ortho = ortho
        ext = tuple(float(v) for v in self.ortho_extent_m)
        if len(ext) != 4 or not (ext[0] < ext[1] and ext[2] < ext[3]) or not all(map(math.isfinite, ext)):
            raise InputError(f"{what}: ortho_extent_m must be (west, east, south, north) with west<east, south<north")
        self.ortho_extent_m = ext  # type: ignore[assignment]
        self.cells_en_m = _as_xy(f"{what} cells_en_m", self.cells_en_m)
        self.cell_scores = _as_vec(f"{what} cell_scores", self.cell_scores, len(self.cells_en_m))
        self.topk_en_m = _as_xy(f"{what} topk_en_m", self.topk_en_m)
        self.topk_scores = _as_vec(f"{what} topk_scores", self.topk_scores, len(self.topk_en_m))
        self.radius_m = float(self.radius_m)
        if not self.radius_m > 0:
            raise InputError(f"{what}: radius_m must be positive")
        if self.cell_size_m is not None:
            self.cell_size_m = float(self.cell_size_m)
            if not self.cell_size_m > 0:
                raise InputError(f"{what}: cell_size_m must be positive")
        if self.rank is not None:
            self.rank = int(self.rank)
            if self.rank < 1:
                raise InputError(f"{what}: rank is 1-based, got {self.rank}")
        if not self.ground_truth_known:
            self.success, self.rank = None, None
        else:
            self.success = bool(self.success)
            if self.success and self.rank is None:
                raise InputError(f"{what}: success=True needs the rank of the first correct cell")

    @property
    def top1_distance_m(self) -> float | None:
        """Distance of the top-1 cell centre from the reference point (local metres)."""
        if len(self.topk_en_m) == 0:
            return None
        return float(np.hypot(*self.topk_en_m[0]))

    @property
    def attribution(self) -> str:
        """``USER/IMAGE_ID`` as in the paper's figures."""
        return f"{self.creator_username or 'unknown'}/{self.image_id}"


@dataclass
class RunFacts:
    """What the run was: shown in the header and the facts section.

    region: name of the evaluated region (test split).
    n_photos, n_cells: query photos and search-region cells.
    skipped: reason -> number of inputs skipped for it.
    timings_s: stage -> wall-clock seconds.
    generated_at: when the report was made (caller passes it: reports are reproducible).
    extra: anything else, name -> value (all shown, all escaped).
    """

    region: str
    n_photos: int
    n_cells: int
    skipped: dict[str, int] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    generated_at: dt.datetime | str | None = None
    extra: dict[str, FactValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.region = str(self.region)
        try:
            self.n_photos, self.n_cells = int(self.n_photos), int(self.n_cells)
            self.skipped = {str(k): int(v) for k, v in dict(self.skipped or {}).items()}
            self.timings_s = {str(k): float(v) for k, v in dict(self.timings_s or {}).items()}
        except (TypeError, ValueError) as exc:
            raise InputError(f"run facts: counts and timings must be numbers ({exc})") from None
        self.extra = _check_facts("run facts extra", self.extra)


@dataclass
class AblationRun:
    """One run of one variant of an ablation factor: the experiment (named as in the report's
    experiments, whose recall it shows) and its training seed. The repeats of a variant are runs
    with the same variant and different seeds."""

    experiment: str
    variant: str
    seed: int

    def __post_init__(self) -> None:
        if not isinstance(self.experiment, str) or not self.experiment.strip():
            raise InputError(f"ablation run: experiment must be a non-empty string, got {self.experiment!r}")
        if not isinstance(self.variant, str) or not self.variant.strip():
            raise InputError(f"ablation run {self.experiment!r}: variant must be a non-empty string, got {self.variant!r}")
        if isinstance(self.seed, bool):
            raise InputError(f"ablation run {self.experiment!r}: seed {self.seed!r} is not an integer")
        try:
            self.seed = int(self.seed)
        except (TypeError, ValueError):
            raise InputError(f"ablation run {self.experiment!r}: seed {self.seed!r} is not an integer") from None


@dataclass
class Ablation:
    """One ablation factor (paper Tables 3/4): its variants' runs side by side.

    factor: what is varied ("aerial LODs", "pooling", ...; an outside string).
    runs: every run of every variant (at least one).
    better: the variant the paper finds better ("" when not known: no verdict).
    source: where the paper says so ("paper §3.2, ablations §4.5").
    """

    factor: str
    runs: list[AblationRun]
    better: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.factor, str) or not self.factor.strip():
            raise InputError(f"ablation factor must be a non-empty string, got {self.factor!r}")
        self.runs = list(self.runs or [])
        if not self.runs:
            raise InputError(f"ablation {self.factor!r} has no runs")
        for r in self.runs:
            if not isinstance(r, AblationRun):
                raise InputError(f"ablation {self.factor!r}: runs must be AblationRun objects, got {type(r).__name__}")
        self.better = "" if self.better is None else str(self.better)
        self.source = "" if self.source is None else str(self.source)
        if self.better and self.better not in self.variants:
            raise InputError(f"ablation {self.factor!r}: the paper's better variant {self.better!r} is not one of "
                             f"its variants {self.variants}")

    @property
    def variants(self) -> list[str]:
        """Variant names, the paper's better one first, the others in order of appearance."""
        seen = list(dict.fromkeys(r.variant for r in self.runs))
        return ([self.better] if self.better in seen else []) + [v for v in seen if v != self.better]
