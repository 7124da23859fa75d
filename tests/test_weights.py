"""Pretrained-weight loading: file round trips give identical outputs; bad files fail clearly;
frozen subtrees do not train."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from irlvla_jax.models.vision import ResNet, ViT, feature_hw
from irlvla_jax.models.weights import (WeightLoadError, flatten_params, freeze, load_weights,
                                       resnet_torchvision_mapping, save_tensors, vit_timm_mapping)


@pytest.fixture(scope="module")
def resnet():
    cfg = tiny.get_config().model.vision
    cfg.update(dict(stage_sizes=(1, 1), widths=(8, 16), stem_width=8, out_dim=8,
                    norm="frozen_bn"))
    model = ResNet(cfg)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    init = jax.jit(lambda k: model.init(k, x)["params"])    # one compile for both keys
    # random affine values so that a mis-mapped tensor changes the output
    params = jax.jit(lambda p: jax.tree.map(
        lambda q: q + 0.1 * jax.random.normal(jax.random.key(2), q.shape), p))(
            init(jax.random.key(1)))
    fresh = init(jax.random.key(9))
    apply = jax.jit(lambda p: model.apply({"params": p}, x))
    return cfg, params, fresh, apply


def test_npz_round_trip_by_name(resnet, tmp_path):
    cfg, params, fresh, apply = resnet
    path = str(tmp_path / "w.npz")
    save_tensors(flatten_params(params), path)
    loaded = load_weights(fresh, path, {k: k for k in flatten_params(fresh)})
    np.testing.assert_array_equal(np.asarray(apply(loaded)), np.asarray(apply(params)))
    assert not np.allclose(apply(fresh), apply(params))


def _to_torchvision(cfg, params, rng):
    """Write our params in torchvision's names/layout, with non-trivial BatchNorm statistics."""
    flat, out = flatten_params(params), {}
    for path, src in resnet_torchvision_mapping(cfg).items():
        (names, _), ours = src, np.asarray(flat[path])
        stem = names[0].rsplit(".", 1)[0]
        if path.endswith("kernel"):
            out[names[0]] = np.transpose(ours, (3, 2, 0, 1))
        elif path.endswith("scale"):
            var = rng.uniform(0.5, 2.0, ours.shape).astype(np.float32)
            mean = rng.normal(size=ours.shape).astype(np.float32)
            bias = np.asarray(flat[path[:-5] + "bias"])
            w = ours * np.sqrt(var + 1e-5)
            out.update({f"{stem}.weight": w, f"{stem}.bias": bias + mean * ours,
                        f"{stem}.running_mean": mean, f"{stem}.running_var": var})
    return out


def test_torchvision_safetensors_round_trip(resnet, tmp_path):
    cfg, params, fresh, apply = resnet
    tensors = _to_torchvision(cfg, params, np.random.default_rng(0))
    assert "layer2.0.downsample.0.weight" in tensors and tensors["conv1.weight"].shape == (8, 3, 7, 7)
    path = str(tmp_path / "resnet.safetensors")
    save_tensors(tensors, path)
    mapping = resnet_torchvision_mapping(cfg)
    loaded = load_weights(fresh, path, mapping)
    # our own 1x1 projection is not in torchvision: copy it for the comparison
    loaded["proj"] = params["proj"]
    np.testing.assert_allclose(np.asarray(apply(loaded)), np.asarray(apply(params)),
                               rtol=1e-4, atol=1e-4)


def test_missing_and_misshaped_keys_are_named(resnet, tmp_path):
    cfg, params, fresh, _ = resnet
    tensors = _to_torchvision(cfg, params, np.random.default_rng(0))
    mapping = resnet_torchvision_mapping(cfg)
    missing = dict(tensors)
    del missing["layer1.0.conv2.weight"]
    path = str(tmp_path / "missing.safetensors")
    save_tensors(missing, path)
    with pytest.raises(WeightLoadError, match=r"missing.safetensors.*layer1\.0\.conv2\.weight"):
        load_weights(fresh, path, mapping)
    bad = dict(tensors)
    bad["layer2.0.conv1.weight"] = np.zeros((16, 8, 5, 5), np.float32)
    path = str(tmp_path / "bad.npz")
    save_tensors(bad, path)
    with pytest.raises(WeightLoadError, match=r"layer2\.0\.conv1\.weight.*\(5, 5, 8, 16\).*"
                                               r"\(3, 3, 8, 16\)"):
        load_weights(fresh, path, mapping)
    with pytest.raises(WeightLoadError, match="no such weight file"):
        load_weights(fresh, str(tmp_path / "nope.npz"), mapping)
    with pytest.raises(WeightLoadError, match="not a parameter"):
        load_weights(fresh, path, {"layer9_0/conv1/kernel": "x"})


