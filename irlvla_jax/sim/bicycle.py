"""PDM's kinematic bicycle model (``BatchKinematicBicycleModel``, spec/EPDMS.md §4.5).

One explicit-Euler step of 0.1 s with first-order lags on acceleration and steering. Derivatives
use the *old* speed, heading and steering; the steering angle is clipped to +-pi/3 after the step.
There is no acceleration limit and no clamp to v >= 0, as in the devkit.
"""

from __future__ import annotations

import jax.numpy as jnp

from irlvla_jax import geometry
from irlvla_jax.geometry import wrap_angle
from irlvla_jax.sim.trajectory import DT, StateIndex as S

WHEEL_BASE = geometry.EGO_WHEEL_BASE
MAX_STEERING = jnp.pi / 3
ACCEL_TIME_CONSTANT = 0.2
STEERING_TIME_CONSTANT = 0.05


def step(state, command, dt: float = DT, wheel_base: float = WHEEL_BASE):
    """Propagate the ego one step.

    Args:
      state: [..., 11] in ``StateIndex`` order.
      command: [..., 2] (acceleration m/s^2, steering rate rad/s), as the LQR tracker emits.
    Returns:
      [..., 11] the next state.
    """
    x, y, th = state[..., S.X], state[..., S.Y], state[..., S.HEADING]
    v, a, delta = state[..., S.VX], state[..., S.AX], state[..., S.STEERING]
    omega_prev = state[..., S.ANGULAR_VELOCITY]
    u_a, u_r = command[..., 0], command[..., 1]

    # First-order lags, discretised as in the devkit: a' = a + dt/(dt+tau) (u - a).
    a_new = a + dt / (dt + ACCEL_TIME_CONSTANT) * (u_a - a)
    delta_ideal = delta + dt * u_r
    delta_lagged = delta + dt / (dt + STEERING_TIME_CONSTANT) * (delta_ideal - delta)
    rate = (delta_lagged - delta) / dt

    x1 = x + dt * v * jnp.cos(th)
    y1 = y + dt * v * jnp.sin(th)
    th1 = wrap_angle(th + dt * v * jnp.tan(delta) / wheel_base)
    v1 = v + dt * a_new
    delta1 = jnp.clip(delta + dt * rate, -MAX_STEERING, MAX_STEERING)
    omega1 = v1 * jnp.tan(delta1) / wheel_base
    zeros = jnp.zeros_like(x1)
    out = [None] * len(S)
    out[S.X], out[S.Y], out[S.HEADING] = x1, y1, th1
    out[S.VX], out[S.VY] = v1, zeros
    out[S.AX], out[S.AY] = a_new, zeros
    out[S.STEERING], out[S.STEERING_RATE] = delta1, rate
    out[S.ANGULAR_VELOCITY] = omega1
    out[S.ANGULAR_ACCELERATION] = (omega1 - omega_prev) / dt
    return jnp.stack(out, axis=-1)
