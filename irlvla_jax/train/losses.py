"""Loss helpers shared by the training stages: focal, L1, cross-entropy — masked means in float32.

Every helper returns a scalar: the mean over the valid entries (0 when nothing is valid, so an
all-padding batch gives a zero loss rather than NaN).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from irlvla_jax.models import planner as planner_lib


def masked_mean(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean of ``x`` over entries where ``mask`` (broadcast to x) is true; 0 if none are."""
    x = x.astype(jnp.float32)
    if mask is None:
        return jnp.mean(x)
    m = jnp.broadcast_to(mask, x.shape).astype(jnp.float32)
    return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, alpha: float = 0.25,
                       gamma: float = 2.0, mask: jax.Array | None = None) -> jax.Array:
    """Sigmoid focal loss (Lin et al.), summed over the last axis, averaged over the rest.

    Args:
      logits, targets: [..., K] (targets in {0, 1}, e.g. one-hot over the planner's modes).
      mask: [...] optional validity of each row.
    """
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    p = jax.nn.sigmoid(logits)
    ce = optax.sigmoid_binary_cross_entropy(logits, targets)
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    loss = ce * (1.0 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
    return masked_mean(jnp.sum(loss, axis=-1), mask)


def l1_loss(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean absolute error; ``mask`` broadcasts against ``pred`` (e.g. [B, F, 1] per pose)."""
    return masked_mean(jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)), mask)


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None,
                  label_smoothing: float = 0.0) -> jax.Array:
    """Softmax cross-entropy with integer labels.

    Args:
      logits: [..., K]; labels: [...] int in [0, K); mask: [...] optional.
    """
    logits = logits.astype(jnp.float32)
    k = logits.shape[-1]
    onehot = jax.nn.one_hot(labels, k)
    if label_smoothing:
        onehot = onehot * (1.0 - label_smoothing) + label_smoothing / k
    return masked_mean(optax.softmax_cross_entropy(logits, onehot), mask)


def accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Top-1 accuracy. logits [..., K], labels [...]."""
    return masked_mean(jnp.argmax(logits, -1) == labels, mask)


def trajectory_imitation_loss(x0: jax.Array, logits: jax.Array, anchors: jax.Array,
                              expert: jax.Array, valid: jax.Array, planner_cfg,
                              focal_alpha: float, focal_gamma: float
                              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The planner's imitation terms (IL's, and stage 3's BC term): classify the anchor
    nearest the expert (sigmoid focal), regress that mode's denoised trajectory (L1).

    x0 [B,M,8,3] normalised, logits [B,M], anchors [M,8,3] metres, expert [B,8,3] metres,
    valid [B,8]. Returns (classification loss, L1 loss, target mode [B])."""
    target = planner_lib.nearest_anchor(anchors, expert, valid)                     # [B]
    l_cls = sigmoid_focal_loss(logits, jax.nn.one_hot(target, logits.shape[-1]),
                               focal_alpha, focal_gamma)
    pred = planner_lib.denormalize(
        jnp.take_along_axis(x0, target[:, None, None, None], axis=1)[:, 0], planner_cfg)
    return l_cls, l1_loss(pred, expert, valid[..., None]), target
