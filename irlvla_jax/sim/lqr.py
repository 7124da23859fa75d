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


def banded_difference_matrix(number_rows: int) -> np.ndarray:
    """The devkit's regulariser on the accelerations, [n, n+1] for n = ``number_rows``, built
    as ``batch_lqr_utils._make_banded_difference_matrix`` builds it.

    Documented as the first difference (row r: -1 at column r, +1 at r + 1), but the devkit
    writes the +1 band (``[:, 1:] = eye``) and then the -1 band (``[:, :-1] = -eye``) into the
    same matrix, and the second assignment zeroes every +1 it overlaps: only the last row keeps
    its +1. The penalty applied is therefore on the accelerations a_0 .. a_{n-2} themselves and
    on the last difference a_n - a_{n-1}. This quirk is reproduced on purpose (spec/EPDMS.md,
    "Quirks confirmed"): with the documented jerk penalty the simulated states differ from the
    official ones by up to 5.3 cm, with this one by 0.002 cm (issue 13, 7,020 plans).
    """
    banded = np.zeros((number_rows, number_rows + 1))
    eye = np.eye(number_rows)
    banded[:, 1:] = eye
    banded[:, :-1] = -eye
    return banded


@functools.lru_cache(maxsize=None)
def _velocity_fit_matrix(m: int, dt: float) -> np.ndarray:
    """[m, m] constant map from the projected displacements to the fitted speeds.

    The speed fit's design rows are dt (cos, sin)(theta_k) times the cumulative-sum basis, and
    cos^2 + sin^2 = 1, so its normal matrix does not depend on the trajectory. The devkit's
    unknowns are v_0 and the m - 1 accelerations a = D v / dt (D the first difference), and
    it penalises ``JERK_PENALTY * |B a|^2`` with B = :func:`banded_difference_matrix` (m - 2).
    In terms of the speeds v that is dt^2 I + (JERK_PENALTY / dt^2) (B D)^T (B D): the same
    minimiser, since v <-> (v_0, a) is invertible. It is inverted once on the host in float64.
    """
    first_difference = np.diff(np.eye(m), axis=0)                      # [m-1, m]
    penalty = banded_difference_matrix(m - 2) @ first_difference       # [m-2, m]
    lhs = dt**2 * np.eye(m) + JERK_PENALTY / dt**2 * penalty.T @ penalty
    return np.linalg.inv(lhs).astype(np.float32)


