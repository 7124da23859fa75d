"""The VLA policy: token shapes with and without the semantic LM, paper scale under eval_shape,
and planning from encoded tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import navsim
from irlvla_jax import types
from irlvla_jax.models import policy as policy_lib

import policy_scenes as ps  # noqa: E402  (tests/ on sys.path)


def _shapes(config, batch):
    """eval_shape of init + encode + plan: no compilation, so paper scale is cheap to check."""
    sizes = types.SceneSizes.from_config(config.data.sizes)
    scene = types.scene_shape_struct(sizes, (batch,))
    model = policy_lib.VLAPolicy(config.model)
    variables = jax.eval_shape(lambda s, r: policy_lib.init_variables(model, s, r),
                               scene, jax.random.PRNGKey(0))

    def run(v, s, r):
        tok = policy_lib.encode(model, v, s)
        return tok, policy_lib.plan(model, v, tok, r, stochastic=True)
    tokens, chain = jax.eval_shape(run, variables, scene, jax.random.PRNGKey(1))
    return variables, tokens, chain


@pytest.mark.parametrize("use_semantic,privileged", [(True, ("lanes", "agents")), (False, ())])
def test_token_and_chain_shapes(use_semantic, privileged):
    c = ps.small_config(use_semantic=use_semantic)
    c.model.privileged = privileged
    variables, tok, chain = _shapes(c, 2)
    d, m = c.model.planner.d_model, c.model.planner.num_anchors
    hq, wq = c.model.bev.query_hw
    p = c.model.planner.bev_pool
    assert tok.bev.shape == (2, (hq // p) * (wq // p), d)
    assert tok.bev_map.shape == (2, hq, wq, c.model.bev.dim)
    n_map = c.model.map.num_tokens
    n_map += c.data.sizes.max_lanes if "lanes" in privileged else 0
    n_map += c.data.sizes.max_agents if "agents" in privileged else 0
    assert tok.map.shape == (2, n_map, d) and tok.map_valid.shape == (2, n_map)
    assert tok.obj.shape[:2] == (2, c.model.detection.num_queries)
    assert tok.aux["seg_logits"].shape == (2, *c.data.sizes.bev_hw, len(types.BEV_CLASSES))
    assert ("lane_encoder" in variables["params"]) == ("lanes" in privileged)
    if use_semantic:
        assert tok.meta_logits.shape == (2, types.NUM_META_ACTIONS)
        assert tok.meta.shape[:2] == (2, c.model.semantic.num_meta_tokens)
        assert "semantic" in variables["params"]
    else:
        assert tok.meta is None and tok.meta_logits is None
        assert "semantic" not in variables["params"]
    assert chain.x.shape == (2, c.model.planner.sample_steps + 1, m, 8, 3)
    assert chain.traj.shape == (2, 8, 3) and chain.logprob.shape == (2, 2)
    assert variables["anchors"]["planner"]["value"].shape == (m, 8, 3)


def test_agent_features_encode_the_current_boxes_and_mask_padding():
    sizes = types.SceneSizes.from_config(ps.small_config().data.sizes)
    s = types.zeros_scene(sizes, (1,))
    s.agent_states[0, 0, 0] = [10.0, -5.0, np.pi / 2, 3.0, 0.0]
    s.agent_size[0, 0] = [4.5, 2.0, 1.6]
    s.agent_class[0, 0] = types.PEDESTRIAN
    s.agent_valid[0, 0, 0] = True
    s.agent_states[0, 1, 0] = [7.0, 7.0, 1.0, 1.0, 1.0]     # a padded slot with stale values
    f, valid = policy_lib.agent_features(jax.tree.map(jnp.asarray, s))
    assert f.shape == (1, sizes.max_agents, 8 + len(types.AGENT_CLASSES))
    np.testing.assert_allclose(f[0, 0, :8], [0.2, -0.1, 0.0, 1.0, 0.3, 0.0, 0.9, 0.4], atol=1e-6)
    assert int(jnp.argmax(f[0, 0, 8:])) == types.PEDESTRIAN
    assert bool(valid[0, 0]) and not bool(jnp.any(valid[0, 1:]))
    assert float(jnp.abs(f[0, 1:]).max()) == 0.0


def test_paper_scale_builds_under_eval_shape():
    c = navsim.get_config()
    variables, tok, chain = _shapes(c, 1)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    assert tok.bev_map.shape[1:3] == tuple(c.model.bev.query_hw)
    assert chain.traj.shape == (1, 8, 3)
    assert n > 1e8, n     # ResNet + BEV + the language model at configured size


def test_plan_from_encoded_tokens_is_finite():
    c = ps.small_config()
    sizes = types.SceneSizes.from_config(c.data.sizes)
    scene = jax.tree.map(jnp.asarray, ps.random_scenes(sizes, 2))
    model = policy_lib.VLAPolicy(c.model)
    v = policy_lib.init_variables(model, scene, jax.random.PRNGKey(0))   # jitted inside
    # the parameters depend on the example's shapes only, not its batch size or content (the
    # same compiled init program, served by the session's compilation cache)
    v1 = policy_lib.init_variables(model, types.scene_shape_struct(sizes, (1,)),
                                   jax.random.PRNGKey(0))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), v, v1))

    @jax.jit
    def go(v, s, r):
        tok = policy_lib.encode(model, v, s)
        ch = policy_lib.plan(model, v, tok, r, stochastic=True)
        return ch, policy_lib.chain_logprob(model, v, tok, ch)
    chain, lp = go(v, scene, jax.random.PRNGKey(1))
    assert bool(jnp.isfinite(chain.traj).all()) and bool(jnp.isfinite(chain.logprob).all())
    np.testing.assert_allclose(lp, chain.logprob, rtol=1e-5, atol=1e-5)


def _swap_outside_agent_input(a: types.Scene, b: types.Scene) -> types.Scene:
    """Scene a with every field outside AgentInput (agents, map, lanes, centreline, red lights,
    expert future, labels, bookkeeping) taken from scene b."""
    keep = set(types.AGENT_INPUT_FIELDS)
    return types.Scene(**{k: (v if k in keep else getattr(b, k)) for k, v in
                          a.to_dict().items()})


@pytest.fixture(scope="module")
def honest_setup():
    c = ps.small_config(use_semantic=True)        # the default switches: privileged = ()
    assert tuple(c.model.privileged) == ()
    sizes = types.SceneSizes.from_config(c.data.sizes)
    a, b = ps.random_scenes(sizes, 2, seed=0), ps.random_scenes(sizes, 2, seed=1)
    return c, sizes, a, b


def _plans(config, scenes, seed=0):
    """Deterministic plans and mode logits of a policy with non-trivial parameters (every leaf
    perturbed, so the zero-initialised output layers are not zero) for each scene batch."""
    model = policy_lib.VLAPolicy(config.model)
    example = jax.tree.map(jnp.asarray, scenes[0])
    v = policy_lib.init_variables(model, example, jax.random.PRNGKey(seed))
    leaves, tdef = jax.tree.flatten(v["params"])
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    v["params"] = jax.tree.unflatten(tdef, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype)
                                            for x, k in zip(leaves, keys)])

    @jax.jit
    def go(s):
        tok = policy_lib.encode(model, v, s)
        ch = policy_lib.plan(model, v, tok, jax.random.PRNGKey(7), stochastic=False)
        return ch.trajs, ch.mode_logits
    return [jax.device_get(go(jax.tree.map(jnp.asarray, s))) for s in scenes]


def test_default_policy_reads_only_agent_input(honest_setup):
    """Honest inputs: replacing every Scene field outside AgentInput by another scene's leaves
    the default policy's plans and mode logits bit-identical; a camera change does not."""
    c, sizes, a, b = honest_setup
    swapped = _swap_outside_agent_input(a, b)
    other_cams = a.replace(cameras=b.cameras)
    (t0, l0), (t1, l1), (t2, _) = _plans(c, [a, swapped, other_cams])
    assert np.abs(l0).max() > 1e-3 and np.abs(t0).max() > 1e-2      # non-trivial outputs
    np.testing.assert_array_equal(t1, t0)
    np.testing.assert_array_equal(l1, l0)
    assert not np.array_equal(t2, t0)          # the test can fail: sensors do matter


def test_privileged_policy_is_named_and_reads_ground_truth(honest_setup):
    c, sizes, a, b = honest_setup
    c = c.copy_and_resolve_references()
    c.model.privileged = ("lanes", "agents")
    assert policy_lib.privileged_inputs(c.model) == ("lanes", "agents")
    (t0, l0), (t1, l1) = _plans(c, [a, _swap_outside_agent_input(a, b)])
    assert not np.array_equal(l1, l0)
    c.model.privileged = ("route",)
    with pytest.raises(ValueError, match="unknown"):
        policy_lib.privileged_inputs(c.model)
    c.model.privileged = ()
    c.model.agent_vectors = True
    with pytest.raises(ValueError, match="privileged"):
        policy_lib.privileged_inputs(c.model)
