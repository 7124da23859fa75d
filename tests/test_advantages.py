"""GAE, group baselines and the chain discount of stage 3 (irlvla_jax/train/advantages.py)."""

import numpy as np
import pytest

from irlvla_jax.train import advantages as adv_lib


def _gae_by_hand(r, v, gamma, lam):
    """The textbook loop: delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1},
    V_T = 0 (episodes end after T steps)."""
    T = len(r)
    a = np.zeros(T)
    nxt_adv = 0.0
    for t in reversed(range(T)):
        v_next = v[t + 1] if t + 1 < T else 0.0
        delta = r[t] + gamma * v_next - v[t]
        nxt_adv = delta + gamma * lam * nxt_adv
        a[t] = nxt_adv
    return a


def test_gae_matches_hand_computation():
    r = np.array([0.5, 0.9, 0.1, 0.7])
    v = np.array([0.3, 0.2, 0.8, 0.4])
    gamma, lam = 0.9, 0.8
    # by hand for the last two steps: A_3 = 0.7 - 0.4 = 0.3;
    # A_2 = (0.1 + 0.9*0.4 - 0.8) + 0.72 * 0.3 = -0.34 + 0.216 = -0.124
    a, ret = adv_lib.gae(r[:, None], v[:, None], gamma, lam)
    np.testing.assert_allclose(np.asarray(a)[2:, 0], [-0.124, 0.3], atol=1e-6)
    np.testing.assert_allclose(np.asarray(a)[:, 0], _gae_by_hand(r, v, gamma, lam), atol=1e-6)
    np.testing.assert_allclose(np.asarray(ret)[:, 0], _gae_by_hand(r, v, gamma, lam) + v, atol=1e-6)


def test_gae_single_step_and_lambda_one():
    r = np.random.default_rng(0).uniform(size=(1, 5))
    v = np.random.default_rng(1).uniform(size=(1, 5))
    a, _ = adv_lib.gae(r, v, 0.99, 0.95)
    np.testing.assert_allclose(np.asarray(a), r - v, atol=1e-6)   # T = 1: A = r - V
    r = np.random.default_rng(2).uniform(size=(3, 2))
    v = np.random.default_rng(3).uniform(size=(3, 2))
    a, _ = adv_lib.gae(r, v, 0.9, 1.0)    # lambda = 1: Monte-Carlo return minus V
    np.testing.assert_allclose(np.asarray(a), np.asarray(adv_lib.discounted_returns(r, 0.9)) - v,
                               atol=1e-6)


def test_gae_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="gae"):
        adv_lib.gae(np.zeros((3, 2)), np.zeros((3, 4)), 0.9, 0.9)


def test_group_normalize():
    x = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    g = np.asarray(adv_lib.group_normalize(x))
    np.testing.assert_allclose(g[0], (x[0] - 2.0) / np.std(x[0]), atol=1e-5)
    np.testing.assert_allclose(g[1], 0.0)   # identical samples: no signal


def test_chain_discount_and_clip_schedule():
    np.testing.assert_allclose(np.asarray(adv_lib.chain_discount(3, 0.5)), [0.25, 0.5, 1.0])
    a = np.asarray(adv_lib.chain_advantages(np.array([2.0, -1.0]), 2, 0.9))
    np.testing.assert_allclose(a, [[1.8, 2.0], [-0.9, -1.0]], atol=1e-6)
    c = np.asarray(adv_lib.clip_schedule(4, 0.01, 0.1))
    assert c[0] == pytest.approx(0.01) and c[-1] == pytest.approx(0.1)
    assert np.all(np.diff(c) > 0)
    np.testing.assert_allclose(np.asarray(adv_lib.clip_schedule(1, 0.01, 0.1)), [0.1])
