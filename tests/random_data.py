"""A small random-content TFDS dataset for loader tests (``data.source = "random"``)."""

from configs import tiny
from irlvla_jax.data import prepare

SIZES = dict(num_future=10, cameras=("CAM_F0",), image_hw=(8, 16), lidar_bev_hw=(8, 8),
             bev_hw=(8, 8), max_agents=4, max_polygons=6, max_polygon_vertices=5,
             max_centerline=12, max_red_lights=2, max_lanes=3, lane_points=4)


def random_data_config(tmp_path_factory, scenes: int, batch_size: int):
    """The tiny config on ``scenes`` random scenes per split, built under a fresh temp dir."""
    c = tiny.get_config()
    c.data.dir = str(tmp_path_factory.mktemp("data"))
    c.data.source = "random"
    c.data.random_scenes = scenes
    c.data.batch_size = batch_size
    c.data.sizes.update(SIZES)
    prepare.prepare_data(c)
    return c
