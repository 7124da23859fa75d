"""Stage 3 mechanics (irlvla_jax/train/ppo.py): the clipped objective, ratio = 1 on fresh
chains, the KL term alone with zero advantage, sharded == single device, resume."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ppo_scenes
from irlvla_jax import parallel
from irlvla_jax.models import policy as policy_lib
from irlvla_jax.models import reward_model as rwm_lib
from irlvla_jax.train import losses, ppo
from irlvla_jax.train import rollout as ro
from irlvla_jax.train import stage_results
from irlvla_jax.train.state import TrainState

B = 2


def _config():
    c = ppo_scenes.small_config()
    c.data.batch_size = B
    c.rwm.update(dict(d_model=16, num_heads=2, mlp_dim=32, num_blocks=1))
    # Full DPPO (denoiser + classifier): the mechanics below cover every chain term.
    c.ppo.update(dict(group_size=2, horizon=1, epochs=1, minibatches=2, num_updates=2,
                      log_scorer=False, value_hidden=16, lr=1e-3, ckpt_every=1, log_every=1,
                      trainable="planner"))
    return c


@pytest.fixture(scope="module")
def setup():
    config = _config()
    model = policy_lib.VLAPolicy(stage_results.rl_model_config(config))
    scene = jax.tree.map(jnp.asarray, ppo_scenes.road_scenes(B, seed=3))
    il_vars = jax.jit(lambda r: policy_lib.init_variables(model, scene, r))(
        jax.random.PRNGKey(0))
    tokens = jax.eval_shape(lambda: policy_lib.encode(model, il_vars, scene).replace(aux={}))
    tokens = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tokens)
    # the default RWM: it reads the policy's (re-observed) sensor tokens in the rollout
    assert config.rwm.scene_encoder == "policy"
    rwm = rwm_lib.RewardModel(config.rwm)
    rwm_params = rwm_lib.init_params(rwm, scene, jax.random.PRNGKey(1), policy_tokens=tokens)
    reward_fn = ppo.make_reward_fn(rwm, rwm_params, use_scorer=False)
    state = ppo.init_state(config, il_vars, tokens, jax.random.PRNGKey(2))
    # SGD with momentum instead of the stage's AdamW: Adam's first steps are +-lr whatever the
    # gradient's size, which would turn float reduction-order noise into sign flips in the
    # sharded == single-device comparison; SGD keeps parameter updates proportional to it.
    state = TrainState.create(state.params, optax.sgd(0.05, momentum=0.9))
    update = ppo.make_update(config, model, reward_fn)
    return dict(config=config, model=model, scene=scene, il_vars=il_vars, state=state,
                update=update, reward_fn=reward_fn, jitted=ppo.jit_update(update))


def test_reward_counts_closed_loop_ec_after_the_first_step(setup):
    """From the rollout's second step, the RWM reward takes EC from the rollout (the plan vs
    the previous step's plan) with weight 1; at the first step it uses the RWM's own EC head,
    counted where the scene has a logged previous frame."""
    s = setup
    scene = s["scene"].replace(has_previous=jnp.asarray([True, False]))
    plans = jnp.zeros((B, 8, 3)).at[:, :, 0].set(jnp.arange(1.0, 9.0) * 3.0)
    cfg = s["config"].copy_and_resolve_references()
    cfg.rwm.scene_encoder = "privileged"       # reads the scene itself: no tokens needed here
    cfg.rwm.bev_sampling = False               # (a sensor-RWM option)
    model = rwm_lib.RewardModel(cfg.rwm)
    params = rwm_lib.init_params(model, s["scene"], jax.random.PRNGKey(1))
    fn = ppo.make_reward_fn(model, params, use_scorer=False)
    pred = rwm_lib.apply(model, params, scene, plans[:, None])          # [B,1] candidates
    first = fn(scene, plans, None, (jnp.zeros(B), jnp.zeros(B)))["rwm"]
    np.testing.assert_allclose(first, pred.reward(jnp.asarray([1.0, 0.0]))[:, 0], rtol=1e-5)
    later = {}
    for ec in (0.0, 1.0):
        later[ec] = fn(scene, plans, None, (jnp.full((B,), ec), jnp.ones(B)))["rwm"]
        want = pred.subscores(jnp.ones(B)).replace(ec=jnp.full((B, 1), ec)).epdms()[:, 0]
        np.testing.assert_allclose(later[ec], want, rtol=1e-5)
    assert np.all(np.asarray(later[1.0]) > np.asarray(later[0.0]))
    # a failed EC step costs 2/16 of the weighted average; off, EC is never counted
    off = ppo.make_reward_fn(model, params, use_scorer=False, closed_loop_ec=False)
    np.testing.assert_allclose(off(scene, plans, None, (jnp.zeros(B), jnp.ones(B)))["rwm"],
                               pred.reward(jnp.zeros(B))[:, 0], rtol=1e-5)


def test_classifier_only_training_leaves_the_denoiser_unchanged(setup):
    """ppo.trainable = "classifier": only the mode-classification head and the value head get
    gradients, and the stage's optimizer then leaves every other parameter bit-identical."""
    params = setup["state"].params
    grads = jax.tree.map(jnp.ones_like, params)
    masked = ppo.mask_gradients(grads, "classifier")
    flat = jax.tree_util.tree_flatten_with_path(masked)[0]
    names = ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in flat]
    kept = {n for n, (_, g) in zip(names, flat) if float(jnp.max(g)) == 1.0}
    assert kept and all(n.startswith("value") or "cls_head" in n for n in kept)
    assert any("cls_head" in n for n in kept) and len(kept) < len(names)
    tx = ppo.make_optimizer(setup["config"].ppo, total_steps=4)
    opt = tx.init(params)
    for _ in range(2):
        updates, opt = tx.update(masked, opt, params)
        new = optax.apply_updates(params, updates)
    for n, a, b in zip(names, jax.tree.leaves(params), jax.tree.leaves(new)):
        if n in kept:
            assert not np.array_equal(a, b), n
        else:
            np.testing.assert_array_equal(a, b, err_msg=n)
    assert ppo.mask_gradients(grads, "planner") is grads
    with pytest.raises(ValueError, match="trainable"):
        ppo.mask_gradients(grads, "encoder")


