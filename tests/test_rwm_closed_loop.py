"""The RWM on closed-loop states (irlvla_jax/train/rwm_closed_loop.py): the candidates and the
true labels at each planning step are those of the world the policy drove into."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppo_scenes
from irlvla_jax import types
from irlvla_jax.models import policy as policy_lib
from irlvla_jax.models import reward_model as rwm_lib
from irlvla_jax.sim.scorer import scorer_labels
from irlvla_jax.train import candidates as cand_lib
from irlvla_jax.train import rwm_closed_loop as rcl

B, STEPS = 2, 3


@pytest.fixture(scope="module")
def run():
    config = ppo_scenes.small_config()
    config.irl.update(dict(num_vocab=3, num_policy=2, num_perturb=2))
    config.rwm.update(dict(d_model=16, num_heads=2, mlp_dim=32, num_blocks=1))
    model = policy_lib.VLAPolicy(config.model)
    scene = jax.tree.map(jnp.asarray, ppo_scenes.road_scenes(B, seed=5))
    pv = jax.jit(lambda r: policy_lib.init_variables(model, scene, r))(jax.random.PRNGKey(0))
    tokens = policy_lib.encode(model, pv, scene).replace(aux={})
    sensor = rwm_lib.RewardModel(config.rwm)                         # the default: "policy"
    sp = rwm_lib.init_params(sensor, scene, jax.random.PRNGKey(1), policy_tokens=tokens)
    pcfg = config.rwm.copy_and_resolve_references()
    pcfg.scene_encoder = "privileged"
    pcfg.bev_sampling = False
    priv = rwm_lib.RewardModel(pcfg)
    pp = rwm_lib.init_params(priv, scene, jax.random.PRNGKey(2))
    rwms = {"sensor": sensor, "privileged": priv}
    step = jax.jit(rcl.make_step(config, model, rwms, STEPS))
    vocab = policy_lib.get_anchors(pv)
    out = jax.device_get(step(pv, vocab, {"sensor": sp, "privileged": pp}, scene,
                              jax.random.PRNGKey(3)))
    return dict(config=config, scene=scene, out=out, model=model, pv=pv, vocab=vocab,
                rwms=rwms, params={"sensor": sp, "privileged": pp}, step=step)


def test_first_step_is_the_logged_frame_with_its_true_labels(run):
    out, scene = run["out"], run["scene"]
    k = 1 + 3 + 2 + 2
    assert out["trajs"].shape == (STEPS, B, k, 8, 3)
    assert list(out["source"][0]) == list(cand_lib.source_ids(3, 2, 2))
    np.testing.assert_allclose(out["trajs"][0, :, 0], scene.expert_future[:, :8], atol=1e-6)
    want = jax.device_get(jax.jit(scorer_labels)(scene, jnp.asarray(out["trajs"][0])))
    for name in ("sensor", "privileged"):
        np.testing.assert_allclose(out[name]["true"][0], want.epdms(), atol=1e-6)
        assert out[name]["reward"].shape == (STEPS, B, k)
    # EC counts on the logged frame where the log has a previous frame, never later
    np.testing.assert_array_equal(out["sensor"]["ec_weight"][0][:, 0],
                                  np.asarray(scene.has_previous, np.float32))
    assert not out["sensor"]["ec_weight"][1:].any()


def test_later_steps_see_the_moved_world(run):
    out, scene = run["out"], run["scene"]
    # the expert candidate is the log's future seen from the ego's new pose: it has moved
    assert not np.allclose(out["trajs"][1, :, 0], out["trajs"][0, :, 0], atol=0.1)
    # after k shifts the log's 10 future poses leave 10 - k; the plan's tail holds the last one
    fut = np.asarray(scene.expert_future)
    n_valid = fut.shape[1] - (STEPS - 1)
    if n_valid < 8:
        np.testing.assert_allclose(out["trajs"][-1, :, 0, n_valid:],
                                   np.repeat(out["trajs"][-1, :, 0, n_valid - 1:n_valid],
                                             8 - n_valid, 1), atol=1e-6)
    # the labels differ from the logged frame's (another state, another world)
    assert not np.allclose(out["sensor"]["true"][1], out["sensor"]["true"][0])


def test_held_expert_holds_the_last_valid_pose():
    fut = jnp.arange(10 * 3, dtype=jnp.float32).reshape(1, 10, 3)
    valid = jnp.asarray([[True] * 6 + [False] * 4])
    sizes = types.SceneSizes(num_future=10)
    s = types.zeros_scene(sizes, (1,), jnp).replace(expert_future=fut,
                                                   expert_future_valid=valid)
    got = np.asarray(rcl.held_expert(s))[0]
    np.testing.assert_array_equal(got[:6], np.asarray(fut)[0, :6])
    np.testing.assert_array_equal(got[6:], np.repeat(np.asarray(fut)[0, 5:6], 2, 0))


def test_evaluate_reports_each_step(run):
    batches = [run["scene"]]
    rwms = {n: (run["rwms"][n], run["params"][n]) for n in run["rwms"]}
    res = rcl.evaluate(run["config"], run["model"], run["pv"], rwms, batches,
                       jax.random.PRNGKey(3), STEPS, step_fn=run["step"])
    assert set(res) == {"sensor", "privileged"}
    assert set(res["sensor"]) == {f"T{t}" for t in range(1, STEPS + 1)}
    for row in res["sensor"].values():
        assert row["num_scenes"] == B and 0.0 <= row["true_epdms_mean"] <= 1.0
        assert np.isfinite(row["mae_epdms"]) and "spearman" in row and "regret" in row


def test_advance_moves_each_scene_its_drawn_number_of_steps(run):
    """``advance`` (stage 2's closed-loop training states): rows drawn 0 moves keep the logged
    frame exactly (tokens = the policy's encoding, EC still labelled); moved rows see the ego
    moved (history shifted, EC unlabelled) and re-observed tokens."""
    from irlvla_jax.models import policy as policy_lib
    model, variables, scene = run["model"], run["pv"], run["scene"]
    fn = jax.jit(lambda v, s, r: rcl.advance(model, v, s, r, 2))
    for seed in range(12):
        tokens, moved, moves = fn(variables, scene, jax.random.PRNGKey(seed))
        if 0 < int((np.asarray(moves) == 0).sum()) < len(moves):
            break
    moves = np.asarray(moves)
    assert set(moves.tolist()) <= {0, 1, 2} and (moves == 0).any() and (moves > 0).any()
    still, went = moves == 0, moves > 0
    enc = policy_lib.encode(model, variables, scene)
    np.testing.assert_allclose(np.asarray(tokens.bev_map)[still], np.asarray(enc.bev_map)[still],
                               atol=1e-6)
    assert not np.allclose(np.asarray(tokens.bev_map)[went], np.asarray(enc.bev_map)[went])
    np.testing.assert_array_equal(np.asarray(moved.ego_history)[still],
                                  np.asarray(scene.ego_history)[still])
    assert not np.allclose(np.asarray(moved.ego_history)[went], np.asarray(scene.ego_history)[went])
    np.testing.assert_array_equal(np.asarray(moved.has_previous)[still],
                                  np.asarray(scene.has_previous)[still])
    assert not np.asarray(moved.has_previous)[went].any()
