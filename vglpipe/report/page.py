"""Render the evaluation report (and the one-photo localization page) as ONE
self-contained HTML file.

Everything is inline: CSS in ``<style>``, figures as ``data:`` URIs (SVG for
plots, JPEG/PNG for example figures), no scripts, no fonts to fetch, no
external URL. All text goes through Jinja2 with autoescape on; no template
uses ``|safe``.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import DictLoader, Environment, StrictUndefined

import vglpipe
from vglpipe.errors import InputError
from vglpipe.geo.sphere import offset_m
from vglpipe.report import figures, templates
from vglpipe.report.ablations import HOLDS, REVERSED, TOO_FEW_SEEDS, WITHIN_SPREAD, summarize_factor
from vglpipe.report.data import Ablation, Example, ExperimentResult, RunFacts, parse_recall_key, recall_key
from vglpipe.store.atomic import atomic_write_text

SECTION_IDS = ("overview", "summary", "curves", "by-year", "by-hour", "examples", "facts")
#: Sections shown only when their inputs are given (ablations: when any experiment is part of one).
OPTIONAL_SECTION_IDS = ("ablations",)


def _env() -> Environment:
    env = Environment(
        loader=DictLoader(
            {
                "base.html": templates.BASE,
                "macros.html": templates.MACROS,
                "report.html": templates.REPORT,
                "localization.html": templates.LOCALIZATION,
            }
        ),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=False,
        lstrip_blocks=False,
    )
    return env


_ENV = _env()


# ------------------------------------------------------------------ formatting


def fmt_pct(v: float | None) -> str:
    """A recall fraction as percent: one decimal, or two significant digits below 0.1 %."""
    if v is None or not math.isfinite(v):
        return "–"
    p = 100.0 * v
    if p == 0 or p >= 0.1:
        return f"{p:.1f}"
    return np.format_float_positional(p, precision=2, unique=False, fractional=False, trim="-")


def fmt_int(n: int) -> str:
    return f"{int(n):,}"


def fmt_distance(m: float | None) -> str:
    if m is None or not math.isfinite(m):
        return "–"
    if m < 1000:
        return f"{m:.0f} m"
    return f"{m / 1000:.1f} km" if m < 100_000 else f"{m / 1000:,.0f} km"


def fmt_duration(s: float) -> str:
    if not math.isfinite(s):
        return "–"
    if s < 60:
        return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"
    if s < 3600:
        m, sec = divmod(round(s), 60)
        return f"{m} min {sec:02d} s"
    h, rem = divmod(round(s), 3600)
    return f"{h} h {rem // 60:02d} min"


def fmt_time(t: dt.datetime | dt.date | str | None, seconds: bool = False) -> str:
    if t is None:
        return ""
    if isinstance(t, dt.datetime):
        return t.isoformat(sep=" ", timespec="seconds" if seconds else "minutes")
    if isinstance(t, dt.date):
        return t.isoformat()
    return str(t)


def fmt_value(v: Any) -> str:
    """A fact value for display (the template escapes the result)."""
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return fmt_int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        if v.is_integer() and abs(v) < 1e15:
            return fmt_int(int(v))
        if abs(v) >= 100:
            return f"{v:,.1f}"
        return f"{v:.4g}"
    if isinstance(v, (dt.datetime, dt.date)):
        return fmt_time(v, seconds=True)
    return str(v)


def data_uri(mime: str, payload: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(payload).decode('ascii')}"


# ------------------------------------------------------------------ validation


def _check_experiments(experiments: Sequence[ExperimentResult], main_experiment: str) -> ExperimentResult:
    if not experiments:
        raise InputError("the report needs at least one experiment")
    names = [e.name for e in experiments]
    for e in experiments:
        if not isinstance(e, ExperimentResult):
            raise InputError(f"experiments must be ExperimentResult objects, got {type(e).__name__}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"duplicate experiment name(s): {dup}")
    if main_experiment not in names:
        raise InputError(f"main experiment {main_experiment!r} is not one of {names}")
    return experiments[names.index(main_experiment)]


def _sorted_keys(keys) -> list[str]:
    return sorted(set(keys), key=lambda k: (parse_recall_key(k)[1], parse_recall_key(k)[0]))


# ------------------------------------------------------------------ view model


def _chance_rows(experiments: Sequence[ExperimentResult], main: ExperimentResult) -> list[tuple[str, dict]]:
    """One chance row if all experiments share it (the usual case), else one per distinct chance."""
    distinct: list[tuple[dict, list[str]]] = []
    for e in experiments:
        if not e.chance:
            continue
        for d, owners in distinct:
            common = set(d) & set(e.chance)
            if all(math.isclose(d[k], e.chance[k], rel_tol=1e-9, abs_tol=1e-15) for k in common):
                owners.append(e.name)
                d.update(e.chance)
                break
        else:
            distinct.append((dict(e.chance), [e.name]))
    if len(distinct) == 1:
        return [("chance (random ranking)", distinct[0][0])]
    return [(f"chance (random ranking, cells of {', '.join(o)})", d) for d, o in distinct]


def _recall_rows(experiments, main, chance_rows, keys) -> list[dict]:
    radii = [parse_recall_key(k)[1] for k in keys]
    first = {k: i == 0 or radii[i] != radii[i - 1] for i, k in enumerate(keys)}
    best = {}
    for k in keys:
        vals = [e.recall[k] for e in experiments if k in e.recall]
        best[k] = max(vals) if vals else None
    rows = []
    for e in experiments:
        cells = [
            {
                "key": k,
                "raw": repr(e.recall[k]) if k in e.recall else "",
                "text": fmt_pct(e.recall.get(k)),
                "best": k in e.recall and len(experiments) > 1 and e.recall[k] == best[k],
                "first": first[k],
            }
            for k in keys
        ]
        rows.append(
            {
                "name": e.name,
                "description": e.description,
                "n_queries": fmt_int(e.n_queries),
                "css": "experiment main-exp" if e is main else "experiment",
                "cells": cells,
            }
        )
    for label, d in chance_rows:
        cells = [
            {"key": k, "raw": repr(d[k]) if k in d else "", "text": fmt_pct(d.get(k)), "best": False,
             "first": first[k]}
            for k in keys
        ]
        rows.append({"name": label, "description": "uniformly random order of the same cells",
                     "n_queries": "–", "css": "chance", "cells": cells})
    return rows


def _summary_keys(experiments, metric: str) -> list[str]:
    all_keys = {k for e in experiments for k in e.recall}
    r = parse_recall_key(metric)[1]
    wanted = [recall_key(n, r) for n in (1, 10, 100)]
    keys = [k for k in wanted if k in all_keys]
    return keys or _sorted_keys(all_keys)[:3]


def _ranges(values: list[int], label) -> list[str]:
    """Consecutive strata merged: hours [0, 1, 2, 5] -> ["00:00–02:59", "05:00–05:59"],
    years [2014, 2015, 2024] -> ["2014–2015", "2024"]."""
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return [
        label(a) if a == b else f"{label(a).split('–')[0]}–{label(b).split('–')[-1]}" for a, b in runs
    ]


def _strata_view(experiments, main: ExperimentResult, attr: str, metric: str) -> dict:
    unit = "year" if attr == "by_year" else "hour"
    sid = "by-year" if unit == "year" else "by-hour"
    heading = "Recall by capture year" if unit == "year" else "Recall by local hour of capture"
    view: dict[str, Any] = {"id": sid, "heading": heading, "unit": unit, "src": None,
                            "missing": f"No per-{unit} breakdown was provided for {main.name}."}
    table = getattr(main, attr)
    if table is None:
        return view
    m = metric if metric in table.columns else _sorted_keys(c for c in table.columns if c.startswith("R@"))[0]
    others = [e for e in experiments if getattr(e, attr) is not None and m in getattr(e, attr).columns]
    svg = figures.strata_svg(experiments, main, attr, m, main.chance.get(m))

    def label(v: int) -> str:
        return str(v) if unit == "year" else f"{v:02d}:00–{v:02d}:59"

    rows = []
    lookup = {e.name: getattr(e, attr).set_index(unit)[m] for e in others}
    for rec in table.itertuples(index=False):
        s = int(getattr(rec, unit))
        rows.append(
            {
                "label": label(s),
                "count": fmt_int(rec.count),
                "flagged": bool(rec.flagged),
                "cells": [fmt_pct(lookup[e.name].get(s)) for e in others],
            }
        )
    intro = (
        "The paper (Fig. 6) finds recall highest for photos taken in the year the aerial imagery was "
        "captured and dropping with the time gap between photo and imagery."
        if unit == "year"
        else "The paper (Fig. 6) finds recall higher for daytime photos than for night-time ones."
    )
    view.update(
        src=data_uri("image/svg+xml", svg),
        metric=m,
        alt=f"{m} per {unit} with photo counts; flagged strata hatched",
        intro=intro,
        min_count=main.min_stratum_count,
        flagged=_ranges([int(s) for s in table.loc[table["flagged"], unit]], label),
        n_flagged=int(table["flagged"].sum()),
        columns=[e.name for e in others],
        rows=rows,
    )
    return view


_VERDICT_CSS = {HOLDS: "ok", REVERSED: "bad", WITHIN_SPREAD: "flag"}
_VERDICT_MARK = {HOLDS: "\u2713", REVERSED: "\u2717", WITHIN_SPREAD: "\u2248", TOO_FEW_SEEDS: "\u2013"}


def _ablations_view(ablations: Sequence[Ablation], experiments: Sequence[ExperimentResult], metric: str) -> list[dict]:
    """Per factor: a row per variant (per-seed R@1 and R@10 at the metric's radius, mean,
    min–max spread), the paper's direction and a verdict per other variant (:mod:`.ablations`)."""
    by_name = {e.name: e for e in experiments}
    r = parse_recall_key(metric)[1]
    keys = (recall_key(1, r), recall_key(10, r))
    views = []
    for i, ab in enumerate(ablations, start=1):
        if not isinstance(ab, Ablation):
            raise InputError(f"ablations must be Ablation objects, got {type(ab).__name__}")
        unknown = sorted({run.experiment for run in ab.runs} - set(by_name))
        if unknown:
            raise InputError(f"ablation {ab.factor!r} names experiment(s) {unknown} that are not in the report "
                             f"(experiments: {sorted(by_name)})")
        summary = summarize_factor(
            ab.factor, [(run.variant, run.seed, run.experiment, by_name[run.experiment].recall) for run in ab.runs],
            better=ab.better, source=ab.source, metric=keys[0], keys=keys)
        rows = []
        for v in summary.variants:
            cells = []
            for k in keys:
                per_seed = [fmt_pct(x) for x in v.values[k]]
                spread = v.spread(k)
                cells.append({"key": k, "per_seed": " · ".join(per_seed), "mean": fmt_pct(v.mean(k)),
                              "spread": "–" if spread is None else f"{fmt_pct(spread[0])}–{fmt_pct(spread[1])}"})
            rows.append({"variant": v.variant, "better": bool(ab.better) and v.variant == ab.better,
                         "seeds": ", ".join(str(s) for s in v.seeds), "n_seeds": len(v.seeds),
                         "experiments": ", ".join(v.experiments), "cells": cells})
        views.append({
            "id": f"ablation-{i}",
            "factor": ab.factor,
            "better": ab.better,
            "source": ab.source,
            "metrics": keys,
            "rows": rows,
            "verdicts": [{"text": c.text, "verdict": c.verdict, "mark": _VERDICT_MARK[c.verdict],
                          "css": _VERDICT_CSS.get(c.verdict, "")}
                         for c in summary.comparisons],
            "note": summary.note,
            "src": data_uri("image/svg+xml", figures.ablation_svg(summary)),
            "alt": f"{keys[0]} per seed of each variant of {ab.factor}",
        })
    return views


