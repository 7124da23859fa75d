"""PDM's LQR trajectory tracker (``BatchLQRTracker``, spec/EPDMS.md §4.4).

Two parts: a least-squares fit of velocity and curvature profiles to the 41 reference poses, done
once per simulation, and a per-step controller: a one-step longitudinal LQR towards the profile
speed 1 s ahead, and a lateral LQR over a 10-step linear time-varying model of
(lateral error, heading error, steering). Commands are not clipped (the bicycle clips steering).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from irlvla_jax.geometry import wrap_angle
from irlvla_jax.sim.bicycle import WHEEL_BASE
from irlvla_jax.sim.trajectory import DT, StateIndex as S

Q_LONGITUDINAL = 10.0
R_LONGITUDINAL = 1.0
Q_LATERAL = (1.0, 10.0, 0.0)
R_LATERAL = 1.0
HORIZON = 10
JERK_PENALTY = 1e-4
CURVATURE_RATE_PENALTY = 1e-2
INITIAL_CURVATURE_PENALTY = 1e-10
STOPPING_GAIN = 0.5
STOPPING_VELOCITY = 0.2


@functools.lru_cache(maxsize=None)
def _velocity_fit_matrix(m: int, dt: float) -> np.ndarray:
    """[m, m] constant map from the projected displacements to the fitted speeds.

    The speed fit's design rows are dt (cos, sin)(theta_k) times the cumulative-sum basis, and
    cos^2 + sin^2 = 1, so its normal matrix does not depend on the trajectory: in terms of the
    speeds v it is dt^2 I + (JERK_PENALTY / dt^2) D2^T D2 (D2 the second difference, the jerk
    rows of the devkit's increment formulation). It is inverted once on the host in float64.
    """
    d2 = np.zeros((m - 2, m))
    for r in range(m - 2):
        d2[r, r:r + 3] = (1.0, -2.0, 1.0)
    lhs = dt**2 * np.eye(m) + JERK_PENALTY / dt**2 * d2.T @ d2
    return np.linalg.inv(lhs).astype(np.float32)


def fit_profiles(poses, dt: float = DT):
    """Velocity and curvature profiles fitted to the reference poses (regularised least squares).

    The devkit solves ``pinv(A^T A + P) A^T y`` with accelerations / curvature rates as unknowns.
    Speed: the normal matrix is constant (see :func:`_velocity_fit_matrix`), so the fit is one
    precomputed [M, M] matrix applied to dt (cos, sin)(theta) . dxy. Curvature: the same normal
    equations with the unknowns rescaled to per-step increments (``r dt``, well conditioned in
    float32), solved by Gauss-Jordan elimination in ``jnp`` (the matrix is symmetric positive
    definite, so no pivoting is needed). No LAPACK call: LAPACK custom calls deadlock XLA:CPU
    when several (fake) devices run them at once (the sharded PDM-Closed hang).

    Args:
      poses: [..., M+1, 3] reference poses at spacing ``dt`` (M = 40 for the simulator).
    Returns:
      velocity [..., M], curvature [..., M]: speed and curvature at the start of each step.
    """
    poses = jnp.asarray(poses, jnp.float32)
    m = poses.shape[-2] - 1
    dxy = poses[..., 1:, :2] - poses[..., :-1, :2]                   # [..., M, 2]
    heading = poses[..., :-1, 2]
    dtheta = wrap_angle(poses[..., 1:, 2] - poses[..., :-1, 2])      # [..., M]

    # Speed: argmin sum_k |dxy_k - dt (cos, sin)(theta_k) v_k|^2 + jerk penalty.
    proj = dt * (jnp.cos(heading) * dxy[..., 0] + jnp.sin(heading) * dxy[..., 1])
    velocity = jnp.einsum("ij,...j->...i", jnp.asarray(_velocity_fit_matrix(m, dt)), proj)

    # Curvature: dtheta_k = dt v_k (kappa0 + sum_{i<k} dkappa_i); L[k, j] = 1 for j <= k.
    idx = jnp.arange(m)
    lower = (idx[None, :] <= idx[:, None]).astype(jnp.float32)
    a_mat = (dt * velocity)[..., :, None] * lower
    reg = jnp.diag(jnp.full((m,), CURVATURE_RATE_PENALTY / dt**2).at[0]
                   .set(INITIAL_CURVATURE_PENALTY))
    w = _solve_normal(a_mat, dtheta, reg)
    curvature = jnp.cumsum(w, axis=-1)
    return velocity, curvature


def _solve_normal(a_mat, y, reg):
    """argmin ||y - A z||^2 + z^T reg z for A [..., n, m], y [..., n], reg [m, m] -> [..., m]
    (reg symmetric positive definite)."""
    lhs = jnp.swapaxes(a_mat, -1, -2) @ a_mat + reg
    rhs = jnp.einsum("...nm,...n->...m", a_mat, y)
    return _solve_spd(lhs, rhs)


def _solve_spd(lhs, rhs):
    """Gauss-Jordan solve of a symmetric positive definite system, without pivoting (pure jnp,
    a scan over the m pivots). lhs [..., m, m], rhs [..., m] -> [..., m]."""
    m = lhs.shape[-1]
    aug = jnp.concatenate([lhs, rhs[..., None]], -1)                 # [..., m, m+1]

    def eliminate(mat, j):
        row = jnp.take(mat, j, axis=-2) / jnp.take(jnp.take(mat, j, axis=-2), j, axis=-1)[
            ..., None]                                                  # [..., m+1]
        col = jnp.where(jnp.arange(m) == j, 0.0, jnp.take(mat, j, axis=-1))   # [..., m]
        mat = mat - col[..., :, None] * row[..., None, :]
        return jnp.where((jnp.arange(m) == j)[:, None], row[..., None, :], mat), None

    aug, _ = jax.lax.scan(eliminate, aug, jnp.arange(m))
    return aug[..., m]


def control(index, state, poses, velocity, curvature, dt: float = DT,
            wheel_base: float = WHEEL_BASE):
    """The tracker's command for the current step.

    Args:
      index: [] int, the current time index i (the state's time is 0.1 i s); the reference pose is
        ``poses[i]`` and the profile look-ahead ``j = min(i + 10, M - 1)``.
      state: [11] current state; poses: [M+1, 3]; velocity, curvature: [M] from ``fit_profiles``.
    Returns:
      [2] (acceleration, steering rate).
    """
    m = velocity.shape[-1]
    ref = poses[index]
    ex, ey = state[S.X] - ref[0], state[S.Y] - ref[1]
    lateral_error = -ex * jnp.sin(ref[2]) + ey * jnp.cos(ref[2])
    heading_error = wrap_angle(state[S.HEADING] - ref[2])
    v = state[S.VX]
    j = jnp.minimum(index + HORIZON, m - 1)
    v_ref = velocity[j]
    # kappa[i:j], padded with kappa[j] to the horizon length.
    kappa = curvature[jnp.minimum(index + jnp.arange(HORIZON), j)]

    b_lon = HORIZON * dt
    accel = -(b_lon * Q_LONGITUDINAL * (v - v_ref)) / (b_lon**2 * Q_LONGITUDINAL + R_LONGITUDINAL)

    # Lateral: compose the 10 one-step models x+ = A_k x + B u + g_k (u held over the horizon).
    speeds = v + jnp.arange(HORIZON) * dt * accel
    b_in = jnp.array([0.0, 0.0, dt])

    def compose(acc, speed_kappa):
        a_acc, b_acc, g_acc = acc
        speed, kap = speed_kappa
        a_k = jnp.eye(3).at[0, 1].set(speed * dt).at[1, 2].set(speed * dt / wheel_base)
        g_k = jnp.array([0.0, -speed * kap * dt, 0.0])
        return (a_k @ a_acc, a_k @ b_acc + b_in, a_k @ g_acc + g_k), None

    (a_acc, b_acc, g_acc), _ = jax.lax.scan(compose, (jnp.eye(3), jnp.zeros(3), jnp.zeros(3)),
                                            (speeds, kappa))
    x0 = jnp.stack([lateral_error, heading_error, state[S.STEERING]])
    err = a_acc @ x0 + g_acc
    err = err.at[1:].set(wrap_angle(err[1:]))
    q = jnp.asarray(Q_LATERAL)
    steering_rate = -(b_acc * q) @ err / ((b_acc * q) @ b_acc + R_LATERAL)

    stop = (v_ref <= STOPPING_VELOCITY) & (v <= STOPPING_VELOCITY)
    accel = jnp.where(stop, -STOPPING_GAIN * (v - v_ref), accel)
    steering_rate = jnp.where(stop, 0.0, steering_rate)
    return jnp.stack([accel, steering_rate])
