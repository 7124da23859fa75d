"""What the ego can collide with, per 10 Hz step: agents, static objects and red lights.

Two observations share one layout (:class:`Observation`), each indexed by its own time axis N:

* :func:`build_observation` — the *scoring* observation of the metric cache (spec/EPDMS.md §2.6):
  the 2 Hz tracks linearly interpolated to the 41 steps t = 0.1 k s over each track's own
  observed times (gaps interpolated across), with the devkit's single-frame quirk (a track seen
  once is present at all 41 steps), log-replay removal of tracks overlapping the ego at t = 0, and
  red lights from the *uncorrected* route, 2 Hz status held for 5 steps.
* :func:`forecast_observation` — PDM-Closed's own observation (§3.2): the t = 0 objects moved at
  constant velocity, one map every 0.2 s (step t uses the forecast at 0.2 floor(t / 2) s),
  N = 51, red lights of the *corrected* route at t = 0, held constant; objects the ego already
  overlaps are dropped (the devkit ignores these "collided" tokens everywhere).

Agents, static objects and red lights are separate arrays; a dropped or absent object simply has
``agent_present`` / ``red_active`` False.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from irlvla_jax import geometry, types
from irlvla_jax.sim.trajectory import NUM_STEPS

_STEPS_PER_FRAME = 5          # 10 Hz steps per 2 Hz frame
FORECAST_LEN = 51             # PDM-Closed trajectory: 50 steps + t = 0
MAP_RADIUS = 100.0            # PDMObservation radius (m, centre distance)
# PDMObjectManager keeps the nearest this many per category.
MAX_VEHICLES, MAX_PEDESTRIANS, MAX_BICYCLES, MAX_STATIC = 50, 25, 10, 50


@flax.struct.dataclass
class Observation:
    """Objects per time index (N = 41 for scoring, 51 for PDM-Closed's forecast).

    agent_corners [A,N,4,2] box corners FL, RL, RR, FR; agent_center [A,N,2];
    agent_present [A,N] bool: the track exists at that index (False for padding / removed rows).
    agent_first_speed [A], agent_first_heading [A], agent_first_velocity [A,2]: the devkit's
      ``unique_objects`` entry (the track's first occurrence) — "stopped track" and TTC/collision
      headings read these, not the per-step values.
    agent_is_dynamic [A] bool: an nuPlan ``Agent`` (vehicle, pedestrian, bicycle), else static.
    red_polygons [L,V,2] lane-connector polygons; red_active [L,N] bool: a red-light object exists.
    """
    agent_corners: jax.Array
    agent_center: jax.Array
    agent_present: jax.Array
    agent_first_speed: jax.Array
    agent_first_heading: jax.Array
    agent_first_velocity: jax.Array
    agent_is_dynamic: jax.Array
    red_polygons: jax.Array
    red_active: jax.Array

    @property
    def num_steps(self) -> int:
        return self.agent_present.shape[-1]


def _is_dynamic(agent_class):
    return jnp.isin(agent_class, jnp.asarray(types.DYNAMIC_CLASSES))


def _check_single(scene: types.Scene, where: str):
    if np.ndim(scene.speed_limit) != 0:
        raise ValueError(f"{where}: expects one scene, got a batch of shape "
                         f"{np.shape(scene.speed_limit)} (jax.vmap over scenes)")


def _first_valid(valid):
    """Index of the first True along the last axis: valid [...,T] -> int [...] (0 if none)."""
    return jnp.argmax(valid, axis=-1)


def interpolate_tracks(states, valid, dynamic):
    """Tracks at 2 Hz -> the 41 steps at 10 Hz (NAVSIM's ``StateInterpolator`` per track).

    Args:
      states: [A,T,5] (x, y, heading, vx, vy) at t = 0, 0.5, .. s; valid: [A,T] bool (frames
        beyond the scorer's 4 s, T > 9, are ignored);
      dynamic: [A] bool (static objects get zero velocity).
    Returns:
      pose [A,41,3], velocity [A,41,2], present [A,41] bool.
    """
    nf = types.SCORED_AGENT_STEPS
    states, valid = states[:, :nf], valid[:, :nf]
    k = jnp.arange(NUM_STEPS + 1)
    frame_step = _STEPS_PER_FRAME * jnp.arange(nf)          # [9]
    before = valid[:, None, :] & (frame_step[None, None, :] <= k[None, :, None])  # [A,41,9]
    after = valid[:, None, :] & (frame_step[None, None, :] >= k[None, :, None])
    frames = jnp.arange(nf)
    prev = jnp.max(jnp.where(before, frames, -1), axis=-1)                      # [A,41]
    nxt = jnp.min(jnp.where(after, frames, nf), axis=-1)
    inside = (prev >= 0) & (nxt < nf)
    prev_c = jnp.clip(prev, 0, nf - 1)
    nxt_c = jnp.clip(nxt, 0, nf - 1)
    span = _STEPS_PER_FRAME * (nxt_c - prev_c)
    frac = jnp.where(span > 0, (k[None] - _STEPS_PER_FRAME * prev_c) / jnp.maximum(span, 1), 0.0)
    s0 = jnp.take_along_axis(states, prev_c[..., None], axis=1)                 # [A,41,5]
    s1 = jnp.take_along_axis(states, nxt_c[..., None], axis=1)
    f = frac[..., None].astype(states.dtype)
    lerp = s0 + f * (s1 - s0)
    # Heading: unwrapped between consecutive observed frames, normalised after.
    heading = geometry.wrap_angle(s0[..., 2] + frac * geometry.wrap_angle(s1[..., 2] - s0[..., 2]))

    # Quirk (spec §2.6): a track seen in one frame only is the original object at every step.
    single = valid.sum(-1) == 1
    only = jnp.take_along_axis(states, _first_valid(valid)[:, None, None], axis=1)  # [A,1,5]
    pose = jnp.concatenate([lerp[..., :2], heading[..., None]], -1)
    pose = jnp.where(single[:, None, None], only[..., :3], pose)
    velocity = jnp.where(single[:, None, None], only[..., 3:], lerp[..., 3:])
    velocity = jnp.where(dynamic[:, None, None], velocity, 0.0)
    present = jnp.where(single[:, None], True, inside)
    return pose, velocity, present


def build_observation(scene: types.Scene) -> Observation:
    """The scoring observation (41 steps) of one scene, after log-replay agent removal.

    Args:
      scene: one Scene (agent_states [A,T,5], agent_valid [A,T], agent_size [A,3],
        agent_class [A], red_light_* [L, ...]); only frames 0 .. 8 (0 .. 4 s) are read.
    Returns:
      Observation with N = 41.
    """
    _check_single(scene, "build_observation")
    dynamic = _is_dynamic(scene.agent_class)
    nf = types.SCORED_AGENT_STEPS
    states = jnp.asarray(scene.agent_states, jnp.float32)[:, :nf]
    valid = jnp.asarray(scene.agent_valid, bool)[:, :nf]
    pose, _, present = interpolate_tracks(states, valid, dynamic)
    size = jnp.asarray(scene.agent_size, jnp.float32)
    corners = geometry.box_corners(pose[..., :2], pose[..., 2], size[:, None, 0], size[:, None, 1])

    # Log replay drops every track whose box intersects the ego footprint at step 0, everywhere.
    # Departure (documented): the spec says "agent"; we apply it to static objects too.
    ego0 = geometry.ego_corners(jnp.zeros(3))
    overlaps = present[:, 0] & geometry.convex_intersect(corners[:, 0], ego0[None])
    present = present & ~overlaps[:, None]

    first = jnp.take_along_axis(states, _first_valid(valid)[:, None, None], axis=1)[:, 0]
    first_velocity = jnp.where(dynamic[:, None], first[:, 3:], 0.0)
    red_active = _red_steps(scene, scene.red_light_on_route)
    return Observation(
        agent_corners=corners, agent_center=pose[..., :2], agent_present=present,
        agent_first_speed=jnp.linalg.norm(first_velocity, axis=-1),
        agent_first_heading=first[:, 2], agent_first_velocity=first_velocity,
        agent_is_dynamic=dynamic,
        red_polygons=jnp.asarray(scene.red_light_polygons, jnp.float32), red_active=red_active)


def _red_steps(scene: types.Scene, on_route):
    """Red-light objects at the 41 steps: status of 2 Hz frame floor(k / 5) -> bool [L,41]."""
    frame = jnp.arange(NUM_STEPS + 1) // _STEPS_PER_FRAME
    red = jnp.asarray(scene.red_light_is_red, bool)[:, frame]
    return red & (scene.red_light_valid & on_route)[:, None]


def forecast_observation(scene: types.Scene) -> Observation:
    """PDM-Closed's constant-velocity forecast observation (51 steps) of one scene.

    Args:
      scene: one Scene (agents at frame 0 only; red lights of the corrected route at frame 0).
    Returns:
      Observation with N = 51; index t holds the forecast at 0.2 * floor(t / 2) s.
    """
    _check_single(scene, "forecast_observation")
    dynamic = _is_dynamic(scene.agent_class)
    s0 = jnp.asarray(scene.agent_states, jnp.float32)[:, 0]                    # [A,5]
    size = jnp.asarray(scene.agent_size, jnp.float32)
    corners0 = geometry.box_corners(s0[:, :2], s0[:, 2], size[:, 0], size[:, 1])   # [A,4,2]
    ego0 = geometry.ego_corners(jnp.zeros(3))

    # PDMObjectManager: within 100 m of the ego centre, nearest-first caps per category.
    dist = jnp.linalg.norm(s0[:, :2] - geometry.ego_center(jnp.zeros(3)), axis=-1)
    keep = jnp.asarray(scene.agent_valid, bool)[:, 0] & (dist <= MAP_RADIUS)
    cls = jnp.asarray(scene.agent_class)
    category = jnp.where(dynamic, cls, len(types.AGENT_CLASSES))     # all static objects pooled
    caps = jnp.array([MAX_VEHICLES, MAX_PEDESTRIANS, MAX_BICYCLES] + [0] * (
        len(types.AGENT_CLASSES) - 3) + [MAX_STATIC])
    idx = jnp.arange(dist.shape[0])
    closer = (dist[None, :] < dist[:, None]) | ((dist[None, :] == dist[:, None]) &
                                                (idx[None, :] < idx[:, None]))
    rank = jnp.sum(keep[None, :] & (category[None, :] == category[:, None]) & closer, axis=-1)
    keep = keep & (rank < caps[category])
    # "Collided" tokens (already overlapping the ego at t = 0) are ignored by PDM-Closed.
    keep = keep & ~geometry.convex_intersect(corners0, ego0[None])

    # Constant velocity along the box heading (flipped when the velocity points backwards).
    speed = jnp.linalg.norm(s0[:, 3:], axis=-1)
    backwards = jnp.abs(geometry.wrap_angle(s0[:, 2] - jnp.arctan2(s0[:, 4], s0[:, 3]))) >= (
        jnp.pi / 2)
    direction = s0[:, 2] + jnp.where(backwards, jnp.pi, 0.0)
    step_v = jnp.where(dynamic, speed, 0.0)[:, None] * jnp.stack(
        [jnp.cos(direction), jnp.sin(direction)], -1)                           # [A,2]
    tau = 0.2 * (jnp.arange(FORECAST_LEN) // 2)                                 # [51]
    shift = tau[None, :, None] * step_v[:, None, :]                             # [A,51,2]
    corners = corners0[:, None] + shift[:, :, None, :]
    center = s0[:, None, :2] + shift

    # Red lights: t = 0 status, corrected route, constant; one the ego is entirely within at
    # t = 0 counts as collided and is ignored.
    polys = jnp.asarray(scene.red_light_polygons, jnp.float32)
    ego_within = jax.vmap(lambda p: geometry.points_in_polygon(ego0, p).all())(polys)
    red = (scene.red_light_valid & scene.red_light_on_corrected_route
           & jnp.asarray(scene.red_light_is_red, bool)[:, 0] & ~ego_within)
    first_velocity = jnp.where(dynamic[:, None], s0[:, 3:], 0.0)
    return Observation(
        agent_corners=corners, agent_center=center,
        agent_present=jnp.broadcast_to(keep[:, None], (keep.shape[0], FORECAST_LEN)),
        agent_first_speed=jnp.linalg.norm(first_velocity, axis=-1),
        agent_first_heading=s0[:, 2], agent_first_velocity=first_velocity,
        agent_is_dynamic=dynamic, red_polygons=polys,
        red_active=jnp.broadcast_to(red[:, None], (red.shape[0], FORECAST_LEN)))
