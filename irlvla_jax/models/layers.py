"""Transformer building blocks shared by every model: attention, feed-forwards, norms, RoPE.

Conventions: Flax Linen, float32 params, compute dtype ``dtype`` (a jnp dtype or its name).
Sub-module names follow the HuggingFace LLaMA layout (``self_attn.q_proj``, ``mlp.gate_proj``,
``input_layernorm`` ...) so pretrained decoders map onto them name for name
(see :func:`irlvla_jax.models.semantic.load_hf_llama`).

Masks are boolean, ``True`` = may attend, broadcastable to ``[B, heads, Nq, Nk]``;
:func:`key_padding_mask` turns a ``[B, Nk]`` valid mask into that form.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def as_dtype(dtype: Dtype) -> jnp.dtype:
    """``"bfloat16"`` / ``jnp.bfloat16`` / ``None`` (float32) -> a jnp dtype."""
    return jnp.dtype(dtype or jnp.float32)


# Rematerialisation (activation checkpointing) of repeated blocks: ``config.model.semantic.llm.
# remat``, ``config.model.bev.remat``, ``config.model.planner.remat`` name one of these policies
# ("" = off). Params keep their paths either way, so checkpoints load with or without it.
REMAT_POLICIES = ("nothing_saveable", "dots_with_no_batch_dims_saveable", "dots_saveable")


def remat_policy(name: str | None) -> Callable | None:
    """A block's remat switch -> a ``jax.checkpoint_policies`` policy, or None when off.

    "nothing_saveable": the backward pass keeps only each block's input and recomputes the
    rest (least memory, one more forward per block); "dots_with_no_batch_dims_saveable" also
    keeps the weight matmuls' outputs (recomputes attention scores, norms, activations);
    "dots_saveable" keeps every matmul output, attention's included.
    """
    if not name:
        return None
    if name not in REMAT_POLICIES:
        raise ValueError(f"remat = {name!r}: expected '' (off) or one of {REMAT_POLICIES}")
    return getattr(jax.checkpoint_policies, name)


def maybe_remat(target: Any, name: str | None, static_argnums: tuple[int, ...] = ()) -> Any:
    """``target`` (a Module class, or a function taking a module first) wrapped in
    ``nn.remat`` with :func:`remat_policy` (``name``), or ``target`` itself when ``name`` is
    empty. ``static_argnums`` count ``self`` (or the function's module) as 0: Python values
    (flags such as ``causal`` or ``train``) must be passed positionally at those places."""
    policy = remat_policy(name)
    if policy is None:
        return target
    return nn.remat(target, policy=policy, static_argnums=static_argnums)


def key_padding_mask(valid: jax.Array) -> jax.Array:
    """valid [B, Nk] bool -> attention mask [B, 1, 1, Nk]."""
    return valid[:, None, None, :]


# ----------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """Root-mean-square norm (LLaMA): ``x / rms(x) * scale``, statistics in float32."""
    eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., D] -> [..., D] in ``dtype``."""
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * scale).astype(as_dtype(self.dtype))


def rope_frequencies(positions: jax.Array, head_dim: int, base: float = 10000.0):
    """positions [..., N] (int or float) -> (cos, sin), each [..., N, head_dim] float32.

    HuggingFace LLaMA layout: frequency i is used by channels i and i + head_dim / 2.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq          # [..., N, Dh/2]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding (rotate-half form, as HF LLaMA/Qwen).

    x [B, N, heads, Dh]; positions [B, N] or [N] -> [B, N, heads, Dh] (dtype of x).
    The dot product of two rotated vectors depends only on their position difference.
    """
    cos, sin = rope_frequencies(positions, x.shape[-1], base)
    if cos.ndim == 2:                       # [N, Dh] -> broadcast over the batch
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


