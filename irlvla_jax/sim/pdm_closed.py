"""PDM-Closed, NAVSIM's rule-based reference planner (spec/EPDMS.md §3), in jnp.

15 proposals = 3 lateral paths (the route centreline, shifted 1 m right and 1 m left) x 5 IDM
target speeds (0.2 .. 1.0 x the speed limit). Each proposal is unrolled with the IDM along its
path against the forecast observation, simulated with the LQR tracker + bicycle model, scored with
the EPDMS sub-metrics (no history, so HC = 1) and the best is kept, unrolled to 50 steps. The
devkit quirks are reproduced on purpose:

* the lead-agent row of step 1 is the zero-initialised row 0 (gap clamped to 1 m -> -3 m/s^2);
* the lead row is recomputed at even steps only (odd steps copy the previous one);
* one lead 3-vector is reused across the 5 proposals of a path within an update, so fields a
  proposal does not write (velocity for red lights / free road, rear length once free) are stale;
* offset proposals start on their path, 1 m to the side of the ego (pose 0 = path point);
* the corridor is the vertex substring of the path from the ego's progress over 5 s at the
  highest target speed, buffered by the ego half width with square caps and round joins (the
  joins matter where the substring ends on a lane junction of an offset path, see
  :func:`_corridor`).

Departures: when fewer than 2 path vertices fall in the corridor's range (a speed limit near
0 or vertices further apart than the corridor is long) the corridor is the buffered segment
between the interpolated ends, where shapely's ``substring`` keeps the one vertex in range;
the ego being entirely within a red light is tested on its 4 corners; a speed limit <= 0
falls back to 15 m/s like None.

Speed: everything about the objects that does not depend on the IDM state (corridor
membership, progress along each path, red lights) is computed for all 25 lead-row updates at
once, before the sequential unroll; corridor membership tests each object only against the
corridor pieces near it (exact, see :func:`_in_corridor`); the lead gap is a
rectangle-rectangle / rectangle-polygon distance (``geometry.box_distance``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from irlvla_jax import geometry, types
from irlvla_jax.sim import metrics, preselect, simulate, trajectory
from irlvla_jax.sim.observation import FORECAST_LEN, Observation, forecast_observation

SPEED_LIMIT_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
FALLBACK_TARGET_VELOCITY = 15.0
MIN_GAP = 1.0            # m, IDM s0
HEADWAY = 1.5            # s, IDM T
ACCEL_MAX = 1.5          # m/s^2
DECEL_MAX = 3.0          # m/s^2
IDM_EXPONENT = 10
LATERAL_OFFSETS = (0.0, -1.0, 1.0)   # path order: centreline, right, left
PROPOSAL_STEPS = trajectory.NUM_STEPS        # 40
TRAJECTORY_STEPS = FORECAST_LEN - 1           # 50
DT = trajectory.DT
FREE_LEAD_REAR_LENGTH = geometry.EGO_HALF_LENGTH  # l_r written when nothing is ahead (2.588)
NUM_PROPOSALS = len(LATERAL_OFFSETS) * len(SPEED_LIMIT_FRACTIONS)


def idm_step(progress, velocity, lead, target_velocity, dt: float = DT):
    """One explicit-Euler IDM step along a path (no clamp to v >= 0, as in the devkit).

    Args:
      progress, velocity, target_velocity: [...] ego arc length (m), speed, IDM v0.
      lead: [..., 3] (lead progress, lead velocity, lead rear length).
    Returns:
      (progress, velocity) [...] one step later.
    """
    s_star = MIN_GAP + velocity * HEADWAY + velocity * (velocity - lead[..., 1]) / (
        2.0 * jnp.sqrt(ACCEL_MAX * DECEL_MAX))
    s_alpha = jnp.maximum(lead[..., 0] - progress - lead[..., 2], MIN_GAP)
    accel = ACCEL_MAX * (1.0 - (velocity / target_velocity) ** IDM_EXPONENT
                         - (s_star / s_alpha) ** 2)
    accel = jnp.clip(accel, -DECEL_MAX, ACCEL_MAX)
    return progress + dt * velocity, velocity + dt * accel


def target_velocities(speed_limit):
    """[] speed limit (m/s, -1 = None) -> [5] IDM target speeds."""
    limit = jnp.where(speed_limit > 0, speed_limit, FALLBACK_TARGET_VELOCITY)
    return limit * jnp.asarray(SPEED_LIMIT_FRACTIONS, jnp.float32)


def polygon_centroid(poly):
    """Area centroid of a padded ring [V,2] -> [2] (vertex mean if degenerate)."""
    p, q = poly, jnp.roll(poly, -1, axis=0)
    cross = p[:, 0] * q[:, 1] - q[:, 0] * p[:, 1]
    area = 0.5 * cross.sum()
    c = ((p + q) * cross[:, None]).sum(0) / (6.0 * jnp.where(area != 0, area, 1.0))
    return jnp.where(area != 0, c, poly.mean(0))


def _corridor(path, valid, start, end):
    """The devkit's driving corridor: the path's vertex substring between arc lengths
    start..end, buffered by the ego half width (shapely ``buffer``: round joins, square caps).

    The buffer is exactly the union of one rectangle per segment (the first and last extended
    by the half width: the square caps) and a disc of that radius at every vertex (the round
    joins: everything within the half width of a vertex). The discs matter where the path
    turns sharply, above all at lane junctions of the offset paths: NAVSIM duplicates each
    junction vertex, and offsetting the two copies along their different headings leaves a
    short segment (1 m x the heading change: millimetres to centimetres) that points backwards
    on one side of the road. Where the substring ends on it, the square cap points backwards
    too, and the join before it is what reaches a half width past the junction.

    path [R,3], valid [R], start/end [] -> (rects [R,4,2], rect_mask [R], discs [R,2] (centres,
    radius ``EGO_HALF_WIDTH``), disc_mask [R]); rect r is segment r (r < R - 1) or, when fewer
    than 2 vertices fall in range, the interpolated piece (shapely.ops.substring), rect R - 1.
    """
    w = geometry.EGO_HALF_WIDTH
    seg = path[1:, :2] - path[:-1, :2]
    seg_len = jnp.where(valid[1:], jnp.linalg.norm(seg, axis=-1), 0.0)
    cum = jnp.concatenate([jnp.zeros(1), jnp.cumsum(seg_len)])
    length = cum[-1]
    a, b = jnp.clip(start, 0.0, length), jnp.clip(end, 0.0, length)
    vin = valid & (cum >= a) & (cum <= b)
    seg_in = vin[:-1] & vin[1:] & (seg_len > 0)
    # shapely.ops.substring when fewer than 2 vertices are in range: the interpolated piece.
    fallback = vin.sum() < 2
    pa = geometry.polyline_interpolate(path, valid, a)[:2]
    pb = geometry.polyline_interpolate(path, valid, b)[:2]
    p0 = jnp.concatenate([path[:-1, :2], pa[None]])
    p1 = jnp.concatenate([path[1:, :2], pb[None]])
    mask = jnp.concatenate([seg_in & ~fallback, fallback[None] & (b > a)])
    idx = jnp.arange(mask.shape[0])
    first = jnp.argmax(mask)
    last = mask.shape[0] - 1 - jnp.argmax(mask[::-1])
    d = p1 - p0
    d = d / jnp.maximum(jnp.linalg.norm(d, axis=-1, keepdims=True), 1e-9)
    n = jnp.stack([-d[:, 1], d[:, 0]], -1) * w
    q0 = p0 - jnp.where(idx == first, w, 0.0)[:, None] * d     # square caps at both ends
    q1 = p1 + jnp.where(idx == last, w, 0.0)[:, None] * d
    rects = jnp.stack([q1 + n, q0 + n, q0 - n, q1 - n], axis=1)
    # Round joins: a disc at every vertex of the substring (at its two ends the disc lies
    # within the square cap and the end segment's buffer, so including them changes nothing).
    return rects, mask, path[:, :2], vin & ~fallback


# Corridor membership culling: the corridor pieces (segment rectangles and vertex discs) are
# grouped in chunks of this many consecutive segments; an object is tested against the pieces
# of the (at most CORRIDOR_CHUNK_CAPACITY) chunks whose bounding box overlaps its own, and
# against every piece where it overlaps more chunk boxes (exact either way).
CORRIDOR_CHUNK = 8
CORRIDOR_CHUNK_CAPACITY = 3
CORRIDOR_FALLBACK_ROWS = 64
# Red lights against the corridor (once per scene): the pieces of at most this many chunks
# whose bounding box overlaps the light's; (path, light) pairs with more take every piece,
# this many pairs at a time.
CORRIDOR_LIGHT_CHUNK_CAPACITY = 6
CORRIDOR_LIGHT_FALLBACK_ROWS = 4
# Red lights measured per proposal at a lead-row update: of those red on its path's corridor
# and ahead of it, the this many nearest by their bounding box (a lower bound of the exact
# distance), against their rings cut to RED_LIGHT_VERTEX_CAPACITY vertices (lane connectors
# have tens; padded to the map's vertex cap). Rows where an unmeasured light could be nearer
# than the nearest measured one, or a measured ring is longer, are redone against every light
# in full, this many rows at a time (see _red_light_distances).
RED_LIGHT_LEAD_CAPACITY = 2
RED_LIGHT_VERTEX_CAPACITY = 64
RED_LIGHT_LEAD_FALLBACK_ROWS = 5
# Bounding-box lower bounds are lowered by this much (m) against float32 rounding: a light
# whose bound is within it of the nearest measured distance is measured too (exact either way).
_RED_LIGHT_BOUND_MARGIN = 1e-3


def _near_discs(boxes, discs, disc_mask):
    """Boxes [...,4,2] (corners) touching any disc of radius ``EGO_HALF_WIDTH`` [...,G,2]
    (broadcast against the boxes' leading axes), disc_mask [...,G] -> bool [...]: the
    distance from each centre to the box (0 inside), in the box's frame, <= the radius."""
    centre, axis, half = geometry.box_frame(boxes)
    rx = discs[..., 0] - centre[..., None, 0]
    ry = discs[..., 1] - centre[..., None, 1]
    c, s = axis[..., None, 0], axis[..., None, 1]
    du = jnp.maximum(jnp.abs(rx * c + ry * s) - half[..., None, 0], 0.0)
    dv = jnp.maximum(jnp.abs(ry * c - rx * s) - half[..., None, 1], 0.0)
    near = du * du + dv * dv <= geometry.EGO_HALF_WIDTH ** 2
    return (near & disc_mask).any(-1)


def _polygons_near_discs(centres, edges):
    """Polygons touching a disc of radius ``EGO_HALF_WIDTH``: centres [...,2], edges
    [...,V,6] (``geometry.edge_table``), broadcast -> bool [...]: the centre inside the ring or
    within the radius of one of its edges."""
    ax, ay, dx, dy, inv = (edges[..., i] for i in (0, 1, 3, 4, 5))
    qx, qy = centres[..., 0, None] - ax, centres[..., 1, None] - ay
    t = jnp.clip((qx * dx + qy * dy) * inv, 0.0, 1.0)
    ex, ey = qx - t * dx, qy - t * dy
    near_edge = (ex * ex + ey * ey).min(-1) <= geometry.EGO_HALF_WIDTH ** 2
    code, _ = geometry.crossing_code(centres[..., 0], centres[..., 1], edges)
    return near_edge | (code % 2 == 1)


def _pieces_touch_lights(rects, rect_mask, discs, disc_mask, edges):
    """Corridor pieces (rects [...,4,2], discs [...,2] with their masks [...]) touching the
    light polygons edges [...,V,6] (broadcast) -> bool [...]."""
    along, across = rects[..., 0, :] - rects[..., 1, :], rects[..., 0, :] - rects[..., 3, :]
    rect_len = jnp.sqrt(along[..., 0] ** 2 + along[..., 1] ** 2)
    rect_axis = jnp.where(rect_len[..., None] > 0,
                          along / jnp.where(rect_len > 0, rect_len, 1.0)[..., None],
                          jnp.array([1.0, 0.0]))
    hits = geometry.box_axis_intersects_polygon(
        rects.mean(-2), rect_axis, 0.5 * rect_len,
        0.5 * jnp.sqrt(across[..., 0] ** 2 + across[..., 1] ** 2), edges)
    return (hits & rect_mask) | (_polygons_near_discs(discs, edges) & disc_mask)


def _lights_in_corridor(corridor, polys, edges):
    """Red lights whose polygon intersects a path's corridor: corridor from :func:`_corridor`
    ([P,...]), polys [L,V,2], edges [L,V,6] -> bool [P,L].

    A light's exact ring has tens of vertices and the corridor hundreds of pieces; only the
    pieces of the (at most ``CORRIDOR_LIGHT_CHUNK_CAPACITY``) chunks of ``CORRIDOR_CHUNK``
    segments whose bounding box overlaps the light's can touch it. (path, light) pairs with
    more such chunks are tested against every piece (``preselect.complete``): exact."""
    rects, rect_mask, discs, disc_mask = corridor
    num_p, num_r = rect_mask.shape
    num_l = polys.shape[0]
    chunks = -(-num_r // CORRIDOR_CHUNK)
    pad = chunks * CORRIDOR_CHUNK - num_r

    def chunked(x):
        widths = ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2)
        return jnp.pad(x, widths).reshape((num_p, chunks, CORRIDOR_CHUNK) + x.shape[2:])

    rects_c, mask_c, discs_c, disc_mask_c = (chunked(x) for x in corridor)
    inf, w = jnp.float32(jnp.inf), geometry.EGO_HALF_WIDTH
    # Chunk bounds, widened by a millimetre against rounding (a superset stays exact).
    lo = jnp.minimum(jnp.where(mask_c[..., None], rects_c.min(-2), inf).min(-2),
                     jnp.where(disc_mask_c[..., None], discs_c - w, inf).min(-2)) - 1e-3
    hi = jnp.maximum(jnp.where(mask_c[..., None], rects_c.max(-2), -inf).max(-2),
                     jnp.where(disc_mask_c[..., None], discs_c + w, -inf).max(-2)) + 1e-3
    overlap = preselect.boxes_overlap(lo[:, None], hi[:, None], polys.min(-2)[None, :, None],
                                      polys.max(-2)[None, :, None])               # [P,L,chunks]
    capacity = min(CORRIDOR_LIGHT_CHUNK_CAPACITY, chunks)
    index, slot_valid, overflow = preselect.first_true(overlap, capacity)          # [P,L,C]
    p_idx = jnp.arange(num_p)[:, None, None]
    sel = [x[p_idx, index] for x in (rects_c, mask_c, discs_c, disc_mask_c)]       # [P,L,C,G..]
    sel[1] = sel[1] & slot_valid[..., None]
    sel[3] = sel[3] & slot_valid[..., None]
    hit = _pieces_touch_lights(*sel, edges[None, :, None, None]).any((-1, -2))     # [P,L]

    def every_piece(i):                                                            # rows of [P*L]
        p, light = i // num_l, i % num_l
        return _pieces_touch_lights(rects[p], rect_mask[p], discs[p], disc_mask[p],
                                    edges[light][:, None]).any(-1)
    return preselect.complete(overflow.reshape(-1), hit.reshape(-1), every_piece,
                              CORRIDOR_LIGHT_FALLBACK_ROWS).reshape(num_p, num_l)


def _in_corridor(corridor, boxes, present):
    """Objects whose box intersects a path's corridor, at every step of a stack.

    corridor: (rects [P,R,4,2], rect_mask [P,R], discs [P,R,2], disc_mask [P,R]) from
    :func:`_corridor`; boxes [T,A,4,2], present [T,A] -> bool [T,P,A]. Exact: only pieces in
    chunks whose bounding box overlaps the object's can intersect it (see ``CORRIDOR_CHUNK``);
    rows with more such chunks than slots take the exhaustive test (``preselect.complete``).
    """
    rects, rect_mask, discs, disc_mask = corridor
    num_p, num_r = rect_mask.shape
    num_t, num_a = present.shape
    chunks = -(-num_r // CORRIDOR_CHUNK)
    pad = chunks * CORRIDOR_CHUNK - num_r

    def chunked(x):
        widths = ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2)
        return jnp.pad(x, widths).reshape((num_p, chunks, CORRIDOR_CHUNK) + x.shape[2:])

    rects_c, mask_c = chunked(rects), chunked(rect_mask)
    discs_c, disc_mask_c = chunked(discs), chunked(disc_mask)
    inf = jnp.float32(jnp.inf)
    w = geometry.EGO_HALF_WIDTH
    lo = jnp.minimum(jnp.where(mask_c[..., None], rects_c.min(-2), inf).min(-2),
                     jnp.where(disc_mask_c[..., None], discs_c - w, inf).min(-2))  # [P,chunks,2]
    hi = jnp.maximum(jnp.where(mask_c[..., None], rects_c.max(-2), -inf).max(-2),
                     jnp.where(disc_mask_c[..., None], discs_c + w, -inf).max(-2))
    blo, bhi = boxes.min(-2), boxes.max(-2)                                # [T,A,2]
    overlap = ((lo[None, :, None, :, 0] <= bhi[:, None, :, None, 0]) &
               (hi[None, :, None, :, 0] >= blo[:, None, :, None, 0]) &
               (lo[None, :, None, :, 1] <= bhi[:, None, :, None, 1]) &
               (hi[None, :, None, :, 1] >= blo[:, None, :, None, 1]))       # [T,P,A,chunks]
    capacity = min(CORRIDOR_CHUNK_CAPACITY, chunks)
    index, slot_valid, overflow = preselect.first_true(overlap, capacity)   # [T,P,A,C]
    p_idx = jnp.arange(num_p)[None, :, None, None]
    cand = rects_c[p_idx, index]                                           # [T,P,A,C,G,4,2]
    cand_mask = mask_c[p_idx, index] & slot_valid[..., None]               # [T,P,A,C,G]
    box = boxes[:, None, :, None, None]
    hit = (geometry.convex_intersect(box, cand) & cand_mask).any((-1, -2))
    disc_cand = discs_c[p_idx, index].reshape(index.shape[:-1] + (-1, 2))  # [T,P,A,C*G,2]
    disc_cand_mask = (disc_mask_c[p_idx, index] & slot_valid[..., None]).reshape(
        index.shape[:-1] + (-1,))
    hit = hit | _near_discs(boxes[:, None], disc_cand, disc_cand_mask)
    hit = hit & present[:, None]

    def exhaustive(i):                                                     # rows of [T*P*A]
        t, p, a = jnp.unravel_index(i, (num_t, num_p, num_a))
        box = boxes[t, a]                                                  # [M,4,2]
        return ((geometry.convex_intersect(box[:, None], rects[p]) & rect_mask[p]).any(-1) |
                _near_discs(box, discs[p], disc_mask[p])) & present[t, a]

    flat = preselect.complete(overflow.reshape(-1), hit.reshape(-1), exhaustive,
                              CORRIDOR_FALLBACK_ROWS)
    return flat.reshape(hit.shape)


def _box_frames(obs: Observation, steps):
    """Oriented-rectangle form of the objects' boxes at the given observation steps:
    centre [T,A,2], axis [A,2] (unit, along the box length), half [A,2] (half length, half
    width). The boxes move without turning, so axis and size come from their first step."""
    _, axis, half = geometry.box_frame(obs.agent_corners[:, 0])
    return jnp.moveaxis(obs.agent_center[:, steps], 0, 1), axis, half


def _red_light_distances(ego_c, heading, ahead_red, red):
    """Distances from the ego boxes to the red lights ahead of them, packed: ego_c [P,n,2],
    heading [P,n], ahead_red [P,n,L]; red: the scene's red lights (:func:`_red_light_tables`)
    -> [P,n,C] (C = ``RED_LIGHT_LEAD_CAPACITY``; +inf in unused slots).

    The exact rings are long (tens of vertices, padded to the map's vertex cap) and few lights
    are red and ahead on a path. Each row measures the C lights ahead whose bounding boxes are
    nearest (the box distance is a lower bound of the ring's), against their rings cut short
    (``preselect.short_rings``). A row where an unmeasured light's bound (less a margin against
    rounding) is below the least measured distance, or a measured ring is long, is redone
    against every light ahead in full (``preselect.complete``) and keeps their least distance
    in slot 0. Either way the least finite value is the least distance to a light ahead, and a
    tie with an agent still goes to the agent (agents come first in the lead argmin), so the
    lead row is that of measuring every light."""
    num_p, num_n, num_l = ahead_red.shape
    rows = ahead_red.reshape(num_p * num_n, num_l)
    c = ego_c.reshape(-1, 2)
    h = heading.reshape(-1)
    axis = jnp.stack([jnp.cos(h), jnp.sin(h)], -1)
    ego_half = jnp.array([geometry.EGO_HALF_LENGTH, geometry.EGO_HALF_WIDTH])
    bound = geometry.box_distance(c[:, None], axis[:, None], ego_half, red["box_centre"],
                                  jnp.array([1.0, 0.0]), red["box_half"])          # [M,L]
    bound = jnp.where(rows, bound - _RED_LIGHT_BOUND_MARGIN, jnp.inf)
    capacity = min(RED_LIGHT_LEAD_CAPACITY, num_l)
    # The C least bounds: int32 keys of the (non-negative after clamping) bounds, min-reductions.
    key = jax.lax.bitcast_convert_type(jnp.maximum(bound, 0.0), jnp.int32)
    picks = []
    for _ in range(capacity):
        least = key.min(-1)
        pick = jnp.where(key == least[:, None], jnp.arange(num_l), num_l).min(-1)
        picks.append(jnp.minimum(pick, num_l - 1))
        key = jnp.where(jnp.arange(num_l) == pick[:, None], jnp.iinfo(jnp.int32).max, key)
    pick = jnp.stack(picks, -1)                                                    # [M,C]
    valid = jnp.take_along_axis(rows, pick, -1)
    d = geometry.box_polygon_distance(c[:, None], h[:, None], geometry.EGO_HALF_LENGTH,
                                      geometry.EGO_HALF_WIDTH, red["short_polys"][pick],
                                      red["short_edges"][pick])                     # [M,C]
    d = jnp.where(valid, d, jnp.inf)
    # The least bound left unmeasured (the keys of the picked lights are now int32 max).
    rest = jnp.where(key == jnp.iinfo(jnp.int32).max, jnp.inf, bound).min(-1)
    overflow = (rest < d.min(-1)) | (valid & red["long"][pick]).any(-1)

    def every_light(i):
        d_all = geometry.box_polygon_distance(
            c[i][:, None], h[i][:, None], geometry.EGO_HALF_LENGTH,
            geometry.EGO_HALF_WIDTH, red["polys"][None], red["edges"][None])           # [M,L]
        least = jnp.where(rows[i], d_all, jnp.inf).min(-1)
        return jnp.full((i.shape[0], capacity), jnp.inf).at[:, 0].set(least)

    d = preselect.complete(overflow, d, every_light, RED_LIGHT_LEAD_FALLBACK_ROWS)
    return d.reshape(num_p, num_n, capacity)


def _red_light_tables(polys, edges):
    """The scene's red lights for :func:`_red_light_distances`: polys [L,V,2], edges [L,V,6]
    (``geometry.edge_table``) in full, their rings cut to ``RED_LIGHT_VERTEX_CAPACITY``
    (short_polys, short_edges, long [L]: ``preselect.short_rings``) and bounding boxes
    (box_centre, box_half [L,2])."""
    short, long = preselect.short_rings(polys, RED_LIGHT_VERTEX_CAPACITY)
    lo, hi = polys.min(-2), polys.max(-2)
    return jax.tree.map(preselect.materialize, dict(
        polys=polys, edges=edges, short_polys=short, short_edges=geometry.edge_table(short),
        long=long, box_centre=0.5 * (lo + hi), box_half=0.5 * (hi - lo)))


def _lead_rows(t, pose_prev, s_prev, ctx, obs: Observation, step):
    """Lead-agent rows at even step t for every proposal, with the devkit's vector reuse.

    pose_prev [P,n,3], s_prev [P,n]; step: this step's precomputed object data (corridor
    membership box_in [P,A], progress box_prog [P,A], red_on [P,L], box centre [A,2]) ->
    lead [P,n,3].
    """
    ahead_box = step["box_in"][:, None] & (step["box_prog"][:, None] > s_prev[..., None])
    ahead_red = step["red_on"][:, None] & (ctx["red_prog"][:, None] > s_prev[..., None])
    # Distances from the ego box (at the previous pose) to every object, as rectangles.
    ego_c = geometry.ego_center(pose_prev)                                 # [P,n,2]
    ego_axis = jnp.stack([jnp.cos(pose_prev[..., 2]), jnp.sin(pose_prev[..., 2])], -1)
    ego_half = jnp.array([geometry.EGO_HALF_LENGTH, geometry.EGO_HALF_WIDTH])
    d_box = geometry.box_distance(ego_c[..., None, :], ego_axis[..., None, :], ego_half,
                                  step["centre"], ctx["box_axis"], ctx["box_half"])  # [P,n,A]
    d_red = _red_light_distances(ego_c, pose_prev[..., 2], ahead_red, ctx["red"])  # [P,n,C]
    ahead = jnp.concatenate([ahead_box, jnp.isfinite(d_red)], -1)
    d_all = jnp.where(ahead, jnp.concatenate([d_box, d_red], -1), jnp.inf)       # [P,n,A+C]
    # argmin (first on ties) as two int32 reductions over the distances' bit patterns (order
    # preserving for non-negative floats): several times cheaper than a variadic argmin.
    key = jax.lax.bitcast_convert_type(d_all, jnp.int32)
    key_min = key.min(-1)
    nearest = jnp.where(key == key_min[..., None], jnp.arange(key.shape[-1]),
                        key.shape[-1]).min(-1)                                    # [P,n]
    d_min = jax.lax.bitcast_convert_type(key_min, jnp.float32)
    has = jnp.isfinite(d_min)
    num_agents = ahead_box.shape[-1]
    is_red = nearest >= num_agents
    j = jnp.minimum(nearest, num_agents - 1)
    lead_v = obs.agent_first_speed[j] * jnp.cos(
        geometry.wrap_angle(obs.agent_first_heading[j] - pose_prev[..., 2]))

    progress = jnp.where(has, s_prev + jnp.where(has, d_min, 0.0), ctx["length"][:, None])
    write_v = has & ~is_red
    write_lr = ~has
    # One 3-vector per path per update, written proposal by proposal (quirk, spec §3.3). Past
    # step 40 the devkit unrolls the chosen proposal alone: every proposal gets a fresh vector.
    alone = t > PROPOSAL_STEPS
    vec_v = jnp.zeros(s_prev.shape[0])
    vec_lr = jnp.zeros(s_prev.shape[0])
    rows = []
    for k in range(s_prev.shape[1]):
        vec_v = jnp.where(write_v[:, k], lead_v[:, k], jnp.where(alone, 0.0, vec_v))
        vec_lr = jnp.where(write_lr[:, k], FREE_LEAD_REAR_LENGTH, jnp.where(alone, 0.0, vec_lr))
        rows.append(jnp.stack([progress[:, k], vec_v, vec_lr], -1))
    return jnp.stack(rows, axis=1)


def _unroll(t0, num_pairs, carry, target, ctx, obs, steps):
    """IDM unroll over steps t0, t0+1, .., t0 + 2 num_pairs - 1 (t0 odd) along ctx's paths.

    carry = (s [P,n], v [P,n], pose [P,n,3], lead [P,n,3]) at step t0 - 1; target [P,n];
    steps: per even step t0 + 1 + 2 i the object data of :func:`_lead_rows` ([num_pairs, ...]).
    Returns the final carry and per-step (pose [T,P,n,3], s [T,P,n], v [T,P,n]).
    """
    interp = jax.vmap(lambda path, s: geometry.polyline_interpolate(path, ctx["valid"], s))

    def advance(s, v, lead):
        s, v = idm_step(s, v, lead, target)
        return s, v, interp(ctx["paths"], s)

    def pair(c, xs):
        t_odd, step = xs
        s, v, pose, lead = c
        s1, v1, pose1 = advance(s, v, lead)              # odd step: copies the previous lead row
        lead = _lead_rows(t_odd + 1, pose1, s1, ctx, obs, step)
        s2, v2, pose2 = advance(s1, v1, lead)
        return (s2, v2, pose2, lead), (jnp.stack([pose1, pose2]), jnp.stack([s1, s2]),
                                       jnp.stack([v1, v2]))

    carry, (poses, s, v) = jax.lax.scan(pair, carry, (t0 + 2 * jnp.arange(num_pairs), steps))
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    return carry, (flat(poses), flat(s), flat(v))


def pdm_closed_details(scene: types.Scene) -> dict:
    """PDM-Closed for one scene, with its proposals (vmap over scenes).

    Args:
      scene: one Scene (centerline [R,3] + centerline_valid [R], speed_limit [], ego_velocity
        [2], agents, red lights, drivable map).
    Returns:
      dict: ``poses`` [51,3] the chosen IDM trajectory (t = 0 .. 5 s), ``states`` [41,11] its
      first 41 poses simulated, ``proposal_poses`` [15,41,3], ``proposal_states`` [15,41,11],
      ``proposal_velocity`` [15,41] (IDM speeds), ``proposal_scores`` [15], ``best`` [] int,
      ``raw`` the proposals' :func:`metrics.score_states` dict.
    """
    if jnp.ndim(scene.speed_limit) != 0:
        raise ValueError("pdm_closed: expects one scene (jax.vmap over a batch); speed_limit has "
                         f"shape {jnp.shape(scene.speed_limit)}")
    obs = forecast_observation(scene)
    valid = jnp.asarray(scene.centerline_valid, bool)
    line = jnp.asarray(scene.centerline, jnp.float32)
    paths = jnp.stack([geometry.polyline_offset(line, o) for o in LATERAL_OFFSETS])  # [P,R,3]
    num_paths, n_lon = len(LATERAL_OFFSETS), len(SPEED_LIMIT_FRACTIONS)

    ego_xy = jnp.zeros(2)
    s0 = jax.vmap(lambda p: geometry.polyline_project(ego_xy, p, valid)[0])(paths)   # [P]
    length = jax.vmap(lambda p: geometry.polyline_project(
        p[jnp.maximum(valid.sum() - 1, 0), :2], p, valid)[0])(paths)
    v0 = target_velocities(jnp.asarray(scene.speed_limit, jnp.float32))
    horizon = jnp.max(jnp.abs(v0)) * TRAJECTORY_STEPS * DT
    corridor = jax.vmap(lambda p, s: _corridor(p, valid, s, s + horizon))(paths, s0)
    rects, rect_mask, discs, disc_mask = corridor
    red_polys = obs.red_polygons
    red_edges = preselect.materialize(geometry.edge_table(red_polys))
    red_in = _lights_in_corridor(corridor, red_polys, red_edges)                     # [P,L]
    red_c = jax.vmap(polygon_centroid)(red_polys)
    red_prog = jax.vmap(lambda p: geometry.polyline_project(red_c, p, valid)[0])(paths)
    # Everything about the objects that does not depend on the IDM state, for all even steps
    # at once (vectorised, outside the sequential unroll).
    even = 2 + 2 * jnp.arange(TRAJECTORY_STEPS // 2)                                # [25]
    centre, box_axis, box_half = _box_frames(obs, even)
    box_in = _in_corridor(corridor, jnp.moveaxis(obs.agent_corners[:, even], 0, 1),
                          obs.agent_present[:, even].T)                             # [25,P,A]
    box_prog = jax.vmap(lambda p: geometry.polyline_project(
        jnp.moveaxis(obs.agent_center[:, even], 0, 1), p, valid)[0], out_axes=1)(paths)
    steps = dict(box_in=box_in, box_prog=box_prog, centre=centre,
                 red_on=obs.red_active[:, even].T[:, None] & red_in[None])           # [25,P,L]
    ctx = dict(paths=paths, valid=valid, length=length, red_prog=red_prog, box_axis=box_axis,
               box_half=box_half, red=_red_light_tables(red_polys, red_edges))

    # Initial IDM state per proposal: progress of the rear axle, logged speed, path pose.
    pose0 = jax.vmap(lambda p, s: geometry.polyline_interpolate(p, valid, s))(paths, s0)
    shape = (num_paths, n_lon)
    carry = (jnp.broadcast_to(s0[:, None], shape),
             jnp.full(shape, jnp.asarray(scene.ego_velocity, jnp.float32)[0]),
             jnp.broadcast_to(pose0[:, None], shape + (3,)),
             jnp.zeros(shape + (3,)))                    # lead row 0: zeros (quirk)
    target = jnp.broadcast_to(v0[None], shape)
    # All 15 proposals are unrolled to step 50 in one scan; only the chosen one's steps 41..50
    # are used, and those see the lead vector the devkit's lone unroll would give them.
    _, (poses, _, vel) = _unroll(1, TRAJECTORY_STEPS // 2, carry, target, ctx, obs, steps)
    proposal_poses = jnp.concatenate([carry[2][None], poses], 0)       # [51,P,n,3]
    proposal_poses = jnp.moveaxis(proposal_poses, 0, 2).reshape(NUM_PROPOSALS, -1, 3)
    proposal_vel = jnp.moveaxis(jnp.concatenate([carry[1][None], vel], 0), 0, 2).reshape(
        NUM_PROPOSALS, -1)
    unrolled = proposal_poses                                            # [15,51,3]
    proposal_poses = proposal_poses[:, :PROPOSAL_STEPS + 1]
    proposal_vel = proposal_vel[:, :PROPOSAL_STEPS + 1]

    init = trajectory.initial_state(scene)
    states = jax.vmap(simulate.simulate, (0, None))(proposal_poses, init)
    raw = metrics.score_states(states, obs, scene)
    multi = metrics.multiplier(raw)
    best_progress = jnp.max(raw["progress"] * multi)
    ep = metrics.normalise_progress(raw["progress"], multi, best_progress, 1.0)
    # No history is given to the internal scorer, so HC = 1.
    scores = multi * (5.0 * ep + 5.0 * raw["ttc"] + 2.0 * raw["lk"] + 2.0) / 14.0
    best = jnp.argmax(scores)

    return dict(poses=unrolled[best], states=states[best], proposal_poses=proposal_poses,
                proposal_states=states, proposal_velocity=proposal_vel, proposal_scores=scores,
                best=best, raw=raw)


def pdm_closed(scene: types.Scene):
    """PDM-Closed's trajectory for one scene (vmap over scenes).

    Returns:
      poses [51,3]: IDM poses at t = 0.1 k s, k = 0..50 (the metric cache's trajectory);
      states [41,11]: its first 41 poses simulated (the EP normalisation reference).
    """
    out = pdm_closed_details(scene)
    return out["poses"], out["states"]
