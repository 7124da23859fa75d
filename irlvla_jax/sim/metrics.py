"""The per-trajectory EPDMS sub-metrics of NAVSIM's ``PDMScorer`` (spec/EPDMS.md §5, §3.5).

:func:`score_states` scores K simulated ego trajectories ``[K, 41, 11]`` against one scene's
observation (agents and red lights per 10 Hz step, ``irlvla_jax.sim.observation.Observation``)
and map (the Scene's drivable-area polygons and route centreline). It serves both the official
scoring (the log-replay observation) and PDM-Closed's internal proposal scoring (the forecast
observation, whose collided-at-t=0 tracks the observation builder marks absent).

Everything is per candidate and vmapped over K; map geometry is shared across candidates. The
order-dependent ignore lists of NC and TTC are computed without a sequential loop, see
:func:`_first_events`.

Speed (all exact): the polygon tests run only on what can matter. Per ego point, the map
polygons whose bounding box contains it (``AREA_CAPACITY``), and per step the agents whose box
overlaps the ego's (``AGENT_CAPACITY``), are packed into a few slots (:func:`first_true`);
nothing else can contain the point / touch the ego. Poses (trajectories) with more candidates
than slots are recomputed against everything by a ``while_loop`` that costs nothing when none
overflows (:func:`complete`); the ``area_overflow`` / ``agent_overflow`` flags of
:func:`score_states` say where that happened. On XLA:CPU, cheap elementwise chains are fused
(and recomputed) into every consumer, also broadcasting ones, and float min/max reductions are
slow: per-scene tables are materialised (:func:`_materialize`) and argmins are int32 reductions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from irlvla_jax import geometry as geo
from irlvla_jax import types
from irlvla_jax.sim.trajectory import StateIndex as S

NUM_STATES = 41                       # t = 0 .. 4 s at 0.1 s

# --- PDMScorer defaults (navsim PDM/scoring/pdm_scorer.py) ------------------------------------
STOPPED_SPEED = 0.05                  # collision type: ego / track considered stopped (m/s)
TTC_STOPPED_SPEED = 5e-3              # TTC ignores steps where the ego is slower (m/s)
TTC_STEPS = np.arange(0, int(1.0 * 10), 3)   # {0, 3, 6, 9} x 0.1 s projection
TTC_LAST_T = NUM_STATES - 1 - int(TTC_STEPS[-1])   # t = 0 .. 31 are tested
AHEAD_COS = float(np.cos(np.deg2rad(30.0)))      # is_agent_ahead: relative angle < 30 deg
BEHIND_COS = float(np.cos(np.deg2rad(150.0)))    # is_agent_behind: relative angle > 150 deg
DDC_WINDOW = 11                       # samples in a 1 s window (t-10 .. t)
DDC_FULL, DDC_HALF = 2.0, 6.0         # oncoming metres: < 2 -> 1, < 6 -> 0.5, else 0
LK_THRESHOLD = 0.5                    # metres from the centreline
LK_MAX_STEPS = int(np.ceil(2.0 / 0.1))   # consecutive exceedances that fail LK (20)
# Exact pre-selection (see the module docstring). Polygons tested per ego *point* (4 corners,
# centre, rear axle): those whose bounding box contains the point and whose type matters for that
# point. A NAVSIM point lies in the boxes of a few roadblocks, lanes and (in a junction) lane
# connectors and intersections; where more than this, the pose is redone against every polygon.
AREA_CAPACITY = 12
# Agents tested per step by TTC: those whose bounding box over the step's 4 projection times
# overlaps the projected ego's (NC, testing the ego's own box, half as many); a trajectory with
# more anywhere is redone against every agent.
AGENT_CAPACITY = 12
# The exact fallbacks run over the overflowing poses / trajectories this many at a time.
AREA_FALLBACK_CHUNK = 64
AGENT_FALLBACK_CHUNK = 8

_LANE_TYPES = (types.LANE, types.LANE_CONNECTOR)
_DRIVABLE_TYPES = (types.ROADBLOCK, types.INTERSECTION, types.CARPARK_AREA)


# ----------------------------------------------------------------------------------------------
def _relative_cos(ego_pose, point):
    """cos of nuPlan's agent relative angle (ego heading vs direction to the agent).

    ego_pose [...,3] rear axle, point [...,2] -> [...]; NaN where the points coincide (nuPlan
    divides by zero there too, so neither "ahead" nor "behind" holds).
    """
    dx, dy = point[..., 0] - ego_pose[..., 0], point[..., 1] - ego_pose[..., 1]
    n = jnp.sqrt(dx * dx + dy * dy)          # written out: a norm over the size-2 axis is slow
    dot = jnp.cos(ego_pose[..., 2]) * dx + jnp.sin(ego_pose[..., 2]) * dy
    return jnp.where(n > 0, dot / jnp.where(n > 0, n, 1.0), jnp.nan)


def _map_layers(scene):
    """Per-polygon layer masks of the drivable map: (lane [P], on-route lane [P], drivable [P],
    intersection [P]) bool."""
    t, v = scene.map_polygon_type, scene.map_polygon_valid
    lane = v & ((t == _LANE_TYPES[0]) | (t == _LANE_TYPES[1]))
    drivable = v & ((t == _DRIVABLE_TYPES[0]) | (t == _DRIVABLE_TYPES[1]) |
                    (t == _DRIVABLE_TYPES[2]))
    return lane, lane & scene.map_polygon_on_route, drivable, v & (t == types.INTERSECTION)


# ----------------------------------------------------------------------------------------------
# Pre-selection: pack the few candidates that can matter into fixed slots

def first_true(mask, capacity):
    """The first ``capacity`` True columns of each row, in column order.

    mask [..., N] bool -> (index [..., C] int32 (0 in unused slots), slot_valid [..., C] bool,
    overflow [...] bool: the row has more than C True columns, the last ones were left out).

    The row is packed into 32-bit words and the slots are filled by repeatedly taking the
    lowest set bit (count-leading-zeros of ``w & -w``) and clearing it: C x words elementwise
    steps, no sort, scatter or cumulative sum (those cost more than the tests they save on CPU).
    The C steps are a ``scan``, so each step's words are materialised once (a Python loop lets
    XLA fuse the whole chain into every slot's output: quadratic in C).
    """
    *lead, n = mask.shape
    words_n = -(-n // 32)
    mask = jnp.pad(mask, [(0, 0)] * len(lead) + [(0, 32 * words_n - n)])
    bits = mask.reshape(tuple(lead) + (words_n, 32)).astype(jnp.uint32) << jnp.arange(
        32, dtype=jnp.uint32)
    packed = jnp.sum(bits, -1, dtype=jnp.uint32)          # distinct bits: the sum is the OR
    words = [packed[..., w] for w in range(words_n)]

    def take_lowest(words, _):
        which = jnp.full(words[0].shape, words_n, jnp.int32)
        word = jnp.zeros(words[0].shape, jnp.uint32)
        for w in reversed(range(words_n)):              # the first non-empty word
            nonzero = words[w] != 0
            which = jnp.where(nonzero, w, which)
            word = jnp.where(nonzero, words[w], word)
        bit = 31 - jax.lax.clz(word & (jnp.uint32(0) - word)).astype(jnp.int32)
        rest = word & (word - jnp.uint32(1))
        words = tuple(jnp.where(which == w, rest, words[w]) for w in range(words_n))
        return words, (jnp.where(which < words_n, 32 * which + bit, 0), which < words_n)

    # (Everything leaves through the scan's outputs: values computed elementwise from the
    # packed words would be fused, and recomputed, into every consumer.)
    rest, (index, slot_valid) = jax.lax.scan(take_lowest, tuple(words), None, length=capacity)
    overflow = functools.reduce(jnp.logical_or, [w != 0 for w in rest])
    return jnp.moveaxis(index, 0, -1), jnp.moveaxis(slot_valid, 0, -1), overflow


def _materialize(x, neutral=None):
    """x itself, computed once: a min/max with ``neutral`` over a new size-2 axis.

    XLA:CPU fuses chains of cheap elementwise ops into every consumer, also into consumers that
    read each element many times (a broadcast over candidates, steps or agents), recomputing the
    chain each time; it does not fuse a reduction into its consumers. neutral: a value that
    never wins the min (int/float; default the dtype's max / +inf) or max (bool: False).
    """
    if neutral is None:
        neutral = (False if x.dtype == jnp.bool_ else jnp.inf
                   if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).max)
    pair = jnp.stack([x, jnp.full_like(x, neutral)])
    return pair.max(0) if x.dtype == jnp.bool_ else pair.min(0)


def complete(pending, values, compute, chunk):
    """Exact fallback: ``values[i] = compute(i)`` for every ``pending`` i.

    pending [N] bool; values: pytree of [N, ...]; compute(index [M] int32) -> pytree of
    [M, ...]. A ``while_loop`` over the pending items, ``chunk`` (= M) at a time: when nothing
    is pending it costs one test and no work. Under ``vmap`` (scenes) the loop runs while any
    scene has pending items and keeps the others' values.
    """
    n = pending.shape[0]

    def body(carry):
        todo, vals = carry
        sel = jnp.nonzero(todo, size=chunk, fill_value=n)[0]      # n: an empty slot
        new = compute(jnp.minimum(sel, n - 1))
        vals = jax.tree.map(lambda v, x: v.at[sel].set(x, mode="drop"), vals, new)
        return todo.at[sel].set(False, mode="drop"), vals

    return jax.lax.while_loop(lambda c: c[0].any(), body, (pending, values))[1]


# ----------------------------------------------------------------------------------------------
# Ego-area flags

_LANE_BIT, _ROUTE_BIT, _DRIVABLE_BIT, _INTERSECTION_BIT = 1, 2, 4, 8
# Point roles: the 4 corners need lanes and drivable polygons, the centre on-route lanes and
# intersections (ONCOMING, DDC/LK), the rear axle intersections (TTC).
_POINT_ROLE = (0, 0, 0, 0, 1, 2)


def _map_tables(scene):
    """Per-scene map constants: edges [P,V,6] (``geo.edge_table``), box lo/hi [P,2], layer
    bits [P] int32, role [3,P] bool (polygons that matter to corners / centre / rear axle)."""
    polys = jnp.asarray(scene.map_polygons, jnp.float32)
    lane, route, drivable, inter = _map_layers(scene)
    bits = (lane * _LANE_BIT + route * _ROUTE_BIT + drivable * _DRIVABLE_BIT +
            inter * _INTERSECTION_BIT).astype(jnp.int32)
    role = jnp.stack([lane | drivable, route | inter, inter])
    # Materialised: they are compared with every point (see _materialize).
    return jax.tree.map(_materialize, dict(edges=geo.edge_table(polys), lo=polys.min(-2),
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


def ego_areas(points, scene, capacity=AREA_CAPACITY):
    """Ego-area flags per pose (PDMScorer ``_calculate_ego_area``, spec §5.1), exact.

    points [T,6,2]: per pose the 4 ego corners (FL, RL, RR, FR), the centre, the rear axle.
    capacity (static): per point, test only the (at most this many) polygons whose bounding
      box contains it and whose type matters for it — a polygon strictly contains a point only
      inside its box, so nothing else can change a flag. Poses with a point in more boxes are
      redone against every polygon (:func:`complete`). None tests every polygon everywhere.
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


# ----------------------------------------------------------------------------------------------
# Agents: NC and TTC

def _box_lo_hi(corners):
    """corners [...,4,2] -> (lo [...,2], hi [...,2]) axis-aligned bounds."""
    return corners.min(-2), corners.max(-2)


def _boxes_overlap(amin, amax, bmin, bmax):
    """Closed axis-aligned boxes [...,2] overlap (touching counts) -> bool [...]."""
    return ((amin[..., 0] <= bmax[..., 0]) & (amax[..., 0] >= bmin[..., 0]) &
            (amin[..., 1] <= bmax[..., 1]) & (amax[..., 1] >= bmin[..., 1]))


def _agent_tables(obs):
    """Per-scene agent constants, time-major: the boxes as rectangles (box_centre, axis,
    half [41,A,2], ``geo.box_frame``), centre [41,A,2] (the track position, for the relative
    angles), present [41,A], box lo/hi [41,A,2]; for TTC the union box and presence over each
    step's 4 projection times: ttc_lo/ttc_hi [T',A,2], ttc_present [T',A]."""
    corners = jnp.swapaxes(obs.agent_corners[:, :NUM_STATES], 0, 1)
    present = obs.agent_present[:, :NUM_STATES].T
    lo, hi = _box_lo_hi(corners)
    box_centre, axis, half = geo.box_frame(corners)
    tt = np.arange(TTC_LAST_T + 1)[:, None] + TTC_STEPS[None]              # [T',4]
    tables = dict(box_centre=box_centre, axis=axis, half=half,
                  centre=jnp.swapaxes(obs.agent_center[:, :NUM_STATES], 0, 1),
                  present=present, lo=lo, hi=hi, ttc_lo=lo[tt].min(1), ttc_hi=hi[tt].max(1),
                  ttc_present=present[tt].any(1), first_speed=obs.agent_first_speed,
                  dynamic=obs.agent_is_dynamic)
    return jax.tree.map(_materialize, tables)


_NO_EVENT = np.iinfo(np.int32).max


def _first_events(key, index, num, aligned):
    """Each agent's first event, from per-slot event keys.

    NAVSIM walks the events in time order and, per proposal, appends every non-at-fault token
    to an ignore list (NC; TTC likewise for non-dangerous hits). A token's *first* counted event
    therefore decides it: at fault -> its score (fixed per token: 0 agent, 0.5 static) is taken,
    and re-evaluating later events cannot lower it further; not at fault -> ignored from then
    on. Taking each token's first event is exactly the carried-ignore-mask scan, vectorised.

    key [T,C] int32: per step and slot, the slot's first event in NAVSIM's loop order encoded
    as 2 x (order within the step) + (1 if the event is benign, 0 if it decides the metric),
    or ``_NO_EVENT``; index [T,C]: the agent in each slot (aligned: slot c is agent c). Returns
    [A] int32: the least t * 2^16 + key over the agent's slots (``_NO_EVENT`` if none), so
    ``first % 2 == 0`` says the agent's first event decides the metric (spec §5.3/5.4).

    Only the slot keys are spread over the agents (a min over [T*C, A]): the per-slot tests
    stay computed once per slot.
    """
    steps = jnp.arange(key.shape[0], dtype=jnp.int32)[:, None] * (1 << 16)
    key = jnp.where(key == _NO_EVENT, _NO_EVENT, steps + key)
    if aligned:
        return key.min(0)
    mine = index.reshape(-1)[:, None] == jnp.arange(num)                    # [T*C,A]
    return jnp.where(mine, key.reshape(-1)[:, None], _NO_EVENT).min(0)


_EGO_HALF = (geo.EGO_HALF_LENGTH, geo.EGO_HALF_WIDTH)


def _ego_frame(pose):
    """The ego footprint as a rectangle: (centre [...,2], axis [...,2]) from rear-axle poses."""
    return geo.ego_center(pose), jnp.stack([jnp.cos(pose[..., 2]), jnp.sin(pose[..., 2])], -1)


def _no_at_fault_collision(corners, pose, speed, areas, tables, capacity):
    """NC of one trajectory (spec §5.2-5.3).

    corners [41,4,2], pose [41,3] rear axle, speed [41], areas: ego_areas dict [41];
    capacity: agents tested per step (those whose box overlaps the ego's), None = all.
    Returns (nc [], overflow [41]: more than ``capacity`` agents' boxes overlapped the ego's).
    Boxes are tested as rectangles (``geo.boxes_intersect``, ``geo.segment_intersects_box``:
    the polygon predicates on their corners, a few times cheaper).
    """
    num_a = tables["present"].shape[1]
    t = jnp.arange(NUM_STATES)[:, None]
    if capacity is None or capacity >= num_a:
        index = jnp.broadcast_to(jnp.arange(num_a), (NUM_STATES, num_a))
        slot_valid, overflow, aligned = tables["present"], jnp.zeros((NUM_STATES,), bool), True
        near = [tables[n] for n in ("box_centre", "axis", "half", "centre")]
    else:
        lo, hi = (_materialize(x) for x in _box_lo_hi(corners))
        near_box = tables["present"] & _boxes_overlap(tables["lo"], tables["hi"], lo[:, None],
                                                      hi[:, None])         # [41,A]
        index, slot_valid, overflow = first_true(near_box, capacity)       # [41,C]
        near = [tables[n][t, index] for n in ("box_centre", "axis", "half", "centre")]
        aligned = False
    box_centre, axis, half, centre = near
    ego_centre, ego_axis = _ego_frame(pose)
    hit = slot_valid & geo.boxes_intersect(ego_centre[:, None], ego_axis[:, None],
                                           jnp.asarray(_EGO_HALF), box_centre, axis, half)
    bumper = geo.segment_intersects_box(corners[:, None, 0], corners[:, None, 3], box_centre,
                                        axis, half)                         # [41,C]
    dynamic = tables["dynamic"][index]
    stopped_track = ~dynamic | (tables["first_speed"][index] <= STOPPED_SPEED)
    rear = _relative_cos(pose[:, None], centre) < BEHIND_COS
    lateral_fault = (areas["multiple_lanes"] | areas["non_drivable"])[:, None]
    at_fault = (speed > STOPPED_SPEED)[:, None] & (
        stopped_track | (~rear & (bumper | lateral_fault)))
    key = jnp.where(hit, jnp.where(at_fault, 0, 1), _NO_EVENT)
    key = _materialize(key, _NO_EVENT)
    first = _first_events(key, index, num_a, aligned)
    decisive = (first != _NO_EVENT) & (first % 2 == 0)
    penalty = jnp.where(tables["dynamic"], 0.0, 0.5)                        # Agent vs StaticObject
    return jnp.min(jnp.where(decisive, penalty, 1.0), initial=1.0), overflow


def _time_to_collision(corners, pose, speed, areas, tables, capacity):
    """TTC of one trajectory (spec §5.4): 0 if a constant-velocity projection of the ego
    polygon by 0, 0.3, 0.6, 0.9 s hits an agent ahead (or not behind, while the ego is in
    several lanes / off-road / in an intersection). capacity: agents tested per step (those
    whose box over the 4 projection times overlaps the projected ego's), None = all.
    Returns (ttc [], overflow [T'])."""
    num_a = tables["present"].shape[1]
    t = np.arange(TTC_LAST_T + 1)                                           # [T']
    tt = t[:, None] + TTC_STEPS[None]                                       # [T',4]
    ego_centre, ego_axis = _ego_frame(pose[t])                              # [T',2]
    shift = (speed[t, None] * TTC_STEPS[None] * 0.1)[..., None] * ego_axis[:, None]  # [T',4,2]
    if capacity is None or capacity >= num_a:
        index = jnp.broadcast_to(jnp.arange(num_a), (len(t), num_a))
        slot_valid, overflow, aligned = tables["ttc_present"], jnp.zeros((len(t),), bool), True
    else:
        # The projected boxes' union: the box at 0 s stretched by the 0.9 s shift.
        lo, hi = _box_lo_hi(corners[t])
        lo = _materialize(lo + jnp.minimum(shift[:, -1], 0.0))              # [T',2]
        hi = _materialize(hi + jnp.maximum(shift[:, -1], 0.0))
        near_box = tables["ttc_present"] & _boxes_overlap(
            tables["ttc_lo"], tables["ttc_hi"], lo[:, None], hi[:, None])   # [T',A]
        index, slot_valid, overflow = first_true(near_box, capacity)      # [T',C]
        aligned = False
    ti, ci = tt[:, :, None], index[:, None, :]                             # [T',4,1], [T',1,C]
    hit = (slot_valid[:, None] & tables["present"][ti, ci] &
           geo.boxes_intersect((ego_centre[:, None] + shift)[:, :, None],
                               ego_axis[:, None, None], jnp.asarray(_EGO_HALF),
                               tables["box_centre"][ti, ci], tables["axis"][ti, ci],
                               tables["half"][ti, ci]))                     # [T',4,C]
    hit = hit & (speed[t] >= TTC_STOPPED_SPEED)[:, None, None]
    rel = _relative_cos(pose[t][:, None, None], tables["centre"][ti, ci])   # [T',4,C]
    risky_area = (areas["multiple_lanes"] | areas["non_drivable"] |
                  areas["rear_in_intersection"])[t][:, None, None]
    dangerous = (rel > AHEAD_COS) | (risky_area & ~(rel < BEHIND_COS))
    # Events in NAVSIM's loop order: time outer, projection step inner.
    order = 2 * jnp.arange(len(TTC_STEPS), dtype=jnp.int32)[None, :, None]
    key = jnp.where(hit, order + jnp.where(dangerous, 0, 1), _NO_EVENT).min(1)   # [T',C]
    first = _first_events(key, index, num_a, aligned)
    return jnp.where(((first != _NO_EVENT) & (first % 2 == 0)).any(), 0.0, 1.0), overflow


def _traffic_light(centre, heading, red_active, red_edges):
    """TLC (spec §5.5): 0 if any ego polygon, t = 0..40 included, touches an active red-light
    lane connector at the same step. centre [41,2], heading [41], red_active [L,41],
    red_edges [L,V,6] (``geo.edge_table`` of the red-light polygons) -> []."""
    hit = geo.box_intersects_polygon(centre[:, None], heading[:, None], geo.EGO_HALF_LENGTH,
                                     geo.EGO_HALF_WIDTH, red_edges[None])   # [41,L]
    return jnp.where((hit & red_active.T).any(), 0.0, 1.0)


def _driving_direction(centre, areas):
    """DDC (spec §5.5) from the centre displacement in the oncoming lane. centre [41,2] -> []."""
    d = jnp.linalg.norm(jnp.diff(centre, axis=0), axis=-1)
    d = jnp.concatenate([jnp.zeros((1,), d.dtype), d])
    d = jnp.where(areas["oncoming"] & ~areas["centre_in_intersection"], d, 0.0)
    c = jnp.cumsum(d)
    window = c - jnp.concatenate([jnp.zeros((DDC_WINDOW,), c.dtype), c[:-DDC_WINDOW]])
    m = window.max()
    return jnp.where(m < DDC_FULL, 1.0, jnp.where(m < DDC_HALF, 0.5, 0.0))


def _lane_keeping(centre_dist, in_intersection):
    """LK (spec §5.5): 0 once the centre is > 0.5 m off the centreline for 20 consecutive
    non-intersection steps; intersection steps neither count nor reset. [41], [41] -> []."""
    counted = ~in_intersection
    exceed = counted & (centre_dist > LK_THRESHOLD)
    reset = counted & ~exceed
    t = jnp.arange(centre_dist.shape[0])
    c = jnp.cumsum(exceed)
    last_reset = jax.lax.cummax(jnp.where(reset, t, -1))
    run = c - jnp.where(last_reset >= 0, c[jnp.maximum(last_reset, 0)], 0)
    return jnp.where((run >= LK_MAX_STEPS).any(), 0.0, 1.0)


def _ego_points(states):
    """states [...,41,11] -> (pose [...,41,3], speed [...,41], corners [...,41,4,2],
    centre [...,41,2], points [...,41,6,2]: corners, centre, rear axle)."""
    pose = states[..., :3]
    speed = jnp.hypot(states[..., S.VX], states[..., S.VY])
    corners = geo.ego_corners(pose)
    centre = geo.ego_center(pose)
    points = jnp.concatenate([corners, centre[..., None, :], pose[..., None, :2]], -2)
    return pose, speed, corners, centre, points


def _collisions(states, areas, tables, capacity):
    """(nc [], ttc [], overflow [41]) of one trajectory; see the two metrics."""
    pose, speed, corners, _, _ = _ego_points(states)
    nc, nc_overflow = _no_at_fault_collision(corners, pose, speed, areas, tables,
                                             None if capacity is None else -(-capacity // 2))
    ttc, ttc_overflow = _time_to_collision(corners, pose, speed, areas, tables, capacity)
    return nc, ttc, nc_overflow.at[:ttc_overflow.shape[0]].max(ttc_overflow)


def _score_one(states, areas, scene, red_active, red_edges):
    pose, _, _, centre, _ = _ego_points(states)
    line, valid = scene.centerline, scene.centerline_valid
    s = geo.polyline_project(centre[jnp.array([0, NUM_STATES - 1])], line, valid)[0]
    return dict(
        dac=jnp.where(areas["non_drivable"].any(), 0.0, 1.0),
        ddc=_driving_direction(centre, areas),
        tlc=_traffic_light(centre, pose[:, 2], red_active, red_edges),
        lk=_lane_keeping(geo.polyline_distance(centre, line, valid),
                         areas["centre_in_intersection"]),
        progress=jnp.maximum(0.0, s[-1] - s[0]),
    )


def score_states(states, obs, scene, area_capacity=AREA_CAPACITY,
                 agent_capacity=AGENT_CAPACITY):
    """Raw sub-metrics of K simulated trajectories in one scene.

    Args:
      states: [K, 41, 11] simulated rear-axle states (``StateIndex`` layout), t = 0.1 k s.
      obs: an ``Observation`` of this scene with at least 41 time indices (10 Hz step k uses
        index k): agent_corners [A,N,4,2], agent_center [A,N,2], agent_present [A,N],
        agent_first_speed [A], agent_is_dynamic [A], red_polygons [L,V,2], red_active [L,N].
      scene: one (unbatched) Scene: map_polygons [P,V,2], map_polygon_type/on_route/valid [P],
        centerline [R,3], centerline_valid [R].
      area_capacity, agent_capacity: static; pre-selection sizes (polygons per ego point, see
        :func:`ego_areas`; agents per step for NC/TTC), None = test everything. They change
        the speed only: whatever overflows them is recomputed exactly.
    Returns:
      dict of float32 [K]: ``nc`` {0,0.5,1}, ``dac``, ``ddc`` {0,0.5,1}, ``tlc``, ``ttc``, ``lk``,
      ``progress`` (raw metres along the centreline, >= 0); and bool [K,41] per-step flags
      ``multiple_lanes``, ``non_drivable``, ``oncoming``, ``centre_in_intersection``,
      ``rear_in_intersection``, ``area_overflow`` (the pose overflowed ``area_capacity`` and
      took the exact fallback), ``agent_overflow`` (more than ``agent_capacity`` agents near the
      ego at that step: the trajectory's NC/TTC took the exact fallback).
    """
    states = jnp.asarray(states, jnp.float32)
    if states.ndim != 3 or states.shape[1:] != (NUM_STATES, len(S)):
        raise ValueError(f"score_states: states has shape {states.shape}, expected "
                         f"(K, {NUM_STATES}, {len(S)})")
    if obs.agent_present.shape[-1] < NUM_STATES:
        raise ValueError(f"score_states: observation has {obs.agent_present.shape[-1]} time "
                         f"indices, needs >= {NUM_STATES}")
    # The ego-area flags feed NC, TTC, DAC, DDC and LK: computed once, for all K x 41 steps
    # in one pass.
    points = _ego_points(states)[-1]
    k = states.shape[0]
    areas = ego_areas(points.reshape(k * NUM_STATES, 6, 2), scene, area_capacity)
    areas = {n: a.reshape(k, NUM_STATES) for n, a in areas.items()}
    red_edges = _materialize(geo.edge_table(jnp.asarray(obs.red_polygons, jnp.float32)))
    red_active = _materialize(obs.red_active[:, :NUM_STATES])
    out = jax.vmap(_score_one, in_axes=(0, 0, None, None, None))(states, areas, scene,
                                                                  red_active, red_edges)

    tables = _agent_tables(obs)
    collide = jax.vmap(_collisions, in_axes=(0, 0, None, None))
    nc, ttc, overflow = collide(states, areas, tables, agent_capacity)
    if agent_capacity is not None and agent_capacity < tables["present"].shape[1]:
        # Exact fallback: trajectories that overflowed anywhere are redone against every agent.
        def redo(i):
            sub = {n: a[i] for n, a in areas.items()}
            return collide(states[i], sub, tables, None)[:2]
        nc, ttc = complete(overflow.any(-1), (nc, ttc), redo, AGENT_FALLBACK_CHUNK)
    return dict(out, nc=nc, ttc=ttc, agent_overflow=overflow, **areas)


def multiplier(raw):
    """NC * DAC * DDC * TLC of a :func:`score_states` dict -> [K]."""
    return raw["nc"] * raw["dac"] * raw["ddc"] * raw["tlc"]


#: EP normalisation: below this best progress (m) every candidate gets EP = 1.
PROGRESS_MIN_DISTANCE = 5.0


def normalise_progress(progress, multi, ref_progress, ref_multi):
    """EP against PDM-Closed (spec §3.5), for candidates each scored together with the
    reference: N = max(raw * multi) over {reference, candidate}; EP = clip(raw / N, 0, 1) if
    N > 5 m else 1.

    progress, multi [...]; ref_progress, ref_multi broadcastable to them -> EP [...].
    """
    n = jnp.maximum(progress * multi, ref_progress * ref_multi)
    ep = jnp.clip(progress / jnp.where(n > 0, n, 1.0), 0.0, 1.0)
    return jnp.where(n > PROGRESS_MIN_DISTANCE, ep, 1.0)