def _example_view(ex: Example, anchor: str, dpi: int, fmt: str, jpeg_quality: int) -> dict:
    payload = figures.example_figure(ex, fmt=fmt, dpi=dpi, jpeg_quality=jpeg_quality)
    mime = "image/png" if fmt == "png" else "image/jpeg"
    width, height = (round(v * dpi) for v in figures.EXAMPLE_FIGSIZE)
    d = ex.top1_distance_m
    r = f"{ex.radius_m:g} m"
    if not ex.ground_truth_known:
        verdict, vcss, css = "Prediction", "", "unlabelled"
        if d is None:
            detail = "no cells were retrieved."
        else:
            lat, lon = offset_m(ex.lat, ex.lon, ex.topk_en_m[0, 0], ex.topk_en_m[0, 1])
            detail = f"top-1 cell at {float(lat):.6f}, {float(lon):.6f} (score {ex.topk_scores[0]:.4g})."
        position_label = "map centre"
    else:
        dist = f"the top-1 cell is {fmt_distance(d)} from the true position" if d is not None else "no cells retrieved"
        if ex.success:
            verdict, vcss, css = "Localized.", "ok", "success"
            detail = f"First cell within {r} of the true position at rank {ex.rank}; {dist}."
        else:
            verdict, vcss, css = "Not localized.", "bad", "failure"
            if ex.rank is not None:
                detail = f"First cell within {r} of the true position only at rank {fmt_int(ex.rank)}; {dist}."
            else:
                detail = f"No retrieved cell lies within {r} of the true position; {dist}."
        position_label = "true position"
    return {
        "anchor": anchor,
        "css": css,
        "src": data_uri(mime, payload),
        "width": width,
        "height": height,
        "verdict": verdict,
        "verdict_css": vcss,
        "detail": detail,
        "attribution": ex.attribution,
        "captured": fmt_time(ex.captured_at),
        "position_label": position_label,
        "position": f"{ex.lat:.6f}, {ex.lon:.6f}",
        "experiment": ex.experiment or "",
    }


