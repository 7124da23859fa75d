"""Simulator (irlvla_jax.sim.trajectory / bicycle / lqr / simulate): formulas and tracking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scorer_scenes as ss
from irlvla_jax import types
from irlvla_jax.sim import bicycle, lqr, simulate, trajectory
from irlvla_jax.sim.trajectory import StateIndex as S


@pytest.fixture(scope="module")
def sim():
    return jax.jit(simulate.simulate)


def _rollout(speed, yaw_rate):
    """Reference poses from per-step speed / yaw rate [41] (Euler, like the tracker's model)."""
    pose = np.zeros((41, 3))
    for k in range(40):
        pose[k + 1] = pose[k] + 0.1 * np.array([speed[k] * np.cos(pose[k, 2]),
                                                speed[k] * np.sin(pose[k, 2]), yaw_rate[k]])
    return pose


def _state(v=0.0, a=0.0, steering=0.0):
    return np.array([0, 0, 0, v, 0, a, 0, steering, 0, 0, 0], np.float32)


def test_reference_poses_of_known_plan():
    j = np.arange(1, 9)
    plan = np.stack([2.0 * j, 0.1 * j, 0.5 * j], -1)       # headings past pi (4.0 rad at 4 s)
    ref = np.asarray(trajectory.reference_poses(plan))
    k = np.arange(41)
    assert ref.shape == (41, 3)
    np.testing.assert_allclose(ref[:, 0], 0.4 * k, atol=1e-5)
    np.testing.assert_allclose(ref[:, 1], 0.02 * k, atol=1e-6)
    # Unwrapped across the knots, linear, wrapped to [-pi, pi): 0.1 k rad.
    expect = (0.1 * k + np.pi) % (2 * np.pi) - np.pi
    np.testing.assert_allclose(ref[:, 2], expect, atol=1e-5)
    np.testing.assert_allclose(ref[5 * j, :2], plan[:, :2], atol=1e-5)
    # A heading jump across -pi/pi interpolates the short way round.
    plan2 = np.zeros((8, 3), np.float32)
    plan2[:, 2] = [3.0, 3.1, -3.1, -3.0, -3.0, -3.0, -3.0, -3.0]
    h = np.asarray(trajectory.reference_poses(plan2))[10:16, 2]
    np.testing.assert_allclose(np.unwrap(h), 3.1 + np.arange(6) * (2 * np.pi - 6.2) / 5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="plan has shape"):
        trajectory.reference_poses(np.zeros((6, 3)))


def test_initial_state_is_true_ego_state():
    scene = types.zeros_scene(types.SceneSizes())
    d = scene.to_dict()
    d["ego_velocity"] = np.array([7.0, 0.2], np.float32)
    d["ego_acceleration"] = np.array([-1.0, 0.5], np.float32)
    s = np.asarray(trajectory.initial_state(types.Scene.from_dict(d)))
    np.testing.assert_allclose(s, [0, 0, 0, 7.0, 0.2, -1.0, 0.5, 0, 0, 0, 0])


def test_bicycle_single_step_by_hand():
    L = 3.089
    state = np.array([1.0, 2.0, 0.3, 10.0, 0.0, 1.0, 0.0, 0.1, 0.0, 0.2, 0.0], np.float32)
    out = np.asarray(bicycle.step(jnp.asarray(state), jnp.array([2.0, 0.5])))
    a = 1.0 + (0.1 / 0.3) * (2.0 - 1.0)                    # acceleration lag tau = 0.2
    rate = (0.1 / 0.15) * 0.5                              # steering lag tau = 0.05
    delta = 0.1 + 0.1 * rate
    v = 10.0 + 0.1 * a
    expect = [1.0 + 0.1 * 10 * np.cos(0.3), 2.0 + 0.1 * 10 * np.sin(0.3),
              0.3 + 0.1 * 10 * np.tan(0.1) / L,          # old speed and steering
              v, 0.0, a, 0.0, delta, rate, v * np.tan(delta) / L,
              (v * np.tan(delta) / L - 0.2) / 0.1]
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-6)
    # The steering angle is clipped at pi/3; heading wraps.
    clipped = np.asarray(bicycle.step(jnp.asarray(state).at[S.STEERING].set(1.04)
                                      .at[S.HEADING].set(3.14), jnp.array([0.0, 10.0])))
    assert clipped[S.STEERING] == pytest.approx(np.pi / 3)
    assert -np.pi <= clipped[S.HEADING] < 0


