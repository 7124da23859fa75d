"""The unified diffusion planner: truncated diffusion around k-means anchors, DDIM chains.

DiffusionDrive-style truncated diffusion (arXiv 2411.15139) as IRL-VLA's planner:

* M anchor trajectories (``anchors.py``) are noised to a small diffusion time (train: t ~ U[0,
  ``train_t_max``) of a ``num_train_timesteps`` schedule), and the network predicts the clean
  trajectory x0 of every mode plus a per-mode classification logit.
* The network is N blocks of [self-attn over modes -> cross-attn meta tokens -> cross-attn BEV
  tokens -> cross-attn map tokens -> cross-attn object tokens -> FFN], conditioned (FiLM) on the
  diffusion time and an ego-status/command encoder.
* Sampling is DDIM with ``sample_steps`` steps (default 2) from the noised anchors. It returns
  the whole :class:`Chain` so that stage 3 (DPPO, arXiv 2409.00588) can treat each denoising step
  as a Gaussian policy N(mu_theta(x_k, k, scene), sigma_k^2) and re-evaluate the stored chain's
  log-probabilities under new parameters (:func:`chain_logprob`).

Trajectories are normalised for the network: ``(x - traj_center) / traj_scale`` per (x, y,
heading); the chain lives in that normalised space, ``Chain.traj`` is in metres/radians.

The planner network reads its scene context from :class:`SceneTokens` (built by
``policy.VLAPolicy.encode``); any token set may be ``None`` (e.g. the semantic LM switched off)
and its cross-attention is then skipped.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from irlvla_jax import types
from irlvla_jax.models import layers

CONTEXT_ORDER = ("meta", "bev", "map", "obj")   # cross-attention order inside a block


# ----------------------------------------------------------------------------------------------
# Pytrees crossing the planner boundary.

@flax.struct.dataclass
class SceneTokens:
    """What the policy's encoder hands to the planner (and to stage 2/3). Batch axis B.

    meta [B,Nmeta,D] | None: meta tokens of the semantic reasoner (None: LM disabled).
    meta_logits [B,NUM_META_ACTIONS] | None: meta-action logits.
    bev [B,Nb,D]: BEV tokens at the planner width (possibly pooled).
    bev_map [B,Hq,Wq,Dv]: the BEV feature map itself (stage 3 warps it).
    map [B,Nm,D], map_valid [B,Nm] bool: map tokens (map-head tokens and lane-vector tokens).
    obj [B,Q,D]: object tokens of the detection head.
    ego_status [B,E] f32: velocity [2], acceleration [2], command one-hot [4], history [4*3].
    aux: dict of head outputs used by the IL losses (boxes, class logits, segmentation logits).
    """
    meta: Any
    meta_logits: Any
    bev: Any
    bev_map: Any
    map: Any
    map_valid: Any
    obj: Any
    ego_status: Any
    aux: Any = flax.struct.field(default_factory=dict)


@flax.struct.dataclass
class Chain:
    """A sampled denoising chain (one per scene).

    x [B,S+1,M,8,3]: normalised trajectories of all modes; x[:,0] the noised anchors, x[:,S] the
      result. All modes are kept because they attend to each other: re-evaluating step k needs
      every mode's x_k.
    logprob [B,S]: per-step Gaussian log-prob of the chosen mode's transition x_k -> x_{k+1}
      (per-dimension log-densities clamped, then averaged over the 8x3 dimensions, as in DPPO).
    mode [B] int32: the chosen mode; mode_logprob [B]: its log-prob under the classifier.
    mode_logits [B,M]: the classifier logits at the last step.
    traj [B,8,3]: the chosen mode's final trajectory (metres, radians, ego frame).
    trajs [B,M,8,3]: all modes' final trajectories (metres, radians).
    """
    x: Any
    logprob: Any
    mode: Any
    mode_logprob: Any
    mode_logits: Any
    traj: Any
    trajs: Any


# ----------------------------------------------------------------------------------------------
# Noise schedule and normalisation (static: computed in numpy from the config).

def alphas_cumprod(cfg: Mapping[str, Any]) -> np.ndarray:
    """[T] cumulative alpha products of the 'scaled_linear' beta schedule (DiffusionDrive's)."""
    n = int(cfg["num_train_timesteps"])
    betas = np.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def sample_timesteps(cfg: Mapping[str, Any], steps: int | None = None) -> np.ndarray:
    """[S] decreasing DDIM timesteps: (S-1, ..., 0) * (sample_t_start // S).

    With ``sample_t_start=20`` and S=2 this is DiffusionDrive's (10, 0). The chain starts from the
    anchors noised to the first timestep.
    """
    s = int(cfg["sample_steps"] if steps is None else steps)
    ratio = int(cfg["sample_t_start"]) // s
    if s < 1 or ratio < 1:
        raise ValueError(f"planner: sample_steps={s} must be in [1, sample_t_start="
                         f"{cfg['sample_t_start']}]")
    return (np.arange(s)[::-1] * ratio).astype(np.int32)


def normalize(traj: jax.Array, cfg: Mapping[str, Any]) -> jax.Array:
    """[..., 3] metres/radians -> network space."""
    c = jnp.asarray(cfg["traj_center"], jnp.float32)
    s = jnp.asarray(cfg["traj_scale"], jnp.float32)
    return (traj - c) / s


def denormalize(x: jax.Array, cfg: Mapping[str, Any]) -> jax.Array:
    """[..., 3] network space -> metres/radians."""
    c = jnp.asarray(cfg["traj_center"], jnp.float32)
    s = jnp.asarray(cfg["traj_scale"], jnp.float32)
    return x * s + c


def q_sample(x0: jax.Array, t: jax.Array, noise: jax.Array, cfg: Mapping[str, Any]) -> jax.Array:
    """Forward diffusion. x0, noise [B,M,8,3]; t [B] int -> x_t [B,M,8,3]."""
    ac = jnp.asarray(alphas_cumprod(cfg), jnp.float32)[t][:, None, None, None]
    return jnp.sqrt(ac) * x0 + jnp.sqrt(1.0 - ac) * noise


# ----------------------------------------------------------------------------------------------
# The network.

def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding. t [B] (int or float) -> [B, dim] float32."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def fourier_features(x: jax.Array, num_freqs: int) -> jax.Array:
    """x [..., C] in about [-1, 1] -> [..., C * 2 * num_freqs]: sin/cos at pi * 2^k.

    Gives the trajectory encoder resolution finer than the normalised unit (centimetres)."""
    freqs = jnp.pi * (2.0 ** jnp.arange(num_freqs, dtype=jnp.float32))
    a = x[..., None] * freqs
    return jnp.concatenate([jnp.sin(a), jnp.cos(a)], axis=-1).reshape(*x.shape[:-1], -1)


class PlannerBlock(nn.Module):
    """[self-attn -> cross-attn meta -> BEV -> map -> objects -> FFN], then FiLM on cond."""
    d_model: int
    num_heads: int
    mlp_ratio: int
    dtype: Any

    @nn.compact
    def __call__(self, x, cond, context: Mapping[str, tuple[Any, Any]]):
        """x [B,M,D]; cond [B,D]; context name -> (tokens [B,N,D], valid [B,N] | None)."""
        head_dim = self.d_model // self.num_heads
        h = nn.LayerNorm(dtype=self.dtype, name="self_attn_norm")(x)
        x = x + layers.MultiHeadAttention(self.num_heads, self.num_heads, head_dim, self.dtype,
                                          name="self_attn")(h, h)
        for name in CONTEXT_ORDER:
            if name not in context:
                continue
            tok, valid = context[name]
            mask = None if valid is None else layers.key_padding_mask(valid)
            y = layers.CrossAttentionBlock(self.num_heads, head_dim, dtype=self.dtype,
                                           name=f"cross_{name}")(x, tok, mask)
            if valid is not None:
                # A scene with no valid key (e.g. no lanes nearby) must not read padding.
                y = x + (y - x) * jnp.any(valid, -1)[:, None, None].astype(y.dtype)
            x = y
        h = nn.LayerNorm(dtype=self.dtype, name="ffn_norm")(x)
        x = x + layers.MLP(self.d_model * self.mlp_ratio, dtype=self.dtype, name="ffn")(h)
        # Zero-initialised FiLM: the block starts as the identity modulation.
        ss = nn.Dense(2 * self.d_model, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                      name="film")(nn.silu(cond))
        scale, shift = jnp.split(ss, 2, axis=-1)
        return x * (1.0 + scale[:, None]) + shift[:, None]


class DiffusionPlanner(nn.Module):
    """x0-predicting denoiser over M trajectory modes.

    Config (``config.model.planner``): num_anchors, d_model, num_heads, num_blocks, mlp_ratio,
    fourier_freqs, traj_center, traj_scale, schedule fields (see :func:`alphas_cumprod`),
    remat (optional: the blocks rematerialised in the backward pass, ``layers.remat_policy``).
    The anchors live in the ``'anchors'`` variable collection (not trained, saved with the
    checkpoint); replace them with :func:`set_anchors` after ``init``.
    """
    cfg: Mapping[str, Any]
    dtype: Any = jnp.float32

    def setup(self):
        c = self.cfg
        m = int(c["num_anchors"])
        from irlvla_jax.models import anchors as anchors_lib
        self.anchors = self.variable("anchors", "value",
                                     lambda: jnp.asarray(anchors_lib.default_anchors(m)))
        d = int(c["d_model"])
        self.traj_in = [nn.Dense(d, dtype=self.dtype), nn.Dense(d, dtype=self.dtype)]
        self.time_mlp = [nn.Dense(d, dtype=self.dtype), nn.Dense(d, dtype=self.dtype)]
        self.ego_mlp = [nn.Dense(d, dtype=self.dtype), nn.Dense(d, dtype=self.dtype)]
        self.ctx_proj = {n: nn.Dense(d, dtype=self.dtype) for n in CONTEXT_ORDER}
        block = layers.maybe_remat(PlannerBlock, c.get("remat", ""))   # layers.remat_policy
        self.blocks = [block(d, int(c["num_heads"]), int(c["mlp_ratio"]), self.dtype)
                       for _ in range(int(c["num_blocks"]))]
        self.out_norm = nn.LayerNorm(dtype=self.dtype)
        self.reg_head = [nn.Dense(d, dtype=self.dtype),
                         nn.Dense(types.PLAN_LEN * 3, dtype=jnp.float32,
                                  kernel_init=nn.initializers.zeros)]
        self.cls_head = [nn.Dense(d, dtype=self.dtype), nn.Dense(1, dtype=jnp.float32)]

    def anchors_normalized(self) -> jax.Array:
        """[M,8,3] anchors in network space."""
        return normalize(self.anchors.value, self.cfg)

    def __call__(self, x_t: jax.Array, t: jax.Array, tokens: SceneTokens
                 ) -> tuple[jax.Array, jax.Array]:
        """Denoise. x_t [B,M,8,3] normalised; t [B] int -> (x0 [B,M,8,3] normalised f32,
        logits [B,M] f32)."""
        b, m = x_t.shape[:2]
        h = fourier_features(x_t.reshape(b, m, -1), int(self.cfg["fourier_freqs"]))
        h = self.traj_in[1](nn.gelu(self.traj_in[0](h.astype(self.dtype))))
        temb = timestep_embedding(t, int(self.cfg["d_model"])).astype(self.dtype)
        temb = self.time_mlp[1](nn.silu(self.time_mlp[0](temb)))
        ego = self.ego_mlp[1](nn.silu(self.ego_mlp[0](tokens.ego_status.astype(self.dtype))))
        cond = temb + ego
        h = h + ego[:, None]
        context = {}
        for name, (tok, valid) in {"meta": (tokens.meta, None), "bev": (tokens.bev, None),
                                   "map": (tokens.map, tokens.map_valid),
                                   "obj": (tokens.obj, None)}.items():
            if tok is not None:
                context[name] = (self.ctx_proj[name](tok.astype(self.dtype)), valid)
        for blk in self.blocks:
            h = blk(h, cond, context)
        h = self.out_norm(h)
        delta = self.reg_head[1](nn.gelu(self.reg_head[0](h))).reshape(b, m, types.PLAN_LEN, 3)
        # x0 is predicted as a correction of a base trajectory. "anchor" (default): the mode's
        # clean anchor, so the head learns the scene-dependent offset and never has to cancel
        # the diffusion noise (which it sees through x_t's features). "noisy": x_t itself; on
        # the embedded default this trained ~3x worse per step (held-out L2 at 2 s 2.1 m vs
        # 1.4 m after 1,200 planner-only steps): undoing metres of noise from Fourier features
        # of x_t is the hard part of the residual.
        base = self.anchors_normalized()[None] if self.cfg.get("x0_base", "anchor") == "anchor" \
            else x_t
        x0 = jnp.broadcast_to(base, x_t.shape).astype(jnp.float32) + delta.astype(jnp.float32)
        logits = self.cls_head[1](nn.gelu(self.cls_head[0](h)))[..., 0].astype(jnp.float32)
        return x0, logits


def set_anchors(variables: Mapping[str, Any], anchors: np.ndarray | jax.Array,
                path: tuple[str, ...] = ()) -> dict:
    """Return ``variables`` with the planner's anchors replaced by ``anchors`` [M,8,3].

    ``path`` is the module path of the planner inside the model (e.g. ``('planner',)``).
    """
    variables = flax.core.unfreeze(variables) if hasattr(flax.core, "unfreeze") else dict(variables)
    node = variables["anchors"]
    for p in path:
        node = node[p]
    old = node["value"]
    a = jnp.asarray(anchors, jnp.float32)
    if a.shape != old.shape:
        raise ValueError(f"set_anchors: anchors have shape {a.shape}, the planner expects "
                         f"{old.shape} (config.model.planner.num_anchors)")
    node["value"] = a
    return variables


# ----------------------------------------------------------------------------------------------
# Training target and loss pieces.

def nearest_anchor(anchors: jax.Array, expert: jax.Array, valid: jax.Array | None = None
                   ) -> jax.Array:
    """Index of the anchor closest to the expert (mean xy distance over valid poses).

    anchors [M,8,3], expert [B,8,3], valid [B,8] -> [B] int32.
    """
    d = jnp.linalg.norm(anchors[None, :, :, :2] - expert[:, None, :, :2], axis=-1)  # [B,M,8]
    if valid is None:
        valid = jnp.ones(expert.shape[:2], bool)
    w = valid[:, None, :].astype(jnp.float32)
    return jnp.argmin(jnp.sum(d * w, -1) / jnp.maximum(jnp.sum(w, -1), 1.0), -1).astype(jnp.int32)


def training_inputs(anchors_n: jax.Array, batch: int, rng: jax.Array, cfg: Mapping[str, Any]
                    ) -> tuple[jax.Array, jax.Array]:
    """Noised anchors for a training step: anchors_n [M,8,3] normalised ->
    (x_t [B,M,8,3], t [B] int32 with t ~ U[0, train_t_max))."""
    k_t, k_n = jax.random.split(rng)
    t = jax.random.randint(k_t, (batch,), 0, int(cfg["train_t_max"]))
    x0 = jnp.broadcast_to(anchors_n, (batch, *anchors_n.shape))
    noise = jax.random.normal(k_n, x0.shape, jnp.float32)
    return q_sample(x0, t, noise, cfg), t.astype(jnp.int32)


# ----------------------------------------------------------------------------------------------
# DDIM chains.

DenoiseFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def _ddim_mean_std(x_t, x0, t: int, t_prev: int, eta: float, cfg):
    """DDIM posterior mean and std (before flooring). x_t, x0 [B,M,8,3]; t, t_prev static ints
    (t_prev = -1: the end of the chain, alpha_prev = 1)."""
    ac = alphas_cumprod(cfg)
    a_t = float(ac[t])
    a_prev = 1.0 if t_prev < 0 else float(ac[t_prev])
    clip = float(cfg["x0_clip"])
    if clip > 0:
        x0 = jnp.clip(x0, -clip, clip)
    eps = (x_t - math.sqrt(a_t) * x0) / math.sqrt(1.0 - a_t)
    sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t)) * math.sqrt(1.0 - a_t / a_prev)
    mean = math.sqrt(a_prev) * x0 + math.sqrt(max(1.0 - a_prev - sigma ** 2, 0.0)) * eps
    return mean, sigma


