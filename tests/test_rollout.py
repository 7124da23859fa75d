"""The closed loop of stage 3 (irlvla_jax/train/rollout.py): executed ego motion, log-replayed
agents, re-observation without re-rendering."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppo_scenes
from irlvla_jax import geometry
from irlvla_jax.models import policy as policy_lib
from irlvla_jax import types
from irlvla_jax.sim import comfort, observation, simulate, trajectory
from irlvla_jax.train import rollout as ro
from irlvla_jax.train import stage_results

T, G, B = 3, 2, 2


def progress_reward(scene, plans, tokens, ec):
    # What the scorer sees of the agents: each track's presence at the 41 steps of 0 .. 4 s
    # (``observation.interpolate_tracks``: NC / TTC read exactly this).
    present = jax.vmap(lambda sc: observation.interpolate_tracks(
        sc.agent_states, sc.agent_valid, jnp.ones(sc.agent_valid.shape[:1], bool))[2])(scene)
    return {"progress": plans[:, -1, 0] / 40.0, "ec": ec[0] * ec[1],
            "agent_steps_seen": jnp.sum(present, axis=(1, 2)).astype(jnp.float32)}


@pytest.fixture(scope="module")
def loop():
    config = ppo_scenes.small_config()
    model = policy_lib.VLAPolicy(stage_results.rl_model_config(config))
    scene = jax.tree.map(jnp.asarray, ppo_scenes.road_scenes(B))
    variables = jax.jit(lambda r: policy_lib.init_variables(model, scene, r))(
        jax.random.PRNGKey(0))
    traj, final = jax.jit(lambda v, s, r: ro.rollout(model, v, s, r, progress_reward,
                                                     num_steps=T, group_size=G))(
        variables, scene, jax.random.PRNGKey(1))
    return dict(model=model, variables=variables, scene=scene, traj=traj, final=final)


def test_shapes_and_rewards(loop):
    traj = loop["traj"]
    n = B * G
    assert traj.chain.traj.shape == (T, n, 8, 3)
    assert traj.states.shape == (T, n, ro.STEPS_PER_PLAN + 1, 11)
    np.testing.assert_allclose(traj.rewards["progress"], traj.chain.traj[..., -1, 0] / 40.0)
    # G independent samples of one scene differ (the chain is stochastic)
    assert not np.allclose(traj.chain.traj[0, 0], traj.chain.traj[0, 1])


def test_executed_states_are_the_bicycle_integration_of_the_plans(loop):
    traj = loop["traj"]
    sim = jax.jit(jax.vmap(lambda plan, s0: simulate.simulate(
        trajectory.reference_poses(plan), s0)))
    full = sim(traj.chain.traj.reshape(-1, 8, 3), traj.states[:, :, 0].reshape(-1, 11))
    np.testing.assert_allclose(traj.states.reshape(T * B * G, -1, 11),
                               full[:, :ro.STEPS_PER_PLAN + 1], atol=1e-4)
    # each step starts where the previous one ended (same speed / steering, new frame) ...
    np.testing.assert_allclose(traj.states[1:, :, 0], ro.reframe_state(traj.states[:-1, :, -1]),
                               atol=1e-6)
    np.testing.assert_allclose(traj.states[1:, :, 0, :3], 0.0)
    # ... at the composed pose in the t = 0 frame
    poses = np.concatenate([np.asarray(traj.pose), np.asarray(loop["final"]["pose"])[None]])
    np.testing.assert_allclose(poses[1:], geometry.to_global(traj.states[:, :, -1, :3],
                                                             traj.pose), atol=1e-4)
    # the first step starts from the logged ego state; the ego actually moves
    np.testing.assert_allclose(traj.states[0, :, 0, trajectory.StateIndex.VX],
                               np.repeat(loop["scene"].ego_velocity[:, 0], G))
    assert np.all(poses[-1, :, 0] > 5.0)


def test_extended_comfort_compares_consecutive_plans(loop):
    """EC in closed loop: each step's plan against the previous step's, both simulated 4 s
    from their own start state; no previous plan at the first step (weight 0)."""
    traj = loop["traj"]
    np.testing.assert_array_equal(traj.ec_weight[0], 0.0)
    np.testing.assert_array_equal(traj.ec_weight[1:], 1.0)
    sim = jax.jit(jax.vmap(lambda plan, s0: simulate.simulate(
        trajectory.reference_poses(plan), s0)))
    full = sim(traj.chain.traj.reshape(-1, 8, 3), traj.states[:, :, 0].reshape(-1, 11))
    full = np.asarray(full).reshape(T, B * G, -1, 11)
    want = jax.vmap(comfort.extended_comfort)(full[1:].reshape(-1, *full.shape[2:]),
                                              full[:-1].reshape(-1, *full.shape[2:]))
    np.testing.assert_array_equal(traj.ec[1:].reshape(-1), want)
    np.testing.assert_array_equal(traj.rewards["ec"], traj.ec * traj.ec_weight)


def test_agents_follow_the_log_and_the_ego_its_execution(loop):
    final, scene = loop["final"], loop["scene"]
    pose = np.asarray(final["pose"])                         # [N,3] in the t = 0 frame
    logged = np.repeat(np.asarray(scene.agent_states), G, 0)[:, :, T]     # frame t = 0.5 T
    want = geometry.to_local(jnp.asarray(logged[..., :3]), pose[:, None])
    got = np.asarray(final["scene"].agent_states)[:, :, 0]
    valid = np.asarray(final["scene"].agent_valid)[:, :, 0]
    assert valid[:, :2].all()
    np.testing.assert_allclose(got[valid][:, :2], np.asarray(want)[valid][:, :2], atol=1e-3)
    # the log ends at 5 s: the last T frames are gone
    assert not np.asarray(final["scene"].agent_valid)[:, :, -T:].any()
    # the ego's history is its own executed path, its velocity the executed one
    hist = np.asarray(final["scene"].ego_history)
    np.testing.assert_allclose(hist[:, -1], 0.0, atol=1e-6)
    prev = geometry.to_local(loop["traj"].pose[-1], final["pose"])
    np.testing.assert_allclose(hist[:, -2], prev, atol=1e-4)
    np.testing.assert_allclose(final["scene"].ego_velocity[:, 0],
                               final["state"][:, trajectory.StateIndex.VX], atol=1e-6)


def test_reobserved_tokens_come_from_the_warped_bev_and_the_executed_ego(loop):
    final = loop["final"]
    fresh = policy_lib.encode(loop["model"], loop["variables"], final["scene"])
    re = final["tokens"]
    # the default policy has no privileged map tokens: every map token is the map head's
    assert re.map.shape[1] == loop["model"].cfg.map.num_tokens
    np.testing.assert_array_equal(re.map_valid, fresh.map_valid)
    np.testing.assert_allclose(re.ego_status, fresh.ego_status, atol=1e-6)
    # the BEV map is the t = 0 map warped, not the stale camera encoding of the t = 0 frame
    assert not np.allclose(re.bev_map, fresh.bev_map, atol=1e-3)
    # the world (here its lanes) really moved with the ego (x decreased by the distance driven)
    lanes = np.asarray(final["scene"].lane_vectors)[:, 0, 0, 0]
    np.testing.assert_allclose(lanes, -10.0 - np.asarray(final["pose"])[:, 0], atol=0.5)


def test_warp_bev_moves_cells_with_the_ego():
    r, h = 8.0, 8                                   # 2 m cells
    rng = np.random.default_rng(0)
    bev = jnp.asarray(rng.normal(size=(1, h, h, 3)), jnp.float32)
    same = ro.warp_bev(bev, jnp.zeros((1, 3)), r)
    np.testing.assert_allclose(same, bev, atol=1e-5)
    # ego moves 2 m forward: new row i (x_i) sees old x_i + 2, i.e. old row i - 1
    fwd = np.asarray(ro.warp_bev(bev, jnp.asarray([[2.0, 0.0, 0.0]]), r))
    np.testing.assert_allclose(fwd[0, 1:], np.asarray(bev)[0, :-1], atol=1e-5)
    np.testing.assert_allclose(fwd[0, 0], 0.0)      # came from beyond the map
    # a quarter turn left: the new point (x, y) is the old (-y, x); the new left-most column
    # (y = +7 m) is the old back row (x = -7 m), new row i the old column i
    left = np.asarray(ro.warp_bev(bev, jnp.asarray([[0.0, 0.0, np.pi / 2]]), r))
    np.testing.assert_allclose(left[0, :, 0], np.asarray(bev)[0, -1, :], atol=1e-4)


def test_no_closed_loop_step_is_scored_against_agents_the_log_does_not_have(loop):
    """Every track the log has over the whole 0 .. 5 s is seen by the scorer at all 41 steps of
    every planning step of the episode (T = 3 = types.MAX_CLOSED_LOOP_STEPS): no step is scored
    against an empty world in its last seconds. A longer episode is refused."""
    scene, traj = loop["scene"], loop["traj"]
    tracks = np.asarray(scene.agent_valid).all(-1).sum(-1)              # [B] logged 0 .. 5 s
    assert T == types.MAX_CLOSED_LOOP_STEPS and (tracks >= 2).all()
    want = np.repeat(tracks, G) * (trajectory.NUM_STEPS + 1)
    for t in range(T):
        np.testing.assert_array_equal(traj.rewards["agent_steps_seen"][t], want, err_msg=f"t={t}")
    # One frame shorter log (agents to 4.5 s): the last step would lose the final 0.5 s.
    short = scene.replace(agent_valid=scene.agent_valid[..., :-1],
                          agent_states=scene.agent_states[..., :-1, :])
    with pytest.raises(ValueError, match="planning steps"):
        ro.rollout(loop["model"], loop["variables"], short, jax.random.PRNGKey(0),
                   progress_reward, num_steps=T, group_size=G)
    with pytest.raises(ValueError, match="config.ppo.horizon = 4"):
        ro.check_episode_length(4)