def render_report(
    title: str,
    experiments: Sequence[ExperimentResult],
    examples: Sequence[Example],
    facts: RunFacts,
    main_experiment: str,
    *,
    metric: str = "R@1<50m",
    ablations: Sequence[Ablation] = (),
    example_dpi: int = 90,
    example_format: str = "jpeg",
    jpeg_quality: int = 80,
) -> str:
    """The evaluation report as one self-contained HTML document.

    ``metric`` is the headline metric (header, by-year/by-hour plots); the
    summary table shows R@1/10/100 at its radius. ``ablations`` (factors whose
    runs are among ``experiments``) add the "Ablations" section: each
    variant's R@1/R@10 at the metric's radius per seed, mean and spread, and
    whether the paper's better variant beats the others beyond the seed spread
    on R@1 (:mod:`vglpipe.report.ablations`). Example figures are embedded
    as JPEG (``example_format="png"`` for lossless) at ``example_dpi``
    (the figure is 10 x 5 in, i.e. 900 x 450 px at 90 dpi).
    Raises InputError for inconsistent inputs (unknown main experiment,
    duplicate names, undecodable photos ...).
    """
    parse_recall_key(metric)
    if not isinstance(facts, RunFacts):
        raise InputError(f"facts must be a RunFacts, got {type(facts).__name__}")
    main = _check_experiments(experiments, main_experiment)
    chance_rows = _chance_rows(experiments, main)
    summary_keys = _summary_keys(experiments, metric)
    all_keys = _sorted_keys(
        {k for e in experiments for k in e.recall} | {k for _, d in chance_rows for k in d}
    )
    full_groups: dict[int, list[int]] = {}
    for k in all_keys:
        n, r = parse_recall_key(k)
        full_groups.setdefault(r, []).append(n)

    # Header.
    headline = []
    if metric in main.recall:
        headline.append({"value": f"{fmt_pct(main.recall[metric])} %", "label": f"{metric} · {main.name}"})
    for e in experiments:
        if e is not main and metric in e.recall:
            headline.append({"value": f"{fmt_pct(e.recall[metric])} %", "label": f"{metric} · {e.name}"})
    if metric in main.chance:
        headline.append({"value": f"{fmt_pct(main.chance[metric])} %", "label": f"{metric} · chance"})
    headline.append({"value": fmt_int(main.n_queries), "label": "query photos"})
    headline.append({"value": fmt_int(facts.n_cells), "label": "search-region cells"})
    n_, r_ = parse_recall_key(metric)
    lead = (
        f"Geolocation of street-view photos in the region “{facts.region}” by matching them against "
        f"aerial imagery: {fmt_int(main.n_queries)} query photos, each ranked against "
        f"{fmt_int(facts.n_cells)} search-region cells. Main experiment: {main.name}"
        + (f" ({main.description})" if main.description else "")
        + (
            f". It places a cell within {r_} m of the true position at rank {'1' if n_ == 1 else f'≤ {n_}'} "
            f"for {fmt_pct(main.recall[metric])} % of the photos."
            if metric in main.recall
            else "."
        )
    )

    # Examples, grouped.
    groups = [
        ("examples-successes", "Localized", [e for e in examples if e.ground_truth_known and e.success]),
        ("examples-failures", "Not localized", [e for e in examples if e.ground_truth_known and not e.success]),
        ("examples-unlabelled", "Without ground truth", [e for e in examples if not e.ground_truth_known]),
    ]
    example_groups = []
    counter = 0
    for gid, heading, items in groups:
        if gid == "examples-unlabelled" and not items:
            continue
        views = []
        for ex in items:
            counter += 1
            views.append(_example_view(ex, f"example-{counter}", example_dpi, example_format, jpeg_quality))
        example_groups.append({"id": gid, "heading": heading, "entries": views})
    if not examples:
        example_groups = []

    # Facts.
    run_rows = [
        ("Region", facts.region),
        ("Photos (before skipping)", fmt_int(facts.n_photos)),
        ("Search-region cells", fmt_int(facts.n_cells)),
        ("Experiments", ", ".join(e.name for e in experiments)),
        ("Main experiment", main.name),
    ]
    if facts.generated_at is not None:
        run_rows.append(("Generated", fmt_time(facts.generated_at, seconds=True)))
    fact_keys: list[str] = []
    for e in experiments:
        fact_keys += [k for k in e.facts if k not in fact_keys]
    exp_fact_rows = [("Description", [e.description for e in experiments]),
                     ("Queries", [fmt_int(e.n_queries) for e in experiments])]
    exp_fact_rows += [(k, [fmt_value(e.facts[k]) if k in e.facts else "–" for e in experiments]) for k in fact_keys]

    context = {
        "version": vglpipe.__version__,
        "title": title,
        "lead": lead,
        "headline": headline,
        "main_name": main.name,
        "summary_keys": summary_keys,
        "summary_rows": _recall_rows(experiments, main, chance_rows, summary_keys),
        "ablations": _ablations_view(ablations, experiments, metric),
        "full_groups": sorted(full_groups.items()),
        "full_rows": _recall_rows(experiments, main, chance_rows, all_keys),
        "curves_src": data_uri("image/svg+xml", figures.recall_curves_svg(experiments, main.chance)),
        "strata": [_strata_view(experiments, main, a, metric) for a in ("by_year", "by_hour")],
        "example_groups": example_groups,
        "run_rows": run_rows,
        "skipped_rows": [(k, fmt_int(v)) for k, v in sorted(facts.skipped.items(), key=lambda kv: -kv[1])],
        "skipped_total": fmt_int(sum(facts.skipped.values())),
        "timing_rows": [(k, fmt_duration(v)) for k, v in facts.timings_s.items()],
        "exp_names": [e.name for e in experiments],
        "exp_fact_rows": exp_fact_rows,
        "extra_rows": [(k, fmt_value(v)) for k, v in facts.extra.items()],
        "generated_at": fmt_time(facts.generated_at, seconds=True),
    }
    return _ENV.get_template("report.html").render(**context)


