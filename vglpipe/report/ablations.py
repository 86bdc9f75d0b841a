"""Ablations side by side (paper Tables 3/4): each variant's recall over its seeds, and whether
the paper's direction holds, beyond the run-to-run spread.

Pure functions, no I/O: the report's "Ablations" section and ``python -m vglpipe.bench
ablations`` both summarise with :func:`summarize_factor` and judge with :func:`verdict`.

The verdict compares the paper's better variant B with another variant O on one metric, over
their seeds (the run-to-run repeats):

* ``holds``: B's mean is higher and every seed of B beats every seed of O;
* ``reversed``: O's mean is higher and every seed of O beats every seed of B;
* ``within the seed spread``: neither (the seeds' ranges overlap): the difference cannot be
  told from noise;
* ``too few seeds``: B or O has fewer than :data:`MIN_SEEDS` seeds, so there is no spread to
  judge a difference against.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

HOLDS = "holds"
REVERSED = "reversed"
WITHIN_SPREAD = "within the seed spread"
TOO_FEW_SEEDS = "too few seeds"
VERDICTS = (HOLDS, REVERSED, WITHIN_SPREAD, TOO_FEW_SEEDS)
#: Seeds a variant needs before a difference can be told from noise.
MIN_SEEDS = 2


def verdict(better: Sequence[float], other: Sequence[float], min_seeds: int = MIN_SEEDS) -> str:
    """Whether ``better`` (the per-seed values of the variant the paper finds better) beats
    ``other`` (another variant's) beyond the seed spread: one of :data:`VERDICTS`."""
    b = [float(v) for v in better if v is not None and math.isfinite(v)]
    o = [float(v) for v in other if v is not None and math.isfinite(v)]
    if len(b) < min_seeds or len(o) < min_seeds:
        return TOO_FEW_SEEDS
    mb, mo = sum(b) / len(b), sum(o) / len(o)
    if mb > mo and min(b) > max(o):
        return HOLDS
    if mo > mb and min(o) > max(b):
        return REVERSED
    return WITHIN_SPREAD


def pct(v: float | None) -> str:
    """A recall fraction as percent with one decimal ('–' when missing)."""
    return "–" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"


@dataclass(frozen=True)
class VariantStats:
    """One variant's runs, sorted by seed: its values per recall key (None where a run lacks it)."""

    variant: str
    seeds: tuple[int, ...]
    experiments: tuple[str, ...]
    values: Mapping[str, tuple[float | None, ...]]

    def present(self, key: str) -> list[float]:
        return [v for v in self.values.get(key, ()) if v is not None and math.isfinite(v)]

    def mean(self, key: str) -> float | None:
        vals = self.present(key)
        return sum(vals) / len(vals) if vals else None

    def spread(self, key: str) -> tuple[float, float] | None:
        """(min, max) over the seeds."""
        vals = self.present(key)
        return (min(vals), max(vals)) if vals else None

    def range_text(self, key: str) -> str:
        s = self.spread(key)
        return "–" if s is None else f"{pct(s[0])}–{pct(s[1])} %"


@dataclass(frozen=True)
class Comparison:
    """The paper's better variant against one other variant, on one metric."""

    better: str
    other: str
    metric: str
    verdict: str
    text: str


@dataclass(frozen=True)
class FactorSummary:
    """One factor: its variants (the paper's better one first) and a comparison of the better
    variant with each other one; ``note`` says why there is no comparison when there is none."""

    factor: str
    better: str
    source: str
    metric: str
    keys: tuple[str, ...]
    variants: tuple[VariantStats, ...]
    comparisons: tuple[Comparison, ...]
    note: str

    def variant(self, name: str) -> VariantStats:
        return next(v for v in self.variants if v.variant == name)

    def to_dict(self) -> dict:
        """Plain data (fractions rounded to 4 decimals), as the bench prints it."""
        r4 = lambda v: None if v is None else round(v, 4)  # noqa: E731
        variants = {}
        for v in self.variants:
            d: dict = {"seeds": list(v.seeds), "experiments": list(v.experiments)}
            for k in self.keys:
                s = v.spread(k)
                d[k] = [r4(x) for x in v.values.get(k, ())]
                d[f"{k} mean"] = r4(v.mean(k))
                d[f"{k} spread"] = None if s is None else [r4(s[0]), r4(s[1])]
            variants[v.variant] = d
        return {"better": self.better, "source": self.source, "metric": self.metric, "variants": variants,
                "verdicts": {c.other: c.verdict for c in self.comparisons},
                "sentences": [c.text for c in self.comparisons] or [self.note]}


def _sentence(b: VariantStats, o: VariantStats, metric: str, result: str) -> str:
    means = f"mean {metric} {pct(b.mean(metric))} % vs {pct(o.mean(metric))} %"
    ranges = f"seeds {b.range_text(metric)} vs {o.range_text(metric)}"
    if result == HOLDS:
        return (f"{b.variant} > {o.variant}: holds ({means}; every seed of {b.variant} beats every seed of "
                f"{o.variant}: {ranges}).")
    if result == REVERSED:
        return (f"{b.variant} > {o.variant}: reversed, {o.variant} is better beyond the seed spread ({means}; "
                f"{ranges}).")
    if result == WITHIN_SPREAD:
        return (f"{b.variant} vs {o.variant}: within the seed spread (cannot be told from noise; {means}; "
                f"{ranges}).")
    return (f"{b.variant} vs {o.variant}: no verdict, fewer than {MIN_SEEDS} seeds per variant "
            f"({b.variant}: {len(b.present(metric))}, {o.variant}: {len(o.present(metric))}), so a difference "
            f"cannot be told from noise ({means}).")


def summarize_factor(
    factor: str,
    runs: Iterable[tuple[str, int, str, Mapping[str, float]]],
    *,
    better: str = "",
    source: str = "",
    metric: str = "R@1<50m",
    keys: Sequence[str] = ("R@1<50m", "R@10<50m"),
) -> FactorSummary:
    """Summarise one factor from its ``runs``: (variant, seed, experiment, recall) each, recall a
    mapping of recall keys to fractions. ``better`` is the variant the paper finds better ("":
    unknown, no verdict); each other variant is compared with it on ``metric``."""
    by_variant: dict[str, list[tuple[int, str, Mapping[str, float]]]] = {}
    for variant, seed, experiment, recall in runs:
        by_variant.setdefault(variant, []).append((int(seed), experiment, recall))
    keys = tuple(dict.fromkeys([metric, *keys]))
    order = ([better] if better in by_variant else []) + [v for v in by_variant if v != better]
    stats = []
    for name in order:
        items = sorted(by_variant[name], key=lambda t: (t[0], t[1]))
        stats.append(VariantStats(
            variant=name, seeds=tuple(s for s, _, _ in items), experiments=tuple(e for _, e, _ in items),
            values={k: tuple(rec.get(k) for _, _, rec in items) for k in keys}))
    comparisons = []
    note = ""
    if not better:
        note = "The paper's direction for this factor is not configured (report.ablations): no verdict."
    elif better not in by_variant:
        note = f"The paper's better variant {better} was not run: no verdict."
    elif len(stats) < 2:
        note = f"Only one variant ({better}) was run: nothing to compare."
    else:
        b = stats[0]
        for o in stats[1:]:
            result = verdict(b.present(metric), o.present(metric))
            comparisons.append(Comparison(better=b.variant, other=o.variant, metric=metric, verdict=result,
                                          text=_sentence(b, o, metric, result)))
    return FactorSummary(factor=factor, better=better, source=source,
                         metric=metric, keys=keys, variants=tuple(stats), comparisons=tuple(comparisons), note=note)
