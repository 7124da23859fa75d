"""Pretrained weights through the config: a torchvision-named ResNet and a Hugging Face Qwen2
directory (bf16 shards + index, config.json, tokenizer.json), written here in those real
formats, load into the IL state; the prompt is the checkpoint tokenizer's; frozen parts do not
train; the FSDP-sharded init loads the same values."""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from irlvla_jax import parallel, types
from irlvla_jax.models import policy as policy_lib
from irlvla_jax.models import semantic
from irlvla_jax.models import tokenizer as byte_tokenizer
from irlvla_jax.models import weights
from irlvla_jax.models.weights import WeightLoadError, flatten_params, save_tensors
from irlvla_jax.train import il

import policy_scenes as ps  # noqa: E402  (tests/ on sys.path)

BN_EPS = 1e-5      # torchvision's BatchNorm2d


def write_tokenizer(path) -> Tokenizer:
    """A WordLevel tokenizer over the prompts' words, ids from 100 on, that prepends a BOS
    (id 1) as LLaMA's does: nothing like the byte tokenizer's ids."""
    pre = pre_tokenizers.Whitespace()
    words = sorted({w for c in types.COMMANDS
                    for w, _ in pre.pre_tokenize_str(byte_tokenizer.prompt_text(c))})
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: 100 + i for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", 1)])
    tok.save(str(path))
    return tok


def write_qwen2(directory, llm, rng) -> dict[str, np.ndarray]:
    """An HF Qwen2 checkpoint of ``llm``'s shapes: bf16 tensors in two shards with
    model.safetensors.index.json, config.json, tokenizer.json. Returns the tensors as float32."""
    d, hd, ff = llm.hidden_size, llm.head_dim, llm.intermediate_size
    shapes = {"model.embed_tokens.weight": (llm.vocab_size, d), "model.norm.weight": (d,)}
    for i in range(llm.num_layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (d,),
                       p + "post_attention_layernorm.weight": (d,),
                       p + "self_attn.q_proj.weight": (llm.num_heads * hd, d),
                       p + "self_attn.q_proj.bias": (llm.num_heads * hd,),
                       p + "self_attn.k_proj.weight": (llm.num_kv_heads * hd, d),
                       p + "self_attn.k_proj.bias": (llm.num_kv_heads * hd,),
                       p + "self_attn.v_proj.weight": (llm.num_kv_heads * hd, d),
                       p + "self_attn.v_proj.bias": (llm.num_kv_heads * hd,),
                       p + "self_attn.o_proj.weight": (d, llm.num_heads * hd),
                       p + "mlp.gate_proj.weight": (ff, d), p + "mlp.up_proj.weight": (ff, d),
                       p + "mlp.down_proj.weight": (d, ff)})
    tensors = {k: (0.1 * rng.normal(size=s)).astype(ml_dtypes.bfloat16) for k, s in shapes.items()}
    directory.mkdir()
    shard = {k: ("model-00002-of-00002.safetensors" if k.startswith("model.layers.1.")
                 else "model-00001-of-00002.safetensors") for k in tensors}
    for f in set(shard.values()):
        save_tensors({k: v for k, v in tensors.items() if shard[k] == f}, str(directory / f))
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": shard}))
    (directory / "config.json").write_text(json.dumps(dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", torch_dtype="bfloat16",
        vocab_size=llm.vocab_size, hidden_size=d, num_hidden_layers=llm.num_layers,
        num_attention_heads=llm.num_heads, num_key_value_heads=llm.num_kv_heads,
        intermediate_size=ff, rms_norm_eps=llm.rms_norm_eps, rope_theta=llm.rope_theta,
        tie_word_embeddings=True, max_position_embeddings=512, use_sliding_window=False,
        hidden_act="silu")))
    write_tokenizer(directory / "tokenizer.json")
    return {k: v.astype(np.float32) for k, v in tensors.items()}


