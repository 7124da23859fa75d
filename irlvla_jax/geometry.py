"""SE(2) transforms, oriented boxes and polygon predicates — pure ``jnp``, batched, jit-able.

Everything the EPDMS scorer asks of shapely, re-expressed on padded fixed-shape arrays:

* Polygons are ``[V, 2]`` exterior rings without the closing vertex. Padded vertices repeat
  vertex 0 (see ``irlvla_jax/types.py``), so every edge ``(v[i], v[(i + 1) % V])`` is either a
  real edge or has zero length; no predicate here needs the vertex mask.
* Boxes (``box_corners``/``ego_corners``) have corners in the nuPlan ``OrientedBox`` order
  FL, RL, RR, FR.
* Predicates follow shapely's conventions: ``intersects`` counts touching, ``contains`` of a
  point is strict (boundary points are outside), ``distance`` is 0 for intersecting shapes.

Broadcasting: functions documented with ``[...]`` accept any leading shape; the others are for
a single pair and are meant to be ``jax.vmap``-ed.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

# --- Pacifica (nuPlan vehicle_parameters.py); the scorer always uses these --------------------
EGO_LENGTH = 5.176
EGO_WIDTH = 2.297
EGO_HALF_LENGTH = 2.588
EGO_HALF_WIDTH = 1.1485
EGO_WHEEL_BASE = 3.089
EGO_REAR_AXLE_TO_CENTER = 1.461   # half_length - rear_length

# Points this close to a polygon edge count as "on the boundary" (metres). Strict containment
# (shapely ``contains``) excludes them; float32 coordinates carry ~1e-5 m at 100 m.
_BOUNDARY_EPS = 1e-6


# ----------------------------------------------------------------------------------------------
# SE(2)

def wrap_angle(a):
    """Wrap angles to [-pi, pi). ``a`` [...] -> [...]."""
    return (a + jnp.pi) % (2.0 * jnp.pi) - jnp.pi


def _rotate(xy, theta):
    c, s = jnp.cos(theta), jnp.sin(theta)
    return jnp.stack([c * xy[..., 0] - s * xy[..., 1], s * xy[..., 0] + c * xy[..., 1]], -1)


def to_global(local, origin):
    """Compose poses: ``local`` [...,3] expressed in the frame of ``origin`` [...,3] -> [...,3]
    in the frame ``origin`` is expressed in (nuPlan ``relative_to_absolute_poses``; heading
    wrapped)."""
    xy = _rotate(local[..., :2], origin[..., 2]) + origin[..., :2]
    return jnp.concatenate([xy, wrap_angle(local[..., 2] + origin[..., 2])[..., None]], -1)


def to_local(glob, origin):
    """Inverse of :func:`to_global`: ``glob`` [...,3] -> [...,3] in the frame of ``origin``
    [...,3]."""
    xy = _rotate(glob[..., :2] - origin[..., :2], -origin[..., 2])
    return jnp.concatenate([xy, wrap_angle(glob[..., 2] - origin[..., 2])[..., None]], -1)


# ----------------------------------------------------------------------------------------------
# Boxes

def box_corners(xy, heading, length, width):
    """Corners of oriented boxes, order FL, RL, RR, FR.

    xy [...,2] box centre, heading [...], length [...], width [...] -> [...,4,2].
    """
    heading = jnp.asarray(heading)
    f = jnp.stack([jnp.cos(heading), jnp.sin(heading)], -1) * (0.5 * jnp.asarray(length))[..., None]
    l = jnp.stack([-jnp.sin(heading), jnp.cos(heading)], -1) * (0.5 * jnp.asarray(width))[..., None]
    return jnp.stack([xy + f + l, xy - f + l, xy - f - l, xy + f - l], -2)


def ego_center(pose):
    """Geometric centre of the Pacifica from its rear-axle pose [...,3] -> [...,2]."""
    h = pose[..., 2]
    return pose[..., :2] + EGO_REAR_AXLE_TO_CENTER * jnp.stack([jnp.cos(h), jnp.sin(h)], -1)


def ego_corners(rear_axle_pose):
    """Pacifica footprint corners FL, RL, RR, FR from the rear-axle pose [...,3] -> [...,4,2]."""
    h = rear_axle_pose[..., 2]
    return box_corners(ego_center(rear_axle_pose), h, jnp.full(h.shape, EGO_LENGTH),
                       jnp.full(h.shape, EGO_WIDTH))


# ----------------------------------------------------------------------------------------------
# Convex quads (boxes): separating-axis test

def convex_intersect(a, b):
    """Do convex quads intersect (touching counts, like shapely ``intersects``)?

    a [...,4,2], b [...,4,2] (any consistent vertex order, broadcastable leading shapes)
    -> bool [...]. Separating-axis theorem over the 8 edge normals.

    Written as elementwise max/min/or over the (static) 4 vertices and 8 axes rather than
    reductions over small trailing axes: XLA:CPU fuses the whole test into one loop over the
    box pairs, where several reductions of one producer would each materialise it.
    """
    av = [a[..., i, :] for i in range(4)]
    bv = [b[..., i, :] for i in range(4)]

    def normals(v):
        return [(-(v[(i + 1) % 4][..., 1] - v[i][..., 1]), v[(i + 1) % 4][..., 0] - v[i][..., 0])
                for i in range(4)]

    separated = None
    for nx, ny in normals(av) + normals(bv):
        pa = [nx * p[..., 0] + ny * p[..., 1] for p in av]
        pb = [nx * p[..., 0] + ny * p[..., 1] for p in bv]
        amax, amin = functools.reduce(jnp.maximum, pa), functools.reduce(jnp.minimum, pa)
        bmax, bmin = functools.reduce(jnp.maximum, pb), functools.reduce(jnp.minimum, pb)
        # Strict inequality: a shared boundary point is not a separation (touching intersects).
        sep = (amax < bmin) | (bmax < amin)
        separated = sep if separated is None else separated | sep
    return ~separated


# ----------------------------------------------------------------------------------------------
# General simple polygons (padded rings)

def _edges(poly):
    """poly [V,2] -> (start [V,2], end [V,2]) of the closed ring."""
    return poly, jnp.roll(poly, -1, axis=-2)


def _point_segment_dist2(p, a, b):
    """Squared distance point p [...,2] to segment a-b [...,2] (degenerate segments allowed).

    Components written out (no reductions over the size-2 axis) so callers' reductions fuse."""
    px, py, ax, ay = p[..., 0], p[..., 1], a[..., 0], a[..., 1]
    abx, aby = b[..., 0] - ax, b[..., 1] - ay
    denom = abx * abx + aby * aby
    t = jnp.clip(((px - ax) * abx + (py - ay) * aby) / jnp.where(denom > 0, denom, 1.0), 0.0, 1.0)
    dx, dy = px - (ax + t * abx), py - (ay + t * aby)
    return dx * dx + dy * dy


