"""Camera geometry and LiDAR ranges of irlvla_jax.data.render."""

import time

import numpy as np
import pytest

from irlvla_jax.data import render

WH = (240, 136)
K = render.default_intrinsic(WH, hfov_deg=70.0)
MAGENTA = (255, 0, 255)


def forward_camera(yaw=0.0, height=1.6):
    """The rig convention: OpenCV axes with z_cam = +x_world, x_cam = -y_world, y_cam = -z_world
    for yaw 0."""
    return render.camera_pose([0.0, 0.0, height], yaw)


def car(x, y, color, yaw=0.0, length=4.5, width=2.0, height=1.6):
    return np.array([[x, y, height / 2, length, width, height, yaw]]), np.array([color], np.uint8)


def changed(world, cam, base_world=None):
    """Boolean [H,W] mask of the pixels ``world`` changes relative to ``base_world``."""
    a = render.render_camera(world, cam, K, WH).astype(int)
    b = render.render_camera(base_world or render.RenderWorld(), cam, K, WH).astype(int)
    return np.abs(a - b).sum(-1) > 0


def test_rig_convention_axes():
    m = forward_camera()
    np.testing.assert_allclose(m[:3, 2], [1, 0, 0], atol=1e-12)    # z_cam = +x_world
    np.testing.assert_allclose(m[:3, 0], [0, -1, 0], atol=1e-12)   # x_cam = -y_world
    np.testing.assert_allclose(m[:3, 1], [0, 0, -1], atol=1e-12)   # y_cam = -z_world


def test_lead_vehicle_centred_in_front_camera_absent_from_back_camera():
    boxes, colors = car(15.0, 0.0, MAGENTA, height=2.0)
    world = render.RenderWorld(boxes=boxes, box_colors=colors)
    front = changed(world, forward_camera())
    rows, cols = np.nonzero(front)
    assert front.sum() > 100, "the lead vehicle must be clearly visible"
    assert abs(cols.mean() - WH[0] / 2) < 0.05 * WH[0]
    # It stands on the ground and is taller than the camera: it straddles the horizon row.
    assert rows.min() < WH[1] / 2 < rows.max()
    assert not changed(world, forward_camera(yaw=np.pi)).any()


def test_vehicle_on_the_left_appears_left():
    boxes, colors = car(15.0, 5.0, MAGENTA)
    cols = np.nonzero(changed(render.RenderWorld(boxes=boxes, box_colors=colors),
                              forward_camera()))[1]
    assert cols.max() < WH[0] / 2


