"""Paper scale on real NAVSIM (navtrain -> navtest), for GPU/TPU pods.

    python launch.py all --config configs/navsim.py \
        --config.data.navsim_root=$OPENSCENE_DATA_ROOT --config.data.maps_root=$NUPLAN_MAPS_ROOT

Starts from the tiny config and overrides sizes; see configs/tiny.py for what each field means.
"""

import os

from configs import tiny


def get_config():
    c = tiny.get_config()
    c.name = "navsim"
    c.workdir = "runs/navsim"

    d = c.data
    d.source = "navsim"
    d.navsim_root = os.environ.get("OPENSCENE_DATA_ROOT", "")
    d.maps_root = os.environ.get("NUPLAN_MAPS_ROOT", "")
    d.train_split = "navtrain"
    d.eval_split = "navtest"
    d.batch_size = 256
    d.num_workers = 16
    d.prefetch = 4
    d.sizes.update(dict(
        num_future=10,
        cameras=("CAM_F0", "CAM_L0", "CAM_L1", "CAM_L2", "CAM_R0", "CAM_R1", "CAM_R2", "CAM_B0"),
        image_hw=(256, 704),
        lidar_bev_hw=(256, 256),
        bev_hw=(128, 128),
        bev_range_m=32.0,
        max_agents=128,
        max_polygons=256,
        max_polygon_vertices=64,
        max_centerline=1024,
        max_red_lights=32,
        max_lanes=128,
        lane_points=20,
    ))
    return c
