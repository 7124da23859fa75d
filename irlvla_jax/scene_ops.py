"""Scene re-expression: move a Scene into a new ego frame and advance its clock.

    shifted = shift_scene(scene, pose, steps)

``pose`` [3] is the new origin (rear-axle x, y, heading) expressed in the scene's current frame;
``steps`` is how many 2 Hz frames the clock advances (0 = same instant, only a new frame). Used
by the reward world model on shifted scenes (the previous frame's plan for EC) and by stage 3's
closed loop (the ego has driven 0.5 s along its plan: re-centre the world on it).

What moves:
  * every pose/point field (agents, map and red-light polygons, centreline, lanes, ego history,
    expert future) is re-expressed in the new frame; agent velocities are rotated;
  * the agent and red-light time axes (11 frames at 2 Hz, 0 .. 5 s) shift by ``steps``: frame
    k of the result is frame k + steps of the input, the last ``steps`` frames are marked
    invalid (agents) or not red (lights) — the log has nothing beyond 5 s. The scorer reads
    frames 0 .. 8, so a scene shifted by up to 2 frames is scored against logged agents only
    (``types.MAX_CLOSED_LOOP_STEPS``; ``rollout.check_episode_length``);
  * the ego history and the expert future slide along the same clock: history row h becomes
    the pose that was ``steps`` frames later (the newest rows come from the expert future), the
    expert future loses its first ``steps`` poses and its invalid tail grows.
What does not: sensors (cameras, LiDAR, BEV raster) cannot be re-rendered and stay as they are;
the ego's body-frame velocity/acceleration are taken from the history rows that slid into
place (the expert future carries no velocities: beyond the log they keep the last known ones).
Padding keeps its values (0) and its masks; padded polygon vertices still repeat vertex 0,
because the transform maps equal points to equal points.
"""

from __future__ import annotations

import jax.numpy as jnp

from irlvla_jax import geometry as geo
from irlvla_jax import types


def _points(xy, pose):
    """xy [..., 2] in the old frame -> [..., 2] in the frame of ``pose`` [3]."""
    return geo.to_local(jnp.concatenate([xy, jnp.zeros_like(xy[..., :1])], -1), pose)[..., :2]


def _rotate(v, angle):
    c, s = jnp.cos(angle), jnp.sin(angle)
    return jnp.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], -1)


def _shift_time(x, steps: int, fill):
    """Frames axis -2 (or -1 for masks) advanced by ``steps``; the tail filled with ``fill``."""
    if steps == 0:
        return x
    axis = x.ndim - 1 if x.dtype == jnp.bool_ else x.ndim - 2
    tail_shape = list(x.shape)
    tail_shape[axis] = steps
    head = jnp.take(x, jnp.arange(steps, x.shape[axis]), axis=axis)
    return jnp.concatenate([head, jnp.full(tail_shape, fill, x.dtype)], axis=axis)