def _devkit_banded_matrix(n):
    """``batch_lqr_utils._make_banded_difference_matrix`` as the devkit writes it: two slice
    assignments into one matrix, the second overwriting the first's +1 band."""
    banded = np.zeros((n, n + 1))
    eye = np.eye(n)
    banded[:, 1:] = eye
    banded[:, :-1] = -eye
    return banded


def test_speed_fit_penalty_is_the_devkits_overwritten_band():
    """The speed fit's regulariser is the devkit's matrix as built, not the documented first
    difference: -1 on the diagonal, +1 only in the last row (a penalty on accelerations)."""
    for n in (1, 2, 5, 38):
        got = lqr.banded_difference_matrix(n)
        np.testing.assert_array_equal(got, _devkit_banded_matrix(n))
    b = lqr.banded_difference_matrix(38)
    assert np.count_nonzero(b == 1.0) == 1 and b[37, 38] == 1.0
    np.testing.assert_array_equal(np.diag(b), -1.0)


def _reference_fit(poses, dt=0.1):
    """The devkit's least squares in float64 with pinv (spec §4.4), its regulariser built by
    the devkit's slice assignments."""
    poses = np.asarray(poses, np.float64)
    m = len(poses) - 1
    d, h = poses[1:, :2] - poses[:-1, :2], poses[:-1, 2]
    a = np.zeros((2 * m, m))
    for k in range(m):
        a[2 * k:2 * k + 2, 0] = [np.cos(h[k]) * dt, np.sin(h[k]) * dt]
        a[2 * k:2 * k + 2, 1:1 + k] = np.array([[np.cos(h[k])], [np.sin(h[k])]]) * dt**2
    r = np.block([np.zeros((m - 2, 1)), _devkit_banded_matrix(m - 2)])
    z = np.linalg.pinv(a.T @ a + 1e-4 * r.T @ r) @ a.T @ d.flatten()
    v = z[0] + np.insert(np.cumsum(z[1:] * dt), 0, 0.0)
    dth = (poses[1:, 2] - poses[:-1, 2] + np.pi) % (2 * np.pi) - np.pi
    a = np.tri(m)
    a[:, 0] = v * dt
    a[1:, 1:] *= (v[1:] * dt**2)[:, None]
    q = 1e-2 * np.eye(m)
    q[0, 0] = 1e-10
    w = np.linalg.pinv(a.T @ a + q) @ a.T @ dth
    return v, w[0] + np.insert(np.cumsum(w[1:] * dt), 0, 0.0)


def test_profile_fit_matches_devkit_least_squares():
    t = np.arange(41) * 0.1
    poses = _rollout(8.0 - t, 0.1 * np.sin(t))
    v_ref, k_ref = _reference_fit(poses)
    v, k = lqr.fit_profiles(poses)
    np.testing.assert_allclose(v, v_ref, atol=1e-3)
    np.testing.assert_allclose(k, k_ref, atol=1e-5)


@pytest.mark.parametrize("name", ["straight", "arc"])
def test_tracks_smooth_reference_to_centimetres(sim, name):
    if name == "straight":
        ref, init = _rollout(np.full(41, 10.0), np.zeros(41)), _state(10.0)
    else:   # gentle arc, entered with its steady-state steering angle
        ref = _rollout(np.full(41, 8.0), np.full(41, 0.1))
        init = _state(8.0, steering=np.arctan(3.089 * 0.1 / 8.0))
    out = np.asarray(sim(ref, init))
    np.testing.assert_allclose(out[0], init)
    assert np.abs(out[:, :2] - ref[:, :2]).max() < 0.02
    assert np.abs(out[:, 2] - ref[:, 2]).max() < 2e-3


def test_arc_from_zero_steering_converges(sim):
    # NAVSIM's initial state has steering 0: the tracker first lags, then closes the error.
    ref = _rollout(np.full(41, 8.0), np.full(41, 0.1))
    out = np.asarray(sim(ref, _state(8.0)))
    lat = -(out[:, 0] - ref[:, 0]) * np.sin(ref[:, 2]) + (out[:, 1] - ref[:, 1]) * np.cos(ref[:, 2])
    assert np.abs(lat).max() < 0.4 and abs(lat[-1]) < 0.15


