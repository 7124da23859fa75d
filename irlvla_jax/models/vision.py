"""Image backbones: a ResNet (torchvision layout) and a ViT (timm layout), so that ImageNet
weights load by name (``weights.resnet_torchvision_mapping``, ``weights.vit_timm_mapping``).

Both map images ``[N, H, W, 3]`` (float, see :func:`normalize_images`) to a feature map
``[N, h, w, out_dim]``; the policy folds cameras into N. ``config.model.vision`` picks one
(``kind``) and sizes it, see configs/tiny.py.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from irlvla_jax.models.layers import MLP, MultiHeadAttention, as_dtype, maybe_remat

# ImageNet statistics: what torchvision / timm pretrained backbones expect.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize_images(images: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """uint8 RGB [..., H, W, 3] -> ImageNet-normalised float [..., H, W, 3] in ``dtype``."""
    x = images.astype(jnp.float32) / 255.0
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).astype(as_dtype(dtype))


class Affine(nn.Module):
    """Per-channel ``x * scale + bias``: a frozen BatchNorm with its running statistics folded in
    (see ``weights.resnet_torchvision_mapping``); it keeps no mutable state, so a pretrained
    ResNet trains with plain ``apply`` like every other module."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
        return (x * scale + bias).astype(as_dtype(self.dtype))


