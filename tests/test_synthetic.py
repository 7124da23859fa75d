"""The synthetic NAVSIM-format world: files, keys, map relations and driving behaviour."""

import math
import pickle
import re
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import shapely

from irlvla_jax.data.synthetic import generate, map_writer, world
from irlvla_jax.data.synthetic.road import MAP_LOCATIONS, build_map
from irlvla_jax.data.synthetic.road_users import EGO_FRONT, EGO_REAR, EGO_WIDTH
from irlvla_jax.data.synthetic.signals import Signals
from irlvla_jax.data.synthetic.traffic import DT, TrafficSim
from irlvla_jax.types import CAMERA_NAMES, SceneSizes

FRAMES = 15
SPLIT = "synthetic_val"
FRAME_KEYS = {
    "token", "frame_idx", "timestamp", "log_name", "log_token", "scene_name", "scene_token",
    "vehicle_name", "map_location", "roadblock_ids", "can_bus", "lidar_path",
    "lidar2ego_translation", "lidar2ego_rotation", "ego2global_translation",
    "ego2global_rotation", "ego2global", "lidar2ego", "lidar2global", "ego_dynamic_state",
    "traffic_lights", "driving_command", "cams", "sample_prev", "sample_next", "anns"}
# Columns the devkit reads ([S] in spec/NAVSIM_FORMAT.md, Map 4) per layer.
READ_COLUMNS = {
    "lanes_polygons": {"lane_fid", "lane_group_fid", "lane_index", "left_boundary_fid",
                       "right_boundary_fid", "speed_limit_mps"},
    "lane_connectors": {"exit_lane_fid", "entry_lane_fid", "lane_group_connector_fid",
                        "speed_limit_mps", "traffic_light_stop_line_fids", "intersection_fid"},
    "gen_lane_connectors_scaled_width_polygons": {"lane_connector_fid", "left_boundary_fid",
                                                  "right_boundary_fid"},
    "baseline_paths": {"lane_fid", "lane_connector_fid"},
    "lane_groups_polygons": set(),
    "lane_group_connectors": {"from_lane_group_fid", "to_lane_group_fid", "intersection_fid"},
    "intersections": set(), "stop_polygons": {"stop_polygon_type_fid"}, "boundaries": set(),
    "crosswalks": set(), "walkways": set(), "carpark_areas": set(),
    "generic_drivable_areas": set(), "road_segments": set(), "traffic_lights": set(),
    "dubins_nodes": set(),
}
GEOM = {"lane_connectors": "LineString", "boundaries": "LineString",
        "baseline_paths": "LineString", "traffic_lights": "Point", "dubins_nodes": "Point"}


def _cfg():
    return ml_collections.ConfigDict(dict(seed=3, num_logs={SPLIT: 1}, frames_per_log=FRAMES,
                                          image_wh=(64, 36), lidar_points=300))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    base = tmp_path_factory.mktemp("syn")
    res = generate(_cfg(), SceneSizes(), base / "root", base / "maps", workers=1,
                   progress=False)
    res["root"], res["maps_root"] = base / "root", base / "maps"
    return res


@pytest.fixture(scope="module")
def log(out):
    entry = out["logs"][SPLIT][0]
    with open(entry["path"], "rb") as f:
        return entry, pickle.load(f)


@pytest.fixture(scope="module")
def layers(out, log):
    loc = log[0]["truth"].location
    path = Path(out["maps"][loc])
    return {name: map_writer.read_layer(path, name) for name in READ_COLUMNS}


def _footprint(x, y, yaw):
    """Pacifica footprint polygon from the rear-axle pose."""
    c, s = math.cos(yaw), math.sin(yaw)
    pts = [(f, w) for f, w in ((EGO_FRONT, EGO_WIDTH / 2),
                               (-EGO_REAR, EGO_WIDTH / 2),
                               (-EGO_REAR, -EGO_WIDTH / 2),
                               (EGO_FRONT, -EGO_WIDTH / 2))]
    return shapely.Polygon([(x + c * f - s * w, y + s * f + c * w) for f, w in pts])


