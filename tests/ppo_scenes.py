"""A very small policy config and hand-built road scenes for the stage-3 tests
(test_rollout.py, test_ppo.py): one camera of 32 x 32, a 4 x 4 BEV query grid, no language
model, so the whole PPO update compiles in seconds on CPU."""

from __future__ import annotations

import numpy as np

from configs import tiny
from irlvla_jax import types

import scorer_scenes as ss


def small_config():
    c = tiny.get_config()
    s = ss.SIZES
    c.data.sizes.update(dict(
        num_future=s.num_future, cameras=s.cameras, image_hw=(32, 32), lidar_bev_hw=(4, 4),
        bev_hw=(4, 4), bev_range_m=32.0, max_agents=s.max_agents, max_polygons=s.max_polygons,
        max_polygon_vertices=s.max_polygon_vertices, max_centerline=s.max_centerline,
        max_red_lights=s.max_red_lights, max_lanes=4, lane_points=5))
    c.data.batch_size = 8
    m = c.model
    m.use_semantic = False
    m.vision.update(dict(stage_sizes=(1,), widths=(8,), stem_width=8, out_dim=16))
    m.bev.update(dict(query_hw=(8, 8), dim=16, num_heads=2, mlp_dim=32, depths=(8.0, 24.0),
                      use_lidar=False))
    m.detection.update(dict(num_queries=4, num_heads=2, mlp_dim=32))
    m.map.update(dict(num_tokens=4, num_heads=2, mlp_dim=32, seg_hw=(4, 4)))
    m.planner.update(dict(num_anchors=4, d_model=16, num_heads=2, num_blocks=1, mlp_ratio=2,
                          fourier_freqs=2, bev_pool=2))
    return c


def road_scenes(n: int, seed: int = 0) -> types.Scene:
    """n numpy scenes on the scorer tests' straight road: speeds 5..12 m/s, one lead vehicle
    driving at constant speed in the ego lane, lanes along the road, random camera pixels."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        speed = float(rng.uniform(5.0, 12.0))
        s = ss.road_scene(speed=speed)
        ss.add_agent(s, 0, x=float(rng.uniform(15, 30)), y=0.0, vx=float(rng.uniform(2, 8)))
        ss.add_agent(s, 1, x=-10.0, y=3.5, vx=-6.0, heading=np.pi)
        d = s.to_dict()
        d["cameras"] = rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8)
        d["cam_intrinsics"] = np.array([[[16, 0, 16], [0, 16, 16], [0, 0, 1]]], np.float32)
        d["cam_to_ego"] = np.array([[[0, 0, 1, 1.5], [-1, 0, 0, 0], [0, -1, 0, 1.5],
                                     [0, 0, 0, 1]]], np.float32)
        d["lidar_bev"] = np.zeros((4, 4, 2), np.float32)
        lanes = np.zeros((4, 5, 3), np.float32)
        for k, y in enumerate((0.0, 3.5)):
            lanes[k, :, 0] = np.linspace(-10, 40, 5)
            lanes[k, :, 1] = y
            lanes[k, :, 2] = 0.0 if k == 0 else np.pi
        d["lane_vectors"], d["lane_valid"] = lanes, np.array([1, 1, 0, 0], bool)
        d["lane_on_route"] = np.array([1, 0, 0, 0], bool)
        out.append(d)
    return types.Scene(**{k: np.stack([o[k] for o in out]) for k in out[0]})
