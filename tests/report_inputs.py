"""Synthetic report inputs: for tests, for trying out the layout, and as an
example of how to fill the input dataclasses.

    python tests/report_inputs.py /tmp/report.html [n_examples]

The numbers are made up (plausible shapes, not results). One example's creator
name is hostile HTML on purpose (``HOSTILE_USERNAME``), and one extra fact
too, so that escaping is always exercised.
"""

from __future__ import annotations

import datetime as dt
import sys

import cv2
import numpy as np
import pandas as pd

from vglpipe.report.data import Example, ExperimentResult, RunFacts, recall_key

HOSTILE_USERNAME = '<script>alert("pwned")</script>'
HOSTILE_FACT = '<img src=x onerror="alert(2)">&amp;'
NS = (1, 5, 10, 50, 100)
RADII = (25, 50, 100)


def synthetic_orthophoto(rng: np.random.Generator, size_px: int = 600) -> np.ndarray:
    """A plausible-looking aerial image: fields, a road grid, roofs and trees (RGB uint8)."""
    img = np.empty((size_px, size_px, 3), np.uint8)
    img[:] = (96, 122, 78)
    noise = rng.normal(0, 9, (size_px // 8, size_px // 8, 3))
    noise = cv2.resize(noise, (size_px, size_px), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img + noise + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(4, 8))):  # fields
        x, y = rng.integers(0, size_px, 2)
        w, h = rng.integers(60, 200, 2)
        col = tuple(int(c) for c in rng.choice([[150, 140, 95], [110, 140, 70], [125, 110, 80]]))
        cv2.rectangle(img, (int(x), int(y)), (int(x + w), int(y + h)), col, -1)
    for horizontal in (True, False):  # roads
        for pos in np.sort(rng.choice(np.arange(40, size_px - 40), size=3, replace=False)):
            p1, p2 = ((0, int(pos)), (size_px, int(pos + rng.integers(-40, 40)))) if horizontal else (
                (int(pos), 0), (int(pos + rng.integers(-40, 40)), size_px))
            cv2.line(img, p1, p2, (88, 88, 92), 11, cv2.LINE_AA)
            cv2.line(img, p1, p2, (200, 200, 190), 1, cv2.LINE_AA)
    for _ in range(45):  # roofs
        x, y = (int(v) for v in rng.integers(0, size_px, 2))
        w, h = (int(v) for v in rng.integers(10, 30, 2))
        col = tuple(int(c) for c in rng.choice([[150, 70, 60], [170, 170, 175], [90, 90, 100], [190, 150, 120]]))
        cv2.rectangle(img, (x, y), (x + w, y + h), col, -1)
        cv2.rectangle(img, (x, y), (x + w, y + h), (40, 40, 40), 1)
    for _ in range(120):  # trees
        x, y = (int(v) for v in rng.integers(0, size_px, 2))
        cv2.circle(img, (x, y), int(rng.integers(3, 9)), (40, 75, 35), -1, cv2.LINE_AA)
    return img


def synthetic_photo_jpeg(rng: np.random.Generator, w: int = 640, h: int = 480) -> bytes:
    """A simple street scene (sky, road, facades) encoded as JPEG."""
    img = np.zeros((h, w, 3), np.uint8)
    sky_top, sky_bot = np.array(rng.integers(150, 230, 3)), np.array([235, 235, 240])
    t = np.linspace(0, 1, h // 2)[:, None, None]
    img[: h // 2] = (sky_top * (1 - t) + sky_bot * t).astype(np.uint8)
    img[h // 2 :] = (80, 110, 90)
    road = np.array([[w * 0.42, h / 2], [w * 0.58, h / 2], [w * 0.95, h], [w * 0.05, h]], np.int32)
    cv2.fillPoly(img, [road], (90, 90, 95))
    cv2.line(img, (w // 2, h // 2), (w // 2, h), (230, 230, 230), 3)
    for side in (0, 1):
        for _ in range(3):
            bw = int(rng.integers(50, 120))
            x0 = int(rng.integers(0, w * 0.3)) if side == 0 else int(rng.integers(w * 0.62, w - 50))
            top = int(rng.integers(h * 0.12, h * 0.4))
            col = tuple(int(c) for c in rng.integers(60, 200, 3))
            cv2.rectangle(img, (x0, top), (x0 + bw, int(h * 0.55)), col, -1)
            for wy in range(top + 10, int(h * 0.5), 22):
                cv2.rectangle(img, (x0 + 8, wy), (x0 + 18, wy + 10), (50, 60, 80), -1)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    ok, enc = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return enc.tobytes()


def synthetic_example(
    rng: np.random.Generator,
    index: int,
    success: bool,
    username: str,
    half_extent_m: float = 300.0,
    cell_size_m: float = 30.0,
    radius_m: float = 50.0,
) -> Example:
    """One example with a scored cell grid around the ground truth and top-10 predictions."""
    off = rng.uniform(-cell_size_m / 2, cell_size_m / 2, 2)
    g = np.arange(-half_extent_m - cell_size_m, half_extent_m + cell_size_m + 1, cell_size_m)
    ee, nn = np.meshgrid(g + off[0], g + off[1])
    cells = np.column_stack([ee.ravel(), nn.ravel()])
    d_gt = np.hypot(*cells.T)
    # Smooth random field plus a peak: at the ground truth (success) or beside it, weaker (failure).
    field = cv2.GaussianBlur(rng.normal(0, 1, ee.shape), (0, 0), 2.0).ravel()
    peak_at = np.zeros(2) if success else rng.uniform(-250, 250, 2)
    d_peak = np.hypot(*(cells - peak_at).T)
    scores = 0.25 + 0.05 * field + (0.45 if success else 0.25) * np.exp(-((d_peak / 70.0) ** 2))
    order = np.argsort(-scores)
    local = [(cells[i], scores[i]) for i in order[:12]]
    if not success:  # the best matches are elsewhere in the state
        far = []
        for _ in range(4):
            ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(1500, 40000)
            far.append((np.array([np.cos(ang), np.sin(ang)]) * dist, 0.8 - 0.03 * len(far)))
        local = far + local
    local.sort(key=lambda p: -p[1])
    topk = np.array([p for p, _ in local[:10]])
    topk_scores = np.array([s for _, s in local[:10]])
    within = np.flatnonzero(np.hypot(*topk.T) <= radius_m)
    rank = int(within[0]) + 1 if within.size else None
    if success:
        rank = 1
        topk[0] = cells[np.argmin(d_gt)]
    lat = 42.36 + rng.uniform(-0.5, 0.5)
    lon = -71.06 + rng.uniform(-1.0, 1.0)
    return Example(
        photo_jpeg=synthetic_photo_jpeg(rng),
        image_id=str(100000000000000 + 7919 * index),
        creator_username=username,
        captured_at=dt.datetime(2015 + index % 9, 1 + index % 12, 3, (7 + 5 * index) % 24, 17),
        lat=lat,
        lon=lon,
        success=success,
        rank=rank,
        ortho=synthetic_orthophoto(rng),
        ortho_extent_m=(-half_extent_m, half_extent_m, -half_extent_m, half_extent_m),
        cells_en_m=cells,
        cell_scores=scores,
        topk_en_m=topk,
        topk_scores=topk_scores,
        radius_m=radius_m,
        cell_size_m=cell_size_m,
        experiment="demo model",
    )


def _recall(rng: np.random.Generator, strength: float) -> dict[str, float]:
    """Monotone in N and r; ``strength`` ~ R@1<50m."""
    out = {}
    for r in RADII:
        base = strength * (r / 50.0) ** 0.35 * rng.uniform(0.98, 1.02)
        for n in NS:
            out[recall_key(n, r)] = float(min(0.99, base * (1 + 0.55 * np.log10(n))))
    return out


def _chance(n_cells: int, cell_size_m: float = 30.0) -> dict[str, float]:
    out = {}
    for r in RADII:
        per_query = min(n_cells, np.pi * r * r / cell_size_m**2)  # cells within r of a photo
        for n in NS:
            out[recall_key(n, r)] = float(1 - (1 - per_query / n_cells) ** n)
    return out


def _strata(rng, keys, strength, values, counts, min_count, trend) -> pd.DataFrame:
    rows = []
    for v, c, t in zip(values, counts, trend, strict=True):
        row = {"count": int(c), "flagged": bool(c < min_count)}
        for k, base in keys.items():
            row[k] = float(np.clip(base * t * strength + rng.normal(0, 0.01), 0, 1)) if c else np.nan
        rows.append(row)
    return pd.DataFrame(rows).assign(**{"_s": list(values)}).rename(columns={"_s": "stratum"})


def synthetic_experiment(rng, name, description, strength, n_queries, chance, min_count=50, steps=2000):
    recall = _recall(rng, strength)
    years = list(range(2014, 2025))
    year_counts = [12, 40, 90, 160, 210, 260, 300, 420, 380, 150, 30]
    year_trend = [0.55, 0.62, 0.7, 0.78, 0.85, 0.9, 0.95, 1.1, 1.0, 0.92, 0.8]
    hours = list(range(24))
    hour_counts = [int(6 + 160 * np.exp(-(((h - 13) / 4.0) ** 2))) for h in hours]
    hour_trend = [0.7 if (h < 6 or h >= 19) else 1.05 for h in hours]
    keys = {k: recall[k] for k in ("R@1<50m", "R@10<50m")}
    by_year = _strata(rng, keys, 1.0, years, year_counts, min_count, year_trend).rename(columns={"stratum": "year"})
    by_hour = _strata(rng, keys, 1.0, hours, hour_counts, min_count, hour_trend).rename(columns={"stratum": "hour"})
    return ExperimentResult(
        name=name,
        description=description,
        recall=recall,
        chance=chance,
        n_queries=n_queries,
        by_year=by_year,
        by_hour=by_hour,
        min_stratum_count=min_count,
        facts={
            "checkpoint": f"sha256:{rng.bytes(8).hex()}",
            "training steps": steps,
            "embedding dim": 1024,
            "index": "faiss IndexHNSWFlat (M=32, efSearch=128)",
            "query time per photo (ms)": float(rng.uniform(2, 9)),
        },
    )


def synthetic_inputs(seed: int = 0, n_examples: int = 6, with_second_model: bool = True) -> dict:
    """Keyword arguments for :func:`vglpipe.report.render_report`.

    Two trained experiments (``with_second_model``) plus an untrained
    baseline; ``n_examples`` examples, alternating success/failure; the first
    example's creator is :data:`HOSTILE_USERNAME`.
    """
    rng = np.random.default_rng(seed)
    n_cells, n_queries = 2_468_000, 2_052
    chance = _chance(n_cells)
    experiments = [synthetic_experiment(rng, "demo model", "demo model, 2,000 steps", 0.31, n_queries, chance)]
    if with_second_model:
        experiments.append(
            synthetic_experiment(rng, "demo model (500 steps)", "same model after 500 steps", 0.12, n_queries,
                                 chance, steps=500)
        )
    experiments.append(
        synthetic_experiment(rng, "untrained", "same architecture, random weights (untrained baseline)",
                             0.0004, n_queries, chance, steps=0)
    )
    examples = [
        synthetic_example(rng, i, success=(i % 2 == 0), username=HOSTILE_USERNAME if i == 0 else f"user_{i}")
        for i in range(n_examples)
    ]
    facts = RunFacts(
        region="massachusetts-demo",
        n_photos=n_queries + 23,
        n_cells=n_cells,
        skipped={"no orthophoto coverage": 17, "photo not decodable": 4, "panorama": 2},
        timings_s={"crawl": 812.4, "cells": 95.0, "embed cells": 5310.2, "index": 41.7, "evaluate": 12.3,
                   "report": 3.1},
        generated_at=dt.datetime(2025, 3, 14, 9, 26, 53),
        extra={"aerial imagery": "MassGIS 2021, 0.15 m/px", "cell size (m)": 30, "note": HOSTILE_FACT},
    )
    return {
        "title": "Statewide visual geolocalization — synthetic demo",
        "experiments": experiments,
        "examples": examples,
        "facts": facts,
        "main_experiment": "demo model",
    }


def main(argv: list[str] | None = None) -> int:
    from vglpipe.report.page import write_report

    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    n = int(argv[1]) if len(argv) > 1 else 12
    path = write_report(argv[0], **synthetic_inputs(n_examples=n))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
