"""Demo regions' boundaries: a notched square with a pond around a centre (config ``demo.regions``).

As the paper trains on other states and tests on Massachusetts, the shipped demo trains on
``demo-train`` and tests on ``demo-test``; each is a synthetic world drawn from its own
seed (see :mod:`vglpipe.demo.world`). Boundaries are non-convex and have a hole (a pond),
so the same polygon code paths run as for a real state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import Polygon

from vglpipe.geo.sphere import offset_m


@dataclass(frozen=True)
class DemoRegion:
    """The square of side ``size_m`` around a centre that bounds a demo region's polygon."""

    center_lat: float
    center_lon: float
    size_m: float

    def boundary(self) -> Polygon:
        """A non-convex polygon with a hole, inside the ``size_m`` square around the centre."""
        h = self.size_m / 2
        # local metres east/north -> an "E"-less notched square with a pond
        outer = [(-h, -h), (h, -h), (h, 0.2 * h), (0.3 * h, 0.2 * h), (0.3 * h, h), (-h, h)]
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        pond = [(-0.4 * h + 0.15 * h * np.cos(a), -0.4 * h + 0.1 * h * np.sin(a)) for a in t]
        return Polygon(self._to_lonlat(outer), [self._to_lonlat(pond)])

    def _to_lonlat(self, pts):
        east, north = np.asarray(pts, dtype=np.float64).T
        lat, lon = offset_m(self.center_lat, self.center_lon, east, north)
        return [(float(x), float(y)) for x, y in zip(lon, lat)]


def photo_positions(
    region: DemoRegion, n: int, seed: int, outside_fraction: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Random photo positions (lat, lon), mostly inside the region, some outside it."""
    rng = np.random.default_rng(seed)
    poly = region.boundary()
    minx, miny, maxx, maxy = poly.bounds
    dx, dy = (maxx - minx) * 0.1, (maxy - miny) * 0.1
    lon = rng.uniform(minx - dx, maxx + dx, n * 3)
    lat = rng.uniform(miny - dy, maxy + dy, n * 3)
    inside = shapely.contains_xy(poly, lon, lat)
    n_out = int(round(n * outside_fraction))
    idx = np.concatenate([np.flatnonzero(inside)[: n - n_out], np.flatnonzero(~inside)[:n_out]])
    rng.shuffle(idx)
    return lat[idx], lon[idx]

