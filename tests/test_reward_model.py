"""The reward world model and its candidates: shapes, sharing of the scene, features."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import scorer_scenes as ss
from irlvla_jax.models import reward_model as R
from irlvla_jax.models.planner import SceneTokens
from irlvla_jax.train import candidates as C

B, K = 2, 5


def rwm_cfg(encoder="privileged"):
    return ml_collections.ConfigDict(dict(scene_encoder=encoder, d_model=32, num_heads=4,
                                          mlp_dim=64, scene_layers=1, num_blocks=1,
                                          dtype="float32"))


def batch_scene():
    scenes = [ss.road_scene(speed=v) for v in (4.0, 10.0)]
    ss.add_agent(scenes[0], 0, 20.0, 0.0, 3.0)
    return jax.tree.map(lambda *x: jnp.stack(x), *[ss.as_jnp(s) for s in scenes])


@pytest.fixture(scope="module")
def setup():
    model = R.RewardModel(rwm_cfg())
    scene = batch_scene()
    params = R.init_params(model, scene, jax.random.PRNGKey(0))
    trajs = jax.random.normal(jax.random.PRNGKey(1), (B, K, 8, 3)) * 3.0
    apply = jax.jit(lambda p, s, t: R.apply(model, p, s, t))
    return model, scene, params, trajs, apply


@pytest.fixture(scope="module")
def split_fns(setup):
    model = setup[0]
    return (jax.jit(lambda p, s: R.encode_scene(model, p, s)),
            jax.jit(lambda p, c, t: R.score_candidates(model, p, c, t)))


def test_shapes_and_reward_range(setup):
    model, scene, params, trajs, apply = setup
    pred = apply(params, scene, trajs)
    assert pred.nc_logits.shape == (B, K, 3) and pred.ddc_logits.shape == (B, K, 3)
    assert pred.binary_logits.shape == (B, K, len(R.BINARY_METRICS))
    assert pred.ep_logit.shape == (B, K)
    r = pred.reward(jnp.ones((B,)))
    assert r.shape == (B, K)
    assert np.all((r >= 0) & (r <= 1))
    sub = pred.subscores(jnp.zeros((B,)))
    np.testing.assert_allclose(sub.epdms(), pred.reward(jnp.zeros((B,))), rtol=1e-6)
    assert sub.stack().shape == (B, K, 9)


def test_encode_once_score_many_matches_apply_and_candidates_are_independent(setup, split_fns):
    model, scene, params, trajs, apply = setup
    encode, score = split_fns
    full = apply(params, scene, trajs)
    ctx = encode(params, scene)
    split = score(params, ctx, trajs)
    np.testing.assert_allclose(split.binary_logits, full.binary_logits, atol=1e-5)
    # A candidate's score does not depend on which other candidates are scored with it.
    one = score(params, ctx, trajs[:, 2:3])
    np.testing.assert_allclose(one.ep_logit[:, 0], full.ep_logit[:, 2], atol=1e-5)
    # ...but it does depend on the scene (the second scene has an agent ahead).
    swapped = apply(params, jax.tree.map(lambda x: x[::-1], scene), trajs)
    assert not np.allclose(swapped.binary_logits, full.binary_logits, atol=1e-4)


def test_policy_tokens_encoder_is_frozen():
    model = R.RewardModel(rwm_cfg("policy"))
    scene = batch_scene()
    d = 16
    ks = jax.random.split(jax.random.PRNGKey(2), 4)
    tokens = SceneTokens(meta=None, meta_logits=None, bev=jax.random.normal(ks[0], (B, 6, d)),
                         bev_map=None, map=jax.random.normal(ks[1], (B, 4, d)),
                         map_valid=jnp.ones((B, 4), bool), obj=jax.random.normal(ks[2], (B, 3, d)),
                         ego_status=jax.random.normal(ks[3], (B, 20)))
    params = R.init_params(model, scene, jax.random.PRNGKey(0), policy_tokens=tokens)
    trajs = jnp.zeros((B, K, 8, 3))

    def total(bev):
        pred = R.apply(model, params, scene, trajs, tokens.replace(bev=bev))
        return pred.ep_logit.sum(), pred

    (_, pred), g = jax.jit(jax.value_and_grad(total, has_aux=True))(tokens.bev)
    assert pred.ep_logit.shape == (B, K)
    assert float(jnp.abs(g).sum()) == 0.0          # stop_gradient: the policy stays frozen
    with pytest.raises(ValueError, match="policy"):
        R.apply(model, params, scene, trajs, None)


def _tokens(seed, d=16):
    ks = jax.random.split(jax.random.PRNGKey(seed), 6)
    return SceneTokens(meta=jax.random.normal(ks[4], (B, 2, d)), meta_logits=None,
                       bev=jax.random.normal(ks[0], (B, 6, d)),
                       bev_map=jax.random.normal(ks[5], (B, 8, 8, 8)),
                       map=jax.random.normal(ks[1], (B, 4, d)),
                       map_valid=jnp.ones((B, 4), bool), obj=jax.random.normal(ks[2], (B, 3, d)),
                       ego_status=jax.random.normal(ks[3], (B, 20)))


def test_default_rwm_reads_sensor_features_not_ground_truth():
    """The default RWM (configs/tiny.py's rwm): with the same sensor features, predictions are
    bit-identical when the agents' logged futures, the map polygons, the route and the red
    lights change; they change with the sensor features. The privileged ablation's do not."""
    from configs import tiny
    cfg = tiny.get_config().rwm
    assert cfg.scene_encoder == "policy" and not cfg.interaction
    assert R.privileged_inputs(cfg) == ()
    cfg.update(d_model=32, mlp_dim=64)
    model = R.RewardModel(cfg)
    scene = batch_scene()
    other = jax.tree.map(lambda x: x[::-1], scene)          # scene 1 has the agent ahead
    moved = scene.replace(
        agent_states=scene.agent_states.at[..., 1:, :2].add(3.0),
        agent_valid=other.agent_valid, map_polygons=scene.map_polygons + 1.5,
        map_polygon_valid=other.map_polygon_valid, centerline=other.centerline,
        red_light_is_red=~scene.red_light_is_red, expert_future=other.expert_future)
    tokens = _tokens(3)
    params = R.init_params(model, scene, jax.random.PRNGKey(0), policy_tokens=tokens)
    # non-trivial parameters (the heads are not zero-initialised, but be sure)
    leaves, tdef = jax.tree.flatten(params)
    params = jax.tree.unflatten(tdef, [x + 0.05 * jax.random.normal(jax.random.PRNGKey(i),
                                                                    x.shape)
                                       for i, x in enumerate(leaves)])
    trajs = jax.random.normal(jax.random.PRNGKey(1), (B, K, 8, 3)) * 3.0
    apply = jax.jit(lambda s, t: R.apply(model, params, s, trajs, t))
    base = apply(scene, tokens)
    same = apply(moved, tokens)
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(same)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(apply(scene, _tokens(4)).ep_logit, base.ep_logit)

    priv = tiny.get_config().rwm
    priv.update(scene_encoder="privileged", interaction=True, bev_sampling=False, d_model=32,
                mlp_dim=64)
    assert R.privileged_inputs(priv) == ("scene_vectors", "interaction")
    pm = R.RewardModel(priv)
    pp = R.init_params(pm, scene, jax.random.PRNGKey(0))
    papply = jax.jit(lambda s: R.apply(pm, pp, s, trajs))
    assert not np.array_equal(papply(scene).binary_logits, papply(moved).binary_logits)
    priv.scene_encoder = "vector"
    with pytest.raises(ValueError, match="renamed 'privileged'"):
        R.privileged_inputs(priv)


def test_trajectory_features_of_steady_driving():
    t = 0.5 * np.arange(1, 9)
    traj = jnp.asarray(np.stack([10.0 * t, np.zeros(8), np.zeros(8)], -1))
    f = R.trajectory_features(traj)
    np.testing.assert_allclose(f[:, 4], 1.0, atol=1e-6)       # 10 m/s / 10
    np.testing.assert_allclose(f[:, 5], 0.0, atol=1e-6)       # no yaw rate
    np.testing.assert_allclose(f[:, 6], 0.0, atol=1e-6)       # no acceleration


# ----------------------------------------------------------------------------------------------
PERTURB = dict(lateral_m=3.0, speed_range=(0.5, 1.5), heading_rad=0.3, noise_m=0.5)


def test_candidates_layout_and_perturbations():
    scene = batch_scene()
    expert = scene.expert_future[:, :8]
    vocab = jax.random.normal(jax.random.PRNGKey(3), (6, 8, 3)) * 5.0
    policy = jnp.ones((B, 3, 8, 3))
    make = jax.jit(C.make_candidates, static_argnums=(4, 5, 6))
    trajs, source = make(expert, vocab, policy, jax.random.PRNGKey(0), 4, 8,
                         tuple(sorted(PERTURB.items())))
    assert trajs.shape == (B, 1 + 4 + 3 + 8, 8, 3)
    np.testing.assert_array_equal(source, [0] + [1] * 4 + [2] * 3 + [3] * 8)
    np.testing.assert_allclose(trajs[:, 0], expert)
    np.testing.assert_allclose(trajs[:, 5:8], policy)
    # Vocabulary slots are distinct anchors.
    for b in range(B):
        voc = np.asarray(trajs[b, 1:5]).reshape(4, -1)
        assert len({tuple(np.round(v, 4)) for v in voc}) == 4
        assert all(np.isclose(np.asarray(vocab).reshape(6, -1), v).all(-1).any() for v in voc)
    # Every perturbation differs from the expert.
    pert = np.asarray(trajs[:, 8:])
    assert (np.abs(pert - np.asarray(expert)[:, None]).max(axis=(2, 3)) > 1e-3).all()


def test_perturbation_kinds_do_what_they_say():
    expert = batch_scene().expert_future[:1, :8]            # 4 m/s straight along x
    np.testing.assert_allclose(C._speed(expert, jnp.ones((1,))), expert, atol=1e-5)
    fast = C._speed(expert, jnp.full((1,), 1.5))
    np.testing.assert_allclose(fast[0, -1, 0], 1.5 * expert[0, -1, 0], rtol=1e-5)
    left = C._lateral(expert, jnp.full((1,), 2.0))
    np.testing.assert_allclose(left[0, -1, 1], 2.0, atol=1e-5)   # full offset at 4 s
    np.testing.assert_allclose(C._heading(expert, jnp.zeros((1,))), expert, atol=1e-6)
    turned = C._heading(expert, jnp.full((1,), 0.3))
    np.testing.assert_allclose(turned[0, :, 2], 0.3, atol=1e-6)


# ----------------------------------------------------------------------------------------------
def test_interaction_features_see_the_agent_ahead_and_the_red_light():
    """Straight at 10 m/s: a car 20 m ahead in the ego lane at 6 m/s is caught up with (the
    gap shrinks by 2 m a waypoint and turns into an overlap at 3.5 s); a parked car in the
    oncoming lane is never in the corridor; a red light on [18, 25] m is on only for the
    waypoints that reach it, a green one never."""
    s = ss.road_scene(speed=10.0)
    ss.add_agent(s, 0, 20.0, 0.0, 6.0)
    ss.add_agent(s, 1, 10.0, 3.5, 0.0)
    ss.add_red_light(s, 0, 18.0, 25.0, red=True)
    ss.add_red_light(s, 1, 40.0, 50.0, red=False)
    scene = jax.tree.map(lambda x: x[None], ss.as_jnp(s))
    t = 0.5 * np.arange(1, 9)
    traj = jnp.asarray(np.stack([10.0 * t, np.zeros(8), np.zeros(8)], -1))[None, None]
    f = np.asarray(jax.jit(R.interaction_features)(R.scene_geometry(scene), traj))[0, 0]
    assert f.shape == (8, R.INTERACTION_DIM)
    front = 10.0 * t + 1.461 + 2.588                           # ego front bumper x
    gap = 20.0 + 6.0 * t - 2.25 - front
    np.testing.assert_allclose(f[:, 2], np.clip(gap / 10.0, -1, 3), atol=1e-4)
    np.testing.assert_array_equal(f[:, 0], (gap < 0).astype(np.float32))
    np.testing.assert_allclose(f[:, 3], np.clip(np.maximum(gap, 0) / 10.0, 0, 3) / 3.0,
                               atol=1e-4)
    xs = np.stack([10.0 * t + 1.461 + d for d in (-2.588, 0.0, 2.588)])   # rear, centre, front
    on_red = ((xs > 18) & (xs < 25)).any(0)
    np.testing.assert_array_equal(f[:, 4], on_red.astype(np.float32))
    # In the ego lane along the route centreline: on the road, in a route lane, centred.
    np.testing.assert_allclose(f[:, 6:], 0.0, atol=1e-6)
    # Stopped at the origin: nothing ahead within reach, no red light.
    still = jnp.zeros((1, 1, 8, 3))
    g = np.asarray(jax.jit(R.interaction_features)(R.scene_geometry(scene), still))[0, 0]
    assert np.all(g[:, 0] == 0) and np.all(np.abs(g[:, 4:]) < 1e-6) and np.all(g[:, 3] == 1.0)
    # Driving in the oncoming lane (y = 3.5: still a roadblock), then off the road (y = 9).
    side = jnp.asarray([[[[x, y, 0.0] for x in 10.0 * t] for y in (3.5, 9.0)]])
    m = np.asarray(jax.jit(R.interaction_features)(R.scene_geometry(scene), side))[0]
    np.testing.assert_allclose(m[0, :, 6:], [[0.0, 1.0, 1.75]] * 8, atol=1e-4)
    np.testing.assert_allclose(m[1, :, 6:], [[1.0, 1.0, 2.5]] * 8, atol=1e-4)


def test_interaction_features_reach_the_heads():
    cfg = rwm_cfg()
    cfg.interaction = True
    model = R.RewardModel(cfg)
    scene = batch_scene()
    params = R.init_params(model, scene, jax.random.PRNGKey(0))
    trajs = jax.random.normal(jax.random.PRNGKey(1), (B, K, 8, 3)) * 3.0
    pred = jax.jit(lambda p, s, t: R.apply(model, p, s, t))(params, scene, trajs)
    assert pred.binary_logits.shape == (B, K, len(R.BINARY_METRICS))
    assert params["inter_embed"]["fc1"]["kernel"].shape[0] == R.INTERACTION_DIM


# ----------------------------------------------------------------------------------------------
def test_sample_bev_inverts_the_bev_layout():
    """A map whose features are its own cell centres reads back the sampled points (bilinear is
    exact on a linear field); points off the map read 0 and are flagged."""
    from irlvla_jax.models import bev as bev_lib
    centres = jnp.asarray(bev_lib.bev_cell_centers((16, 16), 32.0))[None]      # [1,16,16,2]
    pts = jnp.asarray([[[3.3, -7.1], [20.0, 10.0], [-29.0, 29.0], [40.0, 0.0]]])
    f, inside = R.sample_bev(centres, pts, 32.0)
    np.testing.assert_allclose(f[0, :3], pts[0, :3], atol=1e-4)
    np.testing.assert_array_equal(f[0, 3], [0.0, 0.0])
    np.testing.assert_array_equal(inside[0], [True, True, True, False])


def test_bev_sampling_reads_the_map_under_the_plan_only():
    """With ``bev_sampling`` a candidate's predictions move when the BEV feature map changes
    under its footprint and stay bit-identical when it changes where no candidate goes (the
    scene tokens are unchanged here); the sampler's auxiliary BEV-class decoder has the label's
    raster shape."""
    cfg = rwm_cfg("policy")
    cfg.update(bev_sampling=True, bev_sample_dim=8, bev_range_m=32.0)
    model = R.RewardModel(cfg)
    scene, tokens = batch_scene(), _tokens(5)
    params = R.init_params(model, scene, jax.random.PRNGKey(0), policy_tokens=tokens)
    leaves, tdef = jax.tree.flatten(params)     # bev_embed's output layer starts at zero
    params = jax.tree.unflatten(tdef, [x + 0.05 * jax.random.normal(jax.random.PRNGKey(i),
                                                                    x.shape)
                                       for i, x in enumerate(leaves)])
    t = 0.5 * np.arange(1, 9)
    trajs = jnp.asarray(np.broadcast_to(np.stack([2.0 * t, 0 * t, 0 * t], -1), (B, K, 8, 3)))
    apply = jax.jit(lambda bm: R.apply(model, params, scene, trajs, tokens.replace(bev_map=bm)))
    base = apply(tokens.bev_map)
    # 8 x 8 cells of 8 m: the plan (x 0 .. 12 m, |y| < 1.2 m) lies in rows 2..3, columns 3..4
    far = apply(tokens.bev_map.at[:, 6:, :].add(1.0))                 # x < -16 m: behind
    np.testing.assert_array_equal(np.asarray(far.ep_logit), np.asarray(base.ep_logit))
    near = apply(tokens.bev_map.at[:, 2:4, 3:5].add(1.0))
    assert np.abs(np.asarray(near.ep_logit) - np.asarray(base.ep_logit)).min() > 1e-4
    seg = R.bev_seg_logits(model, params, tokens, (16, 16))
    assert seg.shape == (B, 16, 16, len(R.types.BEV_CLASSES))