def _box(b):
    x, y, _, l, w, _, yaw = b
    c, s = math.cos(yaw), math.sin(yaw)
    return shapely.Polygon([(x + c * dl - s * dw, y + s * dl + c * dw)
                            for dl, dw in ((l / 2, w / 2), (-l / 2, w / 2), (-l / 2, -w / 2),
                                           (l / 2, -w / 2))])


def test_files_exist_for_every_frame_and_location(out, log):
    entry, frames = log
    root, maps_root = out["root"], out["maps_root"]
    assert (maps_root / "nuplan-maps-v1.0.json").is_file()
    for loc, (_, _, version) in MAP_LOCATIONS.items():
        assert (maps_root / loc / version / "map.gpkg").is_file(), loc
    assert len(frames) == FRAMES
    for fr in frames:
        for cam in CAMERA_NAMES:
            p = root / "sensor_blobs" / SPLIT / fr["cams"][cam]["data_path"]
            assert p.is_file() and p.read_bytes()[:2] == b"\xff\xd8", p   # a JPEG
            assert fr["cams"][cam]["data_path"].startswith(f"{fr['log_name']}/{cam}/")
        pcd = root / "sensor_blobs" / SPLIT / fr["lidar_path"]
        assert pcd.is_file() and fr["lidar_path"].startswith(
            f"{fr['log_name']}/MergedPointCloud/")
    from irlvla_jax.data.sensor_io import read_pcd
    pts = read_pcd(root / "sensor_blobs" / SPLIT / frames[0]["lidar_path"])
    assert pts.shape == (6, 300) and pts.dtype == np.float32


def test_frame_keys_types_and_conventions(log):
    entry, frames = log
    truth = entry["truth"]
    for i, fr in enumerate(frames):
        assert set(fr) == FRAME_KEYS
        assert re.fullmatch(r"[0-9a-f]{16}", fr["token"])
        assert fr["frame_idx"] == i and isinstance(fr["timestamp"], int)
        if i:
            assert fr["timestamp"] - frames[i - 1]["timestamp"] == 500_000
            assert fr["sample_prev"] == frames[i - 1]["token"]
            assert frames[i - 1]["sample_next"] == fr["token"]
        assert fr["can_bus"].shape == (18,)
        np.testing.assert_allclose(fr["ego2global_translation"], fr["can_bus"][:3])
        np.testing.assert_allclose(fr["ego2global_rotation"], fr["can_bus"][3:7])
        qw, qx, qy, qz = fr["ego2global_rotation"]
        yaw = math.atan2(2 * (qw * qz + qx * qy), 1 - 2 * (qy * qy + qz * qz))
        np.testing.assert_allclose(yaw, truth.ego_pose[i, 2], atol=1e-9)
        np.testing.assert_allclose(fr["ego2global"][:2, 3], truth.ego_pose[i, :2])
        np.testing.assert_allclose(fr["lidar2global"], fr["ego2global"] @ fr["lidar2ego"])
        assert len(fr["ego_dynamic_state"]) == 4
        cmd = np.asarray(fr["driving_command"])
        assert cmd.shape == (4,) and cmd.dtype.kind == "i" and cmd.sum() == 1
        assert fr["roadblock_ids"] and all(isinstance(r, str) for r in fr["roadblock_ids"])
        assert all(isinstance(c, int) and isinstance(r, bool) for c, r in fr["traffic_lights"])
        assert set(fr["cams"]) == set(CAMERA_NAMES)
        for cam in fr["cams"].values():
            assert cam["sensor2lidar_rotation"].shape == (3, 3)
            assert cam["sensor2lidar_translation"].shape == (3,)
            assert cam["cam_intrinsic"].shape == (3, 3)
        a = fr["anns"]
        n = len(a["gt_names"])
        assert a["gt_boxes"].shape == (n, 7) and a["gt_velocity_3d"].shape == (n, 3)
        assert len(a["instance_tokens"]) == len(a["track_tokens"]) == n
        assert set(a["gt_names"]) <= {"vehicle", "pedestrian", "bicycle", "traffic_cone",
                                      "barrier", "czone_sign", "generic_object"}
        # gt_boxes are in the ego frame: globalising them gives the world's boxes back.
        x, y, yaw = truth.ego_pose[i]
        c, s = math.cos(yaw), math.sin(yaw)
        g = a["gt_boxes"][:, :2] @ np.array([[c, s], [-s, c]]) + (x, y)
        np.testing.assert_allclose(g, truth.agents[i]["boxes"][:, :2], atol=1e-6)
    # The forward camera looks along the ego's +x.
    r = frames[0]["cams"]["CAM_F0"]["sensor2lidar_rotation"]
    np.testing.assert_allclose(r[:, 2], [1, 0, 0], atol=0.1)
    np.testing.assert_allclose(frames[0]["cams"]["CAM_B0"]["sensor2lidar_rotation"][:, 2],
                               [-1, 0, 0], atol=0.1)
    # Body-frame speed matches the pose differences.
    speed = np.hypot(*np.diff(truth.ego_pose[:, :2], axis=0).T) / 0.5
    np.testing.assert_allclose(speed, (truth.ego_velocity[1:, 0] + truth.ego_velocity[:-1, 0])
                               / 2, atol=0.6)


