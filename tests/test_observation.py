"""Observations (irlvla_jax.sim.observation): 10 Hz agents, log-replay removal, red lights,
PDM-Closed's constant-velocity forecast."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irlvla_jax import types
from irlvla_jax.sim import observation as ob

SIZES = types.SceneSizes(num_future=8, cameras=("CAM_F0",), image_hw=(4, 4), lidar_bev_hw=(4, 4),
                         bev_hw=(4, 4), max_agents=4, max_polygons=2, max_polygon_vertices=6,
                         max_centerline=8, max_red_lights=2, max_lanes=2, lane_points=2)


def _scene(**agents):
    """agents: row -> (states [9,5], valid [9], class) at 0 .. 4 s (the frames the scorer
    reads; the Scene's 4.5 / 5 s frames stay invalid); returns the Scene dict."""
    d = types.zeros_scene(SIZES).to_dict()
    for row, (states, valid, cls) in agents.items():
        r = int(row[1:])
        d["agent_states"][r, :len(states)] = states
        d["agent_valid"][r, :len(valid)] = valid
        d["agent_size"][r] = (4.0, 2.0, 1.5)
        d["agent_class"][r] = cls
    return d


def _track(x0, vx=0.0, heading=0.0, y=10.0):
    t = np.arange(9) * 0.5
    return np.stack([x0 + vx * t, np.full(9, y), np.full(9, heading), np.full(9, vx),
                     np.zeros(9)], -1).astype(np.float32)


def _scene_obj(d):
    return types.Scene.from_dict({k: jnp.asarray(v) for k, v in d.items()})


@pytest.fixture(scope="module")
def build():
    return jax.jit(ob.build_observation)


def test_interpolation_single_frame_quirk_gap_and_late_start(build):
    single = _track(50.0, vx=3.0)
    gap = _track(0.0, vx=4.0, heading=3.0)
    gap[4, 2] = -3.0                         # heading crosses pi between frames 1 and 4
    late = _track(20.0, vx=2.0)
    d = _scene(a0=(single, np.arange(9) == 3, types.VEHICLE),
               a1=(gap, np.isin(np.arange(9), [0, 1, 4]), types.VEHICLE),
               a2=(late, np.arange(9) >= 2, types.PEDESTRIAN))
    obs = jax.tree.map(np.asarray, build(_scene_obj(d)))
    # Seen once (frame 3, t = 1.5 s): the original object at all 41 steps.
    assert obs.agent_present[0].all()
    np.testing.assert_allclose(obs.agent_center[0], np.tile(single[3, :2], (41, 1)), atol=1e-5)
    # Frames 0, 1, 4: interpolated across the gap, absent after t = 2 s.
    assert obs.agent_present[1, :21].all() and not obs.agent_present[1, 21:].any()
    np.testing.assert_allclose(obs.agent_center[1, 15], [4.0 * 1.5, 10.0], atol=1e-5)
    heading_15 = 3.0 + (2 / 3) * (2 * np.pi - 6.0)          # short way round, then wrapped
    np.testing.assert_allclose(obs.agent_corners[1, 15].mean(0), [6.0, 10.0], atol=1e-5)
    fl = obs.agent_corners[1, 15, 0] - obs.agent_corners[1, 15, 1]   # FL - RL = length axis
    np.testing.assert_allclose(np.arctan2(fl[1], fl[0]), np.angle(np.exp(1j * heading_15)),
                               atol=1e-5)
    # Starts at frame 2 (t = 1 s).
    assert not obs.agent_present[2, :10].any() and obs.agent_present[2, 10:].all()
    np.testing.assert_allclose(obs.agent_center[2, 13], [20.0 + 2.0 * 1.3, 10.0], atol=1e-5)
    assert obs.agent_first_speed[2] == pytest.approx(2.0)
    assert not obs.agent_present[3].any()                     # padding row


def test_agent_overlapping_ego_at_start_is_removed(build):
    through = _track(2.0, vx=10.0, y=0.0)      # on the ego at t = 0, far ahead later
    d = _scene(a0=(through, np.ones(9, bool), types.VEHICLE),
               a1=(_track(30.0, y=0.0), np.ones(9, bool), types.VEHICLE))
    obs = build(_scene_obj(d))
    assert not np.asarray(obs.agent_present[0]).any()
    assert np.asarray(obs.agent_present[1]).all()


def test_red_light_zero_order_hold_on_uncorrected_route(build):
    d = _scene()
    pattern = np.array([0, 0, 1, 1, 0, 1, 0, 0, 1], bool)
    for row, on_route in ((0, True), (1, False)):
        d["red_light_polygons"][row] = [[30, 2], [20, 2], [20, -2], [30, -2], [30, 2], [30, 2]]
        d["red_light_is_red"][row, :9] = pattern
        d["red_light_valid"][row] = True
        d["red_light_on_route"][row] = on_route
        d["red_light_on_corrected_route"][row] = True
    obs = build(_scene_obj(d))
    np.testing.assert_array_equal(obs.red_active[0], pattern[np.arange(41) // 5])
    assert not np.asarray(obs.red_active[1]).any()


def test_forecast_constant_velocity_every_0_2_s():
    d = _scene(a0=(_track(20.0, vx=5.0), np.ones(9, bool), types.VEHICLE),
               a1=(_track(-20.0, vx=-2.0), np.ones(9, bool), types.VEHICLE),   # reversing
               a2=(_track(40.0), np.ones(9, bool), types.AGENT_CLASSES.index("barrier")),
               a3=(_track(150.0, vx=1.0), np.ones(9, bool), types.VEHICLE))    # > 100 m away
    d["agent_states"][2, :, 3] = 1.0           # a static object never moves, whatever its field
    d["red_light_polygons"][0] = [[30, 2], [20, 2], [20, -2], [30, -2], [30, 2], [30, 2]]
    d["red_light_is_red"][0] = np.arange(types.NUM_AGENT_STEPS) >= 1   # green now, red later
    d["red_light_polygons"][1] = d["red_light_polygons"][0] + [20, 0]
    d["red_light_is_red"][1] = True
    d["red_light_valid"][:2] = True
    d["red_light_on_corrected_route"][:2] = True
    obs = jax.tree.map(np.asarray, jax.jit(ob.forecast_observation)(_scene_obj(d)))
    assert obs.agent_present.shape == (4, 51)
    tau = 0.2 * (np.arange(51) // 2)
    np.testing.assert_allclose(obs.agent_center[0, :, 0], 20.0 + 5.0 * tau, atol=1e-4)
    np.testing.assert_allclose(obs.agent_center[1, :, 0], -20.0 - 2.0 * tau, atol=1e-4)
    np.testing.assert_allclose(obs.agent_center[2, :, 0], 40.0, atol=1e-5)
    assert obs.agent_present[:3].all() and not obs.agent_present[3].any()
    # Red lights: the t = 0 status, held over the whole horizon.
    assert not obs.red_active[0].any() and obs.red_active[1].all()


def test_build_observation_vmaps_over_scenes():
    a = _scene(a0=(_track(20.0, vx=5.0), np.ones(9, bool), types.VEHICLE))
    b = _scene(a1=(_track(10.0), np.arange(9) < 3, types.PEDESTRIAN))
    batch = jax.tree.map(lambda *x: jnp.stack(x), _scene_obj(a), _scene_obj(b))
    obs = jax.jit(jax.vmap(ob.build_observation))(batch)
    assert obs.agent_corners.shape == (2, 4, 41, 4, 2) and obs.red_active.shape == (2, 2, 41)
    present = np.asarray(obs.agent_present)
    assert present[0, 0].all() and present[1, 1, :11].all() and not present[1, 1, 11:].any()
    with pytest.raises(ValueError, match="one scene"):
        ob.build_observation(batch)


def test_frames_after_4_s_do_not_reach_the_scorer(build):
    """The Scene keeps agents / lights to 5 s for closed-loop episodes; the scoring observation
    reads 0 .. 4 s only: anything in frames 9 and 10 changes nothing."""
    d = _scene(a0=(_track(20.0, vx=5.0), np.ones(9, bool), types.VEHICLE),
               a1=(_track(8.0), np.arange(9) == 2, types.VEHICLE))
    d["red_light_is_red"][0] = np.arange(types.NUM_AGENT_STEPS) >= 1
    later = {k: v.copy() for k, v in d.items()}
    later["agent_states"][:, 9:] = 3.0                 # every row, even padding, at 4.5 / 5 s
    later["agent_valid"][:, 9:] = True                 # a2, a3 appear only after 4 s
    later["agent_class"][2:] = types.VEHICLE
    later["red_light_is_red"][:, 9:] = ~later["red_light_is_red"][:, 9:]
    a, b = build(_scene_obj(d)), build(_scene_obj(later))
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))
    assert np.asarray(a.agent_present)[1].all()        # the single-frame quirk still applies
