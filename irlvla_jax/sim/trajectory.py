"""From a planner output to the 41 reference poses the tracker follows, and the true t=0 state.

NAVSIM (``navsim/evaluate/pdm_score.py``) makes the 8 relative poses absolute, prepends the
current ego state and samples an ``InterpolatedTrajectory`` at 0.1 s: x and y linear in time, the
heading unwrapped over the 9 knots, interpolated linearly and wrapped again. Only these *poses*
reach the LQR tracker (spec/EPDMS.md §4.1); everything here is in the t = 0 rear-axle frame, where
the current pose is (0, 0, 0), so "make absolute" is the identity up to wrapping the heading.
"""

from __future__ import annotations

import enum

import jax.numpy as jnp

from irlvla_jax import types
from irlvla_jax.geometry import wrap_angle

DT = 0.1                 # simulation step (s)
NUM_STEPS = 40           # 4 s horizon -> 41 states
PLAN_DT = 0.5            # planner pose spacing (s)
_SUB = round(PLAN_DT / DT)   # 10 Hz steps per plan interval (5)


class StateIndex(enum.IntEnum):
    """Layout of the 11-float ego state (PDM ``StateIndex``, all at the rear axle)."""
    X = 0
    Y = 1
    HEADING = 2
    VX = 3
    VY = 4
    AX = 5
    AY = 6
    STEERING = 7
    STEERING_RATE = 8
    ANGULAR_VELOCITY = 9
    ANGULAR_ACCELERATION = 10


STATE_DIM = len(StateIndex)


def reference_poses(plan):
    """The 41 reference poses at t = 0.1 k s, k = 0..40, for a plan of 8 poses at 0.5 s.

    Args:
      plan: [..., 8, 3] (x, y, heading) relative to the t = 0 rear axle.
    Returns:
      [..., 41, 3] poses; pose 0 is (0, 0, 0), pose 5 j is plan[j - 1]; headings in [-pi, pi).
    """
    plan = jnp.asarray(plan, jnp.float32)
    if plan.shape[-2:] != (types.PLAN_LEN, 3):
        raise ValueError(f"reference_poses: plan has shape {plan.shape}, expected (..., "
                         f"{types.PLAN_LEN}, 3)")
    origin = jnp.zeros(plan.shape[:-2] + (1, 3), plan.dtype)
    # relative_to_absolute_poses wraps the heading; the interpolator then unwraps the 9 knots.
    knots = jnp.concatenate([origin, plan.at[..., 2].set(wrap_angle(plan[..., 2]))], axis=-2)
    knots = knots.at[..., 2].set(jnp.unwrap(knots[..., 2], axis=-1))
    k = jnp.arange(NUM_STEPS + 1)
    seg = jnp.minimum(k // _SUB, types.PLAN_LEN - 1)          # knot interval of step k
    frac = ((k - seg * _SUB) / _SUB).astype(plan.dtype)[:, None]
    poses = knots[..., seg, :] * (1.0 - frac) + knots[..., seg + 1, :] * frac
    return poses.at[..., 2].set(wrap_angle(poses[..., 2]))


def origin_state(velocity, acceleration):
    """An ego state at the origin of its own rear-axle frame, as NAVSIM builds one from a log
    frame (``EgoState.build_from_rear_axle``, spec §2.1): pose (0, 0, 0), the logged body-frame
    velocity and acceleration; steering, steering rate, angular velocity and angular
    acceleration all 0.

    Args:
      velocity: [2] body-frame (longitudinal, lateral) velocity.
      acceleration: [2] body-frame acceleration.
    Returns:
      [11] state in ``StateIndex`` order.
    """
    v = jnp.asarray(velocity, jnp.float32)
    a = jnp.asarray(acceleration, jnp.float32)
    if v.shape != (2,) or a.shape != (2,):
        raise ValueError(f"origin_state: expects one frame, got velocity {v.shape}, "
                         f"acceleration {a.shape} (vmap over a batch)")
    s = jnp.zeros((STATE_DIM,), jnp.float32)
    s = s.at[StateIndex.VX].set(v[0]).at[StateIndex.VY].set(v[1])
    return s.at[StateIndex.AX].set(a[0]).at[StateIndex.AY].set(a[1])


def initial_state(scene: types.Scene):
    """The true ego state at t = 0 (one scene; vmap for a batch): :func:`origin_state` of the
    current frame's logged velocity and acceleration (our frame is the t = 0 rear axle).

    Args:
      scene: one Scene (``ego_velocity [2]``, ``ego_acceleration [2]``).
    Returns:
      [11] state in ``StateIndex`` order.
    """
    return origin_state(scene.ego_velocity, scene.ego_acceleration)
