"""Numpy polyline helpers the synthetic world is built from (float64, host-side).

:mod:`irlvla_jax.geometry` has ``jnp`` counterparts for the scorer; these stay numpy so the
generated world does not depend on the accelerator's float behaviour.
"""

from __future__ import annotations

import math

import numpy as np
from shapely.geometry import Polygon


def polyline_arrays(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xy [N,2] -> (cumulative arclength [N], heading [N] per nuPlan's rule, curvature [N])."""
    seg = np.diff(xy, axis=0)
    ds = np.hypot(seg[:, 0], seg[:, 1])
    s = np.concatenate([[0.0], np.cumsum(ds)])
    h = np.arctan2(seg[:, 1], seg[:, 0])
    heading = np.concatenate([h, h[-1:]])
    dh = np.abs(np.angle(np.exp(1j * np.diff(h)))) if len(h) > 1 else np.zeros(0)
    kappa = np.zeros(len(xy))
    if len(dh):
        kappa[1:-1] = dh / np.maximum(0.5 * (ds[:-1] + ds[1:]), 1e-6)
    return s, heading, kappa


def offset_polyline(xy: np.ndarray, off: float) -> np.ndarray:
    """Offset polyline xy [N,2] by ``off`` metres to its left (negative: right) -> [N,2]."""
    t = np.gradient(xy, axis=0)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return xy + off * np.stack([-t[:, 1], t[:, 0]], 1)


def band_polygon(xy: np.ndarray, left: float, right: float) -> Polygon:
    """Polygon between the offsets ``left`` and ``right`` (left > right) of a polyline xy [N,2]."""
    return Polygon(np.concatenate([offset_polyline(xy, left), offset_polyline(xy, right)[::-1]]))


def hermite_curve(p0, h0, p1, h1, n: int = 16) -> np.ndarray:
    """Cubic Hermite curve [n,2] from p0 [2] heading h0 to p1 [2] heading h1 (a circle-like
    turn)."""
    p0, p1 = np.asarray(p0), np.asarray(p1)
    chord = float(np.linalg.norm(p1 - p0))
    turn = abs(math.remainder(h1 - h0, 2 * math.pi))
    mag = chord * (1.0 + 0.17 * math.sin(turn))
    m0 = mag * np.array([math.cos(h0), math.sin(h0)])
    m1 = mag * np.array([math.cos(h1), math.sin(h1)])
    t = np.linspace(0, 1, n)[:, None]
    return ((2 * t**3 - 3 * t**2 + 1) * p0 + (t**3 - 2 * t**2 + t) * m0
            + (-2 * t**3 + 3 * t**2) * p1 + (t**3 - t**2) * m1)