def write_resnet(path, vision, rng) -> dict[str, np.ndarray]:
    """A torchvision ResNet state dict (basic blocks, one stage of ``vision``'s widths, no
    downsample) with BatchNorm statistics, num_batches_tracked and the classifier ``fc``."""
    c = vision.stem_width
    t = {"conv1.weight": rng.normal(size=(c, 3, 7, 7)),
         "layer1.0.conv1.weight": rng.normal(size=(c, c, 3, 3)),
         "layer1.0.conv2.weight": rng.normal(size=(c, c, 3, 3)),
         "fc.weight": rng.normal(size=(10, c)), "fc.bias": rng.normal(size=(10,))}
    for bn in ("bn1", "layer1.0.bn1", "layer1.0.bn2"):
        t.update({f"{bn}.weight": rng.uniform(0.5, 1.5, c), f"{bn}.bias": rng.normal(size=c),
                  f"{bn}.running_mean": rng.normal(size=c),
                  f"{bn}.running_var": rng.uniform(0.2, 3.0, c)})
    t = {k: v.astype(np.float32) for k, v in t.items()}
    t.update({f"{bn}.num_batches_tracked": np.array(1000, np.int64)
              for bn in ("bn1", "layer1.0.bn1", "layer1.0.bn2")})
    save_tensors(t, str(path))
    return t


def with_checkpoints(config, tmp_path):
    """``config`` (small, semantic on, frozen BN, a 2-layer Qwen2-shaped LM) pointed at
    checkpoints written into ``tmp_path``; returns (config, resnet tensors, qwen2 tensors)."""
    rng = np.random.default_rng(0)
    config.model.vision.norm = "frozen_bn"
    config.model.semantic.llm.update(dict(num_layers=2, qkv_bias=True))
    resnet = write_resnet(tmp_path / "resnet18.safetensors", config.model.vision, rng)
    qwen = write_qwen2(tmp_path / "qwen2", config.model.semantic.llm, rng)
    config.model.vision.pretrained = str(tmp_path / "resnet18.safetensors")
    config.model.semantic.llm.pretrained = str(tmp_path / "qwen2")
    return config, resnet, qwen


def expected_params(resnet, qwen, llm) -> dict[str, np.ndarray]:
    """What the checkpoints should become, converted here independently of the loader."""
    out = {}
    conv = lambda w: np.transpose(w, (2, 3, 1, 0))       # noqa: E731  [O,I,kh,kw] -> [kh,kw,I,O]
    for ours, theirs in (("conv1", "conv1"), ("layer1_0/conv1", "layer1.0.conv1"),
                         ("layer1_0/conv2", "layer1.0.conv2")):
        out[f"vision/{ours}/kernel"] = conv(resnet[theirs + ".weight"])
    for ours, theirs in (("bn1", "bn1"), ("layer1_0/bn1", "layer1.0.bn1"),
                         ("layer1_0/bn2", "layer1.0.bn2")):
        w, b, m, v = (resnet[f"{theirs}.{n}"] for n in ("weight", "bias", "running_mean",
                                                         "running_var"))
        out[f"vision/{ours}/scale"] = w / np.sqrt(v + BN_EPS)
        out[f"vision/{ours}/bias"] = b - m * w / np.sqrt(v + BN_EPS)
    d, hd = llm.hidden_size, llm.head_dim
    pre = "semantic/llm/"
    out[pre + "embed_tokens/embedding"] = qwen["model.embed_tokens.weight"]
    out[pre + "norm/scale"] = qwen["model.norm.weight"]
    for i in range(llm.num_layers):
        o, h = f"{pre}layers_{i}/", f"model.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            out[f"{o}{n}/scale"] = qwen[f"{h}{n}.weight"]
        for n in ("q_proj", "k_proj", "v_proj"):
            out[f"{o}self_attn/{n}/kernel"] = qwen[f"{h}self_attn.{n}.weight"].T.reshape(d, -1, hd)
            out[f"{o}self_attn/{n}/bias"] = qwen[f"{h}self_attn.{n}.bias"].reshape(-1, hd)
        out[f"{o}self_attn/o_proj/kernel"] = qwen[f"{h}self_attn.o_proj.weight"].T.reshape(-1, hd,
                                                                                          d)
        for n in ("gate_proj", "up_proj", "down_proj"):
            out[f"{o}mlp/{n}/kernel"] = qwen[f"{h}mlp.{n}.weight"].T
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrained")
    config, resnet, qwen = with_checkpoints(ps.small_config(use_semantic=True), tmp)
    scratch = config.copy_and_resolve_references()
    scratch.model.vision.pretrained = scratch.model.semantic.llm.pretrained = ""
    model = policy_lib.VLAPolicy(config.model)
    state = il.create_state(model, config, jax.random.PRNGKey(0))
    fresh = il.create_state(policy_lib.VLAPolicy(scratch.model), scratch, jax.random.PRNGKey(0))
    return dict(config=config, resnet=resnet, qwen=qwen, model=model, state=state, fresh=fresh,
                dir=tmp)


