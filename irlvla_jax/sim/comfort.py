"""History comfort (HC), extended two-frame comfort (EC) and v1 comfort (spec/EPDMS.md §6).

NAVSIM smooths kinematic signals with ``scipy.signal.savgol_filter`` (mode ``interp``). The
filter is linear in the signal, so each (length, window, poly, deriv) becomes a constant matrix
``M = savgol_filter(I_n, ..., axis=0)`` computed once on the host with SciPy itself — this
reproduces SciPy exactly, including the even window 8 (interior outputs shifted by half a
sample) — and applied on device as ``M @ x``.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import scipy.signal

from irlvla_jax import geometry as geo
from irlvla_jax.sim.trajectory import DT, STATE_DIM, StateIndex as S

# --- nuPlan / PDM comfort bounds (strict, must hold at every step) ----------------------------
MIN_LON_ACCEL, MAX_LON_ACCEL = -4.05, 2.40
MAX_ABS_LAT_ACCEL = 4.89
MAX_ABS_JERK = 8.37          # of |a|
MAX_ABS_LON_JERK = 4.13
MAX_ABS_YAW_ACCEL = 1.93
MAX_ABS_YAW_RATE = 0.95
# --- EC: RMS of the difference between the two frames' overlapping features (<=) --------------
EC_MAX_ACCEL, EC_MAX_JERK, EC_MAX_YAW_RATE, EC_MAX_YAW_ACCEL = 0.7, 0.5, 0.1, 0.1
EC_OVERLAP = round(0.5 / DT)          # the previous frame is 0.5 s earlier: 5 steps

DECIMALS = 8                          # np.round of accelerations and jerks
ACCEL_WINDOW, JERK_WINDOW, YAW_WINDOW = 8, 15, 5   # yaw: the wrapper's 15 is not forwarded
HISTORY_STEP_US = 100_000


@functools.lru_cache(maxsize=None)
def savgol_matrix(n: int, window: int, poly: int, deriv: int = 0) -> np.ndarray:
    """[n, n] float32 matrix M with ``M @ x == savgol_filter(x, min(window, n), poly, deriv,
    delta=0.1, mode='interp')`` for any x [n]."""
    w = min(window, n)
    return scipy.signal.savgol_filter(np.eye(n), w, poly, deriv=deriv, delta=DT, axis=0,
                                      mode="interp").astype(np.float32)


def _filt(x, window, poly, deriv=0):
    return jnp.asarray(savgol_matrix(x.shape[-1], window, poly, deriv)) @ x


def _round(x):
    return jnp.round(x, DECIMALS)


def _phase_unwrap(h):
    """nuPlan ``phase_unwrap``: subtract 2 pi * cumsum(round(diff / 2 pi)). [n] -> [n]."""
    adj = jnp.cumsum(jnp.round(jnp.diff(h) / (2 * jnp.pi)))
    return h - 2 * jnp.pi * jnp.concatenate([jnp.zeros((1,), h.dtype), adj])


def _features(states):
    """Smoothed comfort signals of a sequence of states [n, 11] -> dict of [n]."""
    ax, ay = states[:, S.AX], states[:, S.AY]
    # Shift the rear-axle acceleration to the centre with d = (1.461, 0): nuPlan adds d*w^2 and
    # d*alpha to the x component (its formula, kept as-is).
    w, alpha = states[:, S.ANGULAR_VELOCITY], states[:, S.ANGULAR_ACCELERATION]
    a_lon = _round(_filt(ax + geo.EGO_REAR_AXLE_TO_CENTER * (w * w + alpha), ACCEL_WINDOW, 2))
    a_lat = _round(_filt(ay, ACCEL_WINDOW, 2))
    a_mag = _round(_filt(jnp.hypot(ax, ay), ACCEL_WINDOW, 2))
    heading = _phase_unwrap(states[:, S.HEADING])
    return dict(
        a_lon=a_lon, a_lat=a_lat, a_mag=a_mag,
        jerk_lon=_round(_filt(a_lon, JERK_WINDOW, 2, 1)),
        jerk_mag=_round(_filt(a_mag, JERK_WINDOW, 2, 1)),
        yaw_rate=_filt(heading, YAW_WINDOW, 2, 1),
        yaw_acc_hc=_filt(heading, YAW_WINDOW, 3, 2),    # HC: poly 3
        yaw_acc_ec=_filt(heading, YAW_WINDOW, 2, 2),    # EC: poly 2
    )


def _within_bounds(f):
    ok = ((f["a_lon"] > MIN_LON_ACCEL) & (f["a_lon"] < MAX_LON_ACCEL) &
          (jnp.abs(f["a_lat"]) < MAX_ABS_LAT_ACCEL) &
          (jnp.abs(f["jerk_mag"]) < MAX_ABS_JERK) &
          (jnp.abs(f["jerk_lon"]) < MAX_ABS_LON_JERK) &
          (jnp.abs(f["yaw_acc_hc"]) < MAX_ABS_YAW_ACCEL) &
          (jnp.abs(f["yaw_rate"]) < MAX_ABS_YAW_RATE))
    return jnp.where(ok.all(), 1.0, 0.0)


def trajectory_comfort(states):
    """nuPlan/NAVSIM-v1 comfort of the 41 simulated states alone (no history).
    states [41,11] -> float32 [] in {0, 1}."""
    return _within_bounds(_features(states))


def _history_states(scene, n_hist):
    """The logged past interpolated at ``n_hist`` times start + 0.1 k s (spec §6.1).
    -> [n_hist, 11] with steering, steering rate, omega and alpha 0."""
    t = scene.ego_history_time
    q = t[0] + DT * jnp.arange(n_hist, dtype=t.dtype)
    hist_h = jnp.unwrap(scene.ego_history[:, 2])

    def interp(col):
        return jnp.interp(q, t, col)

    out = jnp.zeros((n_hist, STATE_DIM), jnp.float32)
    out = out.at[:, S.X].set(interp(scene.ego_history[:, 0]))
    out = out.at[:, S.Y].set(interp(scene.ego_history[:, 1]))
    out = out.at[:, S.HEADING].set(geo.wrap_angle(interp(hist_h)))
    out = out.at[:, S.VX].set(interp(scene.ego_history_velocity[:, 0]))
    out = out.at[:, S.VY].set(interp(scene.ego_history_velocity[:, 1]))
    out = out.at[:, S.AX].set(interp(scene.ego_history_acceleration[:, 0]))
    return out.at[:, S.AY].set(interp(scene.ego_history_acceleration[:, 1]))


def history_comfort(states, scene):
    """HC (spec §6.1-6.2): comfort bounds over the logged 1.5 s history + the 41 simulated
    states, all treated as 0.1 s apart (the -0.2 s -> 0 s gap quirk).

    states [41,11] (``StateIndex``), scene: one Scene (ego_history [4,3], ego_history_velocity
    [4,2], ego_history_acceleration [4,2], ego_history_time [4]) -> float32 [] in {0, 1}.
    NAVSIM samples the history at ``arange(start_us, end_us, 100000)[:-1]``: 14 states for an
    exact 1.5 s span, 15 when the log's span is a few microseconds longer. Both variants are
    computed (shapes are static) and the matching one is kept.
    """
    t = scene.ego_history_time
    span_us = jnp.round((t[-1] - t[0]) * 1e6)
    n15 = jnp.ceil(span_us / HISTORY_STEP_US) - 1 >= 15
    hc = [_within_bounds(_features(jnp.concatenate([_history_states(scene, n), states])))
          for n in (14, 15)]
    return jnp.where(n15, hc[1], hc[0])


def extended_comfort(states, prev_states):
    """EC (spec §6.3): does this plan agree with the one made 0.5 s earlier?

    states [41,11], prev_states [41,11]: the current and the previous frame's simulated states.
    The features compared are frame-invariant, so prev_states may be in either frame. Compares
    current[0:36] with previous[5:41] -> float32 [] in {0, 1}.
    """
    n = states.shape[0] - EC_OVERLAP
    fc, fp = _features(states[:n]), _features(prev_states[EC_OVERLAP:])

    def rms(k):
        return jnp.sqrt(jnp.mean((fc[k] - fp[k]) ** 2))

    ok = ((rms("a_mag") <= EC_MAX_ACCEL) & (rms("jerk_mag") <= EC_MAX_JERK) &
          (rms("yaw_rate") <= EC_MAX_YAW_RATE) & (rms("yaw_acc_ec") <= EC_MAX_YAW_ACCEL))
    return jnp.where(ok, 1.0, 0.0)

