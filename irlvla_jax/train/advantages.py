"""Advantages for PPO on the denoising chain: GAE over planning steps, group baselines, and the
discount along the DDIM chain.

Two time axes meet in stage 3 (spec/IRL_VLA.md, "RL (stage 3)"):

* the *environment* axis t = 0..T-1: closed-loop planning steps of 0.5 s inside the world model,
  each with one reward. Advantages over it come from GAE(gamma, lambda) with the value head, or
  from a GRPO-style group baseline over the G samples of the same scene;
* the *denoising* axis s = 0..S-1 inside one planning step (DPPO): every denoising transition is
  an action of the same environment step, and they share its advantage, discounted by
  ``gamma_denoise ** (S - 1 - s)`` so the early, noisy steps (far from the reward) count less.

Episodes have a fixed length T and end there: the value after the last step is 0 (the episode is
terminal, the single-shot T = 1 setting reduces to A = r - V). All functions are pure ``jnp``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gae(rewards: jax.Array, values: jax.Array, gamma: float, lam: float,
        last_value: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation with a reverse ``lax.scan`` over time.

    Args:
      rewards: [T, ...] reward of each planning step.
      values: [T, ...] value-head estimates V(s_t).
      gamma, lam: discount and GAE lambda.
      last_value: [...] V(s_T) after the last step (None: 0, the episode ends at T).
    Returns:
      (advantages [T, ...], returns [T, ...] = advantages + values, the value targets).
    """
    if rewards.shape != values.shape:
        raise ValueError(f"gae: rewards {rewards.shape} and values {values.shape} differ")
    nxt = jnp.zeros_like(values[0]) if last_value is None else last_value
    next_values = jnp.concatenate([values[1:], nxt[None]], axis=0)
    deltas = rewards + gamma * next_values - values

    def body(carry, delta):
        adv = delta + gamma * lam * carry
        return adv, adv

    _, adv = jax.lax.scan(body, jnp.zeros_like(values[0]), deltas, reverse=True)
    return adv, adv + values


def discounted_returns(rewards: jax.Array, gamma: float) -> jax.Array:
    """Reward-to-go. rewards [T, ...] -> [T, ...] with R_t = sum_k gamma^k r_{t+k}."""
    def body(carry, r):
        ret = r + gamma * carry
        return ret, ret
    _, ret = jax.lax.scan(body, jnp.zeros_like(rewards[0]), rewards, reverse=True)
    return ret


def group_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """GRPO-style baseline: standardise over the G samples of each scene.

    x [..., G] (e.g. returns [T, B, G]) -> [..., G] with zero mean and unit std over G (a group
    whose samples all score the same gets advantage 0, not noise).
    """
    mean = jnp.mean(x, axis=-1, keepdims=True)
    std = jnp.std(x, axis=-1, keepdims=True)
    return (x - mean) / (std + eps)


def chain_discount(num_steps: int, gamma_denoise: float) -> jax.Array:
    """[S] weights gamma_denoise^(S-1-s) of the denoising steps s = 0..S-1 (last step: 1)."""
    return jnp.asarray(gamma_denoise, jnp.float32) ** jnp.arange(num_steps - 1, -1, -1,
                                                                  dtype=jnp.float32)


def chain_advantages(advantages: jax.Array, num_steps: int, gamma_denoise: float) -> jax.Array:
    """Share each planning step's advantage across its S denoising steps.

    advantages [...] -> [..., S] = advantages * gamma_denoise^(S-1-s).
    """
    return advantages[..., None] * chain_discount(num_steps, gamma_denoise)


def clip_schedule(num_steps: int, clip_first: float, clip_last: float, rate: float = 3.0
                  ) -> jax.Array:
    """Per-denoising-step PPO clip range (DPPO): small at the first, noisiest step, growing
    exponentially to ``clip_last`` at the final step.

    Returns [S]: clip_first + (clip_last - clip_first) * (e^{rate u} - 1) / (e^{rate} - 1),
    u = s / (S - 1) (S = 1: clip_last).
    """
    if num_steps == 1:
        return jnp.full((1,), clip_last, jnp.float32)
    u = jnp.arange(num_steps, dtype=jnp.float32) / (num_steps - 1)
    if rate == 0:
        w = u
    else:
        w = (jnp.exp(rate * u) - 1.0) / (jnp.exp(jnp.float32(rate)) - 1.0)
    return clip_first + (clip_last - clip_first) * w
