"""The per-trajectory EPDMS sub-metrics of NAVSIM's ``PDMScorer`` (spec/EPDMS.md §5, §3.5).

:func:`score_states` scores K simulated ego trajectories ``[K, 41, 11]`` against one scene's
observation (agents and red lights per 10 Hz step, ``irlvla_jax.sim.observation.Observation``)
and map (the Scene's drivable-area polygons and route centreline): NC (no at-fault collision),
TTC (time to collision), DAC (drivable area), DDC (driving direction), TLC (traffic lights),
LK (lane keeping) and the raw progress behind EP (:func:`normalise_progress`);
:func:`multiplier` is NC * DAC * DDC * TLC. HC and EC are in ``comfort``, the assembled
sub-scores in ``scorer``. It serves both the official scoring (the log-replay observation) and
PDM-Closed's internal proposal scoring (the forecast observation, whose collided-at-t=0 tracks
the observation builder marks absent).

Everything is per candidate and vmapped over K; map geometry is shared across candidates. The
ego-area flags (on several lanes, off-road, oncoming, in an intersection) come from
``ego_area``. The order-dependent ignore lists of NC and TTC are computed without a sequential
loop, see :func:`_first_events`. NC and TTC test per step only the agents whose bounding box
overlaps the ego's (``AGENT_CAPACITY`` slots, ``preselect``), TLC only the active red lights
whose bounding box does (``RED_LIGHT_CAPACITY`` (step, light) pairs): exact, trajectories with
more are redone against everything.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from irlvla_jax import geometry as geo
from irlvla_jax.sim import ego_area
from irlvla_jax.sim.preselect import (box_lo_hi, boxes_overlap, complete, first_true,
                                      materialize, near_boxes)
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
# Agents tested per step by TTC: those whose bounding box over the step's 4 projection times
# overlaps the projected ego's (NC, testing the ego's own box, half as many); a trajectory with
# more anywhere is redone against every agent, this many trajectories at a time.
AGENT_CAPACITY = 12
AGENT_FALLBACK_CHUNK = 8
# (step, red light) pairs tested per trajectory by TLC: an active red light whose bounding box
# overlaps the ego's at that step (the light's exact ring has tens of vertices); a trajectory
# with more, none of them touched, is redone against every pair, this many at a time.
RED_LIGHT_CAPACITY = 8
RED_LIGHT_FALLBACK_CHUNK = 8


def _relative_cos(ego_pose, point):
    """cos of nuPlan's agent relative angle (ego heading vs direction to the agent).

    ego_pose [...,3] rear axle, point [...,2] -> [...]; NaN where the points coincide (nuPlan
    divides by zero there too, so neither "ahead" nor "behind" holds).
    """
    dx, dy = point[..., 0] - ego_pose[..., 0], point[..., 1] - ego_pose[..., 1]
    n = jnp.sqrt(dx * dx + dy * dy)          # written out: a norm over the size-2 axis is slow
    dot = jnp.cos(ego_pose[..., 2]) * dx + jnp.sin(ego_pose[..., 2]) * dy
    return jnp.where(n > 0, dot / jnp.where(n > 0, n, 1.0), jnp.nan)


# ----------------------------------------------------------------------------------------------
# Agents: NC and TTC

def _agent_tables(obs):
    """Per-scene agent constants, time-major: the boxes as rectangles (box_centre, axis,
    half [41,A,2], ``geo.box_frame``), centre [41,A,2] (the track position, for the relative
    angles), present [41,A], box lo/hi [41,A,2]; for TTC the union box and presence over each
    step's 4 projection times: ttc_lo/ttc_hi [T',A,2], ttc_present [T',A]."""
    corners = jnp.swapaxes(obs.agent_corners[:, :NUM_STATES], 0, 1)
    present = obs.agent_present[:, :NUM_STATES].T
    lo, hi = box_lo_hi(corners)
    box_centre, axis, half = geo.box_frame(corners)
    tt = np.arange(TTC_LAST_T + 1)[:, None] + TTC_STEPS[None]              # [T',4]
    tables = dict(box_centre=box_centre, axis=axis, half=half,
                  centre=jnp.swapaxes(obs.agent_center[:, :NUM_STATES], 0, 1),
                  present=present, lo=lo, hi=hi, ttc_lo=lo[tt].min(1), ttc_hi=hi[tt].max(1),
                  ttc_present=present[tt].any(1), first_speed=obs.agent_first_speed,
                  dynamic=obs.agent_is_dynamic)
    return jax.tree.map(materialize, tables)


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

    corners [41,4,2], pose [41,3] rear axle, speed [41], areas: ``ego_area.ego_areas`` [41];
    capacity: agents tested per step (those whose box overlaps the ego's), None = all.
    Returns (nc [], overflow [41]: more than ``capacity`` agents' boxes overlapped the ego's).
    Boxes are tested as rectangles (``geo.boxes_intersect``, ``geo.segment_intersects_box``:
    the polygon predicates on their corners, a few times cheaper).
    """
    num_a = tables["present"].shape[1]
    index, slot_valid, overflow, aligned = near_boxes(
        tables["present"], tables["lo"], tables["hi"], *box_lo_hi(corners), capacity)  # [41,C]
    names = ("box_centre", "axis", "half", "centre")
    t = jnp.arange(NUM_STATES)[:, None]
    box_centre, axis, half, centre = ([tables[n] for n in names] if aligned else
                                      [tables[n][t, index] for n in names])
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
    key = materialize(key, _NO_EVENT)
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
    # The projected boxes' union: the box at 0 s stretched by the 0.9 s shift.
    lo, hi = box_lo_hi(corners[t])
    index, slot_valid, overflow, aligned = near_boxes(
        tables["ttc_present"], tables["ttc_lo"], tables["ttc_hi"],
        lo + jnp.minimum(shift[:, -1], 0.0), hi + jnp.maximum(shift[:, -1], 0.0),
        capacity)                                                           # [T',C]
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


def _traffic_light(centre, heading, red, capacity):
    """TLC (spec §5.5): 0 if any ego polygon, t = 0..40 included, touches an active red-light
    lane connector at the same step. centre [41,2], heading [41]; red: dict of the scene's
    red lights, ``active`` [L,41], ``edges`` [L,V,6] (``geo.edge_table`` of their rings),
    ``lo``/``hi`` [L,2] their bounds. -> (tlc [], overflow [] bool).

    Only an active light whose bounding box overlaps the ego's can be touched: those (step,
    light) pairs are tested, ``capacity`` of them (static; None: every pair). overflow: there
    were more and none of those tested was touched (the caller redoes the trajectory)."""
    c, s = jnp.abs(jnp.cos(heading)), jnp.abs(jnp.sin(heading))
    # The ego box's bounds, widened by a millimetre against rounding (a superset is exact).
    half = jnp.stack([c * geo.EGO_HALF_LENGTH + s * geo.EGO_HALF_WIDTH,
                      s * geo.EGO_HALF_LENGTH + c * geo.EGO_HALF_WIDTH], -1) + 1e-3  # [41,2]
    near = red["active"].T & boxes_overlap((centre - half)[:, None], (centre + half)[:, None],
                                           red["lo"][None], red["hi"][None])     # [41,L]
    num_l = near.shape[1]
    if capacity is None:
        hit = geo.box_intersects_polygon(centre[:, None], heading[:, None],
                                         geo.EGO_HALF_LENGTH, geo.EGO_HALF_WIDTH,
                                         red["edges"][None]) & near              # [41,L]
        return jnp.where(hit.any(), 0.0, 1.0), jnp.zeros((), bool)
    pick, valid, overflow = first_true(near.reshape(-1), capacity)               # [C]
    step, light = pick // num_l, pick % num_l
    hit = geo.box_intersects_polygon(centre[step], heading[step], geo.EGO_HALF_LENGTH,
                                     geo.EGO_HALF_WIDTH, red["edges"][light]) & valid
    return jnp.where(hit.any(), 0.0, 1.0), overflow & ~hit.any()


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
    centre [...,41,2])."""
    pose = states[..., :3]
    speed = jnp.hypot(states[..., S.VX], states[..., S.VY])
    return pose, speed, geo.ego_corners(pose), geo.ego_center(pose)


def _collisions(states, areas, tables, capacity):
    """(nc [], ttc [], overflow [41]) of one trajectory; see the two metrics."""
    pose, speed, corners, _ = _ego_points(states)
    nc, nc_overflow = _no_at_fault_collision(corners, pose, speed, areas, tables,
                                             None if capacity is None else -(-capacity // 2))
    ttc, ttc_overflow = _time_to_collision(corners, pose, speed, areas, tables, capacity)
    return nc, ttc, nc_overflow.at[:ttc_overflow.shape[0]].max(ttc_overflow)


def _score_one(states, areas, scene, red, red_capacity):
    pose, _, _, centre = _ego_points(states)
    line, valid = scene.centerline, scene.centerline_valid
    s = geo.polyline_project(centre[jnp.array([0, NUM_STATES - 1])], line, valid)[0]
    tlc, tlc_overflow = _traffic_light(centre, pose[:, 2], red, red_capacity)
    return dict(
        dac=jnp.where(areas["non_drivable"].any(), 0.0, 1.0),
        ddc=_driving_direction(centre, areas),
        tlc=tlc, tlc_overflow=tlc_overflow,
        lk=_lane_keeping(geo.polyline_distance(centre, line, valid),
                         areas["centre_in_intersection"]),
        progress=jnp.maximum(0.0, s[-1] - s[0]),
    )


def score_states(states, obs, scene, area_capacity=ego_area.AREA_CAPACITY,
                 agent_capacity=AGENT_CAPACITY, red_light_capacity=RED_LIGHT_CAPACITY):
    """Raw sub-metrics of K simulated trajectories in one scene.

    Args:
      states: [K, 41, 11] simulated rear-axle states (``StateIndex`` layout), t = 0.1 k s.
      obs: an ``Observation`` of this scene with at least 41 time indices (10 Hz step k uses
        index k): agent_corners [A,N,4,2], agent_center [A,N,2], agent_present [A,N],
        agent_first_speed [A], agent_is_dynamic [A], red_polygons [L,V,2], red_active [L,N].
      scene: one (unbatched) Scene: map_polygons [P,V,2], map_polygon_type/on_route/valid [P],
        centerline [R,3], centerline_valid [R].
      area_capacity, agent_capacity, red_light_capacity: static; pre-selection sizes (polygons
        per ego point, see ``ego_area.ego_areas``; agents per step for NC/TTC; (step, light)
        pairs per trajectory for TLC), None = test everything. They change the speed only:
        whatever overflows them is recomputed exactly.
    Returns:
      dict of float32 [K]: ``nc`` {0,0.5,1}, ``dac``, ``ddc`` {0,0.5,1}, ``tlc``, ``ttc``, ``lk``,
      ``progress`` (raw metres along the centreline, >= 0); and bool [K,41] per-step flags
      ``multiple_lanes``, ``non_drivable``, ``oncoming``, ``centre_in_intersection``,
      ``rear_in_intersection``, ``area_overflow`` (a point of the pose overflowed
      ``area_capacity`` and took a fallback), ``agent_overflow`` (more than
      ``agent_capacity`` agents near the ego at that step: the trajectory's NC/TTC took the
      exact fallback); bool [K] ``red_light_overflow`` (TLC took the exact fallback). A
      trajectory with any non-finite state scores 0 on every metric, progress 0.
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
    points = ego_area.ego_points(states[..., :3])
    k = states.shape[0]
    areas = ego_area.ego_areas(points.reshape(k * NUM_STATES, 6, 2), scene, area_capacity)
    areas = {n: a.reshape(k, NUM_STATES) for n, a in areas.items()}
    red_polygons = jnp.asarray(obs.red_polygons, jnp.float32)
    red = jax.tree.map(materialize, dict(
        edges=geo.edge_table(red_polygons), active=obs.red_active[:, :NUM_STATES],
        lo=red_polygons.min(-2), hi=red_polygons.max(-2)))
    out = jax.vmap(_score_one, in_axes=(0, 0, None, None, None))(states, areas, scene, red,
                                                                  red_light_capacity)
    tlc_overflow = out.pop("tlc_overflow")
    if red_light_capacity is not None:
        # Exact fallback: trajectories near more active red lights than TLC tested.
        def redo(i):
            return jax.vmap(lambda st: _traffic_light(_ego_points(st)[3], st[:, S.HEADING],
                                                      red, None)[0])(states[i])
        out["tlc"] = complete(tlc_overflow, out["tlc"], redo, RED_LIGHT_FALLBACK_CHUNK)

    tables = _agent_tables(obs)
    collide = jax.vmap(_collisions, in_axes=(0, 0, None, None))
    nc, ttc, overflow = collide(states, areas, tables, agent_capacity)
    if agent_capacity is not None and agent_capacity < tables["present"].shape[1]:
        # Exact fallback: trajectories that overflowed anywhere are redone against every agent.
        def redo(i):
            sub = {n: a[i] for n, a in areas.items()}
            return collide(states[i], sub, tables, None)[:2]
        nc, ttc = complete(overflow.any(-1), (nc, ttc), redo, AGENT_FALLBACK_CHUNK)
    # A trajectory with a non-finite state has no NAVSIM score: the worst (see ``scorer``).
    finite = jnp.isfinite(states).all((1, 2))
    scores = {n: jnp.where(finite, v, 0.0) for n, v in dict(out, nc=nc, ttc=ttc).items()}
    return dict(scores, agent_overflow=overflow, red_light_overflow=tlc_overflow, **areas)


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