def test_checkpoints_load_through_the_config_into_the_il_state(world):
    llm = world["config"].model.semantic.llm
    loaded = {k: np.asarray(v) for k, v in flatten_params(world["state"].params).items()}
    fresh = {k: np.asarray(v) for k, v in flatten_params(world["fresh"].params).items()}
    want = expected_params(world["resnet"], world["qwen"], llm)
    assert set(want) <= set(loaded)
    for k, v in want.items():
        assert loaded[k].dtype == np.float32
        np.testing.assert_allclose(loaded[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
    # every parameter the checkpoints do not hold (our 1x1 vision proj, the adaptor, BEV,
    # planner ...) is the random init, bit for bit
    for k in set(loaded) - set(want):
        np.testing.assert_array_equal(loaded[k], fresh[k], err_msg=k)
    assert "vision/proj/kernel" in set(loaded) - set(want)
    # the optimizer starts from zero moments whatever the params
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(world["state"].opt_state)
               if jnp.issubdtype(x.dtype, jnp.floating))


def test_the_prompt_is_tokenised_by_the_checkpoints_tokenizer(world):
    cfg = world["config"].model.semantic
    tok = Tokenizer.from_file(str(world["dir"] / "qwen2" / "tokenizer.json"))
    ids, valid = semantic.prompt_table(cfg)
    assert ids.shape == valid.shape == (4, cfg.prompt_len)
    for n, c in enumerate(types.COMMANDS):
        want = tok.encode(byte_tokenizer.prompt_text(c)).ids
        assert want[0] == 1 and min(want[1:]) >= 100      # the BOS, then the checkpoint's words
        assert list(ids[n, :len(want)]) == want and valid[n].sum() == len(want)
    # inside the model: the LM embeds exactly those ids with the checkpoint's embedding rows
    reasoner = semantic.SemanticReasoner(cfg)
    params = world["state"].params["semantic"]
    vis = jnp.zeros((4, 3, world["config"].model.vision.out_dim))
    _, inter = jax.jit(lambda p: reasoner.apply(
        {"params": p}, vis, jnp.eye(4), capture_intermediates=lambda m, name: name == "embed",
        mutable=["intermediates"]))(params)
    embedded = np.asarray(inter["intermediates"]["llm"]["embed"][0])
    table = world["qwen"]["model.embed_tokens.weight"]
    np.testing.assert_array_equal(embedded, table[ids])
    # without a checkpoint the byte tokenizer stays
    byte = cfg.copy_and_resolve_references()
    byte.llm.pretrained = ""
    np.testing.assert_array_equal(semantic.prompt_table(byte)[0],
                                  byte_tokenizer.command_prompt_table(cfg.prompt_len)[0])


def test_frozen_backbone_and_lm_do_not_move_in_an_il_step(world):
    config = world["config"].copy_and_resolve_references()
    config.il.update(dict(freeze=("vision", "semantic/llm"), warmup_steps=0))  # lr > 0 at once
    state = il.create_state(world["model"], config, jax.random.PRNGKey(0))
    before = {k: np.asarray(v) for k, v in flatten_params(state.params).items()}
    n_moments = lambda s: sum(x.size for x in jax.tree.leaves(s.opt_state))  # noqa: E731
    frozen_size = sum(v.size for k, v in before.items()
                      if k.startswith(("vision/", "semantic/llm/")))
    assert n_moments(world["state"]) - n_moments(state) == 2 * frozen_size  # no Adam moments
    sizes = types.SceneSizes.from_config(config.data.sizes)
    batch = jax.tree.map(jnp.asarray, ps.random_scenes(sizes, 4, seed=1))
    new, metrics = il.make_train_step(world["model"], config)(state, batch, jax.random.PRNGKey(1))
    assert np.isfinite(float(metrics["loss"]))
    after = {k: np.asarray(v) for k, v in flatten_params(new.params).items()}
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    frozen = {k for k in before if k.startswith(("vision/", "semantic/llm/"))}
    assert frozen and not moved & frozen
    # the rest trains: the LM's inputs (adaptor, meta queries), its heads, BEV, planner ...
    assert len(moved) >= 0.9 * len(set(before) - frozen), sorted(set(before) - frozen - moved)
    assert {"semantic/adaptor_in/kernel", "semantic/meta_queries"} <= moved


def test_fsdp_sharded_init_loads_the_same_values(world, monkeypatch):
    """Mesh data=2 x fsdp=4, params created inside jit straight into their shards (as
    ``il.create_sharded_state`` does): the abstract evaluation reads no tensor; the compiled
    init receives the checkpoint tensors through host callbacks, equal to the one-device load."""
    config = world["config"].copy_and_resolve_references()
    config.mesh.update(dict(data=2, fsdp=4, fsdp_min_size=128))
    mesh = parallel.make_mesh(config.mesh)
    reads = []
    read = weights.TensorFile.__getitem__
    monkeypatch.setattr(weights.TensorFile, "__getitem__",
                        lambda self, name: reads.append(name) or read(self, name))
    make = lambda r: il.create_state(world["model"], config, r).params      # noqa: E731
    abstract = jax.eval_shape(make, jax.random.PRNGKey(0))
    assert reads == []
    params = jax.jit(make, out_shardings=parallel.state_shardings(abstract, mesh, config.mesh))(
        jax.random.PRNGKey(0))
    jax.block_until_ready(params)           # the callbacks run as the program does
    assert len(reads) >= len(expected_params(world["resnet"], world["qwen"],
                                             config.model.semantic.llm))
    emb = params["semantic"]["llm"]["embed_tokens"]["embedding"]
    assert emb.addressable_shards[0].data.shape == (emb.shape[0] // 4, emb.shape[1])
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(world["state"].params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mismatched_checkpoints_are_named_errors(world, tmp_path):
    config, params = world["config"], world["fresh"].params
    hw = config.data.sizes.image_hw
    # a tensor of the wrong shape in the second shard: its file, name and both shapes
    bad = config.copy_and_resolve_references()
    qwen = world["qwen"]
    d = tmp_path / "qwen2"
    write_qwen2(d, bad.model.semantic.llm, np.random.default_rng(1))
    shard = d / "model-00002-of-00002.safetensors"
    tensors = {k: v for k, v in qwen.items() if k.startswith("model.layers.1.")}
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((32, 32), np.float32)
    save_tensors(tensors, str(shard))
    bad.model.semantic.llm.pretrained = str(d)
    bad.model.vision.pretrained = ""
    with pytest.raises(WeightLoadError, match=r"model-00002-of-00002\.safetensors: tensor "
                                              r"'model\.layers\.1\.mlp\.up_proj\.weight' -> "
                                              r"parameter 'semantic/llm/layers_1/mlp/up_proj/"
                                              r"kernel' has shape \(32, 32\).*\(32, 64\)"):
        policy_lib.load_pretrained(params, bad.model, hw)
    # an LM config that is not the checkpoint's
    other = config.copy_and_resolve_references()
    other.model.semantic.llm.intermediate_size = 96
    with pytest.raises(WeightLoadError, match=r"qwen2/config\.json.*intermediate_size"):
        policy_lib.load_pretrained(params, other.model, hw)
    # a ResNet checkpoint of another width
    narrow = config.copy_and_resolve_references()
    narrow.model.vision.stem_width = 4
    write_resnet(tmp_path / "narrow.safetensors", narrow.model.vision, np.random.default_rng(0))
    wide = config.copy_and_resolve_references()
    wide.model.vision.pretrained = str(tmp_path / "narrow.safetensors")
    wide.model.semantic.llm.pretrained = ""
    with pytest.raises(WeightLoadError, match=r"narrow\.safetensors: tensor 'conv1\.weight' -> "
                                              r"parameter 'vision/conv1/kernel' has shape "
                                              r"\(7, 7, 3, 4\).*\(7, 7, 3, 8\)"):
        policy_lib.load_pretrained(params, wide.model, hw)
    # the tokenizer: missing, a prompt longer than prompt_len, ids beyond the vocabulary
    (d / "tokenizer.json").unlink()
    with pytest.raises(WeightLoadError, match="tokenizer.json"):
        semantic.prompt_table(bad.model.semantic)
    write_tokenizer(d / "tokenizer.json")
    short = bad.model.semantic.copy_and_resolve_references()
    short.prompt_len = 8
    with pytest.raises(ValueError, match="prompt_len=8"):
        semantic.prompt_table(short)
    small_vocab = bad.model.semantic.copy_and_resolve_references()
    small_vocab.llm.vocab_size = 64
    with pytest.raises(WeightLoadError, match="outside config.model.semantic.llm.vocab_size=64"):
        semantic.prompt_table(small_vocab)
