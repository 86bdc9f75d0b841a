"""The search grid: boxes of at most ``max_box_deg`` aligned to multiples of it, split in four
when an answer is capped; a box key is ``"i:j"`` plus one quadrant digit per split."""

from __future__ import annotations

import math

import shapely
from shapely.geometry import box as shapely_box

from vglpipe.errors import InputError

def box_bounds(key: str, d: float) -> tuple[float, float, float, float]:
    """Bounds (minlon, minlat, maxlon, maxlat) of a box key ``"i:j"`` or ``"i:j/0312"``."""
    root, _, path = key.partition("/")
    i, j = (int(v) for v in root.split(":"))
    for q in path:  # integer box coordinates at depth len(path): exact, so neighbours share edges
        q = int(q)
        i, j = 2 * i + (q & 1), 2 * j + (q >> 1)
    scale = d / (1 << len(path))
    return i * scale, j * scale, (i + 1) * scale, (j + 1) * scale


def root_boxes(region, d: float) -> list[str]:
    """Keys of the grid boxes (side ``d`` degrees, aligned to multiples of ``d``) meeting ``region``."""
    minx, miny, maxx, maxy = region.bounds
    i0, i1 = math.floor(minx / d), math.ceil(maxx / d)
    j0, j1 = math.floor(miny / d), math.ceil(maxy / d)
    if (i1 - i0) * (j1 - j0) > 50_000_000:
        raise InputError(f"region bounds {region.bounds} too large for {d}° boxes")
    shapely.prepare(region)
    keys = []
    for i in range(i0, i1):
        for j in range(j0, j1):
            if region.intersects(shapely_box(i * d, j * d, (i + 1) * d, (j + 1) * d)):
                keys.append(f"{i}:{j}")
    return keys


def fmt_bbox(b) -> str:
    return ",".join(f"{v:.7f}" for v in b)

