"""Figures of the report, drawn with matplotlib (object API, Agg/SVG canvases).

No pyplot: figures are plain :class:`matplotlib.figure.Figure` objects, so no
global state, no GUI backend, and nothing leaks between calls. Outside strings
(experiment names) only appear in legends after :func:`mpl_text` neutralises
matplotlib's own markup (``$...$`` mathtext, leading ``_`` = hidden label).
Photo attribution and other outside metadata are never drawn into figures; the
HTML captions carry them (escaped).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import cv2
import matplotlib
import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import PolyCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from vglpipe.errors import InputError
from vglpipe.report.data import Example, ExperimentResult, parse_recall_key, recall_key

#: rcParams for every figure: embedded glyphs (SVG text as paths: no font needed
#: in the browser), deterministic SVG ids, matplotlib's bundled font.
RC = {
    "svg.fonttype": "path",
    "svg.hashsalt": "vglpipe-report",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "legend.frameon": False,
}
#: No "Date"/"Creator" (with a URL) in the files: output is reproducible and URL-free.
SVG_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}

CHANCE_COLOR = "0.45"
#: Size of :func:`example_figure` in inches (pixels = inches x dpi).
EXAMPLE_FIGSIZE = (10.0, 5.0)
FLAG_HATCH = "////"
SCORE_CMAP = "turbo"


def mpl_text(s: str) -> str:
    """An outside string made safe for a matplotlib label (literal text, never hidden)."""
    s = str(s).replace("\\", "\\\\").replace("$", r"\$")
    return " " + s if s.startswith("_") else s


def experiment_colors(experiments: Sequence[ExperimentResult]) -> dict[str, tuple]:
    cmap = matplotlib.colormaps["tab10"]
    return {e.name: cmap(i % 10) for i, e in enumerate(experiments)}


def to_svg(fig: Figure) -> bytes:
    buf = io.BytesIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buf, format="svg", metadata=SVG_METADATA, bbox_inches="tight")
    # The DOCTYPE names the SVG 1.1 DTD by URL; nothing needs it, and the file stays URL-free
    # (the remaining xmlns attributes are namespace names, never fetched).
    return re.sub(rb"<!DOCTYPE[^>]*>\s*", b"", buf.getvalue(), count=1)


def to_raster(fig: Figure, fmt: str = "png", dpi: int = 100, jpeg_quality: int = 85) -> bytes:
    """Render with the Agg canvas and encode as PNG or JPEG (via OpenCV)."""
    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    bgr = cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR)
    if fmt == "png":
        ok, enc = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    elif fmt in ("jpeg", "jpg"):
        ok, enc = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        raise ValueError(f"unknown raster format {fmt!r} (png or jpeg)")
    if not ok:  # pragma: no cover - OpenCV encoders do not fail on valid arrays
        raise RuntimeError(f"OpenCV could not encode the figure as {fmt}")
    return enc.tobytes()


def _pct_axis(ax, which: str = "y") -> None:
    fmt = FuncFormatter(lambda v, _pos: f"{v:g}%")
    (ax.yaxis if which == "y" else ax.xaxis).set_major_formatter(fmt)


# --------------------------------------------------------------------- curves


def recall_curves_svg(experiments: Sequence[ExperimentResult], chance: dict[str, float]) -> bytes:
    """Recall vs N, one panel per radius r, one line per experiment, chance dashed."""
    keys = {parse_recall_key(k) for e in experiments for k in e.recall}
    radii = sorted({r for _, r in keys})
    ns = sorted({n for n, _ in keys})
    colors = experiment_colors(experiments)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(max(3.4 * len(radii), 4.5), 3.3), layout="constrained")
        axes = fig.subplots(1, len(radii), sharey=True, squeeze=False)[0]
        ymax = 0.0
        for ax, r in zip(axes, radii, strict=True):
            for e in experiments:
                pts = [(n, 100 * e.recall[recall_key(n, r)]) for n in ns if recall_key(n, r) in e.recall]
                if pts:
                    x, y = zip(*pts, strict=True)
                    ax.plot(x, y, marker="o", ms=4, lw=1.8, color=colors[e.name], label=mpl_text(e.name))
                    ymax = max(ymax, *y)
            pts = [(n, 100 * chance[recall_key(n, r)]) for n in ns if recall_key(n, r) in chance]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.plot(x, y, ls="--", lw=1.2, marker=".", color=CHANCE_COLOR, label="chance (random ranking)")
                ymax = max(ymax, *y)
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(FixedLocator(ns))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
            ax.set_xlabel("N (top-N cells)")
            ax.set_title(f"R@N < {r} m")
            ax.grid(True, alpha=0.3)
            _pct_axis(ax)
        axes[0].set_ylabel("recall")
        axes[0].set_ylim(0, max(5.0, ymax * 1.08))
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)))
        return to_svg(fig)


# --------------------------------------------------------------------- strata


def strata_svg(
    experiments: Sequence[ExperimentResult],
    main: ExperimentResult,
    attr: str,
    metric: str,
    chance: float | None,
) -> bytes:
    """Fig. 6 style: recall per stratum (bars: main experiment; markers: the
    others) over a panel of photo counts. Flagged strata are hatched and pale."""
    table = getattr(main, attr)
    if table is None:
        raise InputError(f"experiment {main.name!r} has no {attr} table")
    col = "year" if attr == "by_year" else "hour"
    colors = experiment_colors(experiments)
    x = table[col].to_numpy()
    flagged = table["flagged"].to_numpy(bool)
    with matplotlib.rc_context(RC):
        width = 7.5 if col == "hour" else max(4.5, min(9.0, 0.55 * len(x) + 2.5))
        fig = Figure(figsize=(width, 4.0), layout="constrained")
        ax, axn = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.2])
        y = 100 * table[metric].to_numpy(float)
        base = colors[main.name]
        pale = tuple(0.35 * c + 0.65 for c in base[:3]) + (1.0,)  # opaque: hatch stays visible
        face = [pale if f else base for f in flagged]
        bars = ax.bar(x, np.nan_to_num(y), width=0.8, color=face, edgecolor=base, lw=0.8, label=mpl_text(main.name))
        for b, f in zip(bars, flagged, strict=True):
            if f:
                b.set_hatch(FLAG_HATCH)
        ymax = np.nanmax(y) if np.isfinite(y).any() else 0.0
        for e in experiments:
            t = getattr(e, attr)
            if e is main or t is None or metric not in t.columns:
                continue
            ye = 100 * t[metric].to_numpy(float)
            ax.plot(t[col].to_numpy(), ye, ls="none", marker="D", ms=5, mec="white", mew=0.6,
                    color=colors[e.name], label=mpl_text(e.name))
            if np.isfinite(ye).any():
                ymax = max(ymax, np.nanmax(ye))
        if chance is not None:
            ax.axhline(100 * chance, ls="--", lw=1.0, color=CHANCE_COLOR, label="chance")
        ax.set_ylim(0, max(5.0, ymax * 1.15))
        ax.set_ylabel(f"{metric.replace('<', ' < ')}")
        _pct_axis(ax)
        ax.grid(True, axis="y", alpha=0.3)
        counts = table["count"].to_numpy()
        cb = axn.bar(x, counts, width=0.8, color=["0.8" if f else "0.55" for f in flagged], edgecolor="0.4", lw=0.6)
        for b, f in zip(cb, flagged, strict=True):
            if f:
                b.set_hatch(FLAG_HATCH)
        axn.set_ylabel("photos")
        axn.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:,.0f}"))
        axn.grid(True, axis="y", alpha=0.3)
        if col == "hour":
            axn.set_xticks(range(0, 24))
            axn.set_xlim(-0.7, 23.7)
            axn.set_xlabel("local hour of capture")
        else:
            axn.set_xticks(x)
            axn.set_xticklabels([str(v) for v in x], rotation=45 if len(x) > 10 else 0)
            axn.set_xlabel("year of capture")
        handles, labels = ax.get_legend_handles_labels()
        main_label = mpl_text(main.name)
        if main_label in labels:  # bars (main experiment) first, then markers, chance, flag
            i = labels.index(main_label)
            handles.insert(0, handles.pop(i))
            labels.insert(0, labels.pop(i))
        if flagged.any():
            handles.append(Patch(facecolor="white", edgecolor="0.3", hatch=FLAG_HATCH))
            labels.append("flagged: too few photos")
        fig.legend(handles, labels, loc="outside upper center", ncol=min(4, len(labels)))
        return to_svg(fig)


# -------------------------------------------------------------------- ablations


def ablation_svg(summary) -> bytes:
    """One ablation factor (a :class:`vglpipe.report.ablations.FactorSummary`): a row per variant
    (the paper's better one on top, in the accent colour) with a dot per seed on the summary's
    metric, the min–max spread as a line and the mean as a bar."""
    metric = summary.metric
    variants = list(summary.variants)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(6.0, 0.9 + 0.42 * len(variants)), layout="constrained")
        ax = fig.subplots()
        xmax = 0.0
        for i, v in enumerate(variants):
            y = len(variants) - 1 - i
            color = "#1f6fb2" if v.variant == summary.better else "0.35"
            vals = [100 * x for x in v.present(metric)]
            if not vals:
                continue
            xmax = max(xmax, *vals)
            ax.plot([min(vals), max(vals)], [y, y], color=color, lw=1.4, alpha=0.6)
            ax.plot(vals, [y] * len(vals), ls="none", marker="o", ms=6, mec="white", mew=0.7, color=color)
            mean = sum(vals) / len(vals)
            ax.plot([mean, mean], [y - 0.28, y + 0.28], color=color, lw=2.4)
        ax.set_yticks(range(len(variants)))
        ax.set_yticklabels([mpl_text(v.variant) for v in reversed(variants)])
        ax.set_ylim(-0.6, len(variants) - 0.4)
        ax.set_xlim(0, max(5.0, xmax * 1.15))
        ax.set_xlabel(f"{metric.replace('<', ' < ')} (dots: seeds; bar: mean)")
        _pct_axis(ax, "x")
        ax.grid(True, axis="x", alpha=0.3)
        return to_svg(fig)


# -------------------------------------------------------------------- example


def decode_photo(example: Example, max_side: int = 640) -> np.ndarray:
    """The query photo as RGB uint8, longest side at most ``max_side``."""
    bgr = cv2.imdecode(np.frombuffer(example.photo_jpeg, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"example {example.image_id!r}: photo bytes are not a decodable image")
    h, w = bgr.shape[:2]
    s = max_side / max(h, w)
    if s < 1:
        bgr = cv2.resize(bgr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _shrink(img: np.ndarray, max_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    s = max_side / max(h, w)
    if s >= 1:
        return img
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def estimate_cell_size(centres: np.ndarray, sample: int = 200, default: float = 30.0) -> float:
    """Median nearest-neighbour spacing of cell centres (for a sample of them).

    Only used when the caller gives no ``cell_size_m``; memory stays bounded
    (chunks of 16 sample points against all centres).
    """
    if len(centres) < 2:
        return default
    rng = np.random.default_rng(0)
    idx = rng.choice(len(centres), size=min(sample, len(centres)), replace=False)
    nn = []
    for chunk in np.array_split(idx, max(1, len(idx) // 16)):
        d = np.hypot(centres[chunk, None, 0] - centres[None, :, 0], centres[chunk, None, 1] - centres[None, :, 1])
        d[d == 0] = np.inf
        nn.append(d.min(axis=1))
    nn = np.concatenate(nn)
    nn = nn[np.isfinite(nn)]
    return float(np.median(nn)) if nn.size else default


def _clamp_to_box(p: np.ndarray, box: tuple[float, float, float, float], inset: float) -> np.ndarray:
    """Point on the box (shrunk by ``inset``) in the direction of ``p`` from the box's centre."""
    w, e, s, n = box[0] + inset, box[1] - inset, box[2] + inset, box[3] - inset
    c = np.array([(w + e) / 2, (s + n) / 2])
    d = p - c
    scale = np.inf
    for dv, lo, hi, cv in ((d[0], w, e, c[0]), (d[1], s, n, c[1])):
        if dv > 0:
            scale = min(scale, (hi - cv) / dv)
        elif dv < 0:
            scale = min(scale, (lo - cv) / dv)
    return c + min(scale, 1.0) * d


_OUTLINE = [patheffects.withStroke(linewidth=3, foreground="black")]
_OUTLINE_THIN = [patheffects.withStroke(linewidth=2.6, foreground="black")]


def example_figure(
    example: Example,
    fmt: str = "png",
    dpi: int = 100,
    max_markers: int = 10,
    jpeg_quality: int = 85,
) -> bytes:
    """The query photo beside the orthophoto with the score heatmap (Fig. 1/5/9 style).

    Cells are drawn as semi-transparent squares coloured by score (low scores
    fainter); the colour scale spans the shown cells' scores up to the top-1
    score, so a failure (top-1 elsewhere) looks cool around the ground truth.
    The top ``max_markers`` predictions are numbered by rank; those outside the
    map are drawn as hollow diamonds on its edge, in their direction. With a
    known ground truth: crosshair at it and the r-circle around it.
    Returns encoded PNG (default) or JPEG bytes.
    """
    photo = decode_photo(example)
    ortho = _shrink(example.ortho, 900)
    west, east, south, north = example.ortho_extent_m
    span = max(east - west, north - south)
    ph, pw = photo.shape[:2]
    map_aspect = (east - west) / (north - south)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=EXAMPLE_FIGSIZE)
        # The map gets more room than the photo (which keeps its aspect, letterboxed at the top).
        gs = fig.add_gridspec(1, 3, width_ratios=[0.8 * pw / ph, map_aspect, 0.04], wspace=0.12,
                              left=0.01, right=0.93, top=0.97, bottom=0.17)
        axp = fig.add_subplot(gs[0, 0])
        axp.imshow(photo, interpolation="antialiased")
        axp.set_anchor("N")
        axp.set_axis_off()
        ax = fig.add_subplot(gs[0, 1])
        ax.imshow(ortho, extent=(west, east, south, north), origin="upper", interpolation="antialiased")

        # Heatmap over the cells that touch the map.
        cells, scores = example.cells_en_m, example.cell_scores
        margin = example.cell_size_m or 0.1 * span
        inside = (
            (cells[:, 0] > west - margin) & (cells[:, 0] < east + margin)
            & (cells[:, 1] > south - margin) & (cells[:, 1] < north + margin)
            & np.isfinite(scores)
        )
        cells, scores = cells[inside], scores[inside]
        half = (example.cell_size_m or estimate_cell_size(cells)) / 2
        touches = (  # cells that overlap the map (they also set the colour scale)
            (cells[:, 0] > west - half) & (cells[:, 0] < east + half)
            & (cells[:, 1] > south - half) & (cells[:, 1] < north + half)
        )
        cells, scores = cells[touches], scores[touches]
        vmin = float(scores.min()) if scores.size else 0.0
        vmax = float(scores.max()) if scores.size else 1.0
        if example.topk_scores.size and np.isfinite(example.topk_scores[0]):
            vmax = max(vmax, float(example.topk_scores[0]))
        if not vmax > vmin:
            vmax = vmin + 1.0
        norm = Normalize(vmin, vmax)
        cmap = matplotlib.colormaps[SCORE_CMAP]
        if scores.size:
            t = norm(scores)
            rgba = cmap(t)
            rgba[:, 3] = 0.12 + 0.58 * np.clip(t, 0, 1)
            offs = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
            verts = cells[:, None, :] + offs[None, :, :]
            ax.add_collection(PolyCollection(verts, facecolors=rgba, edgecolors="none"))
        cax = fig.add_subplot(gs[0, 2])
        sm = ScalarMappable(norm=norm, cmap=cmap)
        cb = fig.colorbar(sm, cax=cax)
        cb.set_label("score")
        cb.ax.tick_params(labelsize=7)

        handles, labels = [], []
        if example.ground_truth_known:
            r = example.radius_m
            ax.add_patch(Circle((0, 0), r, fill=False, ec="white", lw=1.8, path_effects=_OUTLINE, zorder=4))
            # Crosshair as four ticks outside the circle pointing at the ground truth (Fig. 1),
            # so that the numbered predictions near it never hide it.
            a, b = 1.12 * r, 1.12 * r + max(0.07 * span, 0.6 * r)
            for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                ax.plot([dx * a, dx * b], [dy * a, dy * b], color="white", lw=2.0, solid_capstyle="butt",
                        path_effects=_OUTLINE_THIN, zorder=5)
            handles += [
                Line2D([], [], marker="+", ms=10, mew=2, color="black", ls="none"),
                Line2D([], [], marker="o", ms=10, mfc="none", mec="black", ls="none"),
            ]
            labels += ["ground truth", f"r = {r:g} m"]

        box = (west, east, south, north)
        any_out = False
        k = min(max_markers, len(example.topk_en_m))
        for i in reversed(range(k)):  # rank 1 drawn last (on top)
            p = example.topk_en_m[i]
            out = not (west <= p[0] <= east and south <= p[1] <= north)
            q = _clamp_to_box(p, box, inset=0.045 * span) if out else p
            any_out |= out
            top = i == 0
            face = "#00e5ff" if top else "white"
            if out:
                ax.plot(*q, marker="D", ms=12, mfc="none", mec=face, mew=2.0, zorder=6,
                        path_effects=_OUTLINE)
                ax.text(*q, str(i + 1), ha="center", va="center", fontsize=7, fontweight="bold",
                        color=face, zorder=7, path_effects=_OUTLINE)
            else:
                ax.plot(*q, marker="o", ms=10, mfc=face, mec="black", mew=0.8, zorder=6)
                ax.text(*q, str(i + 1), ha="center", va="center", fontsize=6.5, fontweight="bold",
                        color="black", zorder=7)
        if k:
            handles.append(Line2D([], [], marker="o", ms=9, mfc="#00e5ff", mec="black", ls="none"))
            labels.append("top-1 prediction")
        if k > 1:
            handles.append(Line2D([], [], marker="o", ms=9, mfc="white", mec="black", ls="none"))
            labels.append(f"top-{k} (number = rank)")
        if any_out:
            handles.append(Line2D([], [], marker="D", ms=8, mfc="none", mec="black", mew=1.5, ls="none"))
            labels.append("off the map: at its edge, in its direction")

        ax.set_xlim(west, east)
        ax.set_ylim(south, north)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
        ax.set_xlabel("east (m)", fontsize=8)
        ax.set_ylabel("north (m)", fontsize=8, labelpad=1)
        for sp in ("top", "right"):
            ax.spines[sp].set_visible(True)
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(3, len(handles)), fontsize=8,
                       bbox_to_anchor=(0.5, 0.0))
        return to_raster(fig, fmt=fmt, dpi=dpi, jpeg_quality=jpeg_quality)