def test_true_scorer_is_logged_on_written_updates_only():
    """ppo.log_scorer computes the true scorer (a logged figure) on the updates the stage loop
    writes: every log_every-th, counted in updates of epochs x minibatches optimizer steps."""
    steps = jnp.arange(0, 12, 2)                       # 2 optimizer steps per update
    flags = jax.vmap(lambda st: ppo.is_logged_update(st, 2, 3))(steps)
    np.testing.assert_array_equal(flags, [False, False, True, False, False, True])
    assert bool(ppo.is_logged_update(jnp.int32(5), 1, 1))


def test_bc_term_is_ils_trajectory_loss_and_its_gradient_reaches_the_planner(setup):
    """ppo.bc_weight: the BC term is stage 1's trajectory loss (same noise, same targets) from
    the stored tokens, enters ppo_loss with its weight, and a small step down ppo_loss's
    gradient (advantages zero, no KL, no value loss) lowers it."""
    s, il_cfg = setup, setup["config"].il
    model, il_vars, scene = s["model"], s["il_vars"], s["scene"]
    expert = scene.expert_future[:, :8].astype(jnp.float32)
    valid = scene.expert_future_valid[:, :8]
    cfg = copy.deepcopy(s["config"].ppo)
    cfg.update(dict(kl_coef=0.0, vf_coef=0.0, bc_weight=2.0))
    value_head = ppo.ValueHead(cfg.value_hidden)

    @jax.jit
    def fn(params, rng):
        variables = stage_results.rl_policy_variables(il_vars, params)
        tokens, x0, logits, anchors = model.apply(
            variables, scene, rng, False, method=policy_lib.VLAPolicy.il_forward)
        tokens = tokens.replace(aux={})
        il_cls, il_l1, _ = losses.trajectory_imitation_loss(
            x0, logits, anchors, expert, valid, model.cfg.planner, il_cfg.focal_alpha,
            il_cfg.focal_gamma)
        bc_batch = ppo.BCBatch(tokens=tokens, expert=expert, valid=valid)
        bc, m = ppo.bc_loss(model, variables, bc_batch, rng, il_cfg)
        n = B * cfg.group_size
        traj, _ = ro.rollout(model, variables, scene, rng, s["reward_fn"], num_steps=1,
                             group_size=cfg.group_size)
        chain = jax.tree.map(lambda x: x[0], traj.chain)
        stored = jnp.concatenate([chain.logprob, chain.mode_logprob[:, None]], -1)
        mb = ppo.Batch(tokens=jax.tree.map(lambda x: x[0], traj.tokens), chain=chain,
                       old_logp=stored, old_joint=stored, il_logp=stored, adv=jnp.zeros(n),
                       ret=jnp.zeros(n))

        def total(p):
            bc_fn = lambda v: ppo.bc_loss(model, v, bc_batch, rng, il_cfg)    # noqa: E731
            return ppo.ppo_loss(p, model, value_head, il_vars, mb, cfg, bc_fn)
        (loss, metrics), grads = jax.value_and_grad(total, has_aux=True)(params)
        return (il_cls, il_l1), (bc, m), (loss, metrics), grads

    params, rng = _copy(s["state"].params), jax.random.PRNGKey(11)
    (il_cls, il_l1), (bc, m), (loss, metrics), grads = fn(params, rng)
    np.testing.assert_allclose([m["bc_cls"], m["bc_l1"]], [il_cls, il_l1], rtol=1e-5)
    w = il_cfg.loss_weights
    np.testing.assert_allclose(bc, w.traj_cls * il_cls + w.traj_reg * il_l1, rtol=1e-5)
    # zero advantages: the policy-gradient term is exactly 0, the loss is the weighted BC term
    np.testing.assert_allclose(loss, 2.0 * bc, rtol=1e-5)
    assert float(metrics["bc_l1"]) == pytest.approx(float(il_l1), rel=1e-5)
    # a small step down the gradient lowers the BC term (it reaches the trained parameters)
    gnorm2 = sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads["planner"]))
    assert gnorm2 > 0
    eps = 1e-3 / np.sqrt(gnorm2)
    stepped = jax.tree.map(lambda p, g: p - eps * g, params, grads)
    _, (bc_after, _), _, _ = fn(stepped, rng)
    assert float(bc_after) < float(bc) - 0.25 * eps * gnorm2 / 2.0, (float(bc), float(bc_after))


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def test_clipped_objective_gradient_vanishes_outside_the_clip_range():
    old = jnp.zeros(4)
    clip = 0.1
    # ratios 1.5 (above 1 + clip) and 0.5 (below 1 - clip), positive then negative advantage
    logp = jnp.log(jnp.asarray([1.5, 1.05, 0.5, 0.95]))
    for adv, dead in ((1.0, [True, False, False, False]), (-1.0, [False, False, True, False])):
        a = jnp.full(4, adv)
        g = jax.grad(lambda lp: jnp.sum(ppo.clipped_objective(lp, old, a, clip)[0]))(logp)
        g = np.asarray(g)
        np.testing.assert_array_equal(g == 0.0, dead)
        _, was_clipped = ppo.clipped_objective(logp, old, a, clip)
        np.testing.assert_array_equal(np.asarray(was_clipped), dead)
    # a ratio below 1 - clip with a positive advantage is not clipped (PPO's pessimism)
    g = jax.grad(lambda lp: jnp.sum(ppo.clipped_objective(lp, old, jnp.ones(4), clip)[0]))(logp)
    assert g[2] != 0.0