def _crossing_code(points, poly):
    """Crossing count and boundary hits of points [...,2] against the ring poly [...,V,2] in one
    integer reduction -> (code [...], unit): crossings = code % unit, on the boundary (within
    1e-6 m) iff code >= unit. unit is even and > V, so code % 2 is the crossing parity.

    (Two separate reductions of the same [..., V] producer do not fuse on CPU and cost ~8x.)
    """
    a, b = _edges(poly)                                          # [...,V,2]
    px, py = points[..., None, 0], points[..., None, 1]          # [...,1]
    ax, ay, bx, by = a[..., 0], a[..., 1], b[..., 0], b[..., 1]  # [...,V]
    straddle = (ay > py) != (by > py)
    dy = jnp.where(by == ay, 1.0, by - ay)
    crosses = straddle & (px < ax + (py - ay) * (bx - ax) / dy)
    on_edge = _point_segment_dist2(points[..., None, :], a, b) <= _BOUNDARY_EPS ** 2
    unit = 2 * (poly.shape[-2] + 1)
    return jnp.sum(crosses.astype(jnp.int32) + unit * on_edge.astype(jnp.int32), -1), unit


def points_in_polygon(points, poly):
    """Strict containment (shapely ``contains``): points [...,2], poly [...,V,2] -> bool [...]
    (the leading shapes broadcast: one polygon [V,2] for many points, or per-point polygons).

    Crossing-number test; zero-length padded edges never cross the ray. Points within 1e-6 m
    of the ring are on the boundary and count as outside.
    """
    code, unit = _crossing_code(points, poly)
    return (code % 2 == 1) & (code < unit)