CHAIN_NOISES = ("white", "smooth")


@functools.lru_cache(maxsize=None)
def smooth_noise_basis(dims: int) -> np.ndarray:
    """[8, dims] orthonormal columns spanning t, t^2, .., t^dims at the plan's waypoint times
    t = 0.5 .. 4 s: smooth displacements that vanish at t = 0 (a change of speed, of
    acceleration, ...), the same basis for x, y and heading."""
    if not 1 <= dims <= types.PLAN_LEN:
        raise ValueError(f"chain_noise_dims = {dims}: expected 1 .. {types.PLAN_LEN}")
    t = 0.5 * np.arange(1, types.PLAN_LEN + 1) / (0.5 * types.PLAN_LEN)           # (0, 1]
    q, _ = np.linalg.qr(np.stack([t ** (k + 1) for k in range(dims)], -1))
    return q.astype(np.float32)


def _chain_noise(cfg) -> tuple[str, int]:
    kind = cfg.get("chain_noise", "white")
    if kind not in CHAIN_NOISES:
        raise ValueError(f"chain_noise = {kind!r}: expected one of {CHAIN_NOISES}")
    return kind, int(cfg.get("chain_noise_dims", 3))


def _sample_noise(key, shape, cfg) -> jax.Array:
    """Standard noise of a chain transition, shape [..., 8, 3]: white (i.i.d. per waypoint and
    coordinate) or, with ``chain_noise = "smooth"``, ``chain_noise_dims`` i.i.d. N(0, 1)
    coefficients per coordinate on :func:`smooth_noise_basis`."""
    kind, dims = _chain_noise(cfg)
    if kind == "white":
        return jax.random.normal(key, shape, jnp.float32)
    basis = jnp.asarray(smooth_noise_basis(dims))
    z = jax.random.normal(key, (*shape[:-2], dims, shape[-1]), jnp.float32)
    return jnp.einsum("tk,...kc->...tc", basis, z)