def shift_scene(scene: types.Scene, pose, steps: int = 0) -> types.Scene:
    """Re-express one (unbatched) scene in the frame ``pose`` and advance it ``steps`` frames.

    Args:
      scene: one Scene (vmap for a batch: ``jax.vmap(shift_scene, in_axes=(0, 0, None))``).
      pose: [3] new rear-axle origin (x, y, heading) in the scene's current frame.
      steps: static int in [0, 10]: 2 Hz frames advanced.
    Returns:
      the Scene in the new frame at the new time (same shapes and dtypes).
    """
    steps = int(steps)
    if not 0 <= steps < types.NUM_AGENT_STEPS:
        raise ValueError(f"shift_scene: steps={steps} must be in [0, {types.NUM_AGENT_STEPS - 1}]")
    if scene.batch_shape != ():
        raise ValueError(f"shift_scene: expects one scene, got batch shape {scene.batch_shape}; "
                         f"vmap over the batch")
    pose = jnp.asarray(pose, jnp.float32)
    if pose.shape != (3,):
        raise ValueError(f"shift_scene: pose has shape {pose.shape}, expected (3,)")
    dh = pose[2]

    # Agents: boxes re-expressed, velocities rotated, then the clock advanced.
    a = scene.agent_states
    agent_pose = geo.to_local(a[..., :3], pose)
    agent = jnp.concatenate([agent_pose, _rotate(a[..., 3:5], -dh)], -1)
    agent_valid = scene.agent_valid
    agent = jnp.where(agent_valid[..., None], agent, 0.0)     # padding stays 0
    agent = _shift_time(agent, steps, 0.0)
    agent_valid = _shift_time(agent_valid, steps, False)

    # Map geometry (padded vertices repeat vertex 0 before and after: the map is rigid).
    # Padded rows stay 0 (the Scene's padding convention), hence the masks.
    def keep(x, valid):
        return jnp.where(valid.reshape(valid.shape + (1,) * (x.ndim - valid.ndim)), x, 0.0)

    map_polygons = keep(_points(scene.map_polygons, pose), scene.map_polygon_valid)
    red_polygons = keep(_points(scene.red_light_polygons, pose), scene.red_light_valid)
    red_is_red = _shift_time(scene.red_light_is_red, steps, False)
    # The centreline heading is unwrapped (monotone along the route): shift it, do not wrap.
    centerline = keep(jnp.concatenate(
        [_points(scene.centerline[..., :2], pose), scene.centerline[..., 2:] - dh], -1),
        scene.centerline_valid)
    lanes = keep(geo.to_local(scene.lane_vectors, pose), scene.lane_valid)

    # Ego history + expert future on one clock: [-1.5 .. 0] + [0.5 .. 0.5F] s.
    timeline = jnp.concatenate([scene.ego_history, scene.expert_future], 0)      # [4+F, 3]
    tl_valid = jnp.concatenate([jnp.ones((types.NUM_HISTORY,), bool),
                                scene.expert_future_valid.astype(bool)])
    timeline = geo.to_local(timeline, pose)
    h, f = types.NUM_HISTORY, scene.expert_future.shape[0]
    idx = jnp.arange(h + f) + steps
    in_range = idx < h + f
    idx = jnp.minimum(idx, h + f - 1)
    timeline, tl_valid = timeline[idx], tl_valid[idx] & in_range
    history, future = timeline[:h], timeline[h:]
    future_valid = tl_valid[h:]
    future = jnp.where(future_valid[:, None], future, 0.0)

    # Body-frame dynamics: the history rows that slid into place; beyond, the last known row.
    hist_idx = jnp.minimum(jnp.arange(h) + steps, h - 1)
    hist_vel = scene.ego_history_velocity[hist_idx]
    hist_acc = scene.ego_history_acceleration[hist_idx]
    hist_time = scene.ego_history_time
    if steps:
        # The frames that slid in from the future are 0.5 s apart by construction.
        hist_time = jnp.concatenate([scene.ego_history_time, 0.5 * jnp.arange(1, f + 1)])
        hist_time = hist_time[jnp.minimum(jnp.arange(h) + steps, h + f - 1)]
        hist_time = hist_time - hist_time[-1]

    return scene.replace(
        ego_history=history, ego_history_velocity=hist_vel, ego_history_acceleration=hist_acc,
        ego_history_time=hist_time, ego_velocity=hist_vel[-1], ego_acceleration=hist_acc[-1],
        expert_future=future, expert_future_valid=future_valid,
        agent_states=agent, agent_valid=agent_valid,
        map_polygons=map_polygons, red_light_polygons=red_polygons, red_light_is_red=red_is_red,
        centerline=centerline, lane_vectors=lanes)


def previous_frame_plan(scene: types.Scene):
    """The expert's plan as it would have been made 0.5 s earlier, in that frame.

    The previous frame's rear axle is ``ego_history[2]`` (t = -0.5 s); its 8-pose plan covers
    t = 0 .. 3.5 s: the current origin then ``expert_future[:7]``. One scene (vmap for a batch).

    scene: one Scene -> [8, 3] poses relative to the t = -0.5 s rear axle.
    """
    poses = jnp.concatenate([jnp.zeros((1, 3), jnp.float32),
                             scene.expert_future[: types.PLAN_LEN - 1]], 0)
    return geo.to_local(poses, scene.ego_history[types.NUM_HISTORY - 2])
