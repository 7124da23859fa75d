"""The per-trajectory EPDMS sub-metrics of NAVSIM's ``PDMScorer`` (spec/EPDMS.md §5, §3.5).

:func:`score_states` scores K simulated ego trajectories ``[K, 41, 11]`` against one scene's
observation (agents and red lights per 10 Hz step, ``irlvla_jax.sim.observation.Observation``)
and map (the Scene's drivable-area polygons and route centreline). It serves both the official
scoring (the log-replay observation) and PDM-Closed's internal proposal scoring (the forecast
observation, whose collided-at-t=0 tracks the observation builder marks absent).

Everything is per candidate and vmapped over K; map geometry is shared across candidates. The
order-dependent ignore lists of NC and TTC are computed without a sequential loop, see
:func:`_first_event`.

Speed: the exact polygon tests run only on what can matter. Per ego pose, the map polygons
(``AREA_CAPACITY``) and agents (``AGENT_CAPACITY``) whose axis-aligned bounding boxes overlap
the ego's are packed into a few slots (:func:`_compact`); everything else provably cannot
touch the ego. The results are exact unless a pose has more candidates than slots, which the
``area_overflow`` / ``agent_overflow`` flags of :func:`score_states` report.
"""

from __future__ import annotations

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
# Polygons tested per ego pose for the ego-area flags: those whose bounding box overlaps the
# pose's footprint, the nearest in map order. A NAVSIM pose overlaps a few roadblocks, lanes and
# (in a junction) lane connectors; 24 leaves headroom, ``area_overflow`` says when it did not.
AREA_CAPACITY = 24
# Agents tested per ego pose by NC and TTC: those whose bounding box (over TTC's 0.9 s
# projection) overlaps the ego's; ``agent_overflow`` says when more did.
AGENT_CAPACITY = 8

_LANE_TYPES = (types.LANE, types.LANE_CONNECTOR)
_DRIVABLE_TYPES = (types.ROADBLOCK, types.INTERSECTION, types.CARPARK_AREA)


# ----------------------------------------------------------------------------------------------
def _relative_cos(ego_pose, point):
    """cos of nuPlan's agent relative angle (ego heading vs direction to the agent).

    ego_pose [...,3] rear axle, point [...,2] -> [...]; NaN where the points coincide (nuPlan
    divides by zero there too, so neither "ahead" nor "behind" holds).
    """
    d = point - ego_pose[..., :2]
    n = jnp.linalg.norm(d, axis=-1)
    dot = jnp.cos(ego_pose[..., 2]) * d[..., 0] + jnp.sin(ego_pose[..., 2]) * d[..., 1]
    return jnp.where(n > 0, dot / jnp.where(n > 0, n, 1.0), jnp.nan)


def _first_event(events):
    """One-hot of each column's first True along axis 0 (all False where a column has none).

    NAVSIM walks the events in time order and, per proposal, appends every non-at-fault token
    to an ignore list (NC; TTC likewise for non-dangerous hits). A token's *first* counted event
    therefore decides it: at fault -> its score (fixed per token: 0 agent, 0.5 static) is taken,
    and re-evaluating later events cannot lower it further; not at fault -> ignored from then
    on. Taking each token's first event is exactly the carried-ignore-mask scan, vectorised.
    events [E, A] bool -> [E, A] bool.
    """
    first = jnp.argmax(events, axis=0)
    return (jnp.arange(events.shape[0])[:, None] == first[None]) & events.any(0)[None]


def _map_layers(scene):
    """Per-polygon layer masks of the drivable map: (lane [P], on-route lane [P], drivable [P],
    intersection [P]) bool."""
    t, v = scene.map_polygon_type, scene.map_polygon_valid
    lane = v & ((t == _LANE_TYPES[0]) | (t == _LANE_TYPES[1]))
    drivable = v & ((t == _DRIVABLE_TYPES[0]) | (t == _DRIVABLE_TYPES[1]) |
                    (t == _DRIVABLE_TYPES[2]))
    return lane, lane & scene.map_polygon_on_route, drivable, v & (t == types.INTERSECTION)


def _nearby_polygons(points, scene, capacity):
    """The polygons each step's points can lie in, gathered into ``capacity`` slots.

    A polygon can only strictly contain a point inside its bounding box, so per step only the
    valid polygons whose box overlaps the box of the step's points matter; they are packed
    (map order kept) into the first slots, the rest of the slots are masked off.
    points [T,Q,2] -> (index [T,C] int, slot_valid [T,C] bool, overflow [T] bool: the step
    overlaps more than C polygons, so some were left out).
    """
    polys = scene.map_polygons
    pmin, pmax = polys.min(1)[None], polys.max(1)[None]           # [1,P,2]
    fmin, fmax = points.min(1)[:, None], points.max(1)[:, None]   # [T,1,2]
    overlap = scene.map_polygon_valid[None] & _boxes_overlap(pmin, pmax, fmin, fmax)   # [T,P]
    return _compact(overlap, capacity)


