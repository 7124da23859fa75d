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

import jax
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


def edge_table(poly):
    """Per-edge constants of padded rings for :func:`crossing_code`: poly [...,V,2] ->
    [...,V,6] = (ax, ay, by, dx, dy, 1 / |d|^2) of edge a -> b (b the next vertex, d = b - a;
    1 / |d|^2 is 0 for the zero-length padded edges). Build it once per polygon and reuse it
    for every point tested against that polygon."""
    b = jnp.roll(poly, -1, axis=-2)
    d = b - poly
    len2 = d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]
    inv = jnp.where(len2 > 0, 1.0 / jnp.where(len2 > 0, len2, 1.0), 0.0)
    return jnp.stack([poly[..., 0], poly[..., 1], b[..., 1], d[..., 0], d[..., 1], inv], -1)


def crossing_code(px, py, edges):
    """Crossing count and boundary hits of points against rings in one integer reduction.

    px, py [...]: point coordinates; edges [..., V, 6] (:func:`edge_table`), leading shapes
    broadcast against the points'. Returns (code [...], unit): crossings of the +x ray =
    code % unit, on the boundary (within 1e-6 m of an edge) iff code >= unit; unit is even and
    > V, so code % 2 is the crossing parity.

    Division-free: the ray crosses edge a -> b (straddling the point's y) iff the point lies
    left of it for an upward edge, right of it for a downward one (the sign of d x (p - a));
    the boundary test projects on the edge with the tabulated 1 / |d|^2. One reduction over
    V: two reductions of the same [..., V] producer do not fuse on CPU and cost ~8x.
    """
    ax, ay, by, dx, dy, inv = (edges[..., i] for i in range(6))
    qx, qy = px[..., None] - ax, py[..., None] - ay                 # [..., V]
    straddle = (ay > py[..., None]) != (by > py[..., None])
    cross = dx * qy - dy * qx
    crosses = straddle & jnp.where(dy > 0, cross > 0, cross < 0)
    t = jnp.clip((qx * dx + qy * dy) * inv, 0.0, 1.0)
    ex, ey = qx - t * dx, qy - t * dy
    on_edge = ex * ex + ey * ey <= _BOUNDARY_EPS ** 2
    unit = 2 * (edges.shape[-2] + 1)
    return jnp.sum(crosses.astype(jnp.int32) + unit * on_edge.astype(jnp.int32), -1), unit


def _crossing_code(points, poly):
    """:func:`crossing_code` of points [...,2] against the ring poly [...,V,2]."""
    return crossing_code(points[..., 0], points[..., 1], edge_table(poly))


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


def _segment_box_separated(rx, ry, dx, dy, c, s, hl, hw):
    """Separating-axis test of segments and oriented rectangles: rx, ry the segment start
    relative to the box centre, dx, dy the segment direction, c, s the box axis (unit), hl, hw
    its half sizes (all broadcast) -> bool, True where a separating axis exists (the box's two
    axes and the segment's normal); False = they intersect or touch."""
    ua, va = rx * c + ry * s, ry * c - rx * s                  # segment start in the box frame
    ud, vd = dx * c + dy * s, dy * c - dx * s                  # segment direction, box frame
    ub, vb = ua + ud, va + vd
    return ((jnp.minimum(ua, ub) > hl) | (jnp.maximum(ua, ub) < -hl) |
            (jnp.minimum(va, vb) > hw) | (jnp.maximum(va, vb) < -hw) |
            (jnp.abs(ud * va - vd * ua) > jnp.abs(vd) * hl + jnp.abs(ud) * hw))


def _rect_corners(centre, c, s, hl, hw):
    """The corners FL, RL, RR, FR of oriented rectangles as 4 (x, y) pairs of [...] arrays:
    centre [...,2], c, s the unit length direction, hl, hw the half sizes."""
    return [(centre[..., 0] + fu * hl * c - fv * hw * s,
             centre[..., 1] + fu * hl * s + fv * hw * c)
            for fu, fv in ((1, 1), (-1, 1), (-1, -1), (1, -1))]


