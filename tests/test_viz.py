"""BEV and camera pictures of a hand-built Scene (irlvla_jax.viz)."""

import matplotlib.colors as mcolors
import numpy as np
import pytest
from PIL import Image

from irlvla_jax import types, viz

SIZES = types.SceneSizes(cameras=("CAM_F0", "CAM_B0"), image_hw=(36, 64))


def rect(x0, x1, y0, y1, v=SIZES.max_polygon_vertices):
    ring = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
    out = np.repeat(ring[:1], v, 0)       # padding repeats the first vertex (types.py)
    out[:4] = ring
    return out


@pytest.fixture(scope="module")
def scene():
    s = types.zeros_scene(SIZES).to_dict()
    s["map_polygons"][0] = rect(-50, 80, -6, 6)
    s["map_polygon_type"][0] = types.ROADBLOCK
    s["map_polygons"][1] = rect(-50, 80, -1.75, 1.75)
    s["map_polygon_type"][1] = types.LANE
    s["map_polygon_on_route"][1] = True
    s["map_vertex_valid"][:2, :4] = True
    s["map_polygon_valid"][:2] = True
    s["centerline"][:50, 0] = np.linspace(-20, 80, 50)
    s["centerline_valid"][:50] = True
    s["red_light_polygons"][0] = rect(30, 34, -1.75, 1.75)
    s["red_light_vertex_valid"][0, :4] = True
    s["red_light_valid"][0] = True
    s["red_light_is_red"][0] = True
    # A lead vehicle 15 m ahead; a pedestrian on the right; a padded agent row (invalid) that
    # must not be drawn although its numbers are set.
    s["agent_states"][0, :, 0] = 15 + np.arange(types.NUM_AGENT_STEPS) * 2.0
    s["agent_size"][0] = (4.5, 2.0, 1.6)
    s["agent_valid"][0] = True
    s["agent_states"][1, :, :2] = (20.0, -8.0)
    s["agent_size"][1] = (0.8, 0.8, 1.7)
    s["agent_class"][1] = types.PEDESTRIAN
    s["agent_valid"][1, :5] = True
    s["agent_states"][2, :, :2] = (40.0, 20.0)
    s["agent_size"][2] = (4.5, 2.0, 1.6)
    s["ego_history"][:, 0] = [-6.0, -4.0, -2.0, 0.0]
    s["expert_future"][:, 0] = np.arange(1, 11) * 2.0
    s["expert_future_valid"][:] = True
    s["cameras"][0, :18] = (120, 160, 220)
    s["cameras"][1, 18:] = (90, 90, 90)
    return types.Scene(**s)


def rgb_at(fig, ax, x, y):
    """The drawn RGB at ego-frame point (x, y), read from the rendered canvas."""
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    px, py = ax.transData.transform((-y, x))
    return buf[int(round(buf.shape[0] - py)), int(round(px))]


def same_color(rgb, color, tol=12):
    want = np.array(mcolors.to_rgb(color)) * 255
    return np.abs(rgb.astype(float) - want).max() <= tol


def test_bev_draws_ego_agents_lights_and_respects_masks(scene):
    fig = viz.plot_scene_bev(scene, title="hand-built")
    ax = fig.axes[0]
    # Ego box (Pacifica) around its centre 1.461 m ahead of the rear axle, off the path line.
    assert same_color(rgb_at(fig, ax, 1.461 + 1.5, 0.7), viz.EGO_COLOR)
    assert same_color(rgb_at(fig, ax, -0.5, -0.8), viz.EGO_COLOR)
    # The lead vehicle at t = 0 (drawn at alpha 0.9 over the on-route lane).
    assert rgb_at(fig, ax, 15.0 + 1.5, -0.6)[2] > 150
    assert not same_color(rgb_at(fig, ax, 15.0 + 1.5, -0.6), viz.ON_ROUTE_COLOR, tol=30)
    # Red light red at t = 0.
    r, g, b = rgb_at(fig, ax, 32.0, 1.0).astype(int)
    assert r > g + 40 and r > b + 40
    # The invalid agent row is not drawn: the background shows there.
    assert same_color(rgb_at(fig, ax, 40.0, 20.0), "#f7f7f2", tol=3)
    # Outside the road: background; on the roadblock but off route: the roadblock fill.
    assert same_color(rgb_at(fig, ax, -10.0, 4.0), viz.MAP_COLORS[types.ROADBLOCK], tol=3)