@pytest.fixture(scope="module")
def probe(setup):
    """One compiled program: a rollout, the re-evaluated log-probs of its chains, and the loss
    gradients with zero advantage at perturbed planner params."""
    s = setup
    cfg = s["config"].ppo
    cfg_kl_only = copy.deepcopy(cfg)
    cfg_kl_only.update(dict(vf_coef=0.0))
    cfg_no_kl = copy.deepcopy(cfg_kl_only)
    cfg_no_kl.update(dict(kl_coef=0.0))
    value_head = ppo.ValueHead(cfg.value_hidden)

    @jax.jit
    def fn(params, il_vars, scene, rng, noise_rng):
        traj, _ = ro.rollout(s["model"], stage_results.rl_policy_variables(il_vars, params), scene, rng,
                             s["reward_fn"], num_steps=1, group_size=cfg.group_size)
        tokens = jax.tree.map(lambda x: x[0], traj.tokens)
        chain = jax.tree.map(lambda x: x[0], traj.chain)
        stored = jnp.concatenate([chain.logprob, chain.mode_logprob[:, None]], -1)
        again, joint, _ = ppo.chain_terms(
            s["model"], stage_results.rl_policy_variables(il_vars, params), tokens, chain)
        il_logp, _ = ppo.action_logprobs(s["model"], il_vars, tokens, chain)
        n = stored.shape[0]
        mb = ppo.Batch(tokens=tokens, chain=chain, old_logp=stored, old_joint=joint,
                       il_logp=il_logp, adv=jnp.zeros(n), ret=jnp.zeros(n))
        leaves, tdef = jax.tree.flatten(params["planner"])
        keys = jax.random.split(noise_rng, len(leaves))
        moved = {**params, "planner": jax.tree.unflatten(tdef, [
            x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])}
        grads = {}
        for name, c in (("kl", cfg_kl_only), ("none", cfg_no_kl)):
            grads[name] = jax.grad(lambda p: ppo.ppo_loss(p, s["model"], value_head, il_vars,
                                                          mb, c)[0])(moved)

        def kl_only(p):       # the BC/KL term written out on its own
            lp = ppo.action_logprobs(s["model"], stage_results.rl_policy_variables(il_vars, p), tokens,
                                     chain)[0]
            return cfg.kl_coef * jnp.mean(jnp.exp(il_logp - lp) - 1.0 - (il_logp - lp))

        kl_term = jax.grad(kl_only)(moved)
        return stored, again, grads, kl_term

    return fn(s["state"].params, s["il_vars"], s["scene"], jax.random.PRNGKey(5),
              jax.random.PRNGKey(6))


