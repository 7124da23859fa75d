"""Candidate trajectories for the reward world model: expert, vocabulary, policy samples,
perturbations of the expert.

Per scene the RWM is trained on K = 1 + num_vocab + num_policy + num_perturb candidates, in
that order (``source`` says which is which). The mix matters: the vocabulary covers the space
of plausible manoeuvres, the policy samples are where stage 3 will query the RWM, and the
perturbed experts are near misses whose sub-scores flip (off the road, too fast, swerving),
the cases a reward model must separate from the expert.

All functions are pure ``jnp`` with static counts, so they run inside the jitted IRL step.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from irlvla_jax import geometry as geo
from irlvla_jax import types

EXPERT, VOCAB, POLICY, PERTURB = 0, 1, 2, 3
SOURCE_NAMES = ("expert", "vocab", "policy", "perturb")
PERTURB_KINDS = ("lateral", "speed", "heading", "noise")


def source_ids(num_vocab: int, num_policy: int, num_perturb: int) -> jax.Array:
    """[K] int32 source of each candidate slot (EXPERT, VOCAB, POLICY, PERTURB)."""
    return jnp.concatenate([jnp.full((1,), EXPERT), jnp.full((num_vocab,), VOCAB),
                            jnp.full((num_policy,), POLICY),
                            jnp.full((num_perturb,), PERTURB)]).astype(jnp.int32)


def _headings_from_path(xy):
    """xy [...,8,2] -> [...,8] heading of the chord into each pose (from the origin first);
    a (near-)stopped step keeps the previous heading."""
    prev = jnp.concatenate([jnp.zeros_like(xy[..., :1, :]), xy[..., :-1, :]], -2)
    d = xy - prev
    moving = jnp.linalg.norm(d, axis=-1) > 0.05
    h = jnp.arctan2(d[..., 1], d[..., 0])
    # Forward-fill the stopped steps with the last moving heading (0 before any motion).
    idx = jnp.broadcast_to(jnp.arange(h.shape[-1]), h.shape)
    last = jax.lax.cummax(jnp.where(moving, idx, -1), axis=h.ndim - 1)
    filled = jnp.take_along_axis(h, jnp.maximum(last, 0), axis=-1)
    return jnp.where(last >= 0, filled, 0.0)


def _lateral(expert, mag):
    """Shift sideways (left of each pose) by ``mag`` ramped in linearly over the 4 s."""
    ramp = jnp.arange(1, types.PLAN_LEN + 1, dtype=jnp.float32) / types.PLAN_LEN
    h = expert[..., 2]
    normal = jnp.stack([-jnp.sin(h), jnp.cos(h)], -1)
    xy = expert[..., :2] + (mag[..., None] * ramp)[..., None] * normal
    return jnp.concatenate([xy, _headings_from_path(xy)[..., None]], -1)


def _speed(expert, factor):
    """Time-scale the path: pose at t becomes the expert's pose at factor * t (linear
    interpolation of the 9 knots incl. the origin, extrapolating the last segment)."""
    knots = jnp.concatenate([jnp.zeros_like(expert[..., :1, :]), expert], -2)   # [...,9,3]
    knots = knots.at[..., 2].set(jnp.unwrap(knots[..., 2], axis=-1))
    q = factor[..., None] * jnp.arange(1, types.PLAN_LEN + 1, dtype=jnp.float32)  # knot units
    i0 = jnp.clip(jnp.floor(q), 0, types.PLAN_LEN - 1).astype(jnp.int32)
    frac = (q - i0)[..., None]
    a = jnp.take_along_axis(knots, i0[..., None], axis=-2)
    b = jnp.take_along_axis(knots, (i0 + 1)[..., None], axis=-2)
    out = a + (b - a) * frac
    return out.at[..., 2].set(geo.wrap_angle(out[..., 2]))


def _heading(expert, angle):
    """Rotate the whole plan about the ego rear axle by ``angle``."""
    origin = jnp.stack([jnp.zeros_like(angle), jnp.zeros_like(angle), angle], -1)
    return geo.to_global(expert, origin[..., None, :])


def _noise(expert, walk, scale):
    """Gaussian noise on positions growing with time (a random walk of standard normal steps
    ``walk`` [...,8,2] times ``scale``), headings re-derived."""
    steps = walk * scale[..., None, None]
    xy = expert[..., :2] + jnp.cumsum(steps, axis=-2)
    return jnp.concatenate([xy, _headings_from_path(xy)[..., None]], -1)


def perturb_expert(expert, rng: jax.Array, num: int, cfg: Mapping[str, Any]):
    """``num`` perturbations of each expert plan, cycling through ``PERTURB_KINDS``.

    Args:
      expert: [B,8,3] expert plans (ego frame).
      rng: key; num: static count; cfg: ``config.irl.perturb`` (lateral_m, speed_range,
        heading_rad, noise_m: magnitudes drawn uniformly in [-x, x] / [lo, hi]).
    Returns:
      [B,num,8,3].
    """
    cfg = dict(cfg)       # a ConfigDict, a dict, or (for a static jit argument) its items
    b = expert.shape[0]
    e = jnp.broadcast_to(expert[:, None], (b, num, types.PLAN_LEN, 3)).astype(jnp.float32)
    # One draw for everything (each random op is a sizeable compile on CPU): the last slot of
    # z gives the magnitudes, uniform in (-1, 1) through the normal CDF; the rest the noise.
    z = jax.random.normal(rng, (b, num, types.PLAN_LEN * 2 + 1))
    u = jax.scipy.special.erf(z[..., -1] / jnp.sqrt(2.0))
    walk = z[..., :-1].reshape(b, num, types.PLAN_LEN, 2)
    lo, hi = cfg["speed_range"]
    kind = jnp.arange(num) % len(PERTURB_KINDS)
    outs = [
        _lateral(e, u * cfg["lateral_m"]),
        _speed(e, lo + (hi - lo) * 0.5 * (u + 1.0)),
        _heading(e, u * cfg["heading_rad"]),
        _noise(e, walk, jnp.abs(u) * cfg["noise_m"]),
    ]
    return jnp.select([(kind == i)[None, :, None, None] for i in range(len(outs))], outs)


def held_expert(scene: types.Scene) -> jax.Array:
    """[B,8,3] the logged expert plan from the current pose; poses past the end of the log
    (invalid after the world was shifted) hold the last logged pose (the origin if none)."""
    fut = scene.expert_future[:, : types.PLAN_LEN]
    valid = scene.expert_future_valid[:, : types.PLAN_LEN].astype(bool)
    idx = jnp.broadcast_to(jnp.arange(types.PLAN_LEN), valid.shape)
    last = jax.lax.cummax(jnp.where(valid, idx, -1), axis=1)
    held = jnp.take_along_axis(fut, jnp.maximum(last, 0)[..., None], axis=1)
    return jnp.where((last >= 0)[..., None], held, 0.0)


def top_modes(chain, num: int) -> jax.Array:
    """[B,num,8,3] the trajectories of a sampled chain's ``num`` modes the classifier ranks
    highest (the policy-sample candidates)."""
    top = jnp.argsort(-chain.mode_logits, axis=-1)[:, :num]
    return jnp.take_along_axis(chain.trajs, top[..., None, None], axis=1)


def make_candidates(expert, vocab, policy_trajs, rng: jax.Array, num_vocab: int,
                    num_perturb: int, perturb_cfg: Mapping[str, Any]):
    """Assemble the K candidates of each scene.

    Args:
      expert: [B,8,3] the expert plans (``scene.expert_future[:, :8]``).
      vocab: [M,8,3] the k-means trajectory vocabulary; ``num_vocab`` of them are drawn per
        scene without replacement (all M when num_vocab == M).
      policy_trajs: [B,Np,8,3] samples of the stage-1 policy, or None (Np = 0).
      rng: key; num_vocab, num_perturb: static counts.
    Returns:
      trajs [B,K,8,3] with K = 1 + num_vocab + Np + num_perturb, source [K] int32.
    """
    b = expert.shape[0]
    m = vocab.shape[0]
    if num_vocab > m:
        raise ValueError(f"candidates: num_vocab={num_vocab} > {m} vocabulary trajectories "
                         f"(config.irl.num_vocab vs the anchors)")
    k_vocab, k_pert = jax.random.split(rng)
    # A random subset per scene: the num_vocab smallest of M uniform keys (one sort, no loop).
    pick = jnp.argsort(jax.random.uniform(k_vocab, (b, m)), axis=-1)[:, :num_vocab]   # [B,nv]
    voc = jnp.asarray(vocab, jnp.float32)[pick]
    parts = [expert[:, None].astype(jnp.float32), voc]
    num_policy = 0
    if policy_trajs is not None:
        parts.append(policy_trajs.astype(jnp.float32))
        num_policy = policy_trajs.shape[1]
    parts.append(perturb_expert(expert, k_pert, num_perturb, perturb_cfg))
    return jnp.concatenate(parts, 1), source_ids(num_vocab, num_policy, num_perturb)