def _compact(mask, capacity):
    """Pack the True columns of each row into ``capacity`` slots, in column order.

    mask [T,N] bool -> (index [T,C] int32, slot_valid [T,C] bool, overflow [T] bool: the row
    has more than C True columns, the last ones were left out).
    """
    rank = jnp.cumsum(mask, -1) - 1
    slot = jnp.where(mask & (rank < capacity), rank, capacity)     # capacity = discard slot
    t = jnp.arange(mask.shape[0])[:, None]
    index = jnp.zeros((mask.shape[0], capacity + 1), jnp.int32).at[t, slot].set(
        jnp.broadcast_to(jnp.arange(mask.shape[1], dtype=jnp.int32), mask.shape))[:, :capacity]
    count = mask.sum(-1)
    slot_valid = jnp.arange(capacity)[None] < count[:, None]
    return index, slot_valid, count > capacity


def _boxes_overlap(amin, amax, bmin, bmax):
    """Closed axis-aligned boxes [...,2] overlap (touching counts) -> bool [...]."""
    return jnp.all((amin <= bmax) & (amax >= bmin), -1)


def _near_agents(ego_box, agent_box, present, capacity):
    """Per step, the agents whose bounding box overlaps the ego's (the only ones whose
    polygons can touch it), packed into ``capacity`` slots.

    ego_box [T,4,2] or [T,...,4,2] corners, agent_box [T,A,...,4,2], present [T,A] ->
    (index [T,C], slot_valid [T,C], overflow [T]); C = min(capacity, A).
    """
    t, a = present.shape
    emin = ego_box.reshape(t, -1, 2).min(1)[:, None]              # [T,1,2]
    emax = ego_box.reshape(t, -1, 2).max(1)[:, None]
    amin = agent_box.reshape(t, a, -1, 2).min(2)                  # [T,A,2]
    amax = agent_box.reshape(t, a, -1, 2).max(2)
    return _compact(present & _boxes_overlap(amin, amax, emin, emax), min(capacity, a))


def _scatter_slots(values, index, slot_valid, num):
    """Inverse of the packing: values [T,C,...] at (row, index) of a False/0 [T,num,...]."""
    t = jnp.arange(values.shape[0])[:, None]
    col = jnp.where(slot_valid, index, num)                        # invalid -> discard column
    out = jnp.zeros((values.shape[0], num + 1) + values.shape[2:], values.dtype)
    return out.at[t, col].set(values)[:, :num]


def ego_areas(points, scene, capacity=None):
    """Ego-area flags per step (PDMScorer ``_calculate_ego_area``).

    points [T,6,2]: per step the 4 ego corners (FL, RL, RR, FR), the centre, the rear axle.
    capacity (static): test each step against at most this many polygons, those whose bounding
      box overlaps the step's points (exact unless a step overlaps more; see ``overflow``);
      None tests every polygon.
    Returns dict of bool [T]: ``multiple_lanes``, ``non_drivable``, ``oncoming`` and
    ``centre_in_intersection``, ``rear_in_intersection``, and ``area_overflow`` (the step
    overlapped more than ``capacity`` polygons' boxes; always False for capacity None).
    """
    layers = jnp.stack(_map_layers(scene), -1)                    # [P,4]
    num_t, num_p = points.shape[0], scene.map_polygons.shape[0]
    if capacity is None or capacity >= num_p:
        polys = scene.map_polygons[None]                          # [1,P,V,2]
        layer = layers[None]                                      # [1,P,4]
        overflow = jnp.zeros((num_t,), bool)
    else:
        index, slot_valid, overflow = _nearby_polygons(points, scene, capacity)
        polys = scene.map_polygons[index]                         # [T,C,V,2]
        layer = layers[index] & slot_valid[..., None]             # [T,C,4]
    inside = geo.points_in_polygon(points[:, :, None, :], polys[:, None])      # [T,6,C]
    lane, route_lane, drivable, inter = (layer[:, None, :, i] for i in range(4))
    corners = inside[:, :4]
    lane_hits = corners & lane                                    # [T,4,C]
    multiple = (lane_hits.any(1).sum(-1) > 1) & ~lane_hits.all(1).any(-1)
    non_drivable = (corners & drivable).any(-1).sum(-1) < 4
    oncoming = ~(inside[:, 4] & route_lane[:, 0]).any(-1)
    return dict(multiple_lanes=multiple, non_drivable=non_drivable, oncoming=oncoming,
                centre_in_intersection=(inside[:, 4] & inter[:, 0]).any(-1),
                rear_in_intersection=(inside[:, 5] & inter[:, 0]).any(-1),
                area_overflow=overflow)


