"""Stage 2 (IRL): the train step, the inverse-RL term, sharding, resume, held-out metrics.

The EPDMS scorer takes minutes to compile on a small CPU, so these tests label candidates with
a cheap stand-in (``toy_labels``: scores from the deviation to the expert) passed through the
step's ``label_fn`` argument — the same slot ``scorer_labels`` fills in the real stage.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scorer_scenes as ss
from configs import tiny
from irlvla_jax import parallel, types
from irlvla_jax.models import reward_model as R
from irlvla_jax.train import candidates as C
from irlvla_jax.train import irl
from irlvla_jax.train import rwm_quality

B = 8


def toy_labels(scene, trajs):
    """Sub-scores that fall as a candidate strays from the expert (the expert scores 1)."""
    f32 = jnp.float32
    expert = scene.expert_future[:, None, :8]
    dev = jnp.linalg.norm(trajs[..., :2] - expert[..., :2], axis=-1)         # [B,K,8]
    maxdev = dev.max(-1)
    ones = jnp.ones_like(maxdev)
    return types.SubScores(
        nc=jnp.where(maxdev < 3.0, 1.0, jnp.where(maxdev < 6.0, 0.5, 0.0)),
        dac=(jnp.abs(trajs[..., 1]).max(-1) < 3.0).astype(f32),
        ddc=jnp.where(trajs[..., 1].max(-1) < 1.75, 1.0, 0.5),
        tlc=ones,
        ep=jnp.clip(trajs[..., -1, 0] / jnp.maximum(expert[..., -1, 0], 1.0), 0.0, 1.0),
        ttc=(maxdev < 4.5).astype(f32),
        lk=(dev.mean(-1) < 1.5).astype(f32),
        hc=(jnp.abs(jnp.diff(trajs[..., 2], axis=-1)).max(-1) < 0.2).astype(f32),
        ec=ones, ec_weight=jnp.broadcast_to(scene.has_previous[:, None], maxdev.shape).astype(f32))


def noisy_policy(variables, scene, rng):
    """A stand-in for the IL policy: the expert plus a random walk of ``variables['scale']`` m."""
    expert = scene.expert_future[:, None, :8]
    steps = jax.random.normal(rng, (expert.shape[0], 3, 8, 2)) * variables["scale"]
    xy = expert[..., :2] + jnp.cumsum(steps, axis=2)
    return jnp.concatenate([xy, jnp.broadcast_to(expert[..., 2:], xy.shape[:3] + (1,))], -1), None


def make_config(irl_weight=2.0):
    c = tiny.get_config()
    # The stand-in policy here has no sensor tokens: these tests of the IRL machinery use the
    # RWM's own (privileged) scene encoder, without the default's options that need a real
    # policy (the BEV map under the plan, closed-loop training states) and without the geometry
    # head (its own test below turns it on).
    c.rwm.update(dict(scene_encoder="privileged", bev_sampling=False, aux_geometry=False,
                      d_model=32, num_heads=4, mlp_dim=64, scene_layers=1, num_blocks=1))
    c.irl.update(dict(num_vocab=4, num_policy=3, num_perturb=4, lr=3e-3, warmup_steps=0,
                      irl_weight=irl_weight, num_steps=4, log_every=1, ckpt_every=2,
                      geometry_weight=0.0, closed_loop_train_steps=0))
    return c


def batch_scene():
    scenes = []
    for i, v in enumerate(np.linspace(2.0, 14.0, B)):
        s = ss.road_scene(speed=float(v))
        s.has_previous[...] = i % 2 == 0
        if i % 3 == 0:
            ss.add_agent(s, 0, 15.0 + i, 0.0, 2.0)
        scenes.append(ss.as_jnp(s))
    return jax.tree.map(lambda *x: jnp.stack(x), *scenes)


@pytest.fixture(scope="module")
def env():
    cfg = make_config()
    model = R.RewardModel(cfg.rwm)
    scene = batch_scene()
    frozen = {"vocab": jax.random.normal(jax.random.PRNGKey(5), (6, 8, 3)) * 4.0,
              "policy": {"scale": jnp.float32(0.8)}}
    state = irl.init_state(cfg, model, scene, jax.random.PRNGKey(0))
    steps = {w: irl.jit_train_step(irl.make_train_step(make_config(w), model, toy_labels,
                                                       noisy_policy))
             for w in (0.0, 2.0)}
    evaluate = jax.jit(irl.make_eval_step(cfg, model, toy_labels, noisy_policy))
    return dict(cfg=cfg, model=model, scene=scene, frozen=frozen, state=state, steps=steps,
                evaluate=evaluate)


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


def _policy_pair_preference(env, params, seeds=4):
    """Fraction of (expert, policy sample) pairs, where the scorer ranks the expert at least as
    high, in which the predicted reward prefers the expert."""
    wins, total = 0.0, 0.0
    for s in range(seeds):
        o = env["evaluate"](params, env["frozen"], env["scene"], jax.random.PRNGKey(100 + s))
        r, t, src = np.asarray(o["reward"]), np.asarray(o["true"]), np.asarray(o["source"])
        pairs = (src == C.POLICY)[None] & (t[:, :1] >= t)
        wins += float(((r[:, :1] > r) & pairs).sum())
        total += float(pairs.sum())
    return wins / total


def test_step_trains_and_reports(env):
    state, m = env["steps"][2.0](_copy(env["state"]), env["frozen"], env["scene"],
                                 jax.random.PRNGKey(1))
    assert int(state.step) == 1
    for k in ("loss", "loss/dac", "loss/nc", "loss/ep", "irl_hinge", "irl_maxent",
              "expert_preferred", "label/epdms", "label/nc_class2"):
        assert np.isfinite(float(m[k])), k
    assert float(m["irl_pairs"]) > 0
    changed = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.params,
                           env["state"].params)
    assert max(jax.tree.leaves(changed)) > 0


def test_irl_term_makes_the_reward_prefer_the_expert(env):
    finals = {}
    for w, step in env["steps"].items():
        state = _copy(env["state"])
        for i in range(10):
            state, _ = step(state, env["frozen"], env["scene"], jax.random.PRNGKey(i))
        finals[w] = _policy_pair_preference(env, state.params)
    assert finals[2.0] > finals[0.0] + 0.05, finals
    assert finals[2.0] > 0.8, finals


def test_fsdp_step_equals_single_device(env):
    """Mesh data=2 x fsdp=4: scenes split 8 ways, the RWM state and the frozen variables split
    over 'fsdp' where a leaf is large enough; the step equals the 1-device one."""
    mesh_cfg = {"data": 2, "fsdp": 4, "fsdp_min_size": 256}
    mesh = parallel.make_mesh(mesh_cfg, jax.devices()[:8])
    step = irl.make_train_step(env["cfg"], env["model"], toy_labels, noisy_policy)
    state_sh = parallel.state_shardings(env["state"], mesh, mesh_cfg)
    frozen_sh = parallel.state_shardings(env["frozen"], mesh, mesh_cfg)
    sharded = irl.jit_train_step(step, mesh, state_sharding=state_sh, frozen_sharding=frozen_sh)
    s1, m1 = env["steps"][2.0](_copy(env["state"]), env["frozen"], env["scene"],
                               jax.random.PRNGKey(7))
    scene = parallel.shard_batch(jax.device_get(env["scene"]), mesh)
    state = jax.device_put(_copy(env["state"]), state_sh)
    assert parallel.device_bytes(state) <= 0.3 * sum(x.nbytes for x in jax.tree.leaves(state))
    s8, m8 = sharded(state, jax.device_put(env["frozen"], frozen_sh), scene,
                     jax.random.PRNGKey(7))
    assert len(scene.speed_limit.sharding.device_set) == 8
    np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m8["grad_norm"]), float(m1["grad_norm"]), rtol=1e-4)
    # Adam's first step is lr * g / (|g| + eps): where g is ~0, float reassociation across
    # devices moves it by up to ~1% of lr (3e-3), hence atol = 1% of lr on the parameters.
    for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=3e-5)


def test_checkpoint_resume_continues_where_it_stopped(env, tmp_path):
    step = env["steps"][2.0]
    starts = []

    def batches(start):
        starts.append(start)
        return itertools.repeat(env["scene"])

    cfg = make_config()
    full, _ = irl.train(cfg, str(tmp_path / "a"), step, _copy(env["state"]), env["frozen"],
                        batches, rng=jax.random.PRNGKey(3), show_progress=False)
    cfg_half = make_config()
    cfg_half.irl.num_steps = 2
    irl.train(cfg_half, str(tmp_path / "b"), step, _copy(env["state"]), env["frozen"], batches,
              rng=jax.random.PRNGKey(3), show_progress=False)
    resumed, means = irl.train(cfg, str(tmp_path / "b"), step, _copy(env["state"]),
                               env["frozen"], batches, rng=jax.random.PRNGKey(3),
                               show_progress=False)
    assert starts == [0, 0, 2]
    assert int(resumed.step) == 4
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert 0.0 < means["label/epdms"] <= 1.0
    lines = open(tmp_path / "b" / "irl" / "metrics.jsonl").read().splitlines()
    assert len(lines) == 4


def test_quality_metrics_perfect_vs_baseline():
    rng = np.random.default_rng(0)
    n, k = 6, 5
    y = {f"y_{m}": (rng.uniform(size=(n, k)) > 0.3).astype(np.float32)
         for m in R.BINARY_METRICS}
    y["y_nc"] = rng.choice([0.0, 0.5, 1.0], (n, k))
    y["y_ddc"] = rng.choice([0.0, 0.5, 1.0], (n, k))
    y["y_ep"] = rng.uniform(size=(n, k)).astype(np.float32)
    true = rng.uniform(size=(n, k))
    outs = dict(y, reward=true.copy(), true=true, ec_weight=np.ones((n, k)),
                binary_prob=np.stack([y[f"y_{m}"] for m in R.BINARY_METRICS], -1),
                nc_prob=np.eye(3)[np.round(2 * y["y_nc"]).astype(int)],
                ddc_prob=np.eye(3)[np.round(2 * y["y_ddc"]).astype(int)],
                ep_pred=y["y_ep"], source=np.asarray([C.EXPERT] + [C.POLICY] * (k - 1)))
    q = rwm_quality.quality_metrics(outs, {"label/epdms": 0.5, "label/dac": 0.7})
    r, base = q["rwm"], q["mean_baseline"]
    assert r["acc_dac"] == 1.0 and r["auc_dac"] == 1.0 and r["acc_nc"] == 1.0
    assert r["bacc_dac"] == 1.0 and r["bacc_nc"] == 1.0 and r["bacc_ddc"] == 1.0
    assert r["mae_ep"] == 0.0 and r["regret"] == 0.0 and r["spearman"] == pytest.approx(1.0)
    assert r["expert_vs_policy"] == 1.0 and r["expert_top_policy"] == 1.0
    assert base["auc_dac"] == 0.5 and base["spearman"] == 0.0 and base["regret"] > 0.1
    assert base["bacc_dac"] == 0.5 and base["bacc_nc"] == pytest.approx(1 / 3)
    # A constant reward ranks nothing: pairs are ties (1/2), the expert is first by chance.
    assert base["expert_vs_policy"] == 0.5 and base["expert_top_policy"] < 0.5


def test_expert_ranking_counts_only_pairs_the_scorer_agrees_with():
    true = np.asarray([[0.8, 0.9, 0.5, 0.5], [0.3, 0.2, 0.1, 0.9]])
    source = np.asarray([C.EXPERT, C.POLICY, C.POLICY, C.VOCAB])
    # scene 0: policy slot 1 beats the expert by the scorer: only slot 2 counts (won);
    # scene 1: both policy slots count, slot 1 is ranked above the expert (lost).
    pred = np.asarray([[0.5, 0.9, 0.4, 0.0], [0.5, 0.6, 0.1, 0.0]])
    pw, top = rwm_quality._expert_ranking(pred, true, source, ("policy",))
    assert pw == pytest.approx(2 / 3) and top == pytest.approx(0.5)
    pw, top = rwm_quality._expert_ranking(np.zeros_like(pred), true, source, ("policy",))
    assert pw == 0.5 and top == pytest.approx((1 / 2 + 1 / 3) / 2)


@pytest.mark.parametrize("calibrate", [False, True])
def test_balanced_loss_with_logit_adjustment_keeps_probabilities_calibrated(calibrate):
    """Constant predictors fitted by the supervised loss on labels with 10% failures
    (binary) and 10% / 20% / 70% classes (3-class): class balancing alone pulls the
    probabilities towards the rare classes; with the logit adjustment they are the label
    frequencies, which the expected-score reward needs."""
    cfg = make_config().irl.to_dict()
    cfg.update(balance=True, calibrate=calibrate, balance_max_weight=100.0)
    n = 100
    fail = (np.arange(n) < 10).astype(np.float32)[None]
    three = np.where(np.arange(n) < 10, 0.0, np.where(np.arange(n) < 30, 0.5, 1.0))[None]
    ones = jnp.ones((1, n))
    labels = types.SubScores(nc=jnp.asarray(three), ddc=ones, dac=jnp.asarray(1 - fail),
                             tlc=ones, ep=ones, ttc=ones, lk=ones, hc=ones, ec=ones,
                             ec_weight=ones)

    def loss(theta):
        pred = R.Predictions(
            nc_logits=jnp.broadcast_to(theta[:3], (1, n, 3)), ddc_logits=jnp.zeros((1, n, 3)),
            binary_logits=jnp.broadcast_to(jnp.zeros(6).at[0].set(theta[3]), (1, n, 6)),
            ep_logit=jnp.zeros((1, n)))
        return irl.supervised_loss(pred, labels, cfg)[0]

    grad = jax.jit(jax.grad(loss))
    theta = jnp.zeros(4)
    for _ in range(600):
        theta = theta - 20.0 * grad(theta)
    p_nc, p_dac = jax.nn.softmax(theta[:3]), jax.nn.sigmoid(theta[3])
    if calibrate:
        np.testing.assert_allclose(p_nc, [0.1, 0.2, 0.7], atol=0.02)
        np.testing.assert_allclose(p_dac, 0.9, atol=0.02)
    else:                                  # inverse-frequency weights: uniform probabilities
        np.testing.assert_allclose(p_nc, [1 / 3] * 3, atol=0.02)
        np.testing.assert_allclose(p_dac, 0.5, atol=0.02)


def test_run_without_il_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="launch.py il"):
        irl.run(make_config(), str(tmp_path))


def test_previous_frame_plan_of_steady_driving_is_extended_comfortable():
    from irlvla_jax.sim import comfort, simulate

    @jax.jit
    def both(scene):
        prev = simulate.previous_frame_states(scene)
        cur = jax.vmap(simulate.simulate_plan)(scene, scene.expert_future[:, :8])
        return prev, cur, jax.vmap(comfort.extended_comfort)(cur, prev)

    scene = jax.tree.map(lambda x: x[None], ss.as_jnp(ss.road_scene(speed=10.0)))
    prev, cur, ec = both(scene)
    assert prev.shape == (1, 41, 11)
    np.testing.assert_allclose(prev[0, :, 3], 10.0, atol=0.2)        # it kept driving at 10 m/s
    np.testing.assert_allclose(prev[0, -1, 0], 40.0, atol=0.5)       # 5 m back + 35 m in 3.5 s
    assert float(ec[0]) == 1.0


def test_geometry_head_learns_the_candidate_scene_geometry():
    """``rwm.aux_geometry`` + ``irl.geometry_weight``: the waypoint tokens predict the
    ground-truth per-waypoint geometry (a training target only) and the loss falls."""
    cfg = make_config()
    cfg.rwm.aux_geometry = True
    cfg.irl.geometry_weight = 1.0
    model = R.RewardModel(cfg.rwm)
    scene = batch_scene()
    frozen = {"vocab": jax.random.normal(jax.random.PRNGKey(5), (6, 8, 3)) * 4.0,
              "policy": {"scale": jnp.float32(0.8)}}
    state = irl.init_state(cfg, model, scene, jax.random.PRNGKey(0))
    step = irl.jit_train_step(irl.make_train_step(cfg, model, toy_labels, noisy_policy))
    losses = []
    for i in range(8):
        state, m = step(state, frozen, scene, jax.random.PRNGKey(0))
        losses.append(float(m["loss/geometry"]))
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0], losses
    bad = make_config()
    bad.irl.geometry_weight = 1.0
    with pytest.raises(ValueError, match="aux_geometry"):
        irl.make_train_step(bad, model, toy_labels, noisy_policy)


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    from random_data import random_data_config
    return random_data_config(tmp_path_factory, scenes=20, batch_size=8)


def _whole_split_batches(config, limit):
    """irl._eval_batches before it streamed: the split's first ``limit`` scenes loaded whole,
    cut into batches of min(batch size, n), a last partial batch dropped."""
    from irlvla_jax.data import loader
    scenes, _ = loader.load_split_numpy(config, config.data.eval_split, limit)
    n = scenes.speed_limit.shape[0]
    b = min(config.data.batch_size, n)
    return [jax.tree.map(lambda x: x[i:i + b], scenes) for i in range(0, n - b + 1, b)]


@pytest.mark.parametrize("devices,limit", [(8, None), (8, 12), (1, 5)])
def test_streamed_eval_batches_equal_the_whole_split_ones(eval_data, devices, limit):
    """20 scenes, batches of 8: the streamed batches on the mesh are the ones the whole split
    gave (the last 4 or 12 - 8 scenes dropped; a limit under one batch is one batch of it)."""
    mesh = parallel.make_mesh({"data": -1, "fsdp": 1}, jax.devices()[:devices])
    got = list(irl._eval_batches(eval_data, limit, mesh))
    want = _whole_split_batches(eval_data, limit)
    assert len(got) == len(want) == {None: 2, 12: 1, 5: 1}[limit]
    for g, w in zip(got, want):
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(w), strict=True):
            assert a.sharding == parallel.data_sharding(mesh)
            np.testing.assert_array_equal(np.asarray(a), b)


def test_eval_under_one_batch_rounds_down_to_the_mesh(eval_data):
    """Fewer held-out scenes than a batch on several devices: one batch of as many as the
    mesh splits evenly (the first 4 of 6 on 4 devices); fewer than the devices: an error."""
    mesh = parallel.make_mesh({"data": -1, "fsdp": 1}, jax.devices()[:4])
    (got,) = list(irl._eval_batches(eval_data, 6, mesh))
    want = _whole_split_batches(eval_data, 4)[0]
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    with pytest.raises(ValueError, match="fewer than the mesh's 4 batch devices"):
        irl._eval_batches(eval_data, 3, mesh)