def test_near_box_occludes_far_box():
    b1, c1 = car(10.0, 0.0, (255, 0, 0))
    b2, c2 = car(25.0, 0.0, (0, 0, 255), height=1.2)
    img = render.render_camera(render.RenderWorld(boxes=np.concatenate([b2, b1]),
                                                  box_colors=np.concatenate([c2, c1])),
                               forward_camera(), K, WH)
    centre = img[WH[1] // 2 + 2, WH[0] // 2].astype(int)
    assert centre[0] > 100 and centre[2] < 50, centre   # red (near), not blue (far)


def test_box_faces_are_shaded_differently():
    boxes, colors = car(12.0, 0.0, (200, 200, 200), yaw=0.6)
    cam = render.camera_pose([0.0, 0.0, 6.0], 0.0, pitch=0.4)   # from above: top + sides show
    img = render.render_camera(render.RenderWorld(boxes=boxes, box_colors=colors), cam, K, WH)
    mask = changed(render.RenderWorld(boxes=boxes, box_colors=colors), cam)
    shades = {tuple(c) for c in img[mask]}
    assert len(shades) >= 3


def test_ground_line_behind_camera_is_not_drawn():
    line = np.array([[-10.0, 0.0], [-2.0, 0.0]])
    world = render.RenderWorld(ground_lines=[(line, 0.5, (255, 255, 255))])
    assert not changed(world, forward_camera()).any()
    assert changed(world, forward_camera(yaw=np.pi)).any()


def test_polygon_through_the_camera_stays_below_the_horizon():
    # A road from 50 m behind to 50 m ahead: without near-plane clipping its rear vertices
    # would project (mirrored) above the horizon.
    road = np.array([[-50.0, -3.0], [50.0, -3.0], [50.0, 3.0], [-50.0, 3.0]])
    world = render.RenderWorld(ground_polygons=[(road, (255, 0, 0))])
    mask = changed(world, forward_camera())
    rows = np.nonzero(mask)[0]
    assert mask.sum() > 200
    horizon = K[1, 2]
    assert rows.min() >= horizon - 1
    # ...and it reaches the bottom of the image (the road passes under the camera).
    assert mask[-1].any()


def test_sky_above_ground_below():
    img = render.render_camera(render.RenderWorld(), forward_camera(), K, WH).astype(int)
    top, bottom = img[2, WH[0] // 2], img[-2, WH[0] // 2]
    assert top[2] > top[0] + 40          # blue sky
    assert abs(bottom[0] - bottom[2]) < 15 and bottom.mean() < top.mean()  # grey ground


def test_render_time_and_shape():
    rng = np.random.default_rng(0)
    polys = []
    for _ in range(100):
        a = np.sort(rng.uniform(0, 2 * np.pi, 12))
        c, r = rng.uniform(-60, 60, 2), rng.uniform(2, 8)
        polys.append((np.stack([c[0] + r * np.cos(a), c[1] + r * np.sin(a)], 1), (90, 90, 90)))
    lines = [(np.array([[x, -1.8], [x + 3, -1.8]]), 0.15, (250, 250, 250))
             for x in range(-60, 60, 6)]
    boxes = np.concatenate([rng.uniform(-50, 50, (40, 2)), np.full((40, 1), 0.8),
                            np.tile([4.5, 2.0, 1.6], (40, 1)), rng.uniform(-3, 3, (40, 1))], 1)
    world = render.RenderWorld(polys, lines, boxes, rng.integers(0, 255, (40, 3)))
    K480 = render.default_intrinsic((480, 270))
    render.render_camera(world, forward_camera(), K480, (480, 270))
    t = time.perf_counter()
    img = render.render_camera(world, forward_camera(), K480, (480, 270))
    dt = time.perf_counter() - t
    assert img.shape == (270, 480, 3) and img.dtype == np.uint8
    assert dt < 0.25, f"480x270 frame took {dt * 1e3:.0f} ms"


def test_bad_world_is_rejected():
    with pytest.raises(ValueError, match="box_colors"):
        render.RenderWorld(boxes=np.zeros((2, 7)) + 1, box_colors=np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"ground_polygons\[0\]"):
        render.RenderWorld(ground_polygons=[(np.zeros((2, 2)), (0, 0, 0))])


# ----------------------------------------------------------------------------------------------
def lidar_pose(yaw=0.0, height=1.8):
    m = np.eye(4)
    c, s = np.cos(yaw), np.sin(yaw)
    m[:2, :2] = [[c, -s], [s, c]]
    m[2, 3] = height
    return m


@pytest.fixture(scope="module")
def box_world():
    boxes, colors = car(15.0, 0.0, MAGENTA, height=2.0)
    return render.RenderWorld(boxes=boxes, box_colors=colors)


def test_lidar_layout_and_ground(box_world):
    pts = render.lidar_scan(box_world, lidar_pose(), 8000, np.random.default_rng(0))
    assert pts.shape == (6, 8000) and pts.dtype == np.float32
    ring = pts[4]
    assert ring.min() >= 0 and ring.max() <= 31 and np.all(ring == np.round(ring))
    assert np.all(np.diff(ring) >= 0), "sorted by ring like a sweep"
    assert np.all(pts[5] == 0)
    rng_xy = np.hypot(pts[0], pts[1])
    assert rng_xy.max() <= 80.5
    ground = pts[2] < -1.7
    assert ground.mean() > 0.5
    np.testing.assert_allclose(pts[2, ground], -1.8, atol=0.1)   # ground plane 1.8 m below


def test_lidar_hits_box_front_face_at_range(box_world):
    pts = render.lidar_scan(box_world, lidar_pose(), 20000, 1)
    on_box = (pts[2] > -1.5) & (np.abs(pts[1]) < 0.7) & (pts[0] > 0)
    assert on_box.sum() > 10
    np.testing.assert_allclose(pts[0, on_box], 15.0 - 2.25, atol=0.1)  # front face at 12.75
    # Nothing lies behind the box in its shadow (the nearest hit wins).
    shadow = (np.abs(pts[1]) < 0.7) & (pts[0] > 13.5) & (pts[0] < 40)
    assert not shadow.any()
    # Returns from the box are brighter than the asphalt around it.
    assert pts[3, on_box].mean() > pts[3, pts[2] < -1.7].mean()


def test_lidar_scan_when_every_candidate_box_is_missed():
    # A box floating high above the sensor lies in the rays' azimuth window, but no ray of the
    # 32 rings reaches it: the scan must still be all ground (this used to raise IndexError).
    boxes, colors = car(15.0, 0.0, MAGENTA)
    boxes = boxes.copy()
    boxes[:, 2] = 200.0
    pts = render.lidar_scan(render.RenderWorld(boxes=boxes, box_colors=colors), lidar_pose(),
                            2000, 0)
    assert pts.shape == (6, 2000) and np.all(np.isfinite(pts))
    assert pts[2].max() < -1.7


def test_lidar_points_are_in_the_lidar_frame(box_world):
    # LiDAR turned to face world +y: the box (world +x) is on its right, at lidar y = -12.75.
    pts = render.lidar_scan(box_world, lidar_pose(yaw=np.pi / 2), 20000, 2)
    on_box = (pts[2] > -1.5) & (np.abs(pts[0]) < 0.7)
    assert on_box.sum() > 10
    np.testing.assert_allclose(pts[1, on_box], -12.75, atol=0.1)


def test_lidar_lane_markings_are_bright():
    strip = np.array([[3.0, 0.0], [20.0, 0.0]])
    world = render.RenderWorld(ground_lines=[(strip, 1.0, (255, 255, 255))])
    pts = render.lidar_scan(world, lidar_pose(), 20000, 3)
    inside = (pts[0] > 4) & (pts[0] < 19) & (np.abs(pts[1]) < 0.4)
    near = (pts[0] > 4) & (pts[0] < 19) & (np.abs(pts[1]) > 0.6) & (np.abs(pts[1]) < 2)
    assert inside.sum() > 5 and near.sum() > 5
    assert pts[3, inside].min() > 2 * pts[3, near].max()