def _norm(kind: str, channels: int, dtype, name: str) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(num_groups=min(32, channels // 4) or 1, dtype=as_dtype(dtype),
                            name=name)
    if kind == "frozen_bn":
        return Affine(dtype, name=name)
    raise ValueError(f"config.model.vision.norm: unknown {kind!r} (expected 'group' or "
                     f"'frozen_bn')")


class BasicBlock(nn.Module):
    """ResNet-18/34 block: two 3x3 convs, projection shortcut when the shape changes."""
    features: int
    stride: int
    norm: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dt = as_dtype(self.dtype)
        conv = lambda f, k, s, name: nn.Conv(  # noqa: E731
            f, (k, k), (s, s), padding=[(k // 2, k // 2)] * 2, use_bias=False, dtype=dt, name=name)
        y = nn.relu(_norm(self.norm, self.features, dt, "bn1")(
            conv(self.features, 3, self.stride, "conv1")(x)))
        y = _norm(self.norm, self.features, dt, "bn2")(conv(self.features, 3, 1, "conv2")(y))
        if self.stride != 1 or x.shape[-1] != self.features:
            x = _norm(self.norm, self.features, dt, "downsample_bn")(
                conv(self.features, 1, self.stride, "downsample_conv")(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """torchvision ResNet (basic blocks) without the classifier, plus a 1x1 projection.

    cfg fields: stage_sizes (blocks per stage, e.g. (3, 4, 6, 3) = ResNet-34), widths (channels
    per stage), stem_width, norm ('group' | 'frozen_bn'), out_dim, remat (optional, per basic
    block: ``layers.remat_policy``). Output stride = 4 * 2^(S-1).
    """
    cfg: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """images [N, H, W, 3] float -> features [N, ceil(H/s), ceil(W/s), out_dim]."""
        del train  # no batch statistics, no dropout: train and eval are the same function
        cfg, dt = self.cfg, as_dtype(self.dtype)
        if len(cfg.stage_sizes) != len(cfg.widths):
            raise ValueError("config.model.vision: stage_sizes and widths differ in length "
                             f"({cfg.stage_sizes} vs {cfg.widths})")
        x = images.astype(dt)
        x = nn.Conv(cfg.stem_width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
                    dtype=dt, name="conv1")(x)
        x = nn.relu(_norm(cfg.norm, cfg.stem_width, dt, "bn1")(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])
        block = maybe_remat(BasicBlock, cfg.get("remat", ""))     # layers.remat_policy
        for s, (blocks, width) in enumerate(zip(cfg.stage_sizes, cfg.widths)):
            for b in range(blocks):
                stride = 2 if (s > 0 and b == 0) else 1
                x = block(width, stride, cfg.norm, dt, name=f"layer{s + 1}_{b}")(x)
        return nn.Dense(cfg.out_dim, dtype=dt, name="proj")(x)


class ViTBlock(nn.Module):
    """timm's pre-norm ViT block, in its names (``norm1, attn, norm2, mlp.fc1, mlp.fc2``) and with
    its choices (biases on q/k/v and on the output projection, exact GELU), so that a timm
    checkpoint reproduces its features."""
    heads: int
    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x [N, T, D] -> [N, T, D]."""
        dt, d = as_dtype(self.dtype), x.shape[-1]
        h = nn.LayerNorm(epsilon=1e-6, dtype=dt, name="norm1")(x)
        x = x + MultiHeadAttention(self.heads, self.heads, d // self.heads, dt, qkv_bias=True,
                                   out_bias=True, name="attn")(h, h)
        h = nn.LayerNorm(epsilon=1e-6, dtype=dt, name="norm2")(x)
        return x + MLP(self.mlp_dim, dtype=dt, activation=functools.partial(nn.gelu,
                                                                           approximate=False),
                       name="mlp")(h)


class ViT(nn.Module):
    """Vision Transformer (timm layout, no class token): patchify, learned position embeddings,
    pre-norm GELU blocks.

    cfg fields: patch, width, depth, heads, mlp_dim, out_dim.
    The position table is sized by the image at init; H and W must be multiples of ``patch``.
    """
    cfg: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """images [N, H, W, 3] float -> features [N, H/patch, W/patch, out_dim]."""
        del train  # no dropout: train and eval are the same function
        cfg, dt = self.cfg, as_dtype(self.dtype)
        n, h, w, _ = images.shape
        if h % cfg.patch or w % cfg.patch:
            raise ValueError(f"ViT: image {h}x{w} is not a multiple of the patch {cfg.patch}")
        x = nn.Conv(cfg.width, (cfg.patch, cfg.patch), (cfg.patch, cfg.patch), padding="VALID",
                    dtype=dt, name="patch_embed")(images.astype(dt))
        gh, gw = x.shape[1:3]
        x = x.reshape(n, gh * gw, cfg.width)
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, gh * gw, cfg.width),
                         jnp.float32)
        x = x + pos.astype(dt)
        if cfg.width % cfg.heads:
            raise ValueError(f"config.model.vision: width {cfg.width} not divisible by heads "
                             f"{cfg.heads}")
        block = maybe_remat(ViTBlock, cfg.get("remat", ""))       # layers.remat_policy
        for i in range(cfg.depth):
            x = block(cfg.heads, cfg.mlp_dim, dt, name=f"blocks_{i}")(x)
        x = nn.LayerNorm(dtype=dt, name="norm")(x)
        x = nn.Dense(cfg.out_dim, dtype=dt, name="proj")(x)
        return x.reshape(n, gh, gw, cfg.out_dim)


def build_vision(cfg: Any, dtype: Any = jnp.float32) -> nn.Module:
    """``config.model.vision`` -> a ResNet or ViT module (``cfg.kind``)."""
    if cfg.kind == "resnet":
        return ResNet(cfg, dtype)
    if cfg.kind == "vit":
        return ViT(cfg, dtype)
    raise ValueError(f"config.model.vision.kind: unknown {cfg.kind!r} (expected 'resnet' or "
                     f"'vit')")


def feature_hw(cfg: Any, image_hw: Sequence[int]) -> tuple[int, int]:
    """The feature-map size the backbone produces for ``image_hw`` (static shape arithmetic)."""
    h, w = image_hw
    if cfg.kind == "vit":
        return h // cfg.patch, w // cfg.patch
    for _ in range(1 + len(cfg.stage_sizes)):      # stem conv + max-pool, then stages 2..S
        h, w = -(-h // 2), -(-w // 2)
    return h, w