def test_torchvision_mapping_needs_frozen_bn():
    cfg = tiny.get_config().model.vision
    with pytest.raises(WeightLoadError, match="frozen_bn"):
        resnet_torchvision_mapping(cfg)


def test_sharded_bf16_directory_loads_and_errors_name_the_shard(resnet, tmp_path):
    """An HF-style directory: two shards (one bfloat16) listed by model.safetensors.index.json."""
    import json

    import ml_dtypes
    cfg, params, fresh, apply = resnet
    tensors = _to_torchvision(cfg, params, np.random.default_rng(0))
    second = sorted(k for k in tensors if k.startswith("layer2."))
    first = sorted(k for k in tensors if k not in second)
    shards = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    save_tensors({k: tensors[k] for k in first}, str(tmp_path / shards[0]))
    save_tensors({k: tensors[k].astype(ml_dtypes.bfloat16) for k in second},
                 str(tmp_path / shards[1]))
    index = {"metadata": {}, "weight_map": {**{k: shards[0] for k in first},
                                            **{k: shards[1] for k in second}}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    mapping = resnet_torchvision_mapping(cfg)
    loaded = flatten_params(load_weights(fresh, str(tmp_path), mapping))
    # a bf16 tensor arrives as its float32 value
    bf16 = tensors["layer2.0.conv1.weight"].astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(loaded["layer2_0/conv1/kernel"], np.transpose(bf16, (2, 3, 1, 0)))
    assert loaded["layer2_0/conv1/kernel"].dtype == np.float32
    np.testing.assert_array_equal(loaded["conv1/kernel"],
                                  np.transpose(tensors["conv1.weight"], (2, 3, 1, 0)))
    # a mis-shaped tensor: the message names its shard, the tensor, the parameter, both shapes
    bad = {k: tensors[k] for k in second}
    bad["layer2.0.conv2.weight"] = np.zeros((16, 16, 1, 1), np.float32)
    save_tensors(bad, str(tmp_path / shards[1]))
    with pytest.raises(WeightLoadError, match=r"model-00002-of-00002\.safetensors: tensor "
                                              r"'layer2\.0\.conv2\.weight' -> parameter "
                                              r"'layer2_0/conv2/kernel' has shape "
                                              r"\(1, 1, 16, 16\).*expects \(3, 3, 16, 16\)"):
        load_weights(fresh, str(tmp_path), mapping)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(WeightLoadError, match="lists shard.*model-00002-of-00002"):
        load_weights(fresh, str(tmp_path), mapping)


def _to_timm(params, cfg):
    """Our ViT params in timm's names and layouts (+ a class token and the classifier head)."""
    f = {k: np.asarray(v) for k, v in flatten_params(params).items()}
    d = cfg.width
    t = {"patch_embed.proj.weight": np.transpose(f["patch_embed/kernel"], (3, 2, 0, 1)),
         "patch_embed.proj.bias": f["patch_embed/bias"],
         "cls_token": np.ones((1, 1, d), np.float32),
         "pos_embed": np.concatenate([np.full((1, 1, d), 7.0, np.float32), f["pos_embed"]], 1),
         "norm.weight": f["norm/scale"], "norm.bias": f["norm/bias"],
         "head.weight": np.zeros((10, d), np.float32), "head.bias": np.zeros(10, np.float32)}
    for b in range(cfg.depth):
        o, h = f"blocks_{b}", f"blocks.{b}"
        for n in ("norm1", "norm2"):
            t[f"{h}.{n}.weight"], t[f"{h}.{n}.bias"] = f[f"{o}/{n}/scale"], f[f"{o}/{n}/bias"]
        qkv = ("q_proj", "k_proj", "v_proj")
        t[f"{h}.attn.qkv.weight"] = np.concatenate(
            [f[f"{o}/attn/{n}/kernel"].reshape(d, d).T for n in qkv], 0)
        t[f"{h}.attn.qkv.bias"] = np.concatenate([f[f"{o}/attn/{n}/bias"].reshape(d) for n in qkv])
        t[f"{h}.attn.proj.weight"] = f[f"{o}/attn/o_proj/kernel"].reshape(d, d).T
        t[f"{h}.attn.proj.bias"] = f[f"{o}/attn/o_proj/bias"]
        for n in ("fc1", "fc2"):
            t[f"{h}.mlp.{n}.weight"] = f[f"{o}/mlp/{n}/kernel"].T
            t[f"{h}.mlp.{n}.bias"] = f[f"{o}/mlp/{n}/bias"]
    return t


def test_timm_vit_loads_to_identical_features(tmp_path):
    cfg = tiny.get_config().model.vision
    cfg.update(dict(kind="vit", patch=4, width=16, depth=2, heads=2, mlp_dim=32, out_dim=8))
    model = ViT(cfg)
    x = jax.random.normal(jax.random.key(0), (2, 16, 24, 3))
    grid = feature_hw(cfg, (16, 24))
    init = jax.jit(lambda k: model.init(k, x)["params"])
    params = jax.jit(lambda p: jax.tree.map(        # non-zero biases, non-unit norms
        lambda q: q + 0.1 * jax.random.normal(jax.random.key(2), q.shape), p))(
            init(jax.random.key(1)))
    fresh = init(jax.random.key(9))
    apply = jax.jit(lambda p: model.apply({"params": p}, x))
    tensors = _to_timm(params, cfg)
    save_tensors(tensors, str(tmp_path / "vit.safetensors"))
    mapping = vit_timm_mapping(cfg, grid)
    loaded = load_weights(fresh, str(tmp_path / "vit.safetensors"), mapping)
    loaded["proj"] = params["proj"]          # ours, not timm's
    np.testing.assert_allclose(np.asarray(apply(loaded)), np.asarray(apply(params)),
                               rtol=1e-5, atol=1e-5)
    # a square grid pretrained at another size (2 x 2 + class token) is resized onto 4 x 6
    tensors["pos_embed"] = np.concatenate([np.full((1, 1, 16), 7.0, np.float32),
                                           np.full((1, 4, 16), 0.5, np.float32)], 1)
    save_tensors(tensors, str(tmp_path / "vit224.safetensors"))
    resized = load_weights(fresh, str(tmp_path / "vit224.safetensors"), mapping)
    assert resized["pos_embed"].shape == (1, 24, 16)
    np.testing.assert_allclose(resized["pos_embed"], 0.5, atol=1e-6)


def test_freeze_zeroes_updates_and_keeps_no_moments():
    import optax
    params = {"vision": {"conv": {"kernel": jnp.ones((3, 4))}},
              "semantic": {"llm": {"w": jnp.ones((4, 4))}, "adaptor": {"w": jnp.ones((4, 2))}}}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(0.1, weight_decay=0.1))
    assert freeze(tx, params, ()) is tx
    frozen = freeze(tx, params, ("vision", "semantic/llm"))
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = frozen.update(grads, frozen.init(params), params)
    new = optax.apply_updates(params, updates)
    flat_new, flat_old = flatten_params(new), flatten_params(params)
    for k in ("vision/conv/kernel", "semantic/llm/w"):
        np.testing.assert_array_equal(flat_new[k], flat_old[k])
    assert float(jnp.abs(new["semantic"]["adaptor"]["w"] - 1).min()) > 0.05
    n_moments = lambda t: sum(int(np.size(x)) for x in jax.tree.leaves(t.init(params)))  # noqa
    assert n_moments(tx) - n_moments(frozen) == 2 * (12 + 16)      # Adam's mu and nu
    with pytest.raises(ValueError, match=r"'semantic/lm' names no parameter.*semantic, vision"):
        freeze(tx, params, ("semantic/lm",))
