"""3D reasoning, part 1: camera features -> a bird's-eye-view (BEV) feature map.

A grid of learned BEV queries (one per cell of a ``query_hw`` grid over ``[-r, r]^2`` metres)
cross-attends to the tokens of every camera. Geometry enters through position codes (PETR
style): each camera token is tagged with the ego-frame 3D points at a few depths along its
pixel ray (from the intrinsics and ``cam_to_ego``), each query with its cell centre, so the
attention can learn which pixels see which cell without an explicit depth distribution.
An optional LiDAR branch adds the rasterised point cloud to the queries before attending.

BEV raster layout = the data's (``Scene.bev_semantic``): row 0 is x = +r (ahead), column 0 is
y = +r (left).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from irlvla_jax.models import layers
from irlvla_jax.models.layers import MLP, CrossAttentionBlock, as_dtype


def bev_cell_centers(hw: Sequence[int], range_m: float) -> np.ndarray:
    """Ego-frame (x, y) of every cell centre of an ``hw`` raster over [-r, r]^2 -> [h, w, 2]."""
    h, w = hw
    x = range_m - (np.arange(h) + 0.5) * (2 * range_m / h)     # rows: ahead -> behind
    y = range_m - (np.arange(w) + 0.5) * (2 * range_m / w)     # columns: left -> right
    return np.stack(np.meshgrid(x, y, indexing="ij"), axis=-1).astype(np.float32)


def bev_cell_coords(points: jax.Array, hw: Sequence[int], range_m: float
                    ) -> tuple[jax.Array, jax.Array]:
    """Inverse of :func:`bev_cell_centers`: ego-frame points [..., 2] -> fractional (row, col)
    [...] of an ``hw`` raster over [-r, r]^2 (x = r - (row + 0.5) * 2r / h; cell centres land
    on integers), for bilinear reads of a BEV map at arbitrary points."""
    h, w = hw
    row = (range_m - points[..., 0]) * (h / (2 * range_m)) - 0.5
    col = (range_m - points[..., 1]) * (w / (2 * range_m)) - 0.5
    return row, col


def sine_encoding(coords: jax.Array, num_freqs: int = 8) -> jax.Array:
    """coords [..., n] (roughly in [-1, 1]) -> [..., n * 2 * num_freqs] sin/cos features."""
    freqs = (2.0 ** jnp.arange(num_freqs, dtype=jnp.float32)) * jnp.pi
    angles = coords.astype(jnp.float32)[..., None] * freqs              # [..., n, F]
    enc = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return enc.reshape(*coords.shape[:-1], -1)


class BEVPositionEmbedding(nn.Module):
    """Learned embedding of the BEV cell centres: MLP(sine(x / r, y / r)) -> [1, h*w, dim]."""
    dim: int
    hw: tuple[int, int]
    range_m: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self) -> jax.Array:
        xy = jnp.asarray(bev_cell_centers(self.hw, self.range_m)).reshape(1, -1, 2)
        return MLP(self.dim, self.dim, self.dtype, name="mlp")(
            sine_encoding(xy / self.range_m).astype(as_dtype(self.dtype)))


def camera_ray_points(intrinsics: jax.Array, cam_to_ego: jax.Array, feat_hw: Sequence[int],
                      image_hw: Sequence[int], depths: Sequence[float]) -> jax.Array:
    """Ego-frame 3D points along the ray of every feature-map pixel, at the given depths.

    intrinsics [B, C, 3, 3] (pixels of the ``image_hw`` image), cam_to_ego [B, C, 4, 4] (OpenCV
    camera axes: z along the optical axis, so depth = camera z) -> [B, C, h, w, len(depths), 3].
    """
    h, w = feat_hw
    ih, iw = image_hw
    u = (jnp.arange(w, dtype=jnp.float32) + 0.5) * (iw / w)       # feature pixel centre in image px
    v = (jnp.arange(h, dtype=jnp.float32) + 0.5) * (ih / h)
    uv1 = jnp.stack([*jnp.meshgrid(u, v, indexing="xy"), jnp.ones((h, w), jnp.float32)], -1)
    k_inv = jnp.linalg.inv(intrinsics.astype(jnp.float32))                  # [B, C, 3, 3]
    rays = jnp.einsum("bcij,hwj->bchwi", k_inv, uv1)                        # z = 1 in camera
    pts_cam = rays[..., None, :] * jnp.asarray(depths, jnp.float32)[:, None]   # [B,C,h,w,D,3]
    rot = cam_to_ego[..., :3, :3].astype(jnp.float32)
    trans = cam_to_ego[..., :3, 3].astype(jnp.float32)
    return (jnp.einsum("bcij,bchwdj->bchwdi", rot, pts_cam)
            + trans[:, :, None, None, None, :])


class BEVEncoder(nn.Module):
    """Camera feature maps (+ optional LiDAR raster) -> BEV feature map.

    cfg (``config.model.bev``): query_hw, range_m, dim, num_layers, num_heads, mlp_dim, depths,
    use_lidar; optional remat (``layers.remat_policy``) and attn_q_chunk (the queries attend
    this many at a time: ``layers.attention``; 0 = all at once).
    """
    cfg: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, cam_feats: jax.Array, intrinsics: jax.Array, cam_to_ego: jax.Array,
                 image_hw: Sequence[int], lidar_bev: jax.Array | None = None,
                 train: bool = False) -> jax.Array:
        """cam_feats [B, C, h, w, Dv]; intrinsics [B, C, 3, 3]; cam_to_ego [B, C, 4, 4];
        image_hw (static) = the image size the intrinsics refer to; lidar_bev [B, hl, wl, 2] or
        None (ignored unless ``cfg.use_lidar``) -> bev [B, Hq, Wq, dim]."""
        cfg, dt = self.cfg, as_dtype(self.dtype)
        b, c, h, w, _ = cam_feats.shape
        hq, wq = cfg.query_hw
        d = cfg.dim
        if cfg.dim % cfg.num_heads:
            raise ValueError(f"config.model.bev: dim {d} not divisible by num_heads "
                             f"{cfg.num_heads}")

        # camera tokens: features (values) and ray-point position codes (added to keys)
        tokens = nn.Dense(d, dtype=dt, name="cam_proj")(cam_feats.astype(dt)).reshape(b, -1, d)
        pts = camera_ray_points(intrinsics, cam_to_ego, (h, w), image_hw, cfg.depths)
        pts = (pts / cfg.range_m).reshape(b, c * h * w, -1)
        cam_pos = MLP(d, d, dt, name="cam_pos")(sine_encoding(pts, 4).astype(dt))

        query_pos = BEVPositionEmbedding(d, (hq, wq), cfg.range_m, dt, name="query_pos")()
        queries = self.param("queries", nn.initializers.normal(0.02), (hq * wq, d), jnp.float32)
        x = jnp.broadcast_to(queries.astype(dt), (b, hq * wq, d))
        if cfg.use_lidar and lidar_bev is not None:
            x = x + self._lidar(lidar_bev.astype(dt), (hq, wq), d, dt).reshape(b, hq * wq, d)

        # one layer = cross-attention + mixing; cfg.remat rematerialises each layer in the
        # backward pass (layers.remat_policy). Its sub-modules are made with parent=module so
        # their params sit directly under this encoder with or without remat.
        layer = layers.maybe_remat(_bev_layer, cfg.get("remat", ""), static_argnums=(1, 6))
        for i in range(cfg.num_layers):
            x = layer(self, i, x, tokens, query_pos, cam_pos, train)
        return nn.LayerNorm(dtype=dt, name="out_norm")(x).reshape(b, hq, wq, d)

    def _lidar(self, lidar_bev, hw, d, dt):
        """lidar_bev [B, hl, wl, 2] -> [B, Hq, Wq, d]: conv, resample to the query grid, conv."""
        y = nn.relu(nn.Conv(d // 2, (3, 3), padding="SAME", dtype=dt, name="lidar_conv1")(
            lidar_bev))
        y = jax.image.resize(y, (y.shape[0], *hw, y.shape[-1]), "linear", antialias=True)
        return nn.Conv(d, (3, 3), padding="SAME", dtype=dt, name="lidar_conv2")(y)


def _bev_layer(module: BEVEncoder, i: int, x: jax.Array, tokens: jax.Array, query_pos: jax.Array,
               cam_pos: jax.Array, train: bool) -> jax.Array:
    """BEV layer ``i`` of ``module``: queries x [B, Hq*Wq, d] cross-attend to the camera tokens
    [B, N, d] (position codes on queries and keys), then mix neighbouring cells (a depthwise
    3x3 convolution: cheaper than BEV self-attention at 128 x 128 cells)."""
    cfg, dt = module.cfg, as_dtype(module.dtype)
    b, d = x.shape[0], cfg.dim
    hq, wq = cfg.query_hw
    x = CrossAttentionBlock(cfg.num_heads, d // cfg.num_heads, cfg.mlp_dim, dtype=dt,
                            q_chunk=int(cfg.get("attn_q_chunk", 0)), name=f"cross_{i}",
                            parent=module)(x, tokens, None, train, query_pos,
                                                              cam_pos)
    grid = nn.LayerNorm(dtype=dt, name=f"mix_norm_{i}", parent=module)(x).reshape(b, hq, wq, d)
    grid = nn.Conv(d, (3, 3), padding="SAME", feature_group_count=d, dtype=dt,
                   name=f"mix_conv_{i}", parent=module)(grid)
    return x + nn.Dense(d, dtype=dt, name=f"mix_proj_{i}", parent=module)(
        nn.gelu(grid)).reshape(b, -1, d)