def write_report(path: str | os.PathLike, *args: Any, **kwargs: Any) -> Path:
    """:func:`render_report` written atomically to ``path`` (UTF-8); returns the path."""
    html = render_report(*args, **kwargs)
    atomic_write_text(path, html)
    return Path(path)


def render_localization_page(
    title: str,
    example: Example,
    facts: Mapping[str, Any] | None = None,
    *,
    dpi: int = 100,
    max_rows: int = 10,
) -> str:
    """One photo's localization (the ``localize`` command) as a self-contained page.

    Shows the same figure as the report's examples (PNG), the top predictions
    as lat/lon with distance and score, and ``facts`` (name -> value).
    """
    if not isinstance(example, Example):
        raise InputError(f"example must be an Example, got {type(example).__name__}")
    ex = _example_view(example, "example-1", dpi, "png", 90)
    topk = []
    for i in range(min(max_rows, len(example.topk_en_m))):
        e_, n_ = example.topk_en_m[i]
        lat, lon = offset_m(example.lat, example.lon, e_, n_)
        topk.append(
            {
                "rank": i + 1,
                "lat": f"{float(lat):.6f}",
                "lon": f"{float(lon):.6f}",
                "dist": fmt_distance(float(np.hypot(e_, n_))),
                "score": f"{example.topk_scores[i]:.4g}",
            }
        )
    if example.ground_truth_known:
        lead = f"{ex['verdict']} {ex['detail']}"
    else:
        lead = f"Most likely position of the photo: {ex['detail']}"
    return _ENV.get_template("localization.html").render(
        version=vglpipe.__version__,
        title=title,
        lead=lead,
        ex=ex,
        topk=topk,
        fact_rows=[(str(k), fmt_value(v)) for k, v in (facts or {}).items()],
    )


def write_localization_page(path: str | os.PathLike, *args: Any, **kwargs: Any) -> Path:
    """:func:`render_localization_page` written atomically to ``path``."""
    atomic_write_text(path, render_localization_page(*args, **kwargs))
    return Path(path)
