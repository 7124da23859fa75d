"""Detection / map heads: shapes at the tiny config, exact Hungarian matching, losses."""

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from configs import tiny
from irlvla_jax.models.detection import (NUM_CLASSES, DetectionHead, MapHead, detection_loss,
                                         detection_targets, hungarian_match, map_loss)


def test_heads_shapes_at_tiny_config():
    m = tiny.get_config().model
    bev = jax.ShapeDtypeStruct((2, *m.bev.query_hw, m.bev.dim), jnp.float32)
    for head, expect in [(DetectionHead(m.detection), [(2, 16, 64), (2, 16, 5), (2, 16, 8)]),
                         (MapHead(m.map), [(2, 16, 64), (2, 64, 64, 7)])]:
        params = jax.eval_shape(head.init, jax.random.key(0), bev)
        out = jax.eval_shape(head.apply, params, bev)
        assert [o.shape for o in out] == expect


@pytest.mark.parametrize("q,g", [(9, 7), (6, 6)])
def test_hungarian_equals_scipy_inside_jit_with_padding(q, g):
    rng = np.random.default_rng(q)
    cost = rng.normal(size=(40, q, g)).astype(np.float32)
    valid = rng.random((40, g)) < 0.7
    valid[0] = False                       # no ground truth at all
    valid[1] = True                        # all valid
    got = np.asarray(jax.jit(hungarian_match)(cost, valid))
    for b in range(40):
        idx = np.nonzero(valid[b])[0]
        rows, cols = linear_sum_assignment(cost[b][:, idx])
        want = np.full(g, -1)
        want[idx[cols]] = rows
        np.testing.assert_array_equal(got[b], want)


def test_hungarian_rejects_more_targets_than_queries():
    with pytest.raises(ValueError, match="ground truths"):
        hungarian_match(jnp.zeros((1, 3, 4)), jnp.ones((1, 4), bool))


def test_detection_targets_takes_nearest_present_agents():
    states = np.zeros((1, 4, 9, 5), np.float32)
    states[0, :, 0, :2] = [[10, 0], [2, 0], [50, 0], [5, 1]]      # agent 2 outside 32 m
    valid = np.ones((1, 4, 9), bool)
    valid[0, 1, 0] = False                                         # agent 1 absent at t = 0
    size = np.tile(np.array([4.0, 2.0, 1.5], np.float32), (1, 4, 1))
    boxes, cls, ok = detection_targets(states, size, np.arange(4)[None], valid, 3, 32.0)
    np.testing.assert_array_equal(ok[0], [True, True, False])
    np.testing.assert_allclose(boxes[0, :2, 0], [5, 10])
    np.testing.assert_array_equal(cls[0, :2], [3, 0])
    np.testing.assert_allclose(boxes[0, 0, 3:], [4, 2])


def test_detection_loss_rewards_correct_predictions():
    cfg = ml_collections.FrozenConfigDict(tiny.get_config().model.detection)   # hashable
    gt = jnp.array([[[5.0, 1.0, 0.3, 4.0, 2.0], [-3.0, 8.0, -1.0, 1.0, 0.8], [0, 0, 0, 0, 0]]])
    gt_cls, gt_ok = jnp.array([[0, 1, 0]]), jnp.array([[True, True, False]])
    # 4 queries: queries 2 and 0 predict the two objects (in the other order), the rest nothing
    boxes = jnp.stack([gt[0, 1], gt[0, 2] + 20, gt[0, 0], gt[0, 2] - 20])[None]
    good = jnp.full((1, 4, NUM_CLASSES + 1), -10.0).at[0, jnp.arange(4),
                                                        jnp.array([1, 7, 0, 7])].set(10.0)
    loss, metrics = jax.jit(detection_loss, static_argnums=5)(boxes, good, gt, gt_cls, gt_ok, cfg)
    assert float(metrics["det_box_l1"]) < 1e-5 and float(metrics["det_matched_class_acc"]) == 1
    bad_loss, _ = detection_loss(boxes + 1.0, -good, gt, gt_cls, gt_ok, cfg)
    assert float(loss) < 1e-3 < float(bad_loss)
    grads = jax.grad(lambda b: detection_loss(b, -good, gt, gt_cls, gt_ok, cfg)[0])(boxes + 1.0)
    assert np.isfinite(np.asarray(grads)).all() and np.abs(np.asarray(grads)).sum() > 0


def test_map_loss():
    labels = np.random.default_rng(0).integers(0, 7, (2, 4, 4))
    perfect = 20.0 * jax.nn.one_hot(labels, 7)
    assert float(map_loss(perfect, labels)) < 1e-6
    assert abs(float(map_loss(jnp.zeros((2, 4, 4, 7)), labels)) - np.log(7)) < 1e-5
    with pytest.raises(ValueError, match="seg_hw"):
        map_loss(jnp.zeros((2, 8, 8, 7)), labels)