def box_intersects_polygon(centre, heading, half_length, half_width, edges):
    """shapely ``intersects`` of an oriented rectangle and a simple polygon (touching counts).

    centre [...,2], heading [...], half_length/half_width: floats or [...]; edges [..., V, 6]
    (:func:`edge_table` of the polygon), broadcast against the box's leading shape -> bool [...].

    True iff an edge of the polygon meets the rectangle (a segment-vs-box separating-axis test
    in the box frame: the box's two axes and the segment's normal), or the rectangle lies
    inside the polygon (its centre, tested when no edge meets it). About 3x cheaper than the
    general :func:`polygon_intersects_polygon` on the box's 4 corners, with no division.
    """
    axis = jnp.stack([jnp.cos(heading), jnp.sin(heading)], -1)
    return box_axis_intersects_polygon(centre, axis, half_length, half_width, edges)


def box_axis_intersects_polygon(centre, axis, half_length, half_width, edges):
    """:func:`box_intersects_polygon` with the box direction as a unit vector axis [...,2]."""
    c, s = axis[..., 0, None], axis[..., 1, None]
    hl, hw = jnp.asarray(half_length)[..., None], jnp.asarray(half_width)[..., None]
    ax, ay, dx, dy = edges[..., 0], edges[..., 1], edges[..., 3], edges[..., 4]
    sep = _segment_box_separated(ax - centre[..., 0, None], ay - centre[..., 1, None], dx, dy,
                                 c, s, hl, hw)
    code, unit = crossing_code(centre[..., 0], centre[..., 1], edges)
    inside = (code % 2 == 1) | (code >= unit)
    return (~sep).any(-1) | inside


def _box_frame_distance(px, py, centre, c, s, half_length, half_width):
    """Distance from points (px, py) [...] to an oriented rectangle (0 inside): the point in
    the box frame, clamped to the box."""
    rx, ry = px - centre[..., 0], py - centre[..., 1]
    u, v = rx * c + ry * s, ry * c - rx * s
    du = jnp.maximum(jnp.abs(u) - half_length, 0.0)
    dv = jnp.maximum(jnp.abs(v) - half_width, 0.0)
    return jnp.sqrt(du * du + dv * dv)


def box_frame(corners):
    """Oriented-rectangle form of boxes given by their corners FL, RL, RR, FR [...,4,2] ->
    (centre [...,2], axis [...,2] unit along the length ((1, 0) for a zero-length box),
    half [...,2] (half length, half width))."""
    along, across = corners[..., 0, :] - corners[..., 1, :], corners[..., 0, :] - corners[..., 3, :]
    length = jnp.sqrt(along[..., 0] * along[..., 0] + along[..., 1] * along[..., 1])
    width = jnp.sqrt(across[..., 0] * across[..., 0] + across[..., 1] * across[..., 1])
    axis = jnp.where(length[..., None] > 0,
                     along / jnp.where(length > 0, length, 1.0)[..., None], jnp.array([1.0, 0.0]))
    centre = 0.25 * (corners[..., 0, :] + corners[..., 1, :] + corners[..., 2, :] +
                     corners[..., 3, :])
    return centre, axis, 0.5 * jnp.stack([length, width], -1)


def boxes_intersect(a_centre, a_axis, a_half, b_centre, b_axis, b_half):
    """shapely ``intersects`` of oriented rectangles (touching counts): the separating-axis
    test on the 4 box axes, with centre projections (a box's extent along an axis is
    half length |cos| + half width |sin|). *_centre, *_axis (unit) and *_half (half length,
    half width) [...,2], broadcast -> bool [...]. :func:`convex_intersect` for rectangles, at
    a quarter of the work."""
    ac, as_ = a_axis[..., 0], a_axis[..., 1]
    bc, bs = b_axis[..., 0], b_axis[..., 1]
    dx, dy = b_centre[..., 0] - a_centre[..., 0], b_centre[..., 1] - a_centre[..., 1]
    # |cos| / |sin| of the angle between the boxes: the projections of one box's half extents
    # on the other's axes.
    cos_ab, sin_ab = jnp.abs(ac * bc + as_ * bs), jnp.abs(ac * bs - as_ * bc)
    ahl, ahw, bhl, bhw = a_half[..., 0], a_half[..., 1], b_half[..., 0], b_half[..., 1]
    sep = ((jnp.abs(dx * ac + dy * as_) > ahl + bhl * cos_ab + bhw * sin_ab) |
           (jnp.abs(dy * ac - dx * as_) > ahw + bhl * sin_ab + bhw * cos_ab) |
           (jnp.abs(dx * bc + dy * bs) > bhl + ahl * cos_ab + ahw * sin_ab) |
           (jnp.abs(dy * bc - dx * bs) > bhw + ahl * sin_ab + ahw * cos_ab))
    return ~sep


