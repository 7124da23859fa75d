"""Loss helpers shared by the training stages: focal, L1, cross-entropy — masked means in float32.

Every helper returns a scalar: the mean over the valid entries (0 when nothing is valid, so an
all-padding batch gives a zero loss rather than NaN).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


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
