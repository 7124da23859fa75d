"""Semantic reasoning: the LLaMA decoder's attention properties, HF loading, the reasoner."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import save_file

from configs import tiny
from irlvla_jax import types
from irlvla_jax.models import tokenizer
from irlvla_jax.models.layers import MultiHeadAttention, apply_rope
from irlvla_jax.models.semantic import LlamaDecoder, SemanticReasoner, load_hf_llama
from irlvla_jax.models.weights import WeightLoadError, flatten_params

LLM = dict(vocab_size=264, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
           intermediate_size=48, rms_norm_eps=1e-6, rope_theta=10000.0, qkv_bias=True,
           tie_word_embeddings=False)


@pytest.fixture(scope="module")
def decoder():
    cfg = ml_collections.ConfigDict(LLM)
    model = LlamaDecoder(cfg)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 259, (2, 10)), jnp.int32)
    # jitted init (eager init compiles every initialiser op shape by shape), reused below
    init = jax.jit(lambda k, i: model.init(k, i, method=LlamaDecoder.lm))
    params = init(jax.random.key(0), ids)
    lm = jax.jit(lambda p, i: model.apply(p, i, method=LlamaDecoder.lm))
    return cfg, model, params, ids, lm, init


def test_causal_later_tokens_do_not_change_earlier_outputs(decoder):
    _, _, params, ids, lm, _ = decoder
    out = np.asarray(lm(params, ids))
    changed = np.asarray(lm(params, ids.at[:, 6].set(77)))
    np.testing.assert_allclose(changed[:, :6], out[:, :6], rtol=1e-5, atol=1e-5)
    assert not np.allclose(changed[:, 6:], out[:, 6:])


def test_rope_scores_depend_on_relative_position_only():
    q, k = jax.random.normal(jax.random.key(1), (2, 1, 1, 1, 16))
    def score(pq, pk):
        return float(jnp.sum(apply_rope(q, jnp.array([pq])) * apply_rope(k, jnp.array([pk]))))
    assert abs(score(3, 1) - score(10, 8)) < 1e-4
    assert abs(score(3, 1) - score(3, 2)) > 1e-3


def test_gqa_with_all_kv_heads_is_standard_mha():
    x = jax.random.normal(jax.random.key(2), (2, 5, 16))
    mha = MultiHeadAttention(4, 4, 8)
    p = mha.init(jax.random.key(0), x, x)["params"]
    got = mha.apply({"params": p}, x, x)
    q, k, v = (jnp.einsum("bnd,dhe->bhne", x, p[n]["kernel"]) for n in ("q_proj", "k_proj",
                                                                         "v_proj"))
    att = jax.nn.softmax(jnp.einsum("bhqe,bhke->bhqk", q, k) / np.sqrt(8), axis=-1)
    want = jnp.einsum("bhqk,bhke,hed->bqd", att, v, p["o_proj"]["kernel"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # grouped query attention = MHA with each kv head repeated for its group of query heads
    gqa = MultiHeadAttention(4, 2, 8)
    pg = dict(p, k_proj={"kernel": p["k_proj"]["kernel"][:, ::2]},
              v_proj={"kernel": p["v_proj"]["kernel"][:, ::2]})
    rep = dict(p, k_proj={"kernel": jnp.repeat(pg["k_proj"]["kernel"], 2, axis=1)},
               v_proj={"kernel": jnp.repeat(pg["v_proj"]["kernel"], 2, axis=1)})
    np.testing.assert_allclose(gqa.apply({"params": pg}, x, x), mha.apply({"params": rep}, x, x),
                               rtol=1e-4, atol=1e-5)


def _write_hf(params, cfg, directory):
    """Our decoder params -> an HF-format directory (config.json + model.safetensors)."""
    f = {k: np.asarray(v) for k, v in flatten_params(params["params"]).items()}
    t = {"model.embed_tokens.weight": f["embed_tokens/embedding"],
         "model.norm.weight": f["norm/scale"], "lm_head.weight": f["lm_head/kernel"].T}
    for i in range(cfg.num_layers):
        o, h = f"layers_{i}", f"model.layers.{i}"
        t[f"{h}.input_layernorm.weight"] = f[f"{o}/input_layernorm/scale"]
        t[f"{h}.post_attention_layernorm.weight"] = f[f"{o}/post_attention_layernorm/scale"]
        for n in ("q_proj", "k_proj", "v_proj"):
            w = f[f"{o}/self_attn/{n}/kernel"]
            t[f"{h}.self_attn.{n}.weight"] = w.reshape(w.shape[0], -1).T
            t[f"{h}.self_attn.{n}.bias"] = f[f"{o}/self_attn/{n}/bias"].reshape(-1)
        w = f[f"{o}/self_attn/o_proj/kernel"]
        t[f"{h}.self_attn.o_proj.weight"] = w.reshape(-1, w.shape[-1]).T
        for n in ("gate_proj", "up_proj", "down_proj"):
            t[f"{h}.mlp.{n}.weight"] = f[f"{o}/mlp/{n}/kernel"].T
    t = {k: np.ascontiguousarray(v) for k, v in t.items()}   # safetensors writes raw buffers
    save_file(t, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(dict(
        model_type="qwen2", vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, intermediate_size=cfg.intermediate_size,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=False)))
    return t


def test_hf_checkpoint_loads_to_identical_logits(decoder, tmp_path):
    cfg, model, params, ids, lm, init = decoder
    tensors = _write_hf(params, cfg, tmp_path)
    fresh = init(jax.random.key(7), ids)
    loaded = load_hf_llama(fresh, str(tmp_path), prefix="", cfg=cfg)
    np.testing.assert_allclose(lm(loaded, ids), lm(params, ids), rtol=1e-5, atol=1e-5)
    assert not np.allclose(lm(fresh, ids), lm(params, ids))
    # a config that disagrees with the checkpoint, and a missing tensor, fail by name
    with pytest.raises(WeightLoadError, match="num_kv_heads"):
        load_hf_llama(fresh, str(tmp_path), prefix="", cfg=dict(LLM, num_kv_heads=4))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightLoadError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_hf_llama(fresh, str(tmp_path), prefix="")


def test_tokenizer_round_trip_and_prompt_table():
    text = "what is your driving decision? ü"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    ids, mask = tokenizer.command_prompt_table(96)
    assert ids.shape == (4, 96) and (ids[mask] >= 1).all() and (ids[~mask] == 0).all()
    assert "turn left" in tokenizer.decode(ids[types.COMMANDS.index("left")])
    with pytest.raises(ValueError, match="prompt_len"):
        tokenizer.command_prompt_table(20)


def test_semantic_reasoner_at_tiny_config():
    cfg = tiny.get_config().model.semantic
    model = SemanticReasoner(cfg)
    vis = jax.random.normal(jax.random.key(0), (2, 160, 64))
    cmd = jnp.eye(4)[jnp.array([0, 2])]
    params = jax.jit(model.init)(jax.random.key(1), vis, cmd)
    apply = jax.jit(model.apply)     # one compiled apply for both command orders
    meta, logits = apply(params, vis, cmd)
    assert meta.shape == (2, cfg.num_meta_tokens, cfg.out_dim)
    assert logits.shape == (2, types.NUM_META_ACTIONS)
    # the command reaches the output through the prompt: swapping commands swaps outputs
    meta_sw, _ = apply(params, vis, cmd[::-1])
    assert not np.allclose(meta_sw[0], meta[0])
    # the HF loader finds the decoder inside the reasoner's params
    assert "llm" in params["params"] and "layers_1" in params["params"]["llm"]
