"""Spherical-earth helpers (vectorized numpy)."""

from __future__ import annotations

import numpy as np

#: Earth radius of the spherical model, metres (WGS84 semi-major axis, as in the reference code).
EARTH_RADIUS_M = 6_378_137.0


def haversine_m(lat1, lon1, lat2, lon2, radius_m: float = EARTH_RADIUS_M) -> np.ndarray:
    """Great-circle distance in metres between points given in degrees (broadcasting)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * radius_m * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def offset_m(lat, lon, east_m, north_m, ref_lat=None) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) moved by small offsets in metres east/north (local equirectangular).

    Longitude metres are scaled by cos(``ref_lat``), the start latitude unless given.
    """
    ref = np.radians(lat if ref_lat is None else ref_lat)
    return (
        lat + np.degrees(np.asarray(north_m) / EARTH_RADIUS_M),
        lon + np.degrees(np.asarray(east_m) / (EARTH_RADIUS_M * np.cos(ref))),
    )
