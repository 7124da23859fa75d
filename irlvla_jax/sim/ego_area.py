"""Ego-area flags per pose: where the ego footprint lies on the drivable map (spec/EPDMS.md §5.1).

NAVSIM's ``PDMScorer._calculate_ego_area`` classifies every simulated pose by strict
point-in-polygon tests of its 4 corners and centre against the drivable map: MULTIPLE_LANES,
NON_DRIVABLE, ONCOMING; the metrics also ask whether the centre (DDC, LK) or the rear axle (TTC)
is inside an intersection. NC, TTC, DAC, DDC and LK read these flags (``metrics``).

Per point only the polygons whose bounding box contains it and whose type matters for it are
tested (``AREA_CAPACITY`` slots, ``preselect``); a pose with more is redone against every polygon.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from irlvla_jax import geometry as geo
from irlvla_jax import types
from irlvla_jax.sim.preselect import complete, first_true, materialize

# Polygons tested per ego *point* (4 corners, centre, rear axle): those whose bounding box
# contains the point and whose type matters for that point. A NAVSIM point lies in the boxes of
# a few roadblocks, lanes and (in a junction) lane connectors and intersections; where more than
# this, the pose is redone against every polygon.
AREA_CAPACITY = 12
# The exact fallback runs over the overflowing poses this many at a time.
AREA_FALLBACK_CHUNK = 64

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


def _map_tables(scene):
    """Per-scene map constants: edges [P,V,6] (``geo.edge_table``), box lo/hi [P,2], layer
    bits [P] int32, role [3,P] bool (polygons that matter to corners / centre / rear axle)."""
    polys = jnp.asarray(scene.map_polygons, jnp.float32)
    lane, route, drivable, inter = _map_layers(scene)
    bits = (lane * _LANE_BIT + route * _ROUTE_BIT + drivable * _DRIVABLE_BIT +
            inter * _INTERSECTION_BIT).astype(jnp.int32)
    role = jnp.stack([lane | drivable, route | inter, inter])
    # Materialised: they are compared with every point.
    return jax.tree.map(materialize, dict(edges=geo.edge_table(polys), lo=polys.min(-2),
                                          hi=polys.max(-2), bits=bits, role=role))


def _area_flags(points, tables, index=None, slot_valid=None):
    """Flags of poses from their points' polygon tests.

    points [N,6,2]; index/slot_valid [N,6,C]: the polygons tested per point (None: every
    polygon, slot c = polygon c). Returns dict of bool [N].
    """
    px, py = points[..., 0], points[..., 1]
    if index is None:
        edges, bits = tables["edges"][None, None], tables["bits"]
        slot_valid = tables["role"][jnp.asarray(_POINT_ROLE)][None]          # [1,6,P]
    else:
        edges, bits = tables["edges"][index], tables["bits"][index]          # [N,6,C,V,6]
    code, unit = geo.crossing_code(px[..., None], py[..., None], edges)      # [N,6,C]
    inside = (code % 2 == 1) & (code < unit) & slot_valid

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
    capacity (static): per point, test only the (at most this many) polygons whose bounding
      box contains it and whose type matters for it — a polygon strictly contains a point only
      inside its box, so nothing else can change a flag. Poses with a point in more boxes are
      redone against every polygon (``preselect.complete``). None tests every polygon
      everywhere.
    Returns dict of bool [T]: ``multiple_lanes``, ``non_drivable``, ``oncoming``,
    ``centre_in_intersection``, ``rear_in_intersection``, and ``area_overflow`` (the pose
    overflowed the pre-selection and took the exact fallback; always False for None).
    """
    points = jnp.asarray(points, jnp.float32)
    tables = _map_tables(scene)
    num_t, num_p = points.shape[0], tables["bits"].shape[0]
    if capacity is None or capacity >= num_p:
        return dict(_area_flags(points, tables), area_overflow=jnp.zeros((num_t,), bool))
    px, py = points[..., 0, None], points[..., 1, None]                      # [T,6,1]
    lo, hi = tables["lo"], tables["hi"]
    candidate = (tables["role"][jnp.asarray(_POINT_ROLE)][None] &
                 (lo[:, 0] <= px) & (px <= hi[:, 0]) & (lo[:, 1] <= py) & (py <= hi[:, 1]))
    index, slot_valid, overflow = first_true(candidate, capacity)          # [T,6,C]
    flags = _area_flags(points, tables, index, slot_valid)
    overflow = overflow.any(-1)
    flags = complete(overflow, flags, lambda i: _area_flags(points[i], tables),
                     AREA_FALLBACK_CHUNK)
    return dict(flags, area_overflow=overflow)
