"""A very small policy config and random (but well-formed) scenes for the planner, policy and IL
tests: one 32 x 32 camera, an 8 x 8 BEV grid, no language model unless asked, so a whole IL
step compiles in well under a minute on CPU."""

from __future__ import annotations

import numpy as np

from configs import tiny
from irlvla_jax import types


def small_config(use_semantic: bool = False):
    c = tiny.get_config()
    c.data.sizes.update(dict(
        num_future=8, cameras=("CAM_F0",), image_hw=(32, 32), lidar_bev_hw=(8, 8),
        bev_hw=(8, 8), bev_range_m=32.0, max_agents=4, max_polygons=2, max_polygon_vertices=4,
        max_centerline=4, max_red_lights=1, max_lanes=4, lane_points=5))
    c.data.batch_size = 8
    m = c.model
    m.use_semantic = use_semantic
    m.vision.update(dict(stage_sizes=(1,), widths=(8,), stem_width=8, out_dim=16))
    m.bev.update(dict(query_hw=(8, 8), dim=16, num_heads=2, mlp_dim=32, depths=(8.0, 24.0),
                      use_lidar=True))
    m.detection.update(dict(num_queries=4, num_heads=2, mlp_dim=32))
    m.map.update(dict(num_tokens=4, num_heads=2, mlp_dim=32, seg_hw=(8, 8)))
    m.semantic.update(dict(adaptor_tokens=2, num_meta_tokens=2, out_dim=16, prompt_len=96))
    m.semantic.llm.update(dict(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                               head_dim=16, intermediate_size=64))
    m.planner.update(dict(num_anchors=6, d_model=32, num_heads=2, num_blocks=1, mlp_ratio=2,
                          fourier_freqs=4, bev_pool=2))
    c.il.update(dict(num_steps=40, lr=3e-3, warmup_steps=2, log_every=5, eval_every=1000,
                     ckpt_every=1000, eval_batches=1, final_eval_batches=1))
    return c


def random_scenes(sizes: types.SceneSizes, n: int, seed: int = 0) -> types.Scene:
    """n numpy scenes: constant-curvature expert futures at random speeds (consistent ego
    status and command), a few agents, lanes, random pixels / LiDAR / BEV labels."""
    rng = np.random.default_rng(seed)
    s = types.zeros_scene(sizes, (n,)).to_dict()
    c = sizes.num_cameras
    t = 0.5 * np.arange(1, sizes.num_future + 1)
    for i in range(n):
        v = rng.uniform(2.0, 12.0)
        k = rng.uniform(-0.05, 0.05)
        h = k * v * t
        x = np.where(abs(k) > 1e-6, np.sin(h) / np.where(abs(k) > 1e-6, k, 1), v * t)
        y = np.where(abs(k) > 1e-6, (1 - np.cos(h)) / np.where(abs(k) > 1e-6, k, 1), 0)
        s["expert_future"][i] = np.stack([x, y, h], -1)
        th = -k * v * 0.5 * np.arange(3, -1, -1)
        s["ego_history"][i, :, 0] = -v * 0.5 * np.arange(3, -1, -1)
        s["ego_history"][i, :, 2] = th
        s["ego_velocity"][i] = (v, 0.0)
        s["ego_history_velocity"][i, :, 0] = v
        s["driving_command"][i, 0 if k > 0.02 else 2 if k < -0.02 else 1] = 1.0
        s["ego_history_time"][i] = -0.5 * np.arange(3, -1, -1)
    s["expert_future_valid"][:] = True
    s["cameras"] = rng.integers(0, 255, s["cameras"].shape, dtype=np.uint8)
    ih, iw = sizes.image_hw
    s["cam_intrinsics"][:] = np.array([[iw / 2, 0, iw / 2], [0, iw / 2, ih / 2], [0, 0, 1]])
    # camera looking along +x (OpenCV: z forward, x right, y down)
    s["cam_to_ego"][:] = np.array([[0, 0, 1, 1.5], [-1, 0, 0, 0], [0, -1, 0, 1.5], [0, 0, 0, 1]])
    s["lidar_bev"] = rng.uniform(0, 1, s["lidar_bev"].shape).astype(np.float32)
    a = sizes.max_agents
    s["agent_states"][:, :, :, 0] = rng.uniform(-25, 25, (n, a, 1))
    s["agent_states"][:, :, :, 1] = rng.uniform(-25, 25, (n, a, 1))
    s["agent_size"][:] = (4.5, 2.0, 1.6)
    s["agent_valid"][:, : a // 2] = True
    s["agent_class"][:] = rng.integers(0, len(types.AGENT_CLASSES), (n, a))
    m, kp = sizes.max_lanes, sizes.lane_points
    s["lane_vectors"][:, :, :, 0] = np.linspace(-10, 40, kp)
    s["lane_vectors"][:, :, :, 1] = rng.uniform(-10, 10, (n, m, 1))
    s["lane_valid"][:, : m // 2] = True
    s["bev_semantic"] = rng.integers(0, len(types.BEV_CLASSES), s["bev_semantic"].shape,
                                     dtype=np.uint8)
    s["meta_action"] = rng.integers(0, types.NUM_META_ACTIONS, (n,), dtype=np.int32)
    s["speed_limit"][:] = -1.0
    return types.Scene(**s)
