"""Map polygons as the Scene's padded rings, exactly: every vertex kept, nothing cut.

The scorer tests ego points against the drivable map with NAVSIM's strict ``contains``; the
Scene stores each polygon as one ring [V, 2] (``types.py``, "Padding"). A polygon is written
vertex for vertex (no simplification). A polygon with holes, or a multi-polygon, becomes one
ring by *bridges* (the keyhole construction): after the first exterior, every further ring
(hole or part) is entered from and left back to the first vertex along the same segment. Each
bridge is traversed twice, so it adds an even number of crossings to any ray: containment by
crossing parity is unchanged, and the ring is exact. Only points within the geometry tolerance
(1e-6 m) of a bridge read as on the boundary. Intersections with and distances to such a ring
would see the bridge: the red-light connectors (TLC, PDM-Closed's leads) must be simple (as
NAVSIM's lane connectors are), or the reader refuses the scene (``simple_only``).

More polygons than ``P`` or a ring longer than ``V`` raise ``BadInputError`` (reason
``map_too_large``): the scene is refused (or skipped and counted), never silently altered.
"""

from __future__ import annotations

import numpy as np
from shapely.geometry import Polygon
from shapely.geometry.polygon import orient

from irlvla_jax.data.errors import BadInputError

SIZES_FIX = "raise config.data.sizes.{field} (the Scene keeps the map exactly)"


def _coords(ring) -> np.ndarray:
    """A shapely ring's vertices [n, 2], without the closing repeat."""
    return np.asarray(ring.coords)[:-1, :2]


def polygon_ring(geom, where: str = "", simple_only: str = "") -> np.ndarray:
    """A Polygon or MultiPolygon as one ring [n, 2] (float64, no closing vertex), every vertex
    kept. A simple polygon is its exterior as stored; holes and further parts are joined by
    bridges (module docstring), parts oriented counter-clockwise and holes clockwise, so that a
    non-zero fill draws them right too.

    simple_only: the polygon's role, for polygons the scorer intersects with or measures
    distances to (red-light connectors), where a bridge would count as boundary: one with
    holes or several parts raises BadInputError (``bad_map``, naming ``where``) instead."""
    parts = [geom] if isinstance(geom, Polygon) else list(getattr(geom, "geoms", [geom]))
    if len(parts) == 1 and not parts[0].interiors:
        return _coords(parts[0].exterior)
    if simple_only:
        raise BadInputError(where, "bad_map", f"a {simple_only} has holes or several parts "
                            f"({geom.geom_type}); the scorer intersects it and measures "
                            "distances to it as one simple ring",
                            "fix the map polygon (NAVSIM's lane connectors are simple)")
    rings = []
    for part in parts:
        part = orient(part, 1.0)
        rings += [_coords(part.exterior)] + [_coords(h) for h in part.interiors]
    first = rings[0]
    out = [first, first[:1]]
    for ring in rings[1:]:
        out += [ring, ring[:1], first[:1]]
    return np.concatenate(out)[:-1]       # the wrap-around edge closes the last bridge


def pad_rings(rings: list[np.ndarray], P: int, V: int, what: str, where: str,
              count_field: str = "max_polygons") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rings -> (polygons [P, V, 2] f32, vertex_valid [P, V] bool, valid [P] bool); padded
    vertices repeat the ring's first vertex (types.py). ``what`` names one ring in errors (a
    singular noun), ``count_field`` the size that bounds their number.

    Raises BadInputError (``map_too_large``) when there are more than P rings or one has more
    than V vertices.
    """
    if len(rings) > P:
        raise BadInputError(where, "map_too_large", f"{len(rings)} {what}s in the scene, the "
                            f"Scene holds {P}", SIZES_FIX.format(field=count_field))
    longest = max((len(r) for r in rings), default=0)
    if longest > V:
        raise BadInputError(where, "map_too_large", f"a {what} has {longest} vertices, the "
                            f"Scene holds {V}",
                            SIZES_FIX.format(field="max_polygon_vertices"))
    poly = np.zeros((P, V, 2), np.float32)
    vv = np.zeros((P, V), bool)
    for i, r in enumerate(rings):
        poly[i, :len(r)] = r
        poly[i, len(r):] = r[0]
        vv[i, :len(r)] = True
    valid = np.arange(P) < len(rings)
    return poly, vv, valid
