"""The embedded default: a synthetic NAVSIM-format world and a tiny policy, on 2 CPU cores.

    python launch.py                       # data -> il -> irl -> rl -> eval, this config
    python launch.py il --config configs/tiny.py --config.il.num_steps=50

One config = one reproducible run. Each section belongs to one part of the code base:
data -> irlvla_jax/data, sim -> irlvla_jax/sim, model -> irlvla_jax/models,
il / irl / ppo -> irlvla_jax/train, eval -> irlvla_jax/evaluate.py.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "tiny"
    c.seed = 0
    c.workdir = "runs/tiny"

    # --- data (irlvla_jax/data) -------------------------------------------------------------
    c.data = d = ml_collections.ConfigDict()
    d.dir = ""                 # "" = the repo's data/ folder; NAVSIM-format root + TFDS data go here
    d.source = "synthetic"     # "synthetic" (generated under data.dir) or "navsim" (real root)
    d.navsim_root = ""         # $OPENSCENE_DATA_ROOT when source == "navsim"
    d.maps_root = ""           # $NUPLAN_MAPS_ROOT when source == "navsim"
    d.train_split = "synthetic_train"
    d.eval_split = "synthetic_val"
    d.batch_size = 8           # global batch, sharded on the 'data' mesh axis
    d.shuffle = True
    d.num_workers = 0          # grain worker processes (0 = in-process)
    d.prefetch = 2
    d.skip_bad = False         # skip (and count in a report) bad inputs instead of failing
    d.sizes = ml_collections.ConfigDict(dict(
        num_future=10,
        cameras=("CAM_F0", "CAM_L0", "CAM_R0", "CAM_B0"),
        image_hw=(72, 128),
        lidar_bev_hw=(64, 64),
        bev_hw=(64, 64),
        bev_range_m=32.0,
        max_agents=32,
        max_polygons=64,
        max_polygon_vertices=24,
        max_centerline=200,
        max_red_lights=8,
        max_lanes=32,
        lane_points=10,
    ))
    # the synthetic world (irlvla_jax/data/synthetic)
    d.synthetic = ml_collections.ConfigDict(dict(
        seed=0,
        num_logs=dict(synthetic_train=6, synthetic_val=2),
        frames_per_log=40,
        image_wh=(480, 270),       # written JPEG size (NAVSIM: 1920x1080); intrinsics match
        lidar_points=4000,
    ))

    # --- mesh (irlvla_jax/parallel.py) ----------------------------------------------------------
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))   # -1: all devices on 'data'
    return c
