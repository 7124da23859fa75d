"""Stage 1 (IL): the jitted train step learns, shards, checkpoints and resumes exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irlvla_jax import parallel, types
from irlvla_jax.checkpoint import Checkpointer
from irlvla_jax.models import policy as policy_lib
from irlvla_jax.train import il

import policy_scenes as ps  # noqa: E402  (tests/ on sys.path)


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


@pytest.fixture(scope="module")
def setup():
    config = ps.small_config()
    sizes = types.SceneSizes.from_config(config.data.sizes)
    batch = ps.random_scenes(sizes, 8, seed=0)
    model = policy_lib.VLAPolicy(config.model)
    # the data-free default anchors: the experts are metres away, the planner must learn them
    # committed to one device like the states orbax restores: jit caches uncommitted and
    # committed inputs apart, so an uncommitted start state compiled the step a second time
    # for the resumed one (~40 s)
    state0 = jax.device_put(il.create_state(model, config, jax.random.PRNGKey(0)),
                            jax.devices()[0])
    step = il.make_train_step(model, config)
    return dict(config=config, batch=jax.tree.map(jnp.asarray, batch), model=model,
                state0=state0, step=step)


def test_anchors_live_in_model_state(setup):
    state0 = setup["state0"]
    assert int(state0.step) == 0 and "anchors" not in state0.params
    new = np.asarray(setup["batch"].expert_future[:6, :8])
    v = policy_lib.set_anchors({"params": state0.params, **state0.model_state}, new)
    np.testing.assert_allclose(policy_lib.get_anchors(v), new)
    with pytest.raises(ValueError, match="num_anchors"):
        policy_lib.set_anchors(v, new[:5])


def test_overfits_one_batch(setup):
    state, losses, l1 = _copy(setup["state0"]), [], []
    for i in range(30):
        state, m = setup["step"](state, setup["batch"], jax.random.PRNGKey(i))
        losses.append(float(m["loss"]))
        l1.append(float(m["traj_l1"]))
    assert all(np.isfinite(losses))
    assert int(state.step) == 30
    assert np.mean(losses[-3:]) < 0.6 * losses[0], losses
    assert np.mean(l1[-3:]) < 0.5 * l1[0], l1


def test_fsdp_step_matches_single_device(setup):
    """Mesh data=2 x fsdp=4 on 8 devices: the batch is split 8 ways, every state leaf of at
    least ``fsdp_min_size`` elements (params and Adam moments) is split 4 ways on a dimension
    divisible by 4, and the step equals the 1-device one."""
    mesh_cfg = {"data": 2, "fsdp": 4, "fsdp_min_size": 128}
    mesh = parallel.make_mesh(mesh_cfg)
    rng = jax.random.PRNGKey(7)
    single, m1 = setup["step"](_copy(setup["state0"]), setup["batch"], rng)
    state_sh = parallel.state_shardings(setup["state0"], mesh, mesh_cfg)
    sharded_step = il.make_train_step(setup["model"], setup["config"], mesh, state_sh)
    batch = parallel.shard_batch(jax.device_get(setup["batch"]), mesh)
    state = jax.device_put(_copy(setup["state0"]), state_sh)
    split = 0
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
        if leaf.size >= 128 and any(n % 4 == 0 for n in leaf.shape):
            shard = leaf.addressable_shards[0].data.shape
            assert np.prod(np.asarray(leaf.shape) // np.asarray(shard)) == 4, \
                (leaf.shape, shard)
            split += 1
    assert split > 10
    replicated_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    assert parallel.device_bytes(state) <= 0.3 * replicated_bytes
    multi, m8 = sharded_step(state, batch, rng)
    assert len(batch.speed_limit.sharding.device_set) == 8
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(multi.params), jax.tree.leaves(single.params)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    # the update keeps the state in its shards
    for a, s in zip(jax.tree.leaves(multi), jax.tree.leaves(state_sh)):
        assert a.sharding.is_equivalent_to(s, a.ndim)


def test_checkpoint_resume_gives_same_next_loss(setup, tmp_path):
    step, batch = setup["step"], setup["batch"]
    state = _copy(setup["state0"])
    for i in range(2):
        state, _ = step(state, batch, jax.random.PRNGKey(100 + i))
    ckpt = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2)
    ckpt.save(2, state, {"stage": "il"}, force=True)
    ckpt.wait()
    _, m_cont = step(state, batch, jax.random.PRNGKey(102))
    restored, at, extra = ckpt.restore_latest(_copy(setup["state0"]))
    ckpt.close()
    assert at == 2 and extra["stage"] == "il" and int(restored.step) == 2
    _, m_res = step(restored, batch, jax.random.PRNGKey(102))
    np.testing.assert_allclose(m_res["loss"], m_cont["loss"], rtol=1e-6)


def test_eval_outputs(setup):
    model, state = setup["model"], setup["state0"]
    out = jax.jit(lambda s, b: il.eval_outputs(model, il.variables_of(s), b,
                                               jax.random.PRNGKey(0)))(state, setup["batch"])
    assert out["traj"].shape == (8, 8, 3) and out["l2"].shape == (8, 4)
    assert bool(jnp.isfinite(out["l2"]).all()) and bool(out["l2_valid"].all())
    assert out["collision"].dtype == jnp.bool_
    res = il.evaluate_open_loop(lambda s, b, r: out, state, [(setup["batch"], None)],
                      jax.random.PRNGKey(0))
    assert set(res) >= {"l2_1s", "l2_4s", "l2_avg", "collision_rate", "num_scenes"}
    assert res["num_scenes"] == 8 and 0.0 <= res["collision_rate"] <= 1.0