def test_pickles_are_deterministic(out, log, tmp_path):
    again = generate(_cfg(), SceneSizes(), tmp_path / "root", tmp_path / "maps", workers=1,
                     progress=False, write_maps=False)
    a = Path(log[0]["path"]).read_bytes()
    b = Path(again["logs"][SPLIT][0]["path"]).read_bytes()
    assert a == b


def test_log_pickles_are_what_the_official_devkit_reads(log):
    """NAVSIM pins numpy 1.23 (which has no ``numpy._core``) and its Scene loader asserts one of
    the four full map names (nuPlan's ``las_vegas`` alias is rejected there)."""
    entry, frames = log
    raw = Path(entry["path"]).read_bytes()
    assert b"numpy._core" not in raw
    assert b"numpy.core.multiarray" in raw       # the arrays stay arrays, as in NAVSIM's logs
    assert isinstance(frames[0]["anns"]["gt_boxes"], np.ndarray)
    assert entry["truth"].location == "us-nv-las-vegas-strip"   # log 0 is a Las Vegas log
    assert {fr["map_location"] for fr in frames} == {"us-nv-las-vegas-strip"}


def test_map_layers_columns_and_relations(out, layers):
    import pyogrio
    path = Path(next(iter(out["maps"].values())))
    listed = dict(pyogrio.list_layers(path))
    for name, cols in READ_COLUMNS.items():
        assert name in listed and cols <= set(layers[name].columns), name
        assert listed[name] == GEOM.get(name, "Polygon"), name
    lanes = layers["lanes_polygons"]
    assert (lanes.total_bounds[:2] > 1e5).all()           # UTM metres, not degrees
    assert (lanes["lane_fid"].astype(str) == lanes["fid"]).all()
    conns = layers["lane_connectors"]
    lane_ids, conn_ids = set(lanes["fid"]), set(conns["fid"])
    assert set(conns["exit_lane_fid"].astype(int).astype(str)) <= lane_ids
    assert set(conns["entry_lane_fid"].astype(int).astype(str)) <= lane_ids
    polys = layers["gen_lane_connectors_scaled_width_polygons"]
    assert sorted(polys["lane_connector_fid"].astype(int).astype(str)) == sorted(conn_ids)
    base = layers["baseline_paths"]
    assert (base["lane_fid"].notna() ^ base["lane_connector_fid"].notna()).all()
    assert sorted(base["lane_fid"].dropna().astype(int).astype(str)) == sorted(lane_ids)
    assert sorted(base["lane_connector_fid"].dropna().astype(int).astype(str)) == \
        sorted(conn_ids)
    blocks, rbc = set(layers["lane_groups_polygons"]["fid"]), layers["lane_group_connectors"]
    assert set(lanes["lane_group_fid"].astype(str)) == blocks
    assert set(rbc["from_lane_group_fid"].astype(str)) <= blocks
    assert set(rbc["to_lane_group_fid"].astype(str)) <= blocks
    assert set(conns["lane_group_connector_fid"].astype(str)) == set(rbc["fid"])
    stops = set(layers["stop_polygons"]["fid"])
    tl = [s for s in conns["traffic_light_stop_line_fids"] if s]
    assert tl and all(set(s.split(",")) <= stops for s in tl)
    # Lanes in a group are indexed 0..n-1, 0 = leftmost.
    for _, g in lanes.groupby("lane_group_fid"):
        assert sorted(g["lane_index"]) == list(range(len(g)))


