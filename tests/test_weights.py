"""Pretrained-weight loading: file round trips give identical outputs; bad files fail clearly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from irlvla_jax.models.vision import ResNet
from irlvla_jax.models.weights import (WeightLoadError, flatten_params, load_weights,
                                       resnet_torchvision_mapping, save_tensors)


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