def _orient(a, b, c):
    return (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - \
           (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])


def _on_segment(a, b, p):
    """p collinear with a-b lies within its bounding box."""
    return ((jnp.minimum(a[..., 0], b[..., 0]) <= p[..., 0]) &
            (p[..., 0] <= jnp.maximum(a[..., 0], b[..., 0])) &
            (jnp.minimum(a[..., 1], b[..., 1]) <= p[..., 1]) &
            (p[..., 1] <= jnp.maximum(a[..., 1], b[..., 1])))


def segments_intersect(p1, p2, q1, q2):
    """Closed segments p1-p2 and q1-q2 share a point (touching and collinear overlap count).

    All [...,2] (broadcastable) -> bool [...]. Degenerate (point) segments are handled.
    """
    d1, d2 = _orient(q1, q2, p1), _orient(q1, q2, p2)
    d3, d4 = _orient(p1, p2, q1), _orient(p1, p2, q2)
    proper = (((d1 > 0) & (d2 < 0)) | ((d1 < 0) & (d2 > 0))) & \
             (((d3 > 0) & (d4 < 0)) | ((d3 < 0) & (d4 > 0)))
    touch = ((d1 == 0) & _on_segment(q1, q2, p1)) | ((d2 == 0) & _on_segment(q1, q2, p2)) | \
            ((d3 == 0) & _on_segment(p1, p2, q1)) | ((d4 == 0) & _on_segment(p1, p2, q2))
    return proper | touch


def _inside_or_on(point, poly):
    """Non-strict containment of points [...,2] in poly [...,V,2] -> bool [...]."""
    code, unit = _crossing_code(point, poly)
    return (code % 2 == 1) | (code >= unit)


def polygon_intersects_polygon(a, b):
    """shapely ``a.intersects(b)`` for simple polygons a [Va,2], b [Vb,2] -> bool [].

    True if any pair of edges meets, or one polygon lies inside the other (tested with
    vertex 0, enough once no edges cross).
    """
    a0, a1 = _edges(a)
    b0, b1 = _edges(b)
    cross = segments_intersect(a0[:, None], a1[:, None], b0[None], b1[None]).any()
    return cross | _inside_or_on(a[0], b) | _inside_or_on(b[0], a)


def segment_intersects_polygon(p0, p1, poly):
    """shapely ``LineString([p0, p1]).intersects(poly)``: p0 [2], p1 [2], poly [V,2] -> bool []."""
    e0, e1 = _edges(poly)
    return segments_intersect(p0, p1, e0, e1).any() | _inside_or_on(p0, poly)


def polygon_distance(a, b):
    """shapely ``a.distance(b)``: 0 when intersecting, else the min edge-to-edge distance.

    a [Va,2], b [Vb,2] -> float [].
    """
    a0, a1 = _edges(a)
    b0, b1 = _edges(b)
    # Non-crossing segments: their distance is attained at an endpoint of one of them; a
    # crossing pair has distance 0. One min-reduction over the edge pairs.
    d2 = jnp.minimum(_point_segment_dist2(a0[:, None], b0[None], b1[None]),
                     _point_segment_dist2(b0[None], a0[:, None], a1[:, None]))
    cross = segments_intersect(a0[:, None], a1[:, None], b0[None], b1[None])
    d2 = jnp.min(jnp.where(cross, 0.0, d2))
    nested = _inside_or_on(a[0], b) | _inside_or_on(b[0], a)
    return jnp.where(nested, 0.0, jnp.sqrt(d2))


# ----------------------------------------------------------------------------------------------
# Polylines (the route centreline)

def _segments(line_xy, valid):
    """Segments of a valid-prefix polyline: (start [R-1,2], end [R-1,2], seg_valid [R-1],
    seg_len [R-1], cum_len [R] (arc length at each vertex))."""
    a, b = line_xy[:-1], line_xy[1:]
    seg_valid = valid[:-1] & valid[1:]
    seg_len = jnp.where(seg_valid, jnp.linalg.norm(b - a, axis=-1), 0.0)
    cum = jnp.concatenate([jnp.zeros((1,), seg_len.dtype), jnp.cumsum(seg_len)])
    return a, b, seg_valid, seg_len, cum