def test_route_and_lights_are_map_objects_that_connect(log, layers):
    _, frames = log
    rbc = layers["lane_group_connectors"].set_index("fid")
    blocks = set(layers["lane_groups_polygons"]["fid"])
    conns = layers["lane_connectors"]
    for fr in frames:
        route = fr["roadblock_ids"]
        assert all(r in blocks or r in rbc.index for r in route)
        for a, b in zip(route, route[1:]):
            if b in rbc.index:
                assert str(rbc.loc[b, "from_lane_group_fid"]) == a
            else:
                assert str(rbc.loc[a, "to_lane_group_fid"]) == b
        assert {str(c) for c, _ in fr["traffic_lights"]} <= set(conns["fid"])


def test_ego_stays_on_drivable_area_and_never_collides(log, layers):
    entry, _ = log
    truth = entry["truth"]
    drivable = shapely.union_all(
        [g for name in ("lanes_polygons", "gen_lane_connectors_scaled_width_polygons",
                        "lane_groups_polygons", "intersections", "carpark_areas")
         for g in layers[name].geometry]).buffer(0.05)
    for x, y, yaw in truth.ego_trace_10hz:
        assert drivable.covers(_footprint(x, y, yaw))
    for (x, y, yaw), boxes in zip(truth.ego_trace_10hz, truth.agent_boxes_10hz):
        ego = _footprint(x, y, yaw)
        near = np.hypot(boxes[:, 0] - x, boxes[:, 1] - y) < 15
        assert not any(ego.intersects(_box(b)) for b in boxes[near])


@pytest.fixture(scope="module")
def long_log():
    """One minute of driving, no sensors: enough for turns and red lights."""
    road = build_map("us-ma-boston", 0)
    return road, world.simulate_log(road, 6, 120)[0]


def test_ego_obeys_red_lights_and_drives_smoothly(long_log):
    road, truth = long_log
    assert truth.red_violations == 0
    stopped_at_red = 0
    for i, fid in enumerate(truth.ego_element):
        e = road.elements[fid]
        lights = dict(truth.traffic_lights[i])
        nxt = [c for c in e.outgoing if lights.get(c)] if e.kind == "lane" else []
        if nxt and truth.ego_velocity[i, 0] < 0.2:
            x, y, _ = truth.ego_pose[i]
            if np.hypot(*(e.xy[-1] - (x, y))) < 15.0:
                stopped_at_red += 1
    assert stopped_at_red > 0
    acc = truth.ego_acceleration[:, 0]
    assert np.abs(acc).max() < 4.5 and truth.ego_velocity[:, 0].min() > -0.1
    assert np.abs(truth.ego_acceleration[:, 1]).max() < 4.0


