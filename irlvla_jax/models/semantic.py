"""Semantic reasoning: visual tokens + the driving instruction -> meta tokens and a meta action.

    visual tokens [B, N, Dv] --(driving vision adaptor: perceiver resampler)--> [B, Na, D]
    prompt "what is your driving decision ...? Command: turn left." (tokens)   --> [B, T, D]
    learned meta queries                                                       --> [B, Nm, D]
    [adaptor | prompt | meta] --(LLaMA-style decoder, causal)--> meta states --> meta tokens,
                                                                              meta-action logits

The decoder (:class:`LlamaDecoder`: RMSNorm, RoPE, SwiGLU, grouped-query attention) uses the
HuggingFace LLaMA/Qwen2 parameter layout, so :func:`load_hf_llama` maps a local HF safetensors
checkpoint onto it (``config.model.semantic.llm.pretrained``, loaded at IL init).

The prompt depends only on the driving command, so it is tokenised on the host, once per
process, when the model is traced (:func:`prompt_table`; four rows, picked by the command inside
jit): with a pretrained LM by the checkpoint's own ``tokenizer.json`` (its ids index that
model's embedding rows), otherwise by the byte tokenizer (``models/tokenizer.py``). No data-time
tokenisation exists, so every stage that builds the policy from the same config sees the same
prompt.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from irlvla_jax import types
from irlvla_jax.models import tokenizer
from irlvla_jax.models.layers import (CrossAttentionBlock, RMSNorm, TransformerBlock, as_dtype,
                                      maybe_remat)
from irlvla_jax.models.weights import WeightLoadError, apply_mapping, flatten_params, read_tensors


class LlamaDecoder(nn.Module):
    """LLaMA/Qwen2-style decoder. cfg = ``config.model.semantic.llm`` (vocab_size, hidden_size,
    num_layers, num_heads, num_kv_heads, head_dim, intermediate_size, rms_norm_eps, rope_theta,
    qkv_bias, tie_word_embeddings; optional remat: see ``layers.remat_policy``)."""
    cfg: Any
    dtype: Any = jnp.float32

    def setup(self):
        cfg = self.cfg
        self.embed_tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size,
                                     embedding_init=nn.initializers.normal(0.02),
                                     dtype=as_dtype(self.dtype))
        # cfg.remat: each layer rematerialised in the backward pass (layers.remat_policy);
        # argument 4 (causal) is a Python flag
        block = maybe_remat(TransformerBlock, cfg.get("remat", ""), static_argnums=(4,))
        self.layers = [block(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                             cfg.intermediate_size, self.dtype, norm="rms", ffn="swiglu",
                             norm_eps=cfg.rms_norm_eps, qkv_bias=cfg.qkv_bias,
                             rope_base=cfg.rope_theta)
                       for _ in range(cfg.num_layers)]
        self.norm = RMSNorm(cfg.rms_norm_eps, self.dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=as_dtype(self.dtype))

    def embed(self, ids: jax.Array) -> jax.Array:
        """ids [B, T] int -> embeddings [B, T, hidden]."""
        return self.embed_tokens(ids)

    def __call__(self, embeds: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        """embeds [B, T, hidden], valid [B, T] bool (padding anywhere) -> final-normed hidden
        states [B, T, hidden]. Causal; padding is skipped by attention and by the positions."""
        b, t, _ = embeds.shape
        if valid is None:
            valid = jnp.ones((b, t), bool)
        positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
        mask = valid[:, None, None, :]
        x = embeds.astype(as_dtype(self.dtype))
        for layer in self.layers:
            x = layer(x, mask, positions, True)            # (x, mask, rope_positions, causal)
        return self.norm(x)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """hidden [B, T, hidden] -> vocabulary logits [B, T, vocab] f32."""
        if self.cfg.tie_word_embeddings:
            return self.embed_tokens.attend(hidden).astype(jnp.float32)
        return self.lm_head(hidden).astype(jnp.float32)

    def lm(self, ids: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        """ids [B, T] -> next-token logits [B, T, vocab] (a plain language model)."""
        return self.logits(self(self.embed(ids), valid))


class SemanticReasoner(nn.Module):
    """cfg = ``config.model.semantic``: adaptor_tokens, adaptor_heads, num_meta_tokens, out_dim,
    prompt_len, llm (see :class:`LlamaDecoder`)."""
    cfg: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, visual_tokens: jax.Array, command: jax.Array, train: bool = False):
        """visual_tokens [B, N, Dv], command [B, 4] one-hot (``types.COMMANDS`` order)
        -> (meta_tokens [B, num_meta_tokens, out_dim], meta_action_logits
        [B, types.NUM_META_ACTIONS] f32)."""
        cfg, dt = self.cfg, as_dtype(self.dtype)
        d = cfg.llm.hidden_size
        table_ids, table_mask = prompt_table(cfg)
        b = visual_tokens.shape[0]
        init = nn.initializers.normal(0.02)

        # driving vision adaptor: a perceiver resampler compresses N visual tokens to a few
        vis = nn.Dense(d, dtype=dt, name="adaptor_in")(
            nn.LayerNorm(dtype=dt, name="adaptor_in_norm")(visual_tokens.astype(dt)))
        latents = self.param("adaptor_latents", init, (cfg.adaptor_tokens, d), jnp.float32)
        vis = CrossAttentionBlock(cfg.adaptor_heads, d // cfg.adaptor_heads, 2 * d, dtype=dt,
                                  name="adaptor")(
            jnp.broadcast_to(latents.astype(dt), (b, cfg.adaptor_tokens, d)), vis, train=train)

        # the prompt: one of four host-tokenised texts, picked by the command
        cmd = jnp.argmax(command, axis=-1)
        ids, text_valid = jnp.asarray(table_ids)[cmd], jnp.asarray(table_mask)[cmd]
        llm = LlamaDecoder(cfg.llm, dt, name="llm")
        text = llm.embed(ids)

        meta_q = self.param("meta_queries", init, (cfg.num_meta_tokens, d), jnp.float32)
        seq = jnp.concatenate([vis, text.astype(dt),
                               jnp.broadcast_to(meta_q.astype(dt), (b, cfg.num_meta_tokens, d))], 1)
        valid = jnp.concatenate([jnp.ones((b, cfg.adaptor_tokens), bool), text_valid,
                                 jnp.ones((b, cfg.num_meta_tokens), bool)], axis=1)
        hidden = llm(seq, valid)[:, -cfg.num_meta_tokens:]                # [B, Nm, d]
        meta_tokens = nn.Dense(cfg.out_dim, dtype=dt, name="meta_out")(hidden)
        logits = nn.Dense(types.NUM_META_ACTIONS, dtype=dt, name="meta_action_head")(
            jnp.mean(hidden, axis=1))
        return meta_tokens, logits.astype(jnp.float32)


def prompt_table(cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """The four command prompts (``types.COMMANDS`` order) as (ids [4, prompt_len] int32,
    valid [4, prompt_len] bool), right-padded. cfg = ``config.model.semantic``.

    ``cfg.llm.pretrained`` set: tokenised by that directory's ``tokenizer.json`` (with its
    special tokens, e.g. LLaMA's BOS); otherwise by the byte tokenizer. A prompt longer than
    ``prompt_len`` or an id outside ``llm.vocab_size`` is an error.
    """
    directory = cfg.llm.get("pretrained", "")
    if directory:
        return _hf_prompt_table(os.path.join(directory, "tokenizer.json"), int(cfg.prompt_len),
                                int(cfg.llm.vocab_size))
    if cfg.llm.vocab_size < tokenizer.VOCAB_SIZE:
        raise ValueError(f"config.model.semantic.llm.vocab_size={cfg.llm.vocab_size} is "
                         f"smaller than the byte tokenizer's {tokenizer.VOCAB_SIZE}")
    return tokenizer.command_prompt_table(cfg.prompt_len)


@functools.lru_cache(maxsize=8)
def _hf_prompt_table(path: str, length: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    # cached: the model is traced many times per run (init, train step, eval, later stages)
    try:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(path)
    except Exception as e:  # missing file, or JSON the library cannot read
        raise WeightLoadError(f"{path}: cannot read the checkpoint's tokenizer ({e})") from e
    tok.no_truncation()          # a file may carry truncation/padding settings: the prompt is
    tok.no_padding()             # checked against prompt_len below, never cut
    ids = np.zeros((len(types.COMMANDS), length), np.int32)
    valid = np.zeros((len(types.COMMANDS), length), bool)
    for n, command in enumerate(types.COMMANDS):
        text = tokenizer.prompt_text(command)
        row = tok.encode(text).ids
        if len(row) > length:
            raise ValueError(f"prompt {text!r} needs {len(row)} tokens of {path} > config.model."
                             f"semantic.prompt_len={length}")
        if row and max(row) >= vocab_size:
            raise WeightLoadError(f"{path}: token id {max(row)} is outside config.model."
                                  f"semantic.llm.vocab_size={vocab_size}")
        ids[n, :len(row)] = row
        valid[n, :len(row)] = True
    ids.setflags(write=False)
    valid.setflags(write=False)
    return ids, valid


# ----------------------------------------------------------------------------------------------
# HuggingFace LLaMA / Qwen2 checkpoints

_HF_FIELDS = {  # our llm config field -> HF config.json key
    "vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads",
    "intermediate_size": "intermediate_size", "rms_norm_eps": "rms_norm_eps",
    "rope_theta": "rope_theta", "tie_word_embeddings": "tie_word_embeddings",
}


def llm_config_from_hf(directory: str) -> dict[str, Any]:
    """HF ``config.json`` -> the fields of ``config.model.semantic.llm``."""
    path = os.path.join(directory, "config.json")
    try:
        with open(path) as f:
            hf = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise WeightLoadError(f"{path}: cannot read the HF config ({e})") from e
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size", "vocab_size") if k not in hf]
    if missing:
        raise WeightLoadError(f"{path}: missing {missing}")
    out = {ours: hf[theirs] for ours, theirs in _HF_FIELDS.items() if theirs in hf}
    out.setdefault("num_kv_heads", hf["num_attention_heads"])
    out["head_dim"] = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    out["qkv_bias"] = bool(hf.get("attention_bias", hf.get("model_type") == "qwen2"))
    out.setdefault("tie_word_embeddings", False)
    if hf.get("rope_scaling"):
        raise WeightLoadError(f"{path}: rope_scaling {hf['rope_scaling']} is not supported")
    return out


def load_hf_llama(params: dict, directory: str, prefix: str = "llm", cfg: Any = None) -> dict:
    """Map an HF LLaMA/Qwen2 checkpoint directory (config.json + *.safetensors) onto the
    :class:`LlamaDecoder` params found under ``prefix`` ("" = ``params`` is the decoder's own
    tree; a leading "params/" collection is handled). Returns new params.

    With ``cfg`` (``config.model.semantic.llm``) the HF config must agree with it field by field.
    Raises WeightLoadError for a missing or mis-shaped tensor, or a config mismatch.
    """
    hf_cfg = llm_config_from_hf(directory)
    if cfg is not None:
        bad = {k: (cfg[k], v) for k, v in hf_cfg.items() if k in cfg and cfg[k] != v}
        if bad:
            raise WeightLoadError(f"{os.path.join(directory, 'config.json')}: differs from "
                                  f"config.model.semantic.llm (field: (ours, checkpoint's)): "
                                  f"{bad}")
    tree = params["params"] if "params" in params else params
    flat = flatten_params(tree)
    pre = f"{prefix}/" if prefix else ""
    if f"{pre}embed_tokens/embedding" not in flat:
        raise WeightLoadError(f"load_hf_llama: no LlamaDecoder params under {prefix!r}")

    def to_shape(path, fn):
        shape = np.shape(flat[path])

        def convert(w):
            w = fn(w)
            return w.reshape(shape) if w.size == int(np.prod(shape)) else w
        return convert

    table: dict[str, Any] = {}

    def add(ours, theirs, fn=lambda w: w):
        path = pre + ours
        table[path] = ((theirs,), to_shape(path, fn))

    add("embed_tokens/embedding", "model.embed_tokens.weight")
    add("norm/scale", "model.norm.weight")
    if pre + "lm_head/kernel" in flat:
        add("lm_head/kernel", "lm_head.weight", np.transpose)
    i = 0
    while f"{pre}layers_{i}/input_layernorm/scale" in flat:
        ours, theirs = f"layers_{i}", f"model.layers.{i}"
        add(f"{ours}/input_layernorm/scale", f"{theirs}.input_layernorm.weight")
        add(f"{ours}/post_attention_layernorm/scale", f"{theirs}.post_attention_layernorm.weight")
        for proj in ("q_proj", "k_proj", "v_proj"):
            add(f"{ours}/self_attn/{proj}/kernel", f"{theirs}.self_attn.{proj}.weight",
                np.transpose)                       # [out, in] -> [in, heads * head_dim]
            if f"{pre}{ours}/self_attn/{proj}/bias" in flat:
                add(f"{ours}/self_attn/{proj}/bias", f"{theirs}.self_attn.{proj}.bias")
        add(f"{ours}/self_attn/o_proj/kernel", f"{theirs}.self_attn.o_proj.weight", np.transpose)
        for proj in ("gate_proj", "up_proj", "down_proj"):
            add(f"{ours}/mlp/{proj}/kernel", f"{theirs}.mlp.{proj}.weight", np.transpose)
        i += 1
    if i != hf_cfg["num_layers"]:
        raise WeightLoadError(f"{directory}: checkpoint has {hf_cfg['num_layers']} layers, the "
                              f"model {i}")
    new = apply_mapping(tree, read_tensors(directory), table, where=directory)
    return {**params, "params": new} if "params" in params else new
