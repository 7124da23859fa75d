"""3D reasoning, part 2: heads on the BEV feature map and their losses.

* :class:`DetectionHead` — DETR-style object queries -> object tokens, oriented boxes, classes.
* :func:`hungarian_match` — exact minimum-cost assignment, inside jit (shortest augmenting
  paths with potentials, the O(G^2 Q) Hungarian algorithm, as ``lax`` loops).
* :func:`detection_targets`, :func:`detection_loss` — nearest agents as targets, matched loss.
* :class:`MapHead`, :func:`map_loss` — map tokens and BEV semantic segmentation (7 classes).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from irlvla_jax import types
from irlvla_jax.models.bev import BEVPositionEmbedding
from irlvla_jax.models.layers import MLP, CrossAttentionBlock, MultiHeadAttention, as_dtype

NUM_CLASSES = len(types.AGENT_CLASSES)   # class index NUM_CLASSES = "no object"


def _wrap(a):
    return (a + jnp.pi) % (2 * jnp.pi) - jnp.pi


class _QueryDecoder(nn.Module):
    """Learned queries: [self-attention, cross-attention to the BEV, FFN] x num_layers."""
    num_queries: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    range_m: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, bev, train):
        dt = as_dtype(self.dtype)
        b, h, w, d = bev.shape
        tokens = bev.astype(dt).reshape(b, h * w, d)
        bev_pos = BEVPositionEmbedding(d, (h, w), self.range_m, dt, name="bev_pos")()
        init = nn.initializers.normal(0.02)
        x = jnp.broadcast_to(self.param("queries", init, (self.num_queries, d), jnp.float32)
                             .astype(dt), (b, self.num_queries, d))
        qpos = self.param("query_pos", init, (1, self.num_queries, d), jnp.float32).astype(dt)
        for i in range(self.num_layers):
            hq = nn.LayerNorm(dtype=dt, name=f"self_norm_{i}")(x) + qpos
            x = x + MultiHeadAttention(self.num_heads, self.num_heads, d // self.num_heads, dt,
                                       name=f"self_attn_{i}")(hq, hq)
            x = CrossAttentionBlock(self.num_heads, d // self.num_heads, self.mlp_dim, dtype=dt,
                                    name=f"cross_{i}")(x, tokens, train=train, x_pos=qpos,
                                                      context_pos=bev_pos)
        return nn.LayerNorm(dtype=dt, name="out_norm")(x)


class DetectionHead(nn.Module):
    """BEV -> (obj_tokens [B, Q, D], boxes [B, Q, 5], class_logits [B, Q, NUM_CLASSES + 1]).

    Boxes are (x, y, heading, length, width) in the ego frame: centres bounded to the BEV range
    by a tanh, heading from (sin, cos), sizes positive by a softplus.
    cfg (``config.model.detection``): num_queries, num_layers, num_heads, mlp_dim, range_m.
    """
    cfg: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, bev: jax.Array, train: bool = False):
        """bev [B, H, W, D] -> (obj_tokens [B, Q, D], boxes [B, Q, 5] f32,
        class_logits [B, Q, NUM_CLASSES + 1] f32)."""
        cfg, dt = self.cfg, as_dtype(self.dtype)
        d = bev.shape[-1]
        x = _QueryDecoder(cfg.num_queries, cfg.num_layers, cfg.num_heads, cfg.mlp_dim,
                          cfg.range_m, dt, name="decoder")(bev, train)
        raw = MLP(d, 6, dt, name="box_head")(x).astype(jnp.float32)
        xy = cfg.range_m * jnp.tanh(raw[..., :2])
        heading = jnp.arctan2(raw[..., 2], raw[..., 3])
        lw = jax.nn.softplus(raw[..., 4:6]) + 0.1
        boxes = jnp.concatenate([xy, heading[..., None], lw], axis=-1)
        logits = MLP(d, NUM_CLASSES + 1, dt, name="class_head")(x).astype(jnp.float32)
        return x, boxes, logits


# ----------------------------------------------------------------------------------------------
def hungarian_match(cost: jax.Array, valid: jax.Array) -> jax.Array:
    """Exact minimum-cost matching of ground truths to predictions, jit/vmap friendly.

    cost [B, Q, G] (prediction q, ground truth g), valid [B, G] bool; needs G <= Q.
    -> assignment [B, G] int32: the prediction matched to each ground truth, -1 where invalid.
    The valid ground truths all get distinct predictions and the total cost is minimal (what
    ``scipy.optimize.linear_sum_assignment(cost[b][:, valid[b]])`` returns).
    """
    b, q, g = cost.shape
    if g > q:
        raise ValueError(f"hungarian_match: {g} ground truths > {q} predictions; select at most "
                         f"Q targets first (detection_targets does)")
    # Rows = ground truths. Invalid rows cost 0 everywhere: with G <= Q they take leftover
    # predictions without changing which predictions the valid rows get.
    rows = jnp.where(valid[:, :, None], jnp.swapaxes(cost, 1, 2), 0.0).astype(jnp.float32)
    assign = jax.vmap(_hungarian_single)(rows)
    return jnp.where(valid, assign, -1).astype(jnp.int32)


def _hungarian_single(a: jax.Array) -> jax.Array:
    """a [n, m] with n <= m -> column of each row, minimising the total (1-indexed internally:
    column 0 is the virtual start of each augmenting path)."""
    n, m = a.shape
    inf = jnp.float32(jnp.inf)
    a = jnp.pad(a, ((1, 0), (1, 0)))

    def add_row(i, state):
        u, v, p = state
        p = p.at[0].set(i)

        def dijkstra_step(s):
            u, v, p, way, minv, used, j0, _ = s
            used = used.at[j0].set(True)
            i0 = p[j0]
            cur = a[i0] - u[i0] - v
            better = (~used) & (cur < minv)
            minv = jnp.where(better, cur, minv)
            way = jnp.where(better, j0, way)
            masked = jnp.where(used, inf, minv)
            j1 = jnp.argmin(masked)
            delta = masked[j1]
            u = u.at[p].add(jnp.where(used, delta, 0.0))
            v = v - jnp.where(used, delta, 0.0)
            minv = jnp.where(used, minv, minv - delta)
            return u, v, p, way, minv, used, j1, p[j1] != 0

        init = (u, v, p, jnp.zeros(m + 1, jnp.int32), jnp.full(m + 1, inf),
                jnp.zeros(m + 1, bool), jnp.int32(0), jnp.bool_(True))
        u, v, p, way, _, _, j0, _ = jax.lax.while_loop(lambda s: s[-1], dijkstra_step, init)

        def augment(s):
            p, j0 = s
            j1 = way[j0]
            return p.at[j0].set(p[j1]), j1

        p, _ = jax.lax.while_loop(lambda s: s[1] != 0, augment, (p, j0))
        return u, v, p

    state = (jnp.zeros(n + 1), jnp.zeros(m + 1), jnp.zeros(m + 1, jnp.int32))
    _, _, p = jax.lax.fori_loop(1, n + 1, add_row, state)
    # p[j] = row matched to column j (0 = none); invert to row -> column
    col_of_row = jnp.zeros(n + 1, jnp.int32).at[p].set(jnp.arange(m + 1, dtype=jnp.int32))
    return col_of_row[1:] - 1


# ----------------------------------------------------------------------------------------------
def detection_targets(agent_states: jax.Array, agent_size: jax.Array, agent_class: jax.Array,
                      agent_valid: jax.Array, num_targets: int, range_m: float):
    """The ``num_targets`` nearest agents present at t = 0 inside the BEV square (TransFuser
    style: more agents than queries cannot all be matched).

    agent_states [B, A, 9, 5], agent_size [B, A, 3], agent_class [B, A], agent_valid [B, A, 9]
    -> gt_boxes [B, K, 5] (x, y, heading, l, w), gt_class [B, K] int32, gt_valid [B, K] bool.
    """
    xy = agent_states[:, :, 0, :2]
    ok = agent_valid[:, :, 0] & jnp.all(jnp.abs(xy) < range_m, axis=-1)
    a = ok.shape[1]
    k = min(num_targets, a)
    dist = jnp.where(ok, jnp.linalg.norm(xy, axis=-1), jnp.inf)
    _, idx = jax.lax.top_k(-dist, k)
    take = lambda x: jnp.take_along_axis(x, idx.reshape(*idx.shape, *([1] * (x.ndim - 2))),  # noqa
                                         axis=1)
    boxes = jnp.concatenate([agent_states[:, :, 0, :3], agent_size[:, :, :2]], axis=-1)
    gt_boxes, gt_class, gt_valid = take(boxes), take(agent_class), take(ok)
    pad = num_targets - k
    if pad:
        gt_boxes = jnp.pad(gt_boxes, ((0, 0), (0, pad), (0, 0)))
        gt_class = jnp.pad(gt_class, ((0, 0), (0, pad)))
        gt_valid = jnp.pad(gt_valid, ((0, 0), (0, pad)))
    gt_boxes = jnp.where(gt_valid[..., None], gt_boxes, 0.0)
    return gt_boxes.astype(jnp.float32), gt_class.astype(jnp.int32), gt_valid


def box_l1(pred: jax.Array, gt: jax.Array) -> jax.Array:
    """pred [..., 5], gt [..., 5] -> [...]: L1 over x, y, l, w plus the wrapped heading error."""
    d = jnp.abs(pred - gt)
    return d[..., 0] + d[..., 1] + d[..., 3] + d[..., 4] + jnp.abs(_wrap(pred[..., 2] - gt[..., 2]))


def detection_loss(boxes: jax.Array, class_logits: jax.Array, gt_boxes: jax.Array,
                   gt_class: jax.Array, gt_valid: jax.Array, cfg: Any):
    """Hungarian-matched DETR loss.

    boxes [B, Q, 5], class_logits [B, Q, NUM_CLASSES + 1], gt_boxes [B, G, 5], gt_class [B, G],
    gt_valid [B, G] (G <= Q) -> (loss [], metrics dict of [] arrays).
    Cost and loss weights from ``config.model.detection`` (cost_class, cost_box, weight_class,
    weight_box, no_object_weight); as a jit static argument pass a hashable
    ``ml_collections.FrozenConfigDict``. Unmatched predictions learn "no object" (down-weighted).
    """
    b, q, _ = boxes.shape
    logp = jax.nn.log_softmax(class_logits, axis=-1)
    prob_gt = jnp.take_along_axis(jnp.exp(logp), gt_class[:, None, :], axis=-1)    # [B, Q, G]
    pair_l1 = box_l1(boxes[:, :, None, :], gt_boxes[:, None, :, :])                  # [B, Q, G]
    cost = jax.lax.stop_gradient(cfg.cost_class * -prob_gt + cfg.cost_box * pair_l1)
    assign = hungarian_match(cost, gt_valid)                                       # [B, G]

    safe = jnp.maximum(assign, 0)
    matched = jnp.take_along_axis(boxes, safe[..., None], axis=1)                  # [B, G, 5]
    n_gt = jnp.maximum(gt_valid.sum(), 1)
    l1 = jnp.sum(jnp.where(gt_valid, box_l1(matched, gt_boxes), 0.0)) / n_gt

    target = jnp.full((b, q), NUM_CLASSES, jnp.int32)
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], assign.shape)
    target = target.at[rows, jnp.where(gt_valid, assign, q)].set(gt_class, mode="drop")
    weight = jnp.where(target == NUM_CLASSES, cfg.no_object_weight, 1.0)
    nll = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    ce = jnp.sum(weight * nll) / jnp.sum(weight)

    loss = cfg.weight_class * ce + cfg.weight_box * l1
    acc = jnp.sum(jnp.where(gt_valid, jnp.take_along_axis(
        jnp.argmax(class_logits, -1), safe, axis=1) == gt_class, False)) / n_gt
    return loss, {"det_class_ce": ce, "det_box_l1": l1, "det_matched_class_acc": acc}


# ----------------------------------------------------------------------------------------------
class MapHead(nn.Module):
    """BEV -> (map_tokens [B, Nm, D], seg_logits [B, hs, ws, len(BEV_CLASSES)]).

    cfg (``config.model.map``): num_tokens, num_layers, num_heads, mlp_dim, seg_hw, range_m.
    """
    cfg: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, bev: jax.Array, train: bool = False):
        """bev [B, H, W, D] -> (map_tokens [B, Nm, D], seg_logits [B, hs, ws, 7] f32)."""
        cfg, dt = self.cfg, as_dtype(self.dtype)
        b, _, _, d = bev.shape
        tokens = _QueryDecoder(cfg.num_tokens, cfg.num_layers, cfg.num_heads, cfg.mlp_dim,
                               cfg.range_m, dt, name="decoder")(bev, train)
        y = nn.gelu(nn.Conv(d, (3, 3), padding="SAME", dtype=dt, name="seg_conv")(bev.astype(dt)))
        y = jax.image.resize(y, (b, *cfg.seg_hw, d), "linear")
        logits = nn.Conv(len(types.BEV_CLASSES), (1, 1), dtype=dt, name="seg_out")(y)
        return tokens, logits.astype(jnp.float32)


def map_loss(seg_logits: jax.Array, bev_semantic: jax.Array) -> jax.Array:
    """seg_logits [B, h, w, 7], bev_semantic [B, h, w] int (Scene label) -> mean cross-entropy."""
    if seg_logits.shape[:3] != bev_semantic.shape:
        raise ValueError(f"map_loss: logits {seg_logits.shape} do not match the BEV semantic "
                         f"labels {bev_semantic.shape} (config.model.map.seg_hw vs "
                         f"config.data.sizes.bev_hw)")
    logp = jax.nn.log_softmax(seg_logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, bev_semantic.astype(jnp.int32)[..., None], -1))