def _gaussian_logprob(x, mean, std, cfg):
    """Log-density of a transition x ~ mean + std * noise, per dimension of the noise, clamped
    to cfg.logprob_clamp, averaged over the dimensions: (8, 3) for white noise, (dims, 3) basis
    coefficients for smooth noise (the density on the basis' subspace, where x - mean lies).
    x, mean [B,8,3] -> [B]."""
    d = (x - mean) / std
    kind, dims = _chain_noise(cfg)
    if kind == "smooth":
        d = jnp.einsum("tk,...tc->...kc", jnp.asarray(smooth_noise_basis(dims)), d)
    lp = -0.5 * d ** 2 - math.log(std) - 0.5 * math.log(2.0 * math.pi)
    lo, hi = cfg["logprob_clamp"]
    return jnp.mean(jnp.clip(lp, lo, hi), axis=(-2, -1))


def _take_mode(x, mode):
    """x [B,M,...], mode [B] -> [B,...]."""
    return jnp.take_along_axis(x, mode.reshape(-1, *([1] * (x.ndim - 1))), axis=1)[:, 0]


def sample_chain(denoise: DenoiseFn, anchors_n: jax.Array, batch: int, rng: jax.Array,
                 cfg: Mapping[str, Any], *, stochastic: bool = False, steps: int | None = None,
                 eta: float | None = None, sigma_min: float | None = None) -> Chain:
    """Run the DDIM chain from noised anchors.

    Args:
      denoise: (x_t [B,M,8,3], t [B] int) -> (x0 [B,M,8,3], logits [B,M]) (the planner applied
        to fixed scene tokens).
      anchors_n: [M,8,3] normalised anchors.
      stochastic: sample each transition from N(mean, max(sigma, sigma_min)^2) and the mode from
        the classifier; otherwise take the means and the argmax mode (evaluation).
      steps, eta, sigma_min: override ``cfg.sample_steps``, ``cfg.eta``, ``cfg.sigma_min_sample``.
    Returns:
      :class:`Chain`; its logprob uses std floored at ``cfg.sigma_min_logprob`` (>= the sampling
      floor, as DPPO does, so re-evaluated ratios stay well conditioned).
    """
    ts = sample_timesteps(cfg, steps)
    eta = float(cfg["eta"] if eta is None else eta)
    # may be traced (one compiled sampler for several exploration levels)
    sigma_min = cfg["sigma_min_sample"] if sigma_min is None else sigma_min
    k_init, k_steps, k_mode = jax.random.split(rng, 3)
    x0_anchor = jnp.broadcast_to(anchors_n, (batch, *anchors_n.shape))
    noise = jax.random.normal(k_init, x0_anchor.shape, jnp.float32)
    x = q_sample(x0_anchor, jnp.full((batch,), ts[0], jnp.int32), noise, cfg)
    xs, means, stds = [x], [], []
    logits = None
    step_keys = jax.random.split(k_steps, len(ts))
    for i, t in enumerate(ts):
        t_prev = int(ts[i + 1]) if i + 1 < len(ts) else -1
        x0, logits = denoise(x, jnp.full((batch,), int(t), jnp.int32))
        mean, sigma = _ddim_mean_std(x, x0, int(t), t_prev, eta, cfg)
        if stochastic:
            std = jnp.maximum(sigma, sigma_min)
            x = mean + std * _sample_noise(step_keys[i], mean.shape, cfg)
        else:
            x = mean
        xs.append(x)
        means.append(mean)
        stds.append(max(sigma, float(cfg["sigma_min_logprob"])))
    if stochastic:
        mode = jax.random.categorical(k_mode, logits).astype(jnp.int32)
    else:
        mode = jnp.argmax(logits, -1).astype(jnp.int32)
    xs_arr = jnp.stack(xs, axis=1)
    logprob = jnp.stack([_gaussian_logprob(_take_mode(xs[i + 1], mode), _take_mode(means[i], mode),
                                           stds[i], cfg) for i in range(len(ts))], axis=1)
    mode_logprob = _take_mode(jax.nn.log_softmax(logits, -1)[..., None], mode)[..., 0]
    trajs = denormalize(x, cfg)
    return Chain(x=xs_arr, logprob=logprob, mode=mode, mode_logprob=mode_logprob,
                 mode_logits=logits, traj=_take_mode(trajs, mode), trajs=trajs)