def test_ratio_is_one_before_the_first_update(probe):
    stored, again, _, _ = probe
    np.testing.assert_allclose(np.asarray(again), np.asarray(stored), atol=1e-5)
    assert stored.shape[-1] == 3            # 2 denoising steps + the mode choice


def test_zero_advantage_moves_the_policy_only_by_the_kl_term(probe):
    _, _, grads, kl_term = probe
    none = jax.tree.leaves(grads["none"]["planner"])
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in none)
    with_kl = jax.tree.leaves(grads["kl"]["planner"])
    assert max(float(jnp.max(jnp.abs(g))) for g in with_kl) > 1e-6
    for a, b in zip(with_kl, jax.tree.leaves(kl_term["planner"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)


def test_update_runs_and_sharded_equals_single_device(setup):
    s = setup
    rng = jax.random.PRNGKey(7)
    single, m1 = s["jitted"](_copy(s["state"]), {"policy": s["il_vars"]}, s["scene"], rng)
    for k in ("loss", "pg_loss", "kl_il", "value_loss", "reward/rwm"):
        assert np.isfinite(float(m1[k])), k
    assert "scorer" not in str(m1.keys())
    # the planner moved
    moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(single.params["planner"]), jax.tree.leaves(s["state"].params["planner"]))]
    assert max(moved) > 0.0
    # FSDP: the B = 2 scenes split over data=1 x fsdp=2, the planner, its optimizer state and
    # the frozen IL variables split over 'fsdp' where a leaf is large enough
    mesh_cfg = {"data": 1, "fsdp": 2, "fsdp_min_size": 256}
    mesh = parallel.make_mesh(mesh_cfg, jax.devices()[:2])
    frozen = {"policy": s["il_vars"]}
    state_sh = parallel.state_shardings(s["state"], mesh, mesh_cfg)
    frozen_sh = parallel.state_shardings(frozen, mesh, mesh_cfg)
    sharded_fn = ppo.jit_update(s["update"], mesh, state_sh, frozen_sh)
    st = jax.device_put(_copy(s["state"]), state_sh)
    frozen = jax.device_put(frozen, frozen_sh)
    assert parallel.device_bytes(frozen) <= 0.6 * sum(x.nbytes for x in jax.tree.leaves(frozen))
    sharded, m2 = sharded_fn(st, frozen, parallel.shard_batch(jax.device_get(s["scene"]), mesh),
                             rng)
    for p0, a, b in zip(jax.tree.leaves(s["state"].params), jax.tree.leaves(single.params),
                        jax.tree.leaves(sharded.params)):
        d1, d2 = np.asarray(a - p0), np.asarray(b - p0)
        np.testing.assert_allclose(d2, d1, rtol=1e-2, atol=1e-3 * np.abs(d1).max() + 1e-8)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-4, atol=1e-6)


def test_resume_repeats_an_uninterrupted_run(setup, tmp_path):
    s = setup
    frozen = {"policy": s["il_vars"]}

    def batches(start):
        while True:
            yield s["scene"]

    def run(workdir, n):
        c = copy.deepcopy(s["config"])
        c.ppo.num_updates = n
        return ppo.train(c, str(workdir), s["jitted"], _copy(s["state"]), frozen, batches,
                         rng=jax.random.PRNGKey(9), show_progress=False)

    full = run(tmp_path / "a", 2)
    run(tmp_path / "b", 1)
    resumed = run(tmp_path / "b", 2)
    assert int(resumed.step) == int(full.step) == 2 * s["config"].ppo.minibatches
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert (tmp_path / "b" / "rl" / "metrics.jsonl").read_text().count("\n") == 2