def polyline_project(points, line, valid):
    """Arc length of the closest point on the polyline (shapely ``line_locate_point``) and the
    distance to it.

    points [...,2], line [R,2] (or [R,3]; only x, y are used), valid [R] bool (a prefix)
    -> (s [...], dist [...]). The first closest segment wins on ties, as in GEOS.
    """
    a, b, seg_valid, seg_len, cum = _segments(line[:, :2], valid)
    # Components written out (no size-2 reductions), so the [..., R-1] pass fuses.
    px, py = points[..., None, 0], points[..., None, 1]           # [...,1]
    ax, ay = a[:, 0], a[:, 1]
    abx, aby = b[:, 0] - ax, b[:, 1] - ay
    denom = abx * abx + aby * aby
    t = jnp.clip(((px - ax) * abx + (py - ay) * aby) / jnp.where(denom > 0, denom, 1.0),
                 0.0, 1.0)
    dx, dy = px - (ax + t * abx), py - (ay + t * aby)
    d2 = dx * dx + dy * dy
    # A polyline with a single valid vertex has no segment: fall back to that vertex.
    any_seg = seg_valid.any()
    d2 = jnp.where(seg_valid | ~any_seg, d2, jnp.inf)
    i = jnp.argmin(d2, -1)
    s = jnp.take(cum, i) + jnp.take_along_axis(t, i[..., None], -1)[..., 0] * jnp.take(seg_len, i)
    dist = jnp.sqrt(jnp.take_along_axis(d2, i[..., None], -1)[..., 0])
    return s, dist


def polyline_interpolate(line, valid, s):
    """Pose at arc length ``s`` (NAVSIM ``PDMPath.interpolate``).

    line [R,3] (x, y, unwrapped heading), valid [R] bool (a prefix), s [...] -> [...,3].
    s is clipped to [1e-5, length]; x, y and the unwrapped heading are linear in arc length;
    the heading is then wrapped; NaN becomes 0.
    """
    _, _, _, seg_len, cum = _segments(line[:, :2], valid)
    length = cum[-1]
    s = jnp.clip(s, 1e-5, length)
    n_valid = jnp.sum(valid)
    # Search only the valid prefix: padded vertices share the last arc length.
    idx = jnp.clip(jnp.searchsorted(cum, s, side="left") - 1, 0, jnp.maximum(n_valid - 2, 0))
    s0, ln = jnp.take(cum, idx), jnp.take(seg_len, idx)
    w = jnp.where(ln > 0, (s - s0) / jnp.where(ln > 0, ln, 1.0), 0.0)[..., None]
    p0 = jnp.take(line, idx, axis=0)
    p1 = jnp.take(line, jnp.minimum(idx + 1, line.shape[0] - 1), axis=0)
    out = p0 + w * (p1 - p0)
    out = out.at[..., 2].set(jnp.arctan2(jnp.sin(out[..., 2]), jnp.cos(out[..., 2])))
    return jnp.nan_to_num(out, nan=0.0)


def polyline_offset(line, offset):
    """Shift every vertex by ``offset`` metres along heading + pi/2 (positive = left); heading
    unchanged. line [R,3] -> [R,3]."""
    h = line[..., 2]
    xy = line[..., :2] + offset * jnp.stack([-jnp.sin(h), jnp.cos(h)], -1)
    return jnp.concatenate([xy, line[..., 2:3]], -1)


__all__ = [
    "EGO_LENGTH", "EGO_WIDTH", "EGO_HALF_LENGTH", "EGO_HALF_WIDTH", "EGO_WHEEL_BASE",
    "EGO_REAR_AXLE_TO_CENTER", "wrap_angle", "to_global", "to_local", "box_corners",
    "ego_center", "ego_corners", "convex_intersect", "points_in_polygon",
    "segments_intersect", "polygon_intersects_polygon", "segment_intersects_polygon",
    "polygon_distance", "polyline_project", "polyline_interpolate", "polyline_offset",
]
