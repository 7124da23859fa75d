"""Vision backbones: feature-map shapes at the tiny config, ViT, and the paper-scale encoders."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import navsim, tiny
from irlvla_jax.models.vision import ViT, build_vision, feature_hw, normalize_images


def _shape_of(module, *args, **kw):
    params = jax.eval_shape(module.init, jax.random.key(0), *args, **kw)
    return params, jax.eval_shape(module.apply, params, *args, **kw)


def test_resnet_feature_map_at_tiny_config():
    cfg = tiny.get_config()
    hw = cfg.data.sizes.image_hw
    model = build_vision(cfg.model.vision, cfg.model.dtype)
    _, out = _shape_of(model, jax.ShapeDtypeStruct((8, *hw, 3), jnp.float32))
    assert out.shape == (8, *feature_hw(cfg.model.vision, hw), cfg.model.vision.out_dim)
    assert out.shape == (8, 5, 8, 64)     # stride 16 on 72 x 128


def test_vit_runs_and_patch_grid():
    cfg = tiny.get_config().model.vision
    cfg.kind, cfg.depth = "vit", 1
    model = build_vision(cfg)
    assert isinstance(model, ViT)
    x = jax.random.normal(jax.random.key(1), (2, 16, 24, 3))
    params = model.init(jax.random.key(0), x)
    y = model.apply(params, x)
    assert y.shape == (2, 2, 3, cfg.out_dim) and feature_hw(cfg, (16, 24)) == (2, 3)
    assert np.isfinite(np.asarray(y)).all()
    with pytest.raises(ValueError, match="multiple of the patch"):
        model.apply(params, x[:, :15])


def test_bad_kind_is_a_clear_error():
    cfg = tiny.get_config().model.vision
    cfg.kind = "vgg"
    with pytest.raises(ValueError, match="vision.kind"):
        build_vision(cfg)


def test_normalize_images():
    img = np.full((1, 2, 2, 3), 255, np.uint8)
    out = np.asarray(normalize_images(img))
    np.testing.assert_allclose(out[0, 0, 0], (1 - np.array([0.485, 0.456, 0.406]))
                               / np.array([0.229, 0.224, 0.225]), rtol=1e-5)


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_paper_scale_encoders_build_under_eval_shape():
    """configs/navsim.py: ResNet-34 on 8 cameras at 256x704, BEV 128x128, heads, a Qwen2.5-3B
    sized decoder — built abstractly (no memory), parameter counts printed for the report."""
    from irlvla_jax.models.bev import BEVEncoder
    from irlvla_jax.models.detection import DetectionHead, MapHead
    from irlvla_jax.models.semantic import SemanticReasoner
    cfg = navsim.get_config()
    m, s = cfg.model, cfg.data.sizes
    b, c = 1, len(s.cameras)
    sds = jax.ShapeDtypeStruct
    vision = build_vision(m.vision, m.dtype)
    pv, feats = _shape_of(vision, sds((b * c, *s.image_hw, 3), jnp.float32))
    fh, fw = feature_hw(m.vision, s.image_hw)
    assert feats.shape == (b * c, fh, fw, 256) and feats.dtype == jnp.bfloat16
    cam = sds((b, c, fh, fw, 256), jnp.bfloat16)
    pb, bev = _shape_of(BEVEncoder(m.bev, m.dtype), cam, sds((b, c, 3, 3), jnp.float32),
                        sds((b, c, 4, 4), jnp.float32), tuple(s.image_hw),
                        sds((b, *s.lidar_bev_hw, 2), jnp.float32))
    assert bev.shape == (b, 128, 128, 256)
    pd, (obj, boxes, cls) = _shape_of(DetectionHead(m.detection, m.dtype), bev)
    assert obj.shape == (b, 30, 256) and boxes.shape == (b, 30, 5) and cls.shape == (b, 30, 8)
    pm, (tok, seg) = _shape_of(MapHead(m.map, m.dtype), bev)
    assert tok.shape == (b, 64, 256) and seg.shape == (b, 128, 128, 7)
    ps, (meta, logits) = _shape_of(SemanticReasoner(m.semantic, m.dtype),
                                   sds((b, c * fh * fw, 256), jnp.bfloat16),
                                   sds((b, 4), jnp.float32))
    assert meta.shape == (b, 8, 256) and logits.shape == (b, 99)
    counts = {k: _count(p) for k, p in dict(vision=pv, bev=pb, detection=pd, map=pm,
                                           semantic=ps).items()}
    print("navsim encoder parameters:", {k: f"{v / 1e6:.1f}M" for k, v in counts.items()})
    assert 21e6 < counts["vision"] < 22.5e6          # ResNet-34 trunk = 21.3M
    assert 3.0e9 < counts["semantic"] < 3.3e9         # Qwen2.5-3B = 3.09B
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(ps))   # params stay float32
