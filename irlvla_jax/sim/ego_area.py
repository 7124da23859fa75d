"""Ego-area flags per pose: where the ego footprint lies on the drivable map (spec/EPDMS.md §5.1).

NAVSIM's ``PDMScorer._calculate_ego_area`` classifies every simulated pose by strict
point-in-polygon tests of its 4 corners and centre against the drivable map: MULTIPLE_LANES,
NON_DRIVABLE, ONCOMING; the metrics also ask whether the centre (DDC, LK) or the rear axle (TTC)
is inside an intersection. NC, TTC, DAC, DDC and LK read these flags (``metrics``).

The map's rings are exact (over a hundred vertices for a long roadblock), so each point is
tested against few edges, chosen in two steps (``preselect``): the polygons whose bounding box
contains it and whose type matters for it, then, of those, the *rows* (runs of ``ROW_EDGES``
consecutive edges) that the point's ray can cross or that pass within the boundary tolerance of
it. The ray runs across the ego's heading (+y when the ego faces along x, else +x): roads run
mostly along the heading, and a ray across a road meets few rows. Crossing parity adds up over a
polygon's rows, and no other edge can change it or the boundary test, so the result is that of
testing every edge. Slots are few (most points need one or two rows of two to four polygons);
the points that need more are redone with wide slots (up to ``WIDE_SHARE`` of them), and the
poses that still do not fit against every edge of every polygon.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from irlvla_jax import geometry as geo
from irlvla_jax import types
from irlvla_jax.sim.preselect import complete, first_true, materialize

# Slots per ego *point* (4 corners, centre, rear axle): polygons whose bounding box contains
# the point and whose type matters for it (3 on average in the synthetic world's scenes, 9 at
# most), at most ROWS_PER_POLYGON rows of each (1.4 on average: the row the ray leaves
# through, sometimes a neighbour whose bounds reach the ray), ROW_CAPACITY rows in all.
AREA_CAPACITY = 8
ROWS_PER_POLYGON = 2
ROW_CAPACITY = 12
# The centre and the rear axle test only on-route lanes and intersections (1.2 and 0.3
# polygons on average, one row each): fewer slots.
CENTRE_CAPACITY = 4
CENTRE_ROW_CAPACITY = 4
# Edges per row.
ROW_EDGES = 16
# The points that overflow those (0.05% in the synthetic world's scenes, 0.5% in the benchmark's)
# are redone with wide slots, up to WIDE_SHARE of all points; poses with a point beyond that
# are redone against every edge of every polygon, AREA_FALLBACK_CHUNK poses at a time.
WIDE_CAPACITY = 12
WIDE_ROW_CAPACITY = 24
WIDE_SHARE = 0.03
AREA_FALLBACK_CHUNK = 8
# Row bounds are widened by this much (m): more than the boundary tolerance of
# ``geometry.crossing_code``, so no row within it of a point is skipped.
_ROW_MARGIN = 1e-3

_LANE_TYPES = (types.LANE, types.LANE_CONNECTOR)
_DRIVABLE_TYPES = (types.ROADBLOCK, types.INTERSECTION, types.CARPARK_AREA)

_LANE_BIT, _ROUTE_BIT, _DRIVABLE_BIT, _INTERSECTION_BIT = 1, 2, 4, 8
# Point roles: the 4 corners need lanes and drivable polygons, the centre on-route lanes and
# intersections (ONCOMING, DDC/LK), the rear axle intersections (TTC).
_POINT_ROLE = (0, 0, 0, 0, 1, 2)


def _map_layers(scene):
    """Per-polygon layer masks of the drivable map: (lane [P], on-route lane [P], drivable [P],
    intersection [P]) bool."""
    t, v = scene.map_polygon_type, scene.map_polygon_valid
    lane = v & ((t == _LANE_TYPES[0]) | (t == _LANE_TYPES[1]))
    drivable = v & ((t == _DRIVABLE_TYPES[0]) | (t == _DRIVABLE_TYPES[1]) |
                    (t == _DRIVABLE_TYPES[2]))
    return lane, lane & scene.map_polygon_on_route, drivable, v & (t == types.INTERSECTION)


def _row_tables(polys):
    """Rows of rings for crossing tests along the +x ray: polys [P,V,2] -> (edges [P*R,E,6]
    (``geo.edge_table`` of the rings padded to R * E vertices; polygon p's row r is row
    p * R + r, its edges r * E ..), bounds [P,R,3]: the y low, y high and x high of each row's
    edges, widened by ``_ROW_MARGIN``), E = ``ROW_EDGES``."""
    num_p, num_v = polys.shape[:2]
    rows = -(-num_v // ROW_EDGES)
    # Padded vertices repeat vertex 0 (the Scene's convention): the ring is unchanged.
    padded = jnp.concatenate(
        [polys, jnp.broadcast_to(polys[:, :1], (num_p, rows * ROW_EDGES - num_v, 2))], 1)
    edges = geo.edge_table(padded).reshape(num_p, rows, ROW_EDGES, 6)
    ax, ay, by, dx = edges[..., 0], edges[..., 1], edges[..., 2], edges[..., 3]
    bounds = jnp.stack([jnp.minimum(ay, by).min(-1) - _ROW_MARGIN,
                        jnp.maximum(ay, by).max(-1) + _ROW_MARGIN,
                        jnp.maximum(ax, ax + dx).max(-1) + _ROW_MARGIN], -1)
    return edges.reshape(num_p * rows, ROW_EDGES, 6), bounds


def _map_tables(scene):
    """Per-scene map constants: edges [P,V,6] (``geo.edge_table``), box lo/hi [P,2], layer
    bits [P] int32, role [3,P] bool (polygons that matter to corners / centre / rear axle),
    and :func:`_row_tables` for the +x ray (axis 0) and, with x and y swapped, the +y ray
    (axis 1): row_edges [2,P*R,E,6], row_bounds [2,P,R,3]."""
    polys = jnp.asarray(scene.map_polygons, jnp.float32)
    lane, route, drivable, inter = _map_layers(scene)
    bits = (lane * _LANE_BIT + route * _ROUTE_BIT + drivable * _DRIVABLE_BIT +
            inter * _INTERSECTION_BIT).astype(jnp.int32)
    role = jnp.stack([lane | drivable, route | inter, inter])
    along_x, along_y = _row_tables(polys), _row_tables(polys[..., ::-1])
    # Materialised: they are compared with every point.
    return jax.tree.map(materialize, dict(
        edges=geo.edge_table(polys), lo=polys.min(-2), hi=polys.max(-2), bits=bits, role=role,
        row_edges=jnp.stack([along_x[0], along_y[0]]),
        row_bounds=jnp.stack([along_x[1], along_y[1]])))


def _inside_preselected(xy, role, axis, tables, capacity, row_capacity, rows_per_polygon):
    """Strict containment of points in the polygons that can hold them, from the rows that can
    change it.

    xy [M,2] points; role [M] int (``_POINT_ROLE``); axis [M] int: the ray to cast, 0 = +x,
    1 = +y (the crossing parity is the same along any ray). capacity (C), row_capacity (CR):
    static slots; rows_per_polygon: static, at most this many rows of a polygon (None: any).
    Returns (index [M,C] int32: the pre-selected polygons, inside [M,C] bool: the point is
    strictly inside that polygon (False in unused slots), overflow [M] bool: more polygons or
    rows than slots).
    """
    px, py = xy[:, 0, None], xy[:, 1, None]                               # [M,1]
    lo, hi = tables["lo"], tables["hi"]
    candidate = (tables["role"][role] & (lo[:, 0] <= px) & (px <= hi[:, 0]) &
                 (lo[:, 1] <= py) & (py <= hi[:, 1]))                     # [M,P]
    index, slot_valid, overflow = first_true(candidate, capacity)          # [M,C]
    rows = tables["row_bounds"].shape[2]
    if rows_per_polygon is not None and rows > 32:
        raise ValueError(f"{rows} rows of {ROW_EDGES} edges per ring: at most 32 fit a word")
    bounds = tables["row_bounds"][axis[:, None], index]                   # [M,C,R,3]
    # In the ray's frame (x, y swapped for the +y ray) the ray runs along +u.
    u = jnp.where(axis == 0, xy[:, 0], xy[:, 1])[:, None]
    v = jnp.where(axis == 0, xy[:, 1], xy[:, 0])[:, None]
    # A crossing needs the row to straddle the ray's v and reach past the point along u; a
    # boundary hit needs the point within the (widened) row bounds.
    near = (slot_valid[..., None] & (bounds[..., 0] <= v[..., None]) &
            (v[..., None] <= bounds[..., 1]) & (u[..., None] <= bounds[..., 2]))
    if rows_per_polygon is None:
        # Any rows: the first row_capacity of all the slots' rows.
        pick, pick_valid, row_overflow = first_true(near.reshape(near.shape[0], -1),
                                                    row_capacity)         # [M,CR]
        slot, row = pick // rows, pick % rows
    else:
        # Each slot's first rows_per_polygon rows (the lowest set bits of its row word, no
        # scan), then the (slot, rank) pairs that hold one packed into row_capacity slots.
        word = jnp.sum(jnp.where(near, jnp.uint32(1) << jnp.arange(rows, dtype=jnp.uint32),
                                 0), -1, dtype=jnp.uint32)                # [M,C] (R <= 32)
        ranked, has = [], []
        for _ in range(rows_per_polygon):
            ranked.append(31 - jax.lax.clz(word & (jnp.uint32(0) - word)).astype(jnp.int32))
            has.append(word != 0)
            word = word & (word - jnp.uint32(1))
        ranked, has = jnp.stack(ranked, -1), jnp.stack(has, -1)           # [M,C,K]
        pick, pick_valid, row_overflow = first_true(has.reshape(has.shape[0], -1),
                                                    row_capacity)
        row_overflow = row_overflow | (word != 0).any(-1)
        slot = pick // rows_per_polygon                                   # [M,CR]
        row = jnp.take_along_axis(ranked.reshape(ranked.shape[0], -1), pick, -1)
    row_id = jnp.take_along_axis(index, slot, -1) * rows + row
    edges = tables["row_edges"][axis[:, None], row_id]                    # [M,CR,E,6]
    code, unit = geo.crossing_code(u, v, edges)                           # [M,CR]
    odd = pick_valid & ((code % unit) % 2 == 1)
    on_edge = pick_valid & (code >= unit)
    # Parity and boundary hits per polygon slot: summed over its picked rows.
    mine = slot[..., None] == jnp.arange(capacity)                        # [M,CR,C]
    odd_total = jnp.sum(odd[..., None] & mine, -2, dtype=jnp.int32)
    touched = (on_edge[..., None] & mine).any(-2)
    inside = (odd_total % 2 == 1) & ~touched & slot_valid
    return index, inside, overflow | row_overflow


def _area_flags(points, tables, index=None, inside=None):
    """Flags of poses from their points' polygon tests.

    points [N,6,2]; index [N,6,C]: the polygons tested per point and inside [N,6,C] their
    containment (:func:`_inside_preselected`); None: test every edge of every polygon here,
    slot c = polygon c. Returns dict of bool [N].
    """
    if index is None:
        bits = tables["bits"]
        slot_valid = tables["role"][jnp.asarray(_POINT_ROLE)][None]          # [1,6,P]
        code, unit = geo.crossing_code(points[..., 0, None], points[..., 1, None],
                                       tables["edges"][None, None])          # [N,6,P]
        inside = (code % 2 == 1) & (code < unit) & slot_valid
    else:
        bits = tables["bits"][index]

    def hit(bit):
        return inside & ((bits & bit) != 0)

    lane = hit(_LANE_BIT)[:, :4]                                             # [N,4,C]
    if index is None:
        several = lane.any(1).sum(-1) > 1
        all_four = lane.all(1).any(-1)
    else:
        # The lane polygons hit by the corners are identified by their index: more than one
        # distinct one, and none holding all four corners.
        ids = jnp.where(lane, index[:, :4], jnp.iinfo(jnp.int32).max)
        lowest = ids.min((1, 2))
        several = (lane & (index[:, :4] != lowest[:, None, None])).any((1, 2))
        common = lane[:, 0]
        for j in range(1, 4):
            common = common & (lane[:, j, None, :] &
                               (index[:, j, None, :] == index[:, 0, :, None])).any(-1)
        all_four = common.any(-1)
    return dict(
        multiple_lanes=several & ~all_four,
        non_drivable=hit(_DRIVABLE_BIT)[:, :4].any(-1).sum(-1) < 4,
        oncoming=~hit(_ROUTE_BIT)[:, 4].any(-1),
        centre_in_intersection=hit(_INTERSECTION_BIT)[:, 4].any(-1),
        rear_in_intersection=hit(_INTERSECTION_BIT)[:, 5].any(-1))


def ego_points(pose):
    """The points the area flags test: pose [...,3] rear axle -> [...,6,2], the 4 ego corners
    (FL, RL, RR, FR), the centre, the rear axle."""
    return jnp.concatenate([geo.ego_corners(pose), geo.ego_center(pose)[..., None, :],
                            pose[..., None, :2]], -2)


def ego_areas(points, scene, capacity=AREA_CAPACITY):
    """Ego-area flags per pose (PDMScorer ``_calculate_ego_area``, spec §5.1), exact.

    points [T,6,2]: per pose the 4 ego corners (FL, RL, RR, FR), the centre, the rear axle
      (:func:`ego_points`).
    scene: one Scene: map_polygons [P,V,2], map_polygon_type/on_route/valid [P].
    capacity (static): polygon slots per point (module docstring; ``ROW_CAPACITY`` rows): a
      polygon strictly contains a point only inside its box, and only the rows the point's
      ray can cross or that come within the boundary tolerance of it change the crossing
      parity or the boundary test, so nothing else can change a flag. Points that need more
      slots are redone with ``WIDE_CAPACITY`` / ``WIDE_ROW_CAPACITY`` (up to ``WIDE_SHARE``
      of them), poses still left over against every edge of every polygon
      (``preselect.complete``). None tests every edge of every polygon everywhere.
    Returns dict of bool [T]: ``multiple_lanes``, ``non_drivable``, ``oncoming``,
    ``centre_in_intersection``, ``rear_in_intersection``, and ``area_overflow`` (a point of
    the pose needed more than ``capacity`` slots and took a fallback; always False for None).
    """
    points = jnp.asarray(points, jnp.float32)
    tables = _map_tables(scene)
    num_t, num_p = points.shape[0], tables["bits"].shape[0]
    if capacity is None or capacity >= num_p:
        return dict(_area_flags(points, tables), area_overflow=jnp.zeros((num_t,), bool))
    wide = min(num_p, max(capacity, WIDE_CAPACITY))
    xy = points.reshape(-1, 2)
    role = jnp.tile(jnp.asarray(_POINT_ROLE), num_t)
    # The ray across the ego's heading (FL - RL): roads mostly run along it.
    along = points[:, 0] - points[:, 1]
    axis = jnp.repeat((jnp.abs(along[:, 0]) >= jnp.abs(along[:, 1])).astype(jnp.int32), 6)
    # The corners test lanes and drivable polygons; the centre and the rear axle only on-route
    # lanes and intersections, far fewer: they get fewer slots.
    parts = []
    for sel, cap, row_cap in ((slice(0, 4), capacity, ROW_CAPACITY),
                              (slice(4, 6), min(capacity, CENTRE_CAPACITY),
                               min(ROW_CAPACITY, CENTRE_ROW_CAPACITY))):
        pick = lambda x: x.reshape((num_t, 6) + x.shape[1:])[:, sel].reshape(
            (-1,) + x.shape[1:])
        i, inn, o = _inside_preselected(pick(xy), pick(role), pick(axis), tables, cap,
                                        row_cap, ROWS_PER_POLYGON)
        widths = ((0, 0), (0, wide - cap))
        parts.append((jnp.pad(i, widths).reshape(num_t, -1, wide),
                      jnp.pad(inn, widths).reshape(num_t, -1, wide), o.reshape(num_t, -1)))
    index, inside, overflow = (jnp.concatenate(x, 1).reshape((num_t * 6,) + x[0].shape[2:])
                               for x in zip(*parts))
    # The points that overflowed, redone with wide slots (a fixed share of all points).
    share = max(1, math.ceil(WIDE_SHARE * xy.shape[0]))
    (redo,) = jnp.nonzero(overflow, size=share, fill_value=xy.shape[0])
    safe = jnp.minimum(redo, xy.shape[0] - 1)
    w_index, w_inside, w_overflow = _inside_preselected(xy[safe], role[safe], axis[safe],
                                                        tables, wide, WIDE_ROW_CAPACITY, None)
    index = index.at[redo].set(w_index, mode="drop")
    inside = inside.at[redo].set(w_inside, mode="drop")
    left = overflow.at[redo].set(w_overflow, mode="drop")
    flags = _area_flags(points, tables, index.reshape(num_t, 6, wide),
                        inside.reshape(num_t, 6, wide))
    # Poses with a point that fitted neither: every edge of every polygon.
    flags = complete(left.reshape(num_t, 6).any(-1), flags,
                     lambda i: _area_flags(points[i], tables), AREA_FALLBACK_CHUNK)
    return dict(flags, area_overflow=overflow.reshape(num_t, 6).any(-1))