# ----------------------------------------------------------------------------------------------
def _no_at_fault_collision(corners, pose, speed, areas, obs):
    """NC of one trajectory (spec §5.2-5.3).

    corners [41,4,2], pose [41,3] rear axle, speed [41], areas: ego_areas dict; obs fields
    over the first 41 steps. Returns (nc [], hit [41,A], overflow [41]: more than
    ``AGENT_CAPACITY`` agents' boxes overlapped the ego's at that step).
    """
    agent = jnp.swapaxes(obs.agent_corners[:, :NUM_STATES], 0, 1)  # [41,A,4,2]
    centre = obs.agent_center[:, :NUM_STATES]                     # [A,41,2]
    present = obs.agent_present[:, :NUM_STATES].T                 # [41,A]
    num_a = present.shape[1]
    # Polygon tests only for the agents near the ego at each step; the rest cannot touch it.
    index, slot_valid, overflow = _near_agents(corners, agent, present, AGENT_CAPACITY)
    near = jnp.take_along_axis(agent, index[..., None, None], axis=1)   # [41,C,4,2]
    hit_near = slot_valid & geo.convex_intersect(corners[:, None], near)
    bumper_near = jax.vmap(jax.vmap(geo.segment_intersects_polygon, (None, None, 0)))(
        corners[:, 0], corners[:, 3], near)                       # [41,C]
    hit = _scatter_slots(hit_near, index, slot_valid, num_a)      # [41,A]
    bumper = _scatter_slots(bumper_near & slot_valid, index, slot_valid, num_a)
    stopped_ego = (speed <= STOPPED_SPEED)[:, None]
    stopped_track = (~obs.agent_is_dynamic | (obs.agent_first_speed <= STOPPED_SPEED))[None]
    rear = (_relative_cos(pose[None], centre) < BEHIND_COS).T
    lateral_fault = (areas["multiple_lanes"] | areas["non_drivable"])[:, None]
    at_fault = ~stopped_ego & (stopped_track | (~rear & (bumper | lateral_fault)))
    decisive = _first_event(hit) & at_fault
    penalty = jnp.where(obs.agent_is_dynamic, 0.0, 0.5)           # Agent vs StaticObject
    nc = jnp.min(jnp.where(decisive.any(0), penalty, 1.0), initial=1.0)
    return nc, hit, overflow


def _time_to_collision(corners, pose, speed, areas, obs):
    """TTC of one trajectory (spec §5.4): 0 if a constant-velocity projection of the ego
    polygon by 0, 0.3, 0.6, 0.9 s hits an agent ahead (or not behind, while the ego is in
    several lanes / off-road / in an intersection). Returns (ttc [], overflow [T'])."""
    t = np.arange(TTC_LAST_T + 1)                                 # [T']
    tt = t[:, None] + TTC_STEPS[None]                             # [T',4] observation index
    heading = pose[t, 2]
    shift = (speed[t, None] * TTC_STEPS[None] * 0.1)[..., None] * \
        jnp.stack([jnp.cos(heading), jnp.sin(heading)], -1)[:, None]          # [T',4,2]
    ego = corners[t][:, None] + shift[:, :, None]                 # [T',4,4,2]
    agent = jnp.swapaxes(obs.agent_corners[:, tt], 0, 1)          # [T',A,4,4,2]
    present = jnp.swapaxes(obs.agent_present[:, tt], 0, 1)        # [T',A,4]
    num_a = present.shape[1]
    # Only agents whose box over the 4 projection times overlaps the swept ego box can hit.
    index, slot_valid, overflow = _near_agents(ego, agent, present.any(-1), AGENT_CAPACITY)
    near = jnp.take_along_axis(agent, index[..., None, None, None], axis=1)   # [T',C,4,4,2]
    near_present = jnp.take_along_axis(present, index[..., None], axis=1)     # [T',C,4]
    hit_near = slot_valid[..., None] & near_present & geo.convex_intersect(ego[:, None], near)
    hit = jnp.swapaxes(_scatter_slots(hit_near, index, slot_valid, num_a), 0, 1)   # [A,T',4]
    hit = hit & (speed[t] >= TTC_STOPPED_SPEED)[None, :, None]
    rel = _relative_cos(pose[t][None, :, None], obs.agent_center[:, tt])     # [A,T',4]
    risky_area = (areas["multiple_lanes"] | areas["non_drivable"] |
                  areas["rear_in_intersection"])[t][None, :, None]
    dangerous = (rel > AHEAD_COS) | (risky_area & ~(rel < BEHIND_COS))
    # Events in NAVSIM's loop order: time outer, projection step inner.
    hit_e = hit.reshape(hit.shape[0], -1).T                       # [T'*4, A]
    danger_e = dangerous.reshape(hit.shape[0], -1).T
    return jnp.where((_first_event(hit_e) & danger_e).any(), 0.0, 1.0), overflow