def segment_intersects_box(p0, p1, centre, axis, half):
    """shapely ``LineString([p0, p1]).intersects(box)`` for an oriented rectangle (touching
    counts): p0, p1, centre, axis (unit), half [...,2] -> bool [...]. Separating-axis test in
    the box frame on the box's two axes and the segment's normal."""
    return ~_segment_box_separated(p0[..., 0] - centre[..., 0], p0[..., 1] - centre[..., 1],
                                   p1[..., 0] - p0[..., 0], p1[..., 1] - p0[..., 1],
                                   axis[..., 0], axis[..., 1], half[..., 0], half[..., 1])


def box_distance(a_centre, a_axis, a_half, b_centre, b_axis, b_half):
    """shapely ``distance`` between oriented rectangles (0 when they intersect or touch).

    *_centre [...,2]; *_axis [...,2] the unit length direction; *_half [...,2] (half length,
    half width); leading shapes broadcast -> [...]. Intersection by :func:`boxes_intersect`;
    otherwise the distance of two disjoint polygons is attained at a vertex of one of them, so
    it is the least of the 8 corner-to-other-box distances. About 10x cheaper than
    :func:`polygon_distance` on the corners.
    """
    ac, as_ = a_axis[..., 0], a_axis[..., 1]
    bc, bs = b_axis[..., 0], b_axis[..., 1]
    ahl, ahw, bhl, bhw = a_half[..., 0], a_half[..., 1], b_half[..., 0], b_half[..., 1]
    sep = ~boxes_intersect(a_centre, a_axis, a_half, b_centre, b_axis, b_half)
    d = [_box_frame_distance(x, y, b_centre, bc, bs, bhl, bhw)
         for x, y in _rect_corners(a_centre, ac, as_, ahl, ahw)]
    d += [_box_frame_distance(x, y, a_centre, ac, as_, ahl, ahw)
          for x, y in _rect_corners(b_centre, bc, bs, bhl, bhw)]
    return jnp.where(sep, functools.reduce(jnp.minimum, d), 0.0)


def box_polygon_distance(centre, heading, half_length, half_width, poly, edges):
    """shapely ``distance`` between an oriented rectangle and a simple polygon (0 when they
    intersect). centre [...,2], heading [...], half sizes: floats; poly [...,V,2] and edges
    [...,V,6] (:func:`edge_table`), broadcast against the box -> [...].

    Disjoint: the least of the polygon's vertices to the box and the box's corners to the
    polygon's edges (the distance of disjoint polygons is attained at a vertex of one of them).
    """
    c, s = jnp.cos(heading), jnp.sin(heading)
    to_box = _box_frame_distance(poly[..., 0], poly[..., 1], centre[..., None, :], c[..., None],
                                 s[..., None], half_length, half_width).min(-1)
    ax, ay, dx, dy, inv = (edges[..., i] for i in (0, 1, 3, 4, 5))
    best = to_box
    for px, py in _rect_corners(centre, c, s, half_length, half_width):
        qx, qy = px[..., None] - ax, py[..., None] - ay
        t = jnp.clip((qx * dx + qy * dy) * inv, 0.0, 1.0)
        ex, ey = qx - t * dx, qy - t * dy
        best = jnp.minimum(best, jnp.sqrt((ex * ex + ey * ey).min(-1)))
    hit = box_intersects_polygon(centre, heading, half_length, half_width, edges)
    return jnp.where(hit, 0.0, best)


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