def test_driving_command_follows_the_turns(long_log):
    road, truth = long_log
    poses = truth.ego_trace_10hz
    s = np.concatenate([[0], np.cumsum(np.hypot(*np.diff(poses[:, :2], axis=0).T))])
    checked = {0: 0, 1: 0, 2: 0}
    for i, cmd in enumerate(truth.command.argmax(1)):
        k = i * world.STEPS_PER_FRAME
        j = np.searchsorted(s, s[k] + 20.0)
        if j >= len(s):
            break
        x, y, yaw = poses[k]
        lat = -math.sin(yaw) * (poses[j, 0] - x) + math.cos(yaw) * (poses[j, 1] - y)
        if abs(lat) > 4.0:
            assert cmd == (0 if lat > 0 else 2), (i, lat, cmd)
            checked[cmd] += 1
        elif abs(lat) < 0.5:
            assert cmd == 1, (i, lat, cmd)
            checked[1] += 1
    assert checked[1] > 0 and checked[0] + checked[2] > 0, checked


@pytest.fixture(scope="module")
def flow_logs():
    """One 20 s log per location, no sensors."""
    roads = {loc: build_map(loc, 0) for loc in sorted(MAP_LOCATIONS)}
    return [(roads[loc], world.simulate_log(roads[loc], seed, 40)[0])
            for seed, loc in enumerate(sorted(roads))]


def test_expert_mostly_drives_at_urban_speeds(flow_logs):
    """Signals serve opposite approaches together and skip phases nobody waits for, so the
    expert is stopped only some of the time and reaches urban speeds when free."""
    speeds = [np.hypot(*np.diff(t.ego_trace_10hz[:, :2], axis=0).T) / DT
              for _, t in flow_logs]
    v = np.concatenate(speeds)
    assert v.mean() > 5.0, v.mean()
    assert (v < 0.5).mean() < 0.3, (v < 0.5).mean()
    assert max(s.max() for s in speeds) > 9.0
    assert all(t.red_violations == 0 for _, t in flow_logs)


def test_signal_phases_never_release_conflicting_movements():
    for loc in sorted(MAP_LOCATIONS):
        road = build_map(loc, 0)
        signals = Signals(road, np.random.default_rng(0))
        for node, phases in signals.phases.items():
            conns = [c for c in road.connectors() if c.node == node]
            # every movement has exactly one phase
            assert all(sum((c.arm, c.turn) in ph for ph in phases) == 1 for c in conns)
            for ph in phases:
                paths = [(c.arm, c.entry_lane, shapely.LineString(c.xy).buffer(1.2))
                         for c in conns if (c.arm, c.turn) in ph]
                for a1, e1, p1 in paths:
                    for a2, e2, p2 in paths:
                        if a1 != a2:
                            assert e1 != e2 and not p1.intersects(p2), (loc, node, ph)


def test_no_two_road_users_overlap():
    """Car following covers lanes, signals cover junctions, and merges (two lanes into one at
    a corner) are taken in turn: no two vehicles ever overlap."""
    road = build_map("us-ma-boston", 0)
    sim = TrafficSim(road, np.random.default_rng([0, 11]))
    n = len(sim.vehicles)
    for k in range(300):
        sim.step()
        if k % 3:
            continue
        polys = [_box(b) for b in sim.boxes()[1][:n]]
        a, b = shapely.STRtree(polys).query(polys, predicate="intersects")
        overlap = [polys[i].intersection(polys[j]).area for i, j in zip(a, b) if i < j]
        assert max(overlap, default=0.0) < 0.05, (k, overlap)


def test_rig_renders_match_an_uncached_background():
    """The renderer caches each camera's sky/ground background; interleaving the rig's
    cameras must still give each camera its own background."""
    from irlvla_jax.data import render
    from irlvla_jax.data.synthetic import rig
    wh = (96, 54)
    cams = rig.camera_rig(wh)
    for cam in cams + cams[::-1]:
        img = render.render_camera(render.RenderWorld(), cam.cam_to_ego, cam.intrinsic, wh)
        np.testing.assert_array_equal(img, render._background(cam.cam_to_ego, cam.intrinsic,
                                                              *wh))