def _traffic_light(corners, obs):
    """TLC (spec §5.5): 0 if any ego polygon, t = 0..40 included, touches an active red-light
    lane connector at the same step. corners [41,4,2] -> []."""
    hit = jax.vmap(jax.vmap(geo.polygon_intersects_polygon, (None, 0)), (0, None))(
        corners, obs.red_polygons)                                # [41,L]
    return jnp.where((hit & obs.red_active[:, :NUM_STATES].T).any(), 0.0, 1.0)


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


def _score_one(states, areas, obs, scene):
    pose, speed, corners, centre, _ = _ego_points(states)
    nc, _, nc_overflow = _no_at_fault_collision(corners, pose, speed, areas, obs)
    ttc, ttc_overflow = _time_to_collision(corners, pose, speed, areas, obs)
    s, dist = geo.polyline_project(centre, scene.centerline, scene.centerline_valid)
    return dict(
        nc=nc,
        dac=jnp.where(areas["non_drivable"].any(), 0.0, 1.0),
        ddc=_driving_direction(centre, areas),
        tlc=_traffic_light(corners, obs),
        ttc=ttc,
        agent_overflow=nc_overflow.at[:ttc_overflow.shape[0]].max(ttc_overflow),
        lk=_lane_keeping(dist, areas["centre_in_intersection"]),
        progress=jnp.maximum(0.0, s[-1] - s[0]),
        **areas,
    )


def score_states(states, obs, scene, area_capacity=AREA_CAPACITY):
    """Raw sub-metrics of K simulated trajectories in one scene.

    Args:
      states: [K, 41, 11] simulated rear-axle states (``StateIndex`` layout), t = 0.1 k s.
      obs: an ``Observation`` of this scene with at least 41 time indices (10 Hz step k uses
        index k): agent_corners [A,N,4,2], agent_center [A,N,2], agent_present [A,N],
        agent_first_speed [A], agent_is_dynamic [A], red_polygons [L,V,2], red_active [L,N].
      scene: one (unbatched) Scene: map_polygons [P,V,2], map_polygon_type/on_route/valid [P],
        centerline [R,3], centerline_valid [R].
      area_capacity: static; polygons tested per step (see :func:`ego_areas`), None = all.
        The result is exact unless ``area_overflow`` is set somewhere.
    Returns:
      dict of float32 [K]: ``nc`` {0,0.5,1}, ``dac``, ``ddc`` {0,0.5,1}, ``tlc``, ``ttc``, ``lk``,
      ``progress`` (raw metres along the centreline, >= 0); and bool [K,41] per-step flags
      ``multiple_lanes``, ``non_drivable``, ``oncoming``, ``centre_in_intersection``,
      ``rear_in_intersection``, ``area_overflow``, ``agent_overflow`` (more than
      ``AGENT_CAPACITY`` agents near the ego at that step: NC/TTC may be inexact there).
    """
    states = jnp.asarray(states, jnp.float32)
    if states.ndim != 3 or states.shape[1:] != (NUM_STATES, len(S)):
        raise ValueError(f"score_states: states has shape {states.shape}, expected "
                         f"(K, {NUM_STATES}, {len(S)})")
    if obs.agent_present.shape[-1] < NUM_STATES:
        raise ValueError(f"score_states: observation has {obs.agent_present.shape[-1]} time "
                         f"indices, needs >= {NUM_STATES}")
    # The ego-area flags feed NC, TTC, DAC, DDC and LK: computed once, for all K x 41 steps
    # in one pass so the per-step polygon selection is shared.
    points = _ego_points(states)[-1]
    k = states.shape[0]
    areas = ego_areas(points.reshape(k * NUM_STATES, 6, 2), scene, area_capacity)
    areas = {n: a.reshape(k, NUM_STATES) for n, a in areas.items()}
    return jax.vmap(_score_one, in_axes=(0, 0, None, None))(states, areas, obs, scene)


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