def test_bev_plans_and_legend(scene):
    plan = np.stack([np.arange(1, 9) * 2.5, np.linspace(0, 6, 8), np.zeros(8)], 1)
    samples = np.repeat(plan[None], 3, 0) - np.arange(1, 4)[:, None, None] * 3
    fig = viz.plot_scene_bev(scene, plans={"policy": plan, "samples": samples},
                             scores={"epdms": 0.81})
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "policy" in labels and "samples" in labels and "expert" in labels
    assert labels.count("samples") == 1
    assert any("epdms: 0.810" in t.get_text() for t in ax.texts)
    # The plan's end point (20 m ahead, 6 m left) is drawn in the first plan colour, left of
    # the ego (a left turn must look like one).
    assert same_color(rgb_at(fig, ax, 20.0, 6.0), viz.PLAN_COLORS[0], tol=40)
    with pytest.raises(ValueError, match="plan 'bad'"):
        viz.plot_scene_bev(scene, plans={"bad": np.zeros(8)})


def test_save_scene_bev_writes_a_picture(tmp_path, scene):
    path = viz.save_scene_bev(tmp_path / "bev" / "s.png", scene, title="x")
    img = np.asarray(Image.open(path).convert("RGB")).astype(float)
    assert img.shape == (700, 700, 3)
    assert img.std() > 20                                   # not blank
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # many colours: a real drawing


def test_batched_scene_is_rejected():
    batch = types.zeros_scene(SIZES, batch=(2,))
    with pytest.raises(ValueError, match="batch"):
        viz.plot_scene_bev(batch)


def test_camera_grid(tmp_path, scene):
    fig = viz.plot_camera_grid(scene, camera_names=SIZES.cameras)
    assert [a.get_title() for a in fig.axes] == list(SIZES.cameras)
    fig.savefig(tmp_path / "cams.png")
    img = np.asarray(Image.open(tmp_path / "cams.png").convert("RGB")).astype(int)
    # The front camera's blue sky shows up in the picture.
    assert (np.abs(img - [120, 160, 220]).sum(-1) < 10).sum() > 100
    with pytest.raises(ValueError, match="camera names"):
        viz.plot_camera_grid(scene, camera_names=("CAM_F0",))


def test_plans_along_the_same_path_all_stay_visible(scene):
    """Three policies planning the same straight path (eval's bev_1.png hid the RL plan under
    another): each later plan is drawn over, and narrower than, the one before, in its own
    colour and marker, so every plan's colour shows around the shared path."""
    path = np.stack([np.arange(1, 9) * 2.5, np.zeros(8), np.zeros(8)], 1)
    names = ["constant_velocity", "il_policy", "rl_policy"]
    fig = viz.plot_scene_bev(scene, plans={n: path for n in names},
                             **viz.fit_view(path, margin=4.0))
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines() if ln.get_label() in names}
    widths = [lines[n].get_linewidth() for n in names]
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == 3
    assert [lines[n].get_zorder() for n in names] == sorted(lines[n].get_zorder() for n in names)
    assert len({lines[n].get_color() for n in names}) == 3
    assert len({lines[n].get_marker() for n in names}) == 3
    # Between two waypoints (no markers), across the path: every plan's colour is drawn.
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float)
    px, py = ax.transData.transform((0.0, 8.75))
    row = buf[int(round(buf.shape[0] - py)), int(px) - 8:int(px) + 9]
    for color in viz.PLAN_COLORS[:3]:
        want = np.array(mcolors.to_rgb(color)) * 255
        assert (np.abs(row - want).max(-1) < 40).any(), color
    assert same_color(rgb_at(fig, ax, 8.75, 0.0), viz.PLAN_COLORS[2], tol=40)


def test_fit_view_frames_the_ego_and_every_pose_as_a_square():
    view = viz.fit_view(np.array([[30.0, -5.0, 0.0]]), np.array([[[10.0, 12.0, 0.0]]]),
                        margin=2.0)
    (lo, hi), half = view["x_range"], view["y_half"]
    assert hi - lo == pytest.approx(2 * half)
    assert lo <= -2.0 and hi >= 32.0 and half >= 14.0