# ----------------------------------------------------------------------------------------------
def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None,
              causal: bool = False, q_chunk: int = 0) -> jax.Array:
    """``jax.nn.dot_product_attention`` of q [B, Nq, H, Dh] over k, v [B, Nk, Hkv, Dh]
    -> [B, Nq, H, Dh]; mask bool broadcastable to [B, H, Nq, Nk].

    ``q_chunk`` > 0 (and < Nq, not causal): the queries are attended ``q_chunk`` at a time in a
    ``lax.map`` whose body is rematerialised, so the [B, H, Nq, Nk] score matrix never exists
    at once, in the forward or the backward pass; only a [B, H, q_chunk, Nk] slice. Queries
    attend independently, so the result is the same (exact up to float rounding). For the BEV
    queries (128 x 128 cells x the camera tokens) that matrix is the largest buffer of the IL
    step.
    """
    b, nq, h, dh = q.shape
    nk = k.shape[1]
    if mask is not None:
        mask = jnp.reshape(mask, (1,) * (4 - mask.ndim) + mask.shape)
        mask = jnp.broadcast_to(mask, (b, h, mask.shape[2], nk))
    if not q_chunk or q_chunk >= nq or causal:
        if mask is not None:
            mask = jnp.broadcast_to(mask, (b, h, nq, nk))
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
    if nq % q_chunk:
        raise ValueError(f"attention: {nq} queries are not divisible by q_chunk={q_chunk}")
    n = nq // q_chunk
    qs = jnp.moveaxis(q.reshape(b, n, q_chunk, h, dh), 1, 0)            # [n, B, c, H, Dh]
    per_query_mask = mask is not None and mask.shape[2] == nq
    ms = jnp.moveaxis(mask.reshape(b, h, n, q_chunk, nk), 2, 0) if per_query_mask else None

    @jax.checkpoint
    def one(qc, mc):
        if mask is not None:
            mc = jnp.broadcast_to(mask if mc is None else mc, (b, h, q_chunk, nk))
        return jax.nn.dot_product_attention(qc, k, v, mask=mc)
    y = jax.lax.map(lambda a: one(*a), (qs, ms))                         # [n, B, c, H, Dh]
    return jnp.moveaxis(y, 0, 1).reshape(b, nq, h, dh)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with grouped-query heads (``num_kv_heads`` divides ``num_heads``).

    ``num_kv_heads == num_heads`` is standard MHA, ``1`` is multi-query attention.
    Projections ``q_proj, k_proj, v_proj, o_proj`` (HF names); ``qkv_bias`` as in Qwen2.
    """
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: Dtype = jnp.float32
    out_dim: int | None = None        # default: the query input's width
    qkv_bias: bool = False
    out_bias: bool = False
    rope_base: float = 10000.0
    q_chunk: int = 0                  # queries attended in chunks of this many (see attention)

    @nn.compact
    def __call__(self, q_in: jax.Array, kv_in: jax.Array, mask: jax.Array | None = None,
                 rope_positions: jax.Array | tuple[jax.Array, jax.Array] | None = None,
                 causal: bool = False, v_in: jax.Array | None = None) -> jax.Array:
        """q_in [B, Nq, Dq], kv_in [B, Nk, Dk] -> [B, Nq, out_dim or Dq].

        mask: bool, broadcastable to [B, num_heads, Nq, Nk]; True = attend. A query whose keys
          are all masked gets the mean of the values (no NaN).
        rope_positions: [B, N] / [N] shared by queries and keys (self-attention), or a pair
          (q_positions, k_positions); None = no rotary embedding.
        causal: additionally mask keys after the query (requires Nq == Nk).
        v_in [B, Nk, Dk]: values from a different input than keys (keys with position
          embeddings added, values without); default kv_in.
        """
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")
        dt = as_dtype(self.dtype)
        dense = lambda n, name, bias: nn.DenseGeneral(  # noqa: E731
            (n, self.head_dim), dtype=dt, param_dtype=jnp.float32, use_bias=bias, name=name)
        q = dense(self.num_heads, "q_proj", self.qkv_bias)(q_in)
        k = dense(self.num_kv_heads, "k_proj", self.qkv_bias)(kv_in)
        v = dense(self.num_kv_heads, "v_proj", self.qkv_bias)(kv_in if v_in is None else v_in)
        if rope_positions is not None:
            q_pos, k_pos = (rope_positions if isinstance(rope_positions, tuple)
                            else (rope_positions, rope_positions))
            q = apply_rope(q, q_pos, self.rope_base)
            k = apply_rope(k, k_pos, self.rope_base)
        y = attention(q, k, v, mask, causal, self.q_chunk)
        out_dim = self.out_dim or q_in.shape[-1]
        return nn.DenseGeneral(out_dim, axis=(-2, -1), dtype=dt, param_dtype=jnp.float32,
                               use_bias=self.out_bias, name="o_proj")(y)


class MLP(nn.Module):
    """Two-layer feed-forward ``Dense(hidden) -> act -> Dense(out)`` (ViT / DETR style)."""
    hidden_dim: int
    out_dim: int | None = None
    dtype: Dtype = jnp.float32
    activation: Callable[[jax.Array], jax.Array] = nn.gelu

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., D] -> [..., out_dim or D]."""
        dt = as_dtype(self.dtype)
        h = self.activation(nn.Dense(self.hidden_dim, dtype=dt, name="fc1")(x))
        return nn.Dense(self.out_dim or x.shape[-1], dtype=dt, name="fc2")(h)