def test_smooth_stop(sim):
    # The PDM tracker controls speed only (towards the profile 1 s ahead, gain 10/11), with no
    # position feedback, so a hard braking reference is overshot (here ~1.3 m: the ego brakes at
    # 10/11 of the look-ahead speed drop, through a 0.2 s lag); it must still come to a stop.
    t = np.arange(41) * 0.1
    speed = 6.0 * np.clip(1.0 - t / 3.0, 0.0, None) ** 2
    ref = _rollout(speed, np.zeros(41))
    out = np.asarray(sim(ref, _state(6.0, a=-4.0)))
    assert out[-1, S.VX] < 0.25 and np.abs(out[-8:, S.VX]).max() < 0.5
    overshoot = out[:, 0] - ref[:, 0]
    assert overshoot.min() > -0.05 and overshoot.max() < 1.5
    np.testing.assert_allclose(out[:, 1:3], 0.0, atol=1e-6)


def test_simulate_plan_jits_and_vmaps_over_scenes_and_candidates():
    scenes = types.zeros_scene(types.SceneSizes(), batch=(2,))
    d = scenes.to_dict()
    d["ego_velocity"][:, 0] = [5.0, 10.0]
    scenes = types.Scene.from_dict(d)
    j = np.arange(1, 9)
    plans = np.zeros((2, 3, 8, 3), np.float32)
    plans[0, :, :, 0] = 2.5 * j                          # 5 m/s
    plans[1, :, :, 0] = 5.0 * j                          # 10 m/s
    f = jax.jit(jax.vmap(jax.vmap(simulate.simulate_plan, (None, 0)), (0, 0)))
    out = np.asarray(f(scenes, plans))
    assert out.shape == (2, 3, 41, 11)
    np.testing.assert_allclose(out[:, :, -1, 0], [[20.0] * 3, [40.0] * 3], atol=0.02)
    with pytest.raises(ValueError, match="expected"):
        simulate.simulate(np.zeros((40, 3)), np.zeros(11))


def test_previous_frame_plan_of_steady_driving_is_extended_comfortable():
    """The expert's plan made 0.5 s earlier, tracked from that frame's logged state: steady
    driving stays steady and agrees with the current plan (EC 1)."""
    from irlvla_jax.sim import comfort

    @jax.jit
    def both(scene):
        prev = simulate.previous_frame_states(scene)
        cur = jax.vmap(simulate.simulate_plan)(scene, scene.expert_future[:, :8])
        return prev, cur, jax.vmap(comfort.extended_comfort)(cur, prev)

    steady = ss.road_scene(speed=10.0)
    logged = ss.road_scene(speed=10.0)          # another logged state at t = -0.5 s
    logged.ego_history_velocity[2] = (9.0, 0.1)
    logged.ego_history_acceleration[2] = (0.5, -0.2)
    scenes = jax.tree.map(lambda *x: jnp.stack(x), ss.as_jnp(steady), ss.as_jnp(logged))
    prev, cur, ec = (np.asarray(x) for x in both(scenes))
    assert prev.shape == (2, 41, 11)
    np.testing.assert_allclose(prev[0, :, S.VX], 10.0, atol=0.2)       # it kept driving at 10 m/s
    np.testing.assert_allclose(prev[0, -1, S.X], 40.0, atol=0.5)       # 5 m back + 35 m in 3.5 s
    assert ec[0] == 1.0
    # It starts from the t = -0.5 s frame's state, as NAVSIM builds one (origin, logged
    # body-frame velocity and acceleration), not from the current one.
    want = np.float32([0, 0, 0, 9.0, 0.1, 0.5, -0.2, 0, 0, 0, 0])
    np.testing.assert_array_equal(prev[1, 0], want)
    np.testing.assert_array_equal(cur[1, 0], [0, 0, 0, 10.0, 0, 0, 0, 0, 0, 0, 0])


def test_profile_fit_matches_devkit_on_random_references():
    """The LAPACK-free fit (constant speed-fit matrix, Gauss-Jordan curvature solve) against the
    devkit's pinv formulation, on random references from standstill to fast turns."""
    rng = np.random.default_rng(5)
    t = np.arange(41) * 0.1
    refs = [_rollout(np.clip(rng.uniform(0, 15) + rng.normal(0, 1.5) * t, 0, None),
                     rng.normal(0, 0.05) + rng.normal(0, 0.03) * np.sin(t * rng.uniform(0, 3)))
            for _ in range(12)]
    v, k = jax.jit(jax.vmap(lqr.fit_profiles))(np.stack(refs).astype(np.float32))
    for i, ref in enumerate(refs):
        v_ref, k_ref = _reference_fit(ref)
        np.testing.assert_allclose(v[i], v_ref, atol=2e-3, err_msg=f"reference {i}")
        np.testing.assert_allclose(k[i], k_ref, atol=1e-4, err_msg=f"reference {i}")