def _order_key(x):
    """int32 keys ordered like the non-negative float32s x (their bit patterns): XLA:CPU
    reduces int32 an order of magnitude faster than float32 (min/max of float32 go to a slow
    YNNPACK reduction)."""
    return jax.lax.bitcast_convert_type(x, jnp.int32)


def _segment_dist2(points, line, valid):
    """Squared distances of points [...,2] to the segments of a valid-prefix polyline, segments
    on the *leading* axis (XLA:CPU vectorises a reduction over the major axis across the points):
    -> (d2 [S,...] (inf for invalid segments; all count when none is valid: a single valid
    vertex), closest(i) -> the parameter t [...] of the closest point on segments i [...],
    seg_len [S], cum [S+1])."""
    a, b, seg_valid, seg_len, cum = _segments(line[:, :2], valid)
    dx, dy = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
    denom = dx * dx + dy * dy
    inv = jnp.where(denom > 0, 1.0 / jnp.where(denom > 0, denom, 1.0), 0.0)

    def param(px, py, ax, ay, dx, dy, inv):
        t = jnp.clip(((px - ax) * dx + (py - ay) * dy) * inv, 0.0, 1.0)
        return t, px - (ax + t * dx), py - (ay + t * dy)

    shape = (a.shape[0],) + (1,) * (points.ndim - 1)
    # Components written out (no size-2 reductions), so the [S, ...] pass fuses.
    _, ex, ey = param(points[None, ..., 0], points[None, ..., 1],
                      *(x.reshape(shape) for x in (a[:, 0], a[:, 1], dx, dy, inv)))
    counted = (seg_valid | ~seg_valid.any()).reshape(shape)

    def closest(i):
        return param(points[..., 0], points[..., 1], a[i, 0], a[i, 1], dx[i], dy[i], inv[i])[0]

    return jnp.where(counted, ex * ex + ey * ey, jnp.inf), closest, seg_len, cum


def polyline_project(points, line, valid):
    """Arc length of the closest point on the polyline (shapely ``line_locate_point``) and the
    distance to it.

    points [...,2], line [R,2] (or [R,3]; only x, y are used), valid [R] bool (a prefix)
    -> (s [...], dist [...]). The first closest segment wins on ties, as in GEOS.

    Two int32 reductions over the segments (the least distance, then the first segment that
    attains it) and the arc length on that segment: a float argmin (a variadic reduction) costs
    several times more on CPU.
    """
    d2, closest, seg_len, cum = _segment_dist2(points, line, valid)
    key = _order_key(d2)
    key_min = key.min(0)
    num = d2.shape[0]
    iota = jnp.arange(num).reshape((num,) + (1,) * (d2.ndim - 1))
    i = jnp.minimum(jnp.where(key == key_min, iota, num).min(0), num - 1)
    dist = jnp.sqrt(jax.lax.bitcast_convert_type(key_min, jnp.float32))
    return cum[i] + closest(i) * seg_len[i], dist


def polyline_distance(points, line, valid):
    """Distance from points [...,2] to a valid-prefix polyline line [R,2|3], valid [R] -> [...]
    (shapely ``distance``; :func:`polyline_project`'s without the arc length: one int32
    min-reduction over the segments)."""
    key_min = _order_key(_segment_dist2(points, line, valid)[0]).min(0)
    return jnp.sqrt(jax.lax.bitcast_convert_type(key_min, jnp.float32))


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
    # (compare_all: one vectorised comparison instead of a binary-search while loop.)
    idx = jnp.clip(jnp.searchsorted(cum, s, side="left", method="compare_all") - 1, 0,
                   jnp.maximum(n_valid - 2, 0))
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
    "edge_table", "crossing_code", "segments_intersect", "polygon_intersects_polygon",
    "segment_intersects_polygon", "box_intersects_polygon", "box_axis_intersects_polygon",
    "polygon_distance",
    "box_frame", "boxes_intersect", "segment_intersects_box", "box_distance",
    "box_polygon_distance",
    "polyline_project", "polyline_distance", "polyline_interpolate", "polyline_offset",
]