class SwiGLU(nn.Module):
    """LLaMA feed-forward ``down(silu(gate(x)) * up(x))`` (HF names, no biases)."""
    hidden_dim: int
    out_dim: int | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., D] -> [..., out_dim or D]."""
        dt = as_dtype(self.dtype)
        dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=dt, name=name)  # noqa: E731
        h = nn.silu(dense(self.hidden_dim, "gate_proj")(x)) * dense(self.hidden_dim, "up_proj")(x)
        return dense(self.out_dim or x.shape[-1], "down_proj")(h)


def _norm(kind: str, dtype: Dtype, eps: float, name: str) -> nn.Module:
    if kind == "rms":
        return RMSNorm(eps=eps, dtype=dtype, name=name)
    if kind == "layer":
        return nn.LayerNorm(epsilon=eps, dtype=as_dtype(dtype), name=name)
    raise ValueError(f"unknown norm {kind!r} (expected 'rms' or 'layer')")


def _ffn(kind: str, hidden: int, dtype: Dtype, name: str) -> nn.Module:
    if kind == "swiglu":
        return SwiGLU(hidden, dtype=dtype, name=name)
    if kind == "gelu":
        return MLP(hidden, dtype=dtype, name=name)
    raise ValueError(f"unknown ffn {kind!r} (expected 'swiglu' or 'gelu')")


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + SelfAttn(norm(x))``, then ``x + FFN(norm(x))``.

    Defaults make a LLaMA layer (RMSNorm + SwiGLU); ``norm="layer", ffn="gelu"`` a ViT layer.
    """
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    norm: str = "rms"
    ffn: str = "swiglu"
    norm_eps: float = 1e-6
    qkv_bias: bool = False
    rope_base: float = 10000.0
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None,
                 rope_positions: jax.Array | None = None, causal: bool = False,
                 train: bool = False) -> jax.Array:
        """x [B, N, D] -> [B, N, D]; mask / rope_positions / causal as MultiHeadAttention.

        With ``train`` and ``dropout_rate > 0`` the caller supplies a ``'dropout'`` rng.
        """
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        h = _norm(self.norm, self.dtype, self.norm_eps, "input_layernorm")(x)
        h = MultiHeadAttention(self.num_heads, self.num_kv_heads, self.head_dim, self.dtype,
                               qkv_bias=self.qkv_bias, rope_base=self.rope_base,
                               name="self_attn")(h, h, mask, rope_positions, causal)
        x = x + drop(h)
        h = _norm(self.norm, self.dtype, self.norm_eps, "post_attention_layernorm")(x)
        return x + drop(_ffn(self.ffn, self.mlp_dim, self.dtype, "mlp")(h))


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention ``x + Attn(norm(x), norm(context))``, then (if ``mlp_dim``)
    ``x + FFN(norm(x))``. ``mlp_dim=0`` leaves out the FFN (for chaining several cross-attentions
    before one FFN, as in the planner)."""
    num_heads: int
    head_dim: int
    mlp_dim: int = 0
    num_kv_heads: int | None = None
    dtype: Dtype = jnp.float32
    norm: str = "layer"
    ffn: str = "gelu"
    norm_eps: float = 1e-6
    dropout_rate: float = 0.0
    q_chunk: int = 0                  # see attention()

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, mask: jax.Array | None = None,
                 train: bool = False, x_pos: jax.Array | None = None,
                 context_pos: jax.Array | None = None) -> jax.Array:
        """x [B, Nq, D], context [B, Nk, Dc] -> [B, Nq, D].

        mask: bool broadcastable to [B, heads, Nq, Nk] (e.g. ``key_padding_mask(valid)``).
        x_pos [B or 1, Nq, D], context_pos [B or 1, Nk, Dc]: optional position embeddings added
          to queries / keys only (DETR style), not to the values.
        """
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        q = _norm(self.norm, self.dtype, self.norm_eps, "query_norm")(x)
        kv = _norm(self.norm, self.dtype, self.norm_eps, "context_norm")(context)
        k_in = kv if context_pos is None else kv + context_pos.astype(kv.dtype)
        q_in = q if x_pos is None else q + x_pos.astype(q.dtype)
        attn = MultiHeadAttention(self.num_heads, self.num_kv_heads or self.num_heads,
                                  self.head_dim, self.dtype, q_chunk=self.q_chunk,
                                  name="cross_attn")
        h = attn(q_in, k_in, mask, v_in=kv)
        x = x + drop(h)
        if self.mlp_dim:
            h = _norm(self.norm, self.dtype, self.norm_eps, "ffn_norm")(x)
            x = x + drop(_ffn(self.ffn, self.mlp_dim, self.dtype, "mlp")(h))
        return x

