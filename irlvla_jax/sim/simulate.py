"""Reference poses -> 41 simulated ego states: LQR tracker + kinematic bicycle (spec §4.3).

``sim[0]`` is the true ego state; for i = 1..40 the tracker computes a command from ``sim[i-1]``
and reference index i-1, and the bicycle model integrates it. The profile fit is done once.
One ``lax.scan`` over the 40 steps; vmap for candidates and scenes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from irlvla_jax import scene_ops, types
from irlvla_jax.sim import bicycle, lqr, trajectory


def simulate(ref_poses, init_state):
    """Track ``ref_poses`` from ``init_state``.

    Args:
      ref_poses: [41, 3] reference poses at 0.1 s (t = 0 rear-axle frame).
      init_state: [11] the true ego state at t = 0 (``StateIndex`` layout).
    Returns:
      [41, 11] simulated states; row 0 is ``init_state``.
    """
    ref_poses = jnp.asarray(ref_poses, jnp.float32)
    init_state = jnp.asarray(init_state, jnp.float32)
    if ref_poses.shape != (trajectory.NUM_STEPS + 1, 3) or init_state.shape != (
            trajectory.STATE_DIM,):
        raise ValueError(f"simulate: ref_poses {ref_poses.shape} / init_state {init_state.shape}, "
                         f"expected (41, 3) / (11,); vmap for batches")
    velocity, curvature = lqr.fit_profiles(ref_poses)

    def body(state, index):
        command = lqr.control(index, state, ref_poses, velocity, curvature)
        nxt = bicycle.step(state, command)
        return nxt, nxt

    _, states = jax.lax.scan(body, init_state, jnp.arange(trajectory.NUM_STEPS))
    return jnp.concatenate([init_state[None], states], axis=0)


def simulate_plan(scene: types.Scene, plan):
    """Simulate a planner output in its scene (one scene; vmap for a batch / candidates).

    Args:
      scene: one Scene; plan: [8, 3] poses at 0.5 s relative to the t = 0 rear axle.
    Returns:
      [41, 11] simulated states.
    """
    return simulate(trajectory.reference_poses(plan), trajectory.initial_state(scene))


def previous_frame_states(scene: types.Scene):
    """The expert's plan made 0.5 s earlier, simulated in that frame: the input of EC.

    The plan is ``scene_ops.previous_frame_plan`` (the t = -0.5 s rear-axle frame); it is
    tracked from that frame's logged state, :func:`trajectory.origin_state` of the body-frame
    velocity and acceleration at t = -0.5 s (history row ``NUM_HISTORY - 2``). EC compares
    frame-invariant features only, so the frame does not matter to the scorer.

    Args:
      scene: Scene batched [B].
    Returns:
      [B, 41, 11] simulated states.
    """
    def one(s):
        prev = types.NUM_HISTORY - 2
        init = trajectory.origin_state(s.ego_history_velocity[prev],
                                       s.ego_history_acceleration[prev])
        return simulate(trajectory.reference_poses(scene_ops.previous_frame_plan(s)), init)
    return jax.vmap(one)(scene)
