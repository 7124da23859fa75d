"""BEV encoder: shapes at the tiny config, camera geometry, the LiDAR branch."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import tiny
from irlvla_jax.models.bev import BEVEncoder, bev_cell_centers, camera_ray_points

# a front camera 1.5 m up at the rear axle: OpenCV (x right, y down, z forward) -> ego
FRONT = np.array([[0, 0, 1, 1.0], [-1, 0, 0, 0], [0, -1, 0, 1.5], [0, 0, 0, 1]], np.float32)
K = np.array([[50.0, 0, 64], [0, 50, 36], [0, 0, 1]], np.float32)


def test_bev_grid_layout_matches_the_rasters():
    c = bev_cell_centers((4, 4), 32.0)
    np.testing.assert_allclose(c[0, 0], [24, 24])            # row 0 ahead, column 0 left
    np.testing.assert_allclose(c[3, 3], [-24, -24])


def test_camera_rays_point_where_the_camera_looks():
    intr = jnp.asarray(K)[None, None]
    ext = jnp.asarray(FRONT)[None, None]
    pts = np.asarray(camera_ray_points(intr, ext, (9, 16), (72, 128), (10.0,)))[0, 0, :, :, 0]
    centre = pts[4, 7:9].mean(0)                       # pixels around the principal point
    np.testing.assert_allclose(centre, [11.0, 0.0, 1.5], atol=0.8)
    assert pts[4, 0, 1] > 0 > pts[4, -1, 1]            # image left = ego +y
    assert pts[0, 8, 2] > pts[-1, 8, 2]                 # image top = up


def test_bev_encoder_shapes_and_lidar_branch():
    m = tiny.get_config().model
    cfg = m.bev
    b, c = 1, 2
    feats = jax.random.normal(jax.random.key(0), (b, c, 3, 4, 16))
    intr = jnp.broadcast_to(jnp.asarray(K), (b, c, 3, 3))
    ext = jnp.broadcast_to(jnp.asarray(FRONT), (b, c, 4, 4))
    enc = BEVEncoder(cfg)
    lidar = jnp.zeros((b, 64, 64, 2))
    # jitted: eager init dispatches (and compiles) every initialiser op by op
    params = jax.jit(enc.init, static_argnums=4)(jax.random.key(1), feats, intr, ext, (72, 128),
                                                 lidar)
    run = jax.jit(lambda f, e, l: enc.apply(params, f, intr, e, (72, 128), l))
    out = run(feats, ext, lidar)
    assert out.shape == (b, *cfg.query_hw, cfg.dim) and np.isfinite(np.asarray(out)).all()
    # the output depends on the LiDAR raster and on the camera pose (geometry enters)
    assert not np.allclose(out, run(feats, ext, lidar.at[:, 10:20, 30:40, 0].set(1.0)))
    moved = ext.at[..., 1, 3].add(5.0)
    assert not np.allclose(out, run(feats, moved, lidar))
    # tiny config end to end from the backbone's feature map size
    sizes = tiny.get_config().data.sizes
    abstract = jax.eval_shape(
        lambda: enc.init(jax.random.key(1), jnp.zeros((2, 4, 5, 8, 64)),
                         jnp.zeros((2, 4, 3, 3)) + jnp.eye(3), jnp.zeros((2, 4, 4, 4)),
                         tuple(sizes.image_hw), jnp.zeros((2, *sizes.lidar_bev_hw, 2))))
    assert abstract["params"]["queries"].shape == (16 * 16, cfg.dim)