def fit_profiles(poses, dt: float = DT):
    """Velocity and curvature profiles fitted to the reference poses (regularised least squares).

    The devkit solves ``pinv(A^T A + P) A^T y`` with accelerations / curvature rates as unknowns.
    Speed: the normal matrix is constant (see :func:`_velocity_fit_matrix`; the penalty is the
    devkit's, mostly on accelerations), so the fit is one precomputed [M, M] matrix applied to
    dt (cos, sin)(theta) . dxy. Curvature: the same problem with the curvatures kappa_k
    themselves as unknowns, where it is tridiagonal (see :func:`_curvature_fit`). No LAPACK call: LAPACK custom calls deadlock XLA:CPU when several
    (fake) devices run them at once (the sharded PDM-Closed hang).

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

    # Speed: argmin sum_k |dxy_k - dt (cos, sin)(theta_k) v_k|^2 + the devkit's penalty.
    proj = dt * (jnp.cos(heading) * dxy[..., 0] + jnp.sin(heading) * dxy[..., 1])
    velocity = jnp.einsum("ij,...j->...i", jnp.asarray(_velocity_fit_matrix(m, dt)), proj)
    return velocity, _curvature_fit(dt * velocity, dtheta, dt)


def _curvature_fit(step, dtheta, dt):
    """Curvatures kappa [..., M] fitted to the heading steps: argmin over kappa of
    sum_k (dtheta_k - step_k kappa_k)^2 + 1e-10 kappa_0^2 + (1e-2 / dt^2) sum_k (kappa_k -
    kappa_{k-1})^2, with step_k = dt v_k [..., M].

    This is the devkit's problem (unknowns kappa_0 and the curvature rates, regularised by
    ``INITIAL_CURVATURE_PENALTY`` and ``CURVATURE_RATE_PENALTY``) written in the curvatures,
    where its normal matrix is tridiagonal: diag(step^2) + the penalties' difference operator
    (diagonal lam * (1, 2, .., 2, 1) + 1e-10 e_0, off-diagonal -lam). Solved by the Thomas
    algorithm, unrolled over the M steps: O(M) elementwise work instead of an O(M^3) dense
    solve. The penalties alone are singular up to the 1e-10 term (a constant curvature costs
    nothing), so for a nearly standing reference the pivots approach lam and the last one 0:
    each pivot is carried as its excess over lam, e_k = step_k^2 + lam e_{k-1} / (lam +
    e_{k-1}) (a sum of positive terms), which keeps float32 accurate there (plain Thomas loses
    the excess to cancellation and can be off by orders of magnitude).
    """
    lam = CURVATURE_RATE_PENALTY / dt**2
    c = jnp.moveaxis(step * step, -1, 0)                            # [M, ...]
    rhs = jnp.moveaxis(step * dtheta, -1, 0)
    last = jnp.arange(c.shape[0]) == c.shape[0] - 1

    # Forward elimination: pivot_k = lam + e_k (the last row has one neighbour: pivot = e_k).
    def forward(carry, x):
        excess, value = carry
        c_k, rhs_k, is_last = x
        excess = c_k + lam * excess / (lam + excess)
        pivot = jnp.maximum(jnp.where(is_last, excess, lam + excess), 1e-30)
        value = (rhs_k + lam * value) / pivot
        return (excess, value), (pivot, value)

    # Row 0 has the 1e-10 penalty instead of a left neighbour: e_0 = step_0^2 + 1e-10.
    excess0 = c[0] + INITIAL_CURVATURE_PENALTY
    pivot0 = jnp.maximum(jnp.where(last[0], excess0, lam + excess0), 1e-30)
    value0 = rhs[0] / pivot0
    _, (pivots, values) = jax.lax.scan(forward, (excess0, value0), (c[1:], rhs[1:], last[1:]))
    pivots = jnp.concatenate([pivot0[None], pivots])
    values = jnp.concatenate([value0[None], values])

    def backward(kappa_next, x):
        pivot, value = x
        kappa = value + lam / pivot * kappa_next
        return kappa, kappa

    _, kappa = jax.lax.scan(backward, values[-1], (pivots[:-1], values[:-1]), reverse=True)
    return jnp.moveaxis(jnp.concatenate([kappa, values[-1:]]), 0, -1)


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

    # Lateral: compose the 10 one-step models x+ = A_k x + B u + g_k (u held over the horizon),
    # A_k = I + [[0, s_k dt, 0], [0, 0, s_k dt / L], [0, 0, 0]], B = [0, 0, dt], g_k = [0,
    # -s_k kappa_k dt, 0]. A stays unit upper triangular and g's last entry 0, so the products
    # reduce to scalar recurrences on their 3 + 3 + 2 free entries (no 3x3 matmuls, no scan).
    a01 = a02 = a12 = 0.0
    b0 = b1 = b2 = 0.0
    g0 = g1 = 0.0
    for k in range(HORIZON):
        speed = v + k * dt * accel
        p, r = speed * dt, speed * dt / wheel_base
        a02, a01, a12 = a02 + p * a12, a01 + p, a12 + r
        b0, b1, b2 = b0 + p * b1, b1 + r * b2, b2 + dt
        g0, g1 = g0 + p * g1, g1 - speed * kappa[k] * dt
    x0, x1, x2 = lateral_error, heading_error, state[S.STEERING]
    e0 = x0 + a01 * x1 + a02 * x2 + g0
    e1 = wrap_angle(x1 + a12 * x2 + g1)
    e2 = wrap_angle(x2)
    q0, q1, q2 = Q_LATERAL
    steering_rate = -(b0 * q0 * e0 + b1 * q1 * e1 + b2 * q2 * e2) / (
        b0 * q0 * b0 + b1 * q1 * b1 + b2 * q2 * b2 + R_LATERAL)

    stop = (v_ref <= STOPPING_VELOCITY) & (v <= STOPPING_VELOCITY)
    accel = jnp.where(stop, -STOPPING_GAIN * (v - v_ref), accel)
    steering_rate = jnp.where(stop, 0.0, steering_rate)
    return jnp.stack([accel, steering_rate])
