"""The diffusion planner: shapes, DDIM chains and their log-probs, k-means anchors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from irlvla_jax import types
from irlvla_jax.models import anchors as anchors_lib
from irlvla_jax.models import planner as pl

B, D = 3, 16


@pytest.fixture(scope="module")
def setup():
    cfg = tiny.get_config().model.planner
    cfg.update(dict(num_anchors=6, d_model=32, num_heads=2, num_blocks=1, fourier_freqs=4))
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    tokens = pl.SceneTokens(
        meta=jax.random.normal(k[0], (B, 2, D)), meta_logits=None,
        bev=jax.random.normal(k[1], (B, 9, D)), bev_map=None,
        map=jax.random.normal(k[2], (B, 5, D)),
        map_valid=jnp.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], bool),
        obj=jax.random.normal(k[3], (B, 4, D)), ego_status=jnp.ones((B, 20)))
    net = pl.DiffusionPlanner(cfg)

    @jax.jit    # one program: eager init and perturbation compile every op shape by shape
    def init(tokens):
        variables = net.init(jax.random.PRNGKey(1), jnp.zeros((B, 6, 8, 3)),
                             jnp.zeros((B,), jnp.int32), tokens)
        # a non-trivial network: perturb the zero-initialised output layers too
        leaves, tree = jax.tree.flatten(variables["params"])
        keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
        return dict(variables, params=jax.tree.unflatten(
            tree, [p + 0.05 * jax.random.normal(kk, p.shape) for p, kk in zip(leaves, keys)]))
    variables = init(tokens)

    def denoiser(v):
        return lambda x, t: net.apply(v, x, t, tokens)

    anchors_n = net.apply(variables, method=pl.DiffusionPlanner.anchors_normalized)

    @jax.jit
    def sample(v, rng, sigma_min):
        return pl.sample_chain(denoiser(v), anchors_n, B, rng, cfg, stochastic=True,
                               sigma_min=sigma_min)

    @jax.jit
    def sample_det(v, rng):
        return pl.sample_chain(denoiser(v), anchors_n, B, rng, cfg, stochastic=False)

    @jax.jit
    def evaluate(v, chain):
        return pl.evaluate_chain(denoiser(v), chain, cfg)

    return dict(cfg=cfg, net=net, v=variables, tokens=tokens, sample=sample,
                sample_det=sample_det, evaluate=evaluate)


def test_denoiser_shapes_and_padding(setup):
    net, v, tok = setup["net"], setup["v"], setup["tokens"]
    x0, logits = net.apply(v, jnp.zeros((B, 6, 8, 3)), jnp.array([0, 10, 49]), tok)
    assert x0.shape == (B, 6, 8, 3) and logits.shape == (B, 6)
    assert x0.dtype == jnp.float32 and bool(jnp.isfinite(x0).all())
    # padded map tokens must not change the output
    tok2 = tok.replace(map=tok.map.at[:, 3:].set(100.0).at[2].set(-7.0))
    x0b, lb = net.apply(v, jnp.zeros((B, 6, 8, 3)), jnp.array([0, 10, 49]), tok2)
    np.testing.assert_allclose(x0b, x0, atol=1e-5)
    np.testing.assert_allclose(lb, logits, atol=1e-5)


def test_chain_shapes_finite_and_logprob_reproducible(setup):
    ch = setup["sample"](setup["v"], jax.random.PRNGKey(3), 0.04)
    s = setup["cfg"].sample_steps
    assert ch.x.shape == (B, s + 1, 6, 8, 3)
    assert ch.logprob.shape == (B, s) and ch.traj.shape == (B, 8, 3)
    assert ch.trajs.shape == (B, 6, 8, 3) and ch.mode.shape == (B,)
    for leaf in (ch.x, ch.logprob, ch.traj, ch.mode_logprob):
        assert bool(jnp.isfinite(leaf).all())
    lo, hi = setup["cfg"].logprob_clamp
    assert bool(((ch.logprob >= lo) & (ch.logprob <= hi)).all())
    lp, mode_lp, ent = setup["evaluate"](setup["v"], ch)
    np.testing.assert_allclose(lp, ch.logprob, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mode_lp, ch.mode_logprob, rtol=1e-5, atol=1e-5)
    assert bool((ent > 0).all())
    # the chosen mode's trajectory is the final chain state, denormalised
    final = pl.denormalize(ch.x[jnp.arange(B), -1, ch.mode], setup["cfg"])
    np.testing.assert_allclose(final, ch.traj, atol=1e-5)


def test_logprob_depends_on_params(setup):
    ch = setup["sample"](setup["v"], jax.random.PRNGKey(4), 0.04)
    v2 = dict(setup["v"], params=jax.tree.map(lambda p: p * 1.1, setup["v"]["params"]))
    lp2, _, _ = setup["evaluate"](v2, ch)
    assert float(jnp.abs(lp2 - ch.logprob).max()) > 1e-4


def test_sigma_floor_zero_is_deterministic(setup):
    rng = jax.random.PRNGKey(5)
    det = setup["sample_det"](setup["v"], rng)
    at_floor = setup["sample"](setup["v"], rng, 0.0)
    np.testing.assert_allclose(at_floor.x, det.x, atol=1e-6)
    noisy_a = setup["sample"](setup["v"], rng, 0.04)
    noisy_b = setup["sample"](setup["v"], jax.random.PRNGKey(6), 0.04)
    assert float(jnp.abs(noisy_a.x[:, 1:] - det.x[:, 1:]).max()) > 1e-3
    assert float(jnp.abs(noisy_a.x - noisy_b.x).max()) > 1e-3


def test_timesteps_and_training_noise(setup):
    cfg = setup["cfg"]
    np.testing.assert_array_equal(pl.sample_timesteps(cfg, 2), [10, 0])
    a = jnp.asarray(anchors_lib.default_anchors(6))
    x_t, t = pl.training_inputs(pl.normalize(a, cfg), 64, jax.random.PRNGKey(0), cfg)
    assert x_t.shape == (64, 6, 8, 3) and int(t.min()) >= 0 and int(t.max()) < cfg.train_t_max
    # truncated diffusion: noised anchors stay near the anchors
    assert float(jnp.abs(x_t - pl.normalize(a, cfg)).mean()) < 0.3
    np.testing.assert_allclose(pl.denormalize(pl.normalize(a, cfg), cfg), a, atol=1e-5)


def test_nearest_anchor():
    anchors = jnp.asarray(anchors_lib.default_anchors(6))
    expert = anchors[jnp.array([4, 1])] + 0.1
    np.testing.assert_array_equal(pl.nearest_anchor(anchors, expert), [4, 1])


def test_compute_anchors_recovers_clusters():
    rng = np.random.default_rng(0)
    centres = anchors_lib.default_anchors(9)[[0, 4, 8]]
    fut = np.concatenate([c + rng.normal(0, 0.05, (50, 8, 3)) for c in centres])
    a = anchors_lib.compute_anchors(fut, 3, seed=0)
    assert a.shape == (3, 8, 3) and a.dtype == np.float32
    assert np.all(np.diff(a[:, -1, 0]) >= 0)                   # sorted slowest first
    order = np.argsort(centres[:, -1, 0])
    np.testing.assert_allclose(a, centres[order], atol=0.1)
    np.testing.assert_array_equal(anchors_lib.compute_anchors(fut, 3, seed=0), a)
    with pytest.raises(ValueError, match="expert_futures"):
        anchors_lib.compute_anchors(fut[:, :5], 3)
    with pytest.raises(ValueError, match="cannot give"):
        anchors_lib.compute_anchors(fut[:2], 3)


def test_anchor_file_roundtrip(tmp_path):
    a = anchors_lib.default_anchors(5)
    p = str(tmp_path / "anchors.npy")
    anchors_lib.save_anchors(p, a)
    np.testing.assert_array_equal(anchors_lib.load_anchors(p, 5), a)
    with pytest.raises(ValueError, match="num_anchors"):
        anchors_lib.load_anchors(p, 6)
    with pytest.raises(FileNotFoundError):
        anchors_lib.load_anchors(str(tmp_path / "missing.npy"))


def test_smooth_chain_noise_moves_plans_along_the_basis_only(setup):
    """chain_noise = "smooth": a transition's noise lies in span(t, t^2, t^3) per coordinate
    (white noise does not), and the stored log-probs are reproduced by evaluate_chain."""
    cfg = setup["cfg"].copy_and_resolve_references()
    cfg.update(dict(chain_noise="smooth", chain_noise_dims=3))
    net, v, tokens = setup["net"], setup["v"], setup["tokens"]
    anchors_n = net.apply(v, method=pl.DiffusionPlanner.anchors_normalized)

    def denoise(x, t):
        return net.apply(v, x, t, tokens)

    @jax.jit
    def first_step_noise(rng):
        det = pl.sample_chain(denoise, anchors_n, B, rng, cfg, stochastic=False)
        out = {}
        for kind in ("smooth", "white"):
            c = cfg.copy_and_resolve_references()
            c.chain_noise = kind
            ch = pl.sample_chain(denoise, anchors_n, B, rng, c, stochastic=True)
            out[kind] = (ch, ch.x[:, 1] - det.x[:, 1])   # same start, eta 0: std * noise
        return out

    out = first_step_noise(jax.random.PRNGKey(5))
    basis = pl.smooth_noise_basis(3)
    proj = basis @ basis.T                                                # [8,8]
    for kind, want_in_span in (("smooth", True), ("white", False)):
        d = np.asarray(out[kind][1])                                      # [B,M,8,3]
        resid = d - np.einsum("ts,bmsc->bmtc", proj, d)
        assert (np.abs(resid).max() < 1e-5 * np.abs(d).max()) == want_in_span, kind
    ch = out["smooth"][0]
    lp, _, _ = jax.jit(lambda c: pl.evaluate_chain(denoise, c, cfg))(ch)
    np.testing.assert_allclose(lp, ch.logprob, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="chain_noise"):
        bad = cfg.copy_and_resolve_references()
        bad.chain_noise = "pink"
        pl.sample_chain(denoise, anchors_n, B, jax.random.PRNGKey(0), bad, stochastic=True)
