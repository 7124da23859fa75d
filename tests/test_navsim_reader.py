"""NAVSIM reader: a hand-built 15-frame log on the tiny map -> Scene dicts, and bad inputs."""

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
from shapely.geometry import Point, Polygon

import navsim_fixtures as nf
from configs import tiny
from irlvla_jax import geometry, types
from irlvla_jax.data import labels, navsim_reader
from irlvla_jax.data.errors import BadInputError
from irlvla_jax.data.navsim_reader import SceneReader
from irlvla_jax.sim import metrics, observation

SIZES = types.SceneSizes(num_future=10, cameras=("CAM_F0", "CAM_B0"), image_hw=(18, 32),
                         max_polygons=20, max_lanes=8, max_agents=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("navsim")
    nf.write_map(root / "maps")
    nf.write_log(root / "navsim", "mini", "log_a", nf.make_frames("log_a", n=15))
    return root


@pytest.fixture(scope="module")
def scenes(world):
    reader = SceneReader(world / "navsim", world / "maps", SIZES)
    return list(reader.iter_split("mini"))


def test_windows_and_fields(scenes):
    assert [m.token for _, m in scenes] == [f"{3:016x}", f"{4:016x}"]   # a window every frame
    for sc, meta in scenes:
        types.check_scene(sc, SIZES, where=meta.token, batch=())
        assert set(sc) == set(types.scene_spec(SIZES))
    assert not scenes[0][0]["has_previous"] and scenes[1][0]["has_previous"]
    assert scenes[1][1].previous_token == f"{3:016x}"
    assert scenes[0][0]["is_original"]


def test_ego_and_expert_in_t0_frame(scenes):
    sc, _ = scenes[0]
    step = nf.SPEED * 0.5
    np.testing.assert_allclose(sc["ego_history"][:, 0], [-3 * step, -2 * step, -step, 0], atol=1e-3)
    np.testing.assert_allclose(sc["ego_history"][:, 1:], 0, atol=1e-3)
    np.testing.assert_allclose(sc["ego_history_time"], [-1.5, -1.0, -0.5, 0.0])
    np.testing.assert_allclose(sc["expert_future"][:, 0], step * np.arange(1, 11), atol=1e-3)
    np.testing.assert_allclose(sc["expert_future"][:, 1:], 0, atol=1e-3)
    assert sc["expert_future_valid"].all()
    np.testing.assert_allclose(sc["ego_velocity"], [nf.SPEED, 0])
    np.testing.assert_array_equal(sc["driving_command"], [0, 1, 0, 0])
    keep = types.META_SPEED_CLASSES.index("keep_speed") * 9 + types.META_PATH_CLASSES.index(
        "straight")
    assert sc["meta_action"] == keep


def test_agents_tracked_in_t0_frame(scenes):
    sc, meta = scenes[0]
    i = meta.track_tokens.index("veh")
    # 10 m ahead at t = 0, moving with the ego: 10 + 2.5 k m in the t = 0 frame
    np.testing.assert_allclose(sc["agent_states"][i, :, 0], 10 + 2.5 * np.arange(types.NUM_AGENT_STEPS),
                               atol=1e-3)
    np.testing.assert_allclose(sc["agent_states"][i, :, 1:3], 0, atol=1e-3)
    assert sc["agent_valid"][i].all()
    np.testing.assert_allclose(sc["agent_size"][i], [4.5, 2.0, 1.6])
    j = meta.track_tokens.index("ped")
    np.testing.assert_array_equal(sc["agent_valid"][j], np.arange(types.NUM_AGENT_STEPS) < 3)
    np.testing.assert_allclose(sc["agent_states"][j, 0], [5, 6, -math.pi / 2, 0, -1], atol=1e-3)
    assert sc["agent_class"][j] == types.PEDESTRIAN and sc["agent_class"][i] == types.VEHICLE
    assert sc["agent_valid"].sum(1).astype(bool).sum() == 2


def test_sensors(scenes):
    sc, _ = scenes[0]
    assert sc["cameras"].shape == (2, 18, 32, 3)
    assert abs(int(sc["cameras"][0, 5, 5, 0]) - 200) < 8   # the written colour survives
    s = 32 / nf.IMAGE_WH[0]
    np.testing.assert_allclose(sc["cam_intrinsics"][0, 0, 0], 50 * s)
    np.testing.assert_allclose(sc["cam_intrinsics"][0, 0, 2], (31.5 + 0.5) * s - 0.5)
    # cam_to_ego = lidar2ego @ sensor2lidar: camera at lidar (1.5, 0, 1.8) + (0.5, 0, 0)
    np.testing.assert_allclose(sc["cam_to_ego"][0, :3, 3], [2.0, 0.0, 1.8])
    np.testing.assert_allclose(sc["cam_to_ego"][0, :3, 2], [1, 0, 0])   # optical axis forward
    assert sc["lidar_bev"][..., 0].sum() > 0 and sc["lidar_bev"].max() <= 1


def test_map_route_and_lights(scenes):
    sc, meta = scenes[0]
    assert meta.corrected_route == ["1", "3", "2"]
    n = sc["map_polygon_valid"].sum()
    assert n == 17 and not meta.truncated.get("map_polygons")
    t = sc["map_polygon_type"][:n]
    assert list(t) == [0] * 4 + [1] * 8 + [2] * 4 + [3]
    # on route: lanes 11, 12, 21, 22 and connectors 31, 32 (positions 4,5,6,7 and 12,13)
    assert list(np.flatnonzero(sc["map_polygon_on_route"])) == [4, 5, 6, 7, 12, 13]
    # padded vertices repeat the first one
    assert (sc["map_polygons"][0, 4:] == sc["map_polygons"][0, 0]).all()
    assert sc["map_vertex_valid"][0].sum() == 4
    # ego (0, 0) lies inside lane 12 (index 5) in the ego frame
    assert Polygon(sc["map_polygons"][5, :4]).contains(Point(0, 0))
    cl = sc["centerline"][sc["centerline_valid"]]
    np.testing.assert_allclose(cl[:, 1], 0, atol=1e-3)
    np.testing.assert_allclose(cl[:, 2], 0, atol=1e-6)
    assert cl[0, 0] == pytest.approx(-60, abs=1e-3) and cl[-1, 0] == pytest.approx(160, abs=1e-3)
    assert sc["speed_limit"] == pytest.approx(13.4)
    L = sc["red_light_valid"].sum()
    assert L == 2
    assert sc["red_light_is_red"][0].all() and not sc["red_light_is_red"][1].any()
    assert sc["red_light_on_route"][:2].all() and sc["red_light_on_corrected_route"][:2].all()
    assert sc["lane_valid"].sum() == 8 and meta.truncated["lanes"] == 4
    # nearest lane first: the ego's own lane baseline runs through (0, 0)
    np.testing.assert_allclose(sc["lane_vectors"][0, :, 1], 0, atol=1e-3)
    assert sc["lane_on_route"][0]


@pytest.fixture(scope="module")
def exact_world(tmp_path_factory):
    """The tiny map with a concave, curved 100-vertex roadblock 1 and 70 car parks (87
    polygons)."""
    root = tmp_path_factory.mktemp("exact")
    nf.write_map(root / "maps", block_1=nf.bitten_block(100), carparks=nf.carparks_near_ego(70))
    nf.write_log(root / "navsim", "mini", "log_a", nf.make_frames("log_a", n=15))
    return root


def test_map_polygons_are_kept_exactly(exact_world):
    """Every polygon and every vertex, with the embedded default's sizes: no simplification,
    no cut (issue 13, cause 2)."""
    default = tiny.get_config().data.sizes
    sizes = dataclasses.replace(SIZES, max_polygons=default.max_polygons,
                                max_polygon_vertices=default.max_polygon_vertices)
    sc, meta = next(SceneReader(exact_world / "navsim", exact_world / "maps", sizes)
                    .iter_split("mini"))
    n = int(sc["map_polygon_valid"].sum())
    assert n == 17 + 70 > 64                          # more than the old tiny cap
    assert list(sc["map_polygon_type"][:n]).count(types.CARPARK_AREA) == 70
    # Roadblock 1 (the first polygon, PDM order) holds its 100 vertices as written.
    assert sc["map_vertex_valid"][0].sum() == 100
    x, y, h = nf.ego_pose(3)
    c, s = math.cos(h), math.sin(h)
    want = (np.asarray(nf.bitten_block(100).exterior.coords)[:-1] - (x, y)) @ [[c, -s], [s, c]]
    np.testing.assert_allclose(sc["map_polygons"][0, :100], want, atol=2e-4)
    assert (sc["map_polygons"][0, 100:] == sc["map_polygons"][0, 0]).all()
    assert Polygon(sc["map_polygons"][0, :100]).area == pytest.approx(
        nf.bitten_block(100).area, rel=1e-5)
    assert "map_polygons" not in meta.truncated


def test_the_scorer_sees_the_exact_concave_edge(exact_world):
    """DAC of an ego standing with its front-left corner 1 cm inside / outside the curved bite
    out of roadblock 1 (a ring the old 24-vertex cap cut by up to 5 cm), with the embedded
    default's sizes: the reader keeps the arc, the scorer tests it."""
    default = tiny.get_config().data.sizes
    sizes = dataclasses.replace(SIZES, max_polygons=default.max_polygons,
                                max_polygon_vertices=default.max_polygon_vertices)
    sc, _ = next(SceneReader(exact_world / "navsim", exact_world / "maps", sizes)
                 .iter_split("mini"))
    scene = types.Scene.from_dict({k: jnp.asarray(v) for k, v in sc.items()})
    # Road frame (s, l) -> the scene's frame: the ego's rear axle sits at s 60, l -1.75.
    centre = np.array([nf.BITE_S - nf.EGO_S, nf.BITE_L + 1.75])
    front_left = np.asarray(geometry.ego_corners(jnp.zeros(3)))[0]
    phi = np.linspace(1.2, 1.8, 7) * np.pi                 # around the bite's lower half
    states = []
    for offset in (-0.01, 0.01):                           # inside the bite, then on the road
        corner = centre + (nf.BITE_R + offset) * np.stack([np.cos(phi), np.sin(phi)], -1)
        state = np.zeros((len(phi), metrics.NUM_STATES, 11), np.float32)
        state[..., :2] = (corner - front_left)[:, None]
        states.append(state)
    raw = metrics.score_states(jnp.asarray(np.concatenate(states)),
                               observation.build_observation(scene), scene)
    np.testing.assert_array_equal(np.asarray(raw["dac"]), [0.0] * len(phi) + [1.0] * len(phi))


@pytest.mark.parametrize("field, value, in_msg", [
    ("max_polygons", 80, "87 drivable-map polygons"),
    ("max_polygon_vertices", 64, "100 vertices")])
def test_a_map_the_sizes_cannot_hold_is_refused(exact_world, field, value, in_msg):
    sizes = dataclasses.replace(SIZES, **{"max_polygons": 96, "max_polygon_vertices": 112,
                                          field: value})
    reader = SceneReader(exact_world / "navsim", exact_world / "maps", sizes)
    with pytest.raises(BadInputError, match=in_msg) as e:
        next(reader.iter_split("mini"))
    assert e.value.reason == "map_too_large" and field in str(e.value)


def test_bev_semantic(scenes):
    sc, _ = scenes[0]
    bev = sc["bev_semantic"]
    h, w = SIZES.bev_hw
    cell = 2 * SIZES.bev_range_m / h
    row = lambda x: int((SIZES.bev_range_m - x) / cell)   # noqa: E731
    col = lambda y: int((SIZES.bev_range_m - y) / cell)   # noqa: E731
    assert bev[row(10), col(0)] == types.BEV_CLASSES.index("vehicle")
    ped = np.argwhere(bev == types.BEV_CLASSES.index("pedestrian"))
    # a 0.5 m pedestrian still marks the cell(s) around its centre (x 5, y 6 -> 26.5, 25.5)
    assert len(ped) >= 1 and (abs(ped - [26.5, 25.5]) <= 1).all()
    assert bev[row(-20), col(6.5)] == types.BEV_CLASSES.index("walkway")
    assert bev[row(20), col(2.5)] == types.BEV_CLASSES.index("road")
    assert bev[row(20), col(-3.0)] == 0   # right of the road
    assert types.BEV_CLASSES.index("centerline") in bev[row(20), col(0) - 1:col(0) + 1]


def test_off_route_start_is_corrected(world, tmp_path):
    nf.write_log(tmp_path, "mini", "log_b", nf.make_frames("log_b", route=("3", "2")),
                 sensors=False)
    reader = SceneReader(tmp_path, world / "maps", SIZES)
    # sensors absent: use read_scene on a copy that has them
    frames = nf.make_frames("log_b", route=("3", "2"))
    nf.write_log(tmp_path, "mini", "log_b", frames)
    sc, meta = reader.read_scene("mini", "log_b", frames[3]["token"])
    assert meta.corrected_route == ["1", "3", "2"]
    on = sc["red_light_on_route"][sc["red_light_valid"]]
    assert on.all()   # connectors 31/32 are in both the raw and the corrected route


def test_token_list_filter(world, tmp_path):
    lst = tmp_path / "tokens.txt"
    lst.write_text(f"{4:016x}\n")
    reader = SceneReader(world / "navsim", world / "maps", SIZES, token_lists={"mini": lst})
    assert [m.token for _, m in reader.iter_split("mini")] == [f"{4:016x}"]


def test_any_log_folder_is_a_split(world, scenes, tmp_path):
    """A root whose split folder is named ``demo`` reads like any NAVSIM split; the NAVSIM
    names keep their meaning (navtrain -> the trainval logs, navhard: two stages)."""
    nf.write_log(tmp_path, "demo", "log_a", nf.make_frames("log_a", n=15))
    reader = SceneReader(tmp_path, world / "maps", SIZES)
    assert reader.splits() == ["demo"]
    demo = list(reader.iter_split("demo"))
    assert [m.token for _, m in demo] == [m.token for _, m in scenes]
    for (a, _), (b, _) in zip(demo, scenes):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    nf.write_log(tmp_path, "trainval", "log_t", nf.make_frames("log_t", n=14), sensors=False)
    assert reader.splits() == ["navtrain", "demo"]
    assert reader.split_spec("navtrain").log_folder == "trainval"
    assert reader.split_spec("navhard_two_stage").num_future == 8
    with pytest.raises(BadInputError, match="demo") as e:   # names what the root does hold
        list(reader.iter_split("dmeo"))
    assert e.value.reason == "missing_split"


def _bad_world(tmp_path, world, kind):
    frames = nf.make_frames("log_c")
    if kind == "missing_keys":
        del frames[5]["ego_dynamic_state"]
    if kind == "window_gap":
        for f in frames[7:]:
            f["timestamp"] += 3_000_000
    if kind == "missing_map":
        for f in frames:
            f["map_location"] = "sg-one-north"
    nf.write_log(tmp_path, "mini", "log_c", frames)
    blobs = tmp_path / "sensor_blobs" / "mini"
    log = tmp_path / "navsim_logs" / "mini" / "log_c.pkl"
    if kind == "corrupt_pickle":
        log.write_bytes(log.read_bytes()[:200])
    if kind == "missing_sensor":
        (blobs / frames[3]["cams"]["CAM_B0"]["data_path"]).unlink()
    if kind == "corrupt_sensor":
        p = blobs / frames[3]["lidar_path"]
        p.write_bytes(p.read_bytes()[:300])
    return SceneReader(tmp_path, world / "maps", SIZES)


@pytest.mark.parametrize("kind, in_msg", [
    ("corrupt_pickle", "log_c.pkl"), ("missing_keys", "ego_dynamic_state"),
    ("window_gap", "log boundary"), ("missing_map", "sg-one-north"),
    ("missing_sensor", "CAM_B0"), ("corrupt_sensor", ".pcd"),
])
def test_bad_input_raises_or_is_counted(world, tmp_path, kind, in_msg):
    reader = _bad_world(tmp_path, world, kind)
    with pytest.raises(BadInputError, match=None) as e:
        list(reader.iter_split("mini"))
    assert in_msg in str(e.value) and e.value.reason == kind
    reader.skip_bad = True
    assert list(reader.iter_split("mini")) == []
    report = reader.skip_report
    assert report.inputs == {kind: 1}
    if kind == "corrupt_pickle":   # a log lost whole: its scene count is unknown, 1 at most
        assert report.counts == {kind: 0} and list(report.unknown.values()) == [1]
    else:
        assert report.counts == {kind: 1}
    assert in_msg in str(report)


def test_meta_action_classes():
    t = np.arange(1, 9)[:, None] * 0.5
    straight = np.concatenate([10 * t, 0 * t, 0 * t], 1)
    s, p = divmod(labels.meta_action(10.0, straight), 9)
    assert (types.META_SPEED_CLASSES[s], types.META_PATH_CLASSES[p]) == ("keep_speed", "straight")
    stopping = np.concatenate([np.minimum(2 * t, 3.0), 0 * t, 0 * t], 1)
    s, _ = divmod(labels.meta_action(4.0, stopping), 9)
    assert types.META_SPEED_CLASSES[s] == "come_to_stop"
    ang = 0.25 * np.arange(1, 9)[:, None] * math.pi / 2 / 2   # a left turn, 90 deg in 4 s
    turn = np.concatenate([8 * np.sin(ang), 8 * (1 - np.cos(ang)), ang], 1)
    _, p = divmod(labels.meta_action(5.0, turn), 9)
    assert types.META_PATH_CLASSES[p] == "sharp_left"
    assert labels.meta_action(0.0, np.zeros((8, 3))) == types.META_SPEED_CLASSES.index(
        "stopped") * 9