def evaluate_chain(denoise: DenoiseFn, chain: Chain, cfg: Mapping[str, Any], *,
                   eta: float | None = None, all_modes: bool = False
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Re-evaluate a stored chain under the (possibly new) parameters inside ``denoise``.

    chain.x [B,S+1,M,8,3], chain.mode [B] ->
      (logprob [B,S] of each stored transition of the chosen mode — [B,S,M], every mode's,
      with ``all_modes`` —, mode_logprob [B], entropy of the mode classifier [B]).
    """
    steps = chain.x.shape[1] - 1
    ts = sample_timesteps(cfg, steps)
    eta = float(cfg["eta"] if eta is None else eta)
    b = chain.x.shape[0]
    lps, logits = [], None
    for i, t in enumerate(ts):
        t_prev = int(ts[i + 1]) if i + 1 < len(ts) else -1
        x_t = chain.x[:, i]
        x0, logits = denoise(x_t, jnp.full((b,), int(t), jnp.int32))
        mean, sigma = _ddim_mean_std(x_t, x0, int(t), t_prev, eta, cfg)
        std = max(sigma, float(cfg["sigma_min_logprob"]))
        if all_modes:
            lps.append(_gaussian_logprob(chain.x[:, i + 1], mean, std, cfg))      # [B,M]
        else:
            lps.append(_gaussian_logprob(_take_mode(chain.x[:, i + 1], chain.mode),
                                         _take_mode(mean, chain.mode), std, cfg))
    logp_all = jax.nn.log_softmax(logits, -1)
    mode_logprob = _take_mode(logp_all[..., None], chain.mode)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, -1)
    return jnp.stack(lps, axis=1), mode_logprob, entropy


def chain_logprob(denoise: DenoiseFn, chain: Chain, cfg: Mapping[str, Any]) -> jax.Array:
    """[B,S] per-step log-probs of ``chain``'s stored transitions under ``denoise``."""
    return evaluate_chain(denoise, chain, cfg)[0]
