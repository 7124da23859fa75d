"""shift_scene: re-expressing a Scene in a new ego frame and advancing its clock."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scorer_scenes as ss
from irlvla_jax import geometry as geo
from irlvla_jax import scene_ops, types

SIZES = ss.SIZES


def random_scene(seed=0):
    """A road scene with moving agents, a red light and lanes (random content, valid masks)."""
    rng = np.random.default_rng(seed)
    s = ss.road_scene(speed=8.0)
    for row in range(3):
        ss.add_agent(s, row, x=rng.uniform(-20, 40), y=rng.uniform(-5, 5), vx=rng.uniform(-5, 5),
                     vy=rng.uniform(-1, 1), heading=rng.uniform(-3, 3))
    s.agent_valid[2, 6:] = False               # a track that ends early (padding is 0)
    s.agent_states[2, 6:] = 0.0
    ss.add_red_light(s, 0, 20.0, 25.0)
    s.red_light_is_red[0, 4:] = False
    s.lane_vectors[0] = rng.uniform(-30, 30, (SIZES.lane_points, 3))
    s.lane_valid[0] = True
    s.expert_future[:, 1] = rng.uniform(-1, 1, SIZES.num_future)
    s.expert_future[:, 2] = rng.uniform(-0.2, 0.2, SIZES.num_future)
    return ss.as_jnp(s)


@pytest.fixture(scope="module")
def shift():
    return jax.jit(scene_ops.shift_scene, static_argnums=2)


def _float_fields(scene):
    return {k: v for k, v in scene.to_dict().items() if jnp.issubdtype(v.dtype, jnp.floating)}


def test_round_trip_restores_the_scene(shift):
    scene = random_scene()
    pose = jnp.asarray([3.0, -1.5, 0.4])
    inverse = geo.to_local(jnp.zeros(3), pose)        # the old origin seen from the new frame
    back = shift(shift(scene, pose, 0), inverse, 0)
    moved = shift(scene, pose, 0)
    for k, v in _float_fields(scene).items():
        a, b = np.asarray(v), np.asarray(getattr(back, k))
        if k in ("agent_states", "lane_vectors", "ego_history", "expert_future"):
            a, b = a.copy(), b.copy()
            a[..., 2], b[..., 2] = np.sin(a[..., 2]), np.sin(b[..., 2])   # wrapped headings
        np.testing.assert_allclose(b, a, atol=2e-4, err_msg=k)
    for k, v in scene.to_dict().items():
        if v.dtype == jnp.bool_:
            np.testing.assert_array_equal(np.asarray(getattr(back, k)), np.asarray(v), err_msg=k)
    # ...and the intermediate scene really moved.
    assert not np.allclose(moved.map_polygons, scene.map_polygons)


def test_one_step_makes_the_half_second_box_the_current_box(shift):
    scene = random_scene(1)
    pose = jnp.asarray([4.0, 0.5, 0.1])
    out = shift(scene, pose, 1)
    want = geo.to_local(scene.agent_states[:, 1, :3], pose)
    np.testing.assert_allclose(out.agent_states[:2, 0, :2], want[:2, :2], atol=1e-4)
    np.testing.assert_allclose(np.cos(out.agent_states[:2, 0, 2] - want[:2, 2]), 1.0, atol=1e-5)
    # The log ends at 5 s: the last frame is invalid, and the early-ending track ends earlier.
    assert not out.agent_valid[:, -1].any()
    np.testing.assert_array_equal(out.agent_valid[2], np.arange(types.NUM_AGENT_STEPS) < 5)
    np.testing.assert_array_equal(out.red_light_is_red[0], np.arange(types.NUM_AGENT_STEPS) < 3)
    # The ego history slides: its newest row is the expert's first future pose in the new frame.
    np.testing.assert_allclose(out.ego_history[-1], geo.to_local(scene.expert_future[0], pose),
                               atol=1e-5)
    np.testing.assert_allclose(out.ego_history[:3], geo.to_local(scene.ego_history[1:], pose),
                               atol=1e-5)
    assert not out.expert_future_valid[-1] and out.expert_future_valid[:-1].all()


def test_shifting_onto_the_next_expert_pose_puts_the_ego_at_the_origin(shift):
    scene = random_scene(2)
    out = shift(scene, scene.expert_future[0], 1)
    np.testing.assert_allclose(out.ego_history[-1], np.zeros(3), atol=1e-5)


def test_previous_frame_plan_of_steady_driving():
    scene = ss.as_jnp(ss.road_scene(speed=10.0))
    plan = scene_ops.previous_frame_plan(scene)
    # 0.5 s earlier the ego was 5 m back: its plan ran from 5 m to 40 m ahead of it.
    np.testing.assert_allclose(plan[:, 0], 5.0 * np.arange(1, 9), atol=1e-4)
    np.testing.assert_allclose(plan[:, 1:], 0.0, atol=1e-5)


def test_bad_input_is_named():
    scene = random_scene()
    with pytest.raises(ValueError, match="steps"):
        scene_ops.shift_scene(scene, jnp.zeros(3), types.NUM_AGENT_STEPS)
    with pytest.raises(ValueError, match="pose"):
        scene_ops.shift_scene(scene, jnp.zeros(2), 0)
