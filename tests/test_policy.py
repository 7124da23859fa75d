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


@pytest.mark.parametrize("use_semantic,agent_vectors", [(True, True), (False, False)])
def test_token_and_chain_shapes(use_semantic, agent_vectors):
    c = ps.small_config(use_semantic=use_semantic)
    c.model.agent_vectors = agent_vectors
    variables, tok, chain = _shapes(c, 2)
    d, m = c.model.planner.d_model, c.model.planner.num_anchors
    hq, wq = c.model.bev.query_hw
    p = c.model.planner.bev_pool
    assert tok.bev.shape == (2, (hq // p) * (wq // p), d)
    assert tok.bev_map.shape == (2, hq, wq, c.model.bev.dim)
    n_map = c.model.map.num_tokens + c.data.sizes.max_lanes
    n_map += c.data.sizes.max_agents if agent_vectors else 0
    assert tok.map.shape == (2, n_map, d) and tok.map_valid.shape == (2, n_map)
    assert tok.obj.shape[:2] == (2, c.model.detection.num_queries)
    assert tok.aux["seg_logits"].shape == (2, *c.data.sizes.bev_hw, len(types.BEV_CLASSES))
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
