"""The round trip: synthetic world -> NAVSIM files -> SceneReader -> Scene == generator truth.

A small world (2 logs) is generated once per module; every scene the reader yields is checked
against the generator's own ``LogTruth`` (global poses, boxes with track ids, route, lights,
command) and ``RoadMap`` (lane polygons), re-expressed in the t = 0 rear-axle frame here, within
float32 tolerance. The camera check projects a real generated lead vehicle through the scene's
own intrinsics / extrinsics and looks for its pixels in CAM_F0.
"""

import math

import ml_collections
import numpy as np
import pytest
import shapely

from irlvla_jax import types
from irlvla_jax.data.navsim_reader import SceneReader
from irlvla_jax.data.synthetic import generate, log_writer, world
from irlvla_jax.data.synthetic.road import LANE_WIDTH, build_map
from irlvla_jax.data.synthetic.road_users import EGO_FRONT, EGO_REAR

SPLIT = "synthetic_val"
SEED = 5
NUM_FUTURE = 10
FRAMES = types.NUM_HISTORY + NUM_FUTURE + 2          # 3 scenes a log
IMAGE_WH = (160, 90)
SIZES = types.SceneSizes(
    num_future=NUM_FUTURE, cameras=("CAM_F0", "CAM_L0", "CAM_R0", "CAM_B0"),
    image_hw=IMAGE_WH[::-1], max_agents=128,
    # Room for the whole +-100 m drivable map and every light, so nothing is cut.
    max_polygons=256, max_polygon_vertices=160, max_red_lights=128)
POS_TOL, ANG_TOL = 5e-3, 1e-4            # metres, radians (float32 over < 200 m)
# The ego box centre is this far ahead of the rear axle (NAVSIM's rear-axle-to-centre).
REAR_TO_CENTRE = (EGO_FRONT - EGO_REAR) / 2


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def _to_ego(pose, xy):
    """Global xy [..., 2] -> the frame of the global rear-axle pose (3,)."""
    x, y, h = pose
    c, s = math.cos(h), math.sin(h)
    d = np.asarray(xy, np.float64) - (x, y)
    return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)


def _vec_to_ego(pose, v):
    return _to_ego((0.0, 0.0, pose[2]), v)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("roundtrip")
    cfg = ml_collections.ConfigDict(dict(seed=SEED, num_logs={SPLIT: 2}, frames_per_log=FRAMES,
                                         image_wh=IMAGE_WH, lidar_points=500))
    out = generate(cfg, SIZES, base / "root", base / "maps", workers=1, progress=False)
    reader = SceneReader(base / "root", base / "maps", SIZES)
    scenes = list(reader.iter_split(SPLIT))
    logs = {e["log_name"]: e["truth"] for e in out["logs"][SPLIT]}
    roads = {loc: build_map(loc, cfg.seed) for loc in {t.location for t in logs.values()}}
    frame_of = {log_writer.token(SPLIT, name, i, "lidar_pc"): i
                for name, t in logs.items() for i in range(len(t.ego_pose))}
    return dict(scenes=scenes, logs=logs, roads=roads, frame_of=frame_of, root=base)


def _cases(data):
    for scene, meta in data["scenes"]:
        truth = data["logs"][meta.log_name]
        yield scene, meta, truth, data["frame_of"][meta.token]


def test_every_window_is_read(data):
    # Every window of every log is a scene (the synthetic ego always has a route).
    per_log = FRAMES - types.NUM_HISTORY - NUM_FUTURE + 1
    assert len(data["scenes"]) == per_log * len(data["logs"])
    for scene, meta, truth, cur in _cases(data):
        types.check_scene(scene, SIZES)
        assert meta.truncated == {}, meta.truncated


def test_ego_history_future_and_dynamics(data):
    for scene, _, truth, cur in _cases(data):
        pose = truth.ego_pose[cur]
        hist = truth.ego_pose[cur - 3:cur + 1]
        fut = truth.ego_pose[cur + 1:cur + 1 + NUM_FUTURE]
        for got, want in ((scene["ego_history"], hist), (scene["expert_future"], fut)):
            np.testing.assert_allclose(got[:, :2], _to_ego(pose, want[:, :2]), atol=POS_TOL)
            np.testing.assert_allclose(_wrap(got[:, 2] - (want[:, 2] - pose[2])), 0,
                                       atol=ANG_TOL)
        assert scene["expert_future_valid"].all()
        np.testing.assert_allclose(scene["ego_history_velocity"],
                                   truth.ego_velocity[cur - 3:cur + 1], atol=1e-4)
        np.testing.assert_allclose(scene["ego_history_acceleration"],
                                   truth.ego_acceleration[cur - 3:cur + 1], atol=1e-4)
        np.testing.assert_allclose(scene["ego_velocity"], truth.ego_velocity[cur], atol=1e-4)
        np.testing.assert_allclose(scene["ego_history_time"], [-1.5, -1.0, -0.5, 0.0], atol=1e-6)
        np.testing.assert_array_equal(scene["driving_command"], truth.command[cur])


def test_agents_match_truth_by_track(data):
    checked_moving = 0
    for scene, meta, truth, cur in _cases(data):
        pose = truth.ego_pose[cur]
        n = len(meta.track_tokens)
        assert scene["agent_valid"][:n].any(1).all() and not scene["agent_valid"][n:].any()
        expected_now = {log_writer.token(meta.log_name, t, "track") for t in
                        truth.agents[cur]["tokens"]}
        # max_agents is large enough: every object annotated at t = 0 is a row.
        assert expected_now <= set(meta.track_tokens)
        for k in range(types.NUM_AGENT_STEPS):
            ag = truth.agents[cur + k] if cur + k < len(truth.agents) else None
            rows = {} if ag is None else {log_writer.token(meta.log_name, t, "track"): j
                                          for j, t in enumerate(ag["tokens"])}
            for i, tok in enumerate(meta.track_tokens):
                assert scene["agent_valid"][i, k] == (tok in rows), (meta.token, tok, k)
                if tok not in rows:
                    continue
                box, vel = ag["boxes"][rows[tok]], ag["velocity"][rows[tok]]
                x, y, h, vx, vy = scene["agent_states"][i, k]
                np.testing.assert_allclose([x, y], _to_ego(pose, box[:2]), atol=POS_TOL)
                assert abs(_wrap(h - (box[6] - pose[2]))) < ANG_TOL
                np.testing.assert_allclose([vx, vy], _vec_to_ego(pose, vel), atol=1e-3)
                np.testing.assert_allclose(scene["agent_size"][i], box[3:6], atol=1e-5)
                assert types.AGENT_CLASSES[scene["agent_class"][i]] == ag["names"][rows[tok]]
                checked_moving += bool(np.hypot(vx, vy) > 1.0)
    assert checked_moving > 0, "no moving agent was checked"


def test_route_and_corrected_route(data):
    for scene, meta, truth, cur in _cases(data):
        road = data["roads"][truth.location]
        route = [str(r) for r in truth.route[cur]]
        # The generator's route starts at the ego's own roadblock and is connected, so NAVSIM's
        # correction keeps it as it is.
        assert road.elements[truth.ego_element[cur]].group == truth.route[cur][0]
        assert meta.corrected_route == route
        # The centreline starts under the ego and follows its expert future (the expert drives
        # its route), within a lane-change's offset.
        cl = scene["centerline"][scene["centerline_valid"]]
        assert np.hypot(*cl[:, :2].T).min() < 2.5
        for x, y, _ in scene["expert_future"]:
            assert np.hypot(cl[:, 0] - x, cl[:, 1] - y).min() < LANE_WIDTH + 0.5


def _vertex_distance(a, b):
    """Symmetric max nearest-vertex distance between rings a [n,2] and b [m,2]."""
    d = np.hypot(*(a[:, None] - b[None]).transpose(2, 0, 1))
    return max(d.min(0).max(), d.min(1).max())


def test_lane_polygons_are_the_map_lanes_in_the_ego_frame(data):
    for scene, meta, truth, cur in _cases(data):
        road, pose = data["roads"][truth.location], truth.ego_pose[cur]
        cx, cy = pose[:2] + REAR_TO_CENTRE * np.array([math.cos(pose[2]), math.sin(pose[2])])
        r = 100.0
        inner = shapely.box(cx - r + 0.5, cy - r + 0.5, cx + r - 0.5, cy + r - 0.5)
        outer = shapely.box(cx - r - 0.5, cy - r - 0.5, cx + r + 0.5, cy + r + 0.5)
        must = [l for g in road.groups.values() if g.polygon.intersects(inner) for l in g.lanes]
        may = {l for g in road.groups.values() if g.polygon.intersects(outer) for l in g.lanes}
        truth_rings = {fid: _to_ego(pose, np.asarray(road.elements[fid].polygon.exterior.coords)
                                    [:-1]) for fid in may}
        is_lane = scene["map_polygon_valid"] & (scene["map_polygon_type"] == types.LANE)
        found = []
        for p in np.flatnonzero(is_lane):
            ring = scene["map_polygons"][p][scene["map_vertex_valid"][p]]
            best = min(truth_rings, key=lambda f: _vertex_distance(ring, truth_rings[f]))
            assert len(ring) == len(truth_rings[best])
            assert _vertex_distance(ring, truth_rings[best]) < POS_TOL, (meta.token, best)
            found.append(best)
        assert len(found) == len(set(found)), "a lane appears twice"
        assert set(must) <= set(found) <= may
        # The on-route flag marks exactly the lanes of the (corrected) route's roadblocks.
        on = {f for f, p in zip(found, np.flatnonzero(is_lane))
              if scene["map_polygon_on_route"][p]}
        assert on == {f for f in found if road.elements[f].group in truth.route[cur]}


def test_traffic_lights_match_truth(data):
    seen_red = 0
    for scene, meta, truth, cur in _cases(data):
        road, pose = data["roads"][truth.location], truth.ego_pose[cur]
        rings = {}
        for k in range(types.NUM_AGENT_STEPS):
            for fid, _ in truth.traffic_lights[cur + k] if cur + k < len(truth.ego_pose) else []:
                rings[fid] = _to_ego(pose, np.asarray(road.elements[fid].polygon.exterior.coords)
                                     [:-1])
        valid = np.flatnonzero(scene["red_light_valid"])
        assert len(valid) == len(rings)
        for i in valid:
            ring = scene["red_light_polygons"][i][scene["red_light_vertex_valid"][i]]
            fid = min(rings, key=lambda f: _vertex_distance(ring, rings[f]))
            assert _vertex_distance(ring, rings[fid]) < POS_TOL
            for k in range(types.NUM_AGENT_STEPS):
                lights = dict(truth.traffic_lights[cur + k]) if cur + k < len(truth.ego_pose) \
                    else {}
                assert scene["red_light_is_red"][i, k] == bool(lights.get(fid, False))
            seen_red += scene["red_light_is_red"][i].any()
            on = road.elements[fid].group in truth.route[cur]
            assert scene["red_light_on_route"][i] == on
    assert seen_red > 0


def _project(points_ego, K, cam_to_ego):
    """Ego-frame points [N,3] -> (pixel uv [N,2], camera depth z [N])."""
    e2c = np.linalg.inv(cam_to_ego.astype(np.float64))
    cam = points_ego @ e2c[:3, :3].T + e2c[:3, 3]
    uvw = cam @ K.astype(np.float64).T
    return uvw[:, :2] / uvw[:, 2:3], cam[:, 2]


def _box_corners(x, y, h, size):
    l, w, hh = size
    c, s = math.cos(h), math.sin(h)
    return np.array([[x + c * dl - s * dw, y + s * dl + c * dw, z]
                     for dl in (-l / 2, l / 2) for dw in (-w / 2, w / 2) for z in (0.0, hh)])


LEAD_AHEAD_M = 14.0       # rear axle to the constructed lead vehicle's centre


@pytest.fixture(scope="module")
def lead_pair(data, tmp_path_factory):
    """The same simulated frame written twice (as ``synthetic_train`` logs next to the data):
    with and without a vehicle placed LEAD_AHEAD_M ahead of the ego in its lane; the corridor
    up to it is cleared of other objects in both. Returns (scene with, scene without, row of
    the lead in the first)."""
    base = data["root"]
    road = build_map("us-ma-boston", SEED)      # written to maps_root by generate
    truth, frames = world.simulate_log(road, 123, FRAMES)
    cur = types.NUM_HISTORY - 1
    x, y, yaw = truth.ego_pose[cur]
    c, s = math.cos(yaw), math.sin(yaw)
    def clear(xy):   # not in the corridor up to (and just past) the lead
        rel = _to_ego((x, y, yaw), xy)
        return ~((rel[:, 0] > 0) & (rel[:, 0] < LEAD_AHEAD_M + 8) & (np.abs(rel[:, 1]) < 4))

    names, boxes = frames[cur]
    keep = clear(boxes[:, :2])
    keep[0] = True                                     # row 0 is the ego itself
    names, boxes = [n for n, k in zip(names, keep) if k], boxes[keep]
    ag = truth.agents[cur]
    keep = clear(ag["boxes"][:, :2])
    ag = dict(tokens=[t for t, k in zip(ag["tokens"], keep) if k],
              names=[n for n, k in zip(ag["names"], keep) if k],
              boxes=ag["boxes"][keep], velocity=ag["velocity"][keep])
    ground = log_writer.GroundCache(road)
    scenes = []
    for with_lead in (True, False):
        fr, agents = list(frames), list(truth.agents)
        fr[cur] = (names, boxes)
        agents[cur] = ag
        if with_lead:
            lead = np.array([[x + LEAD_AHEAD_M * c, y + LEAD_AHEAD_M * s, 0.8, 4.6, 1.9, 1.6,
                              yaw]])
            fr[cur] = (names + ["vehicle"], np.concatenate([boxes, lead]))
            agents[cur] = dict(tokens=ag["tokens"] + ["lead"], names=ag["names"] + ["vehicle"],
                               boxes=np.concatenate([ag["boxes"], lead]),
                               velocity=np.concatenate([ag["velocity"], np.zeros((1, 2))]))
        name = f"lead_{with_lead}"
        t = world.LogTruth(**{**vars(truth), "agents": agents})
        log_writer.write_log(road, ground, t, fr, base / "root", "synthetic_train", name, 1,
                             IMAGE_WH, 500)
        reader = SceneReader(base / "root", base / "maps", SIZES)
        scenes.append(reader.read_scene("synthetic_train", name,
                                        log_writer.token("synthetic_train", name, cur,
                                                         "lidar_pc")))
    (with_scene, meta), (without_scene, _) = scenes
    row = meta.track_tokens.index(log_writer.token("lead_True", "lead", "track"))
    return with_scene, without_scene, row


def test_lead_vehicle_is_seen_ahead_in_front_camera_not_in_back_camera(lead_pair):
    """The lead vehicle, projected with the scene's own camera geometry, covers exactly the
    pixels that change when it is added to the world: near the centre columns of CAM_F0;
    CAM_B0 (it is behind that camera) does not change at all."""
    scene, without, i = lead_pair
    x, y, h = scene["agent_states"][i, 0, :3]
    np.testing.assert_allclose([x, y, h], [LEAD_AHEAD_M, 0, 0], atol=POS_TOL)
    corners = _box_corners(x, y, h, scene["agent_size"][i])
    f0, b0 = SIZES.cameras.index("CAM_F0"), SIZES.cameras.index("CAM_B0")
    W, H = IMAGE_WH
    uv, z = _project(corners, scene["cam_intrinsics"][f0], scene["cam_to_ego"][f0])
    assert (z > 0).all()
    (u0, v0), (u1, v1) = uv.min(0), uv.max(0)
    assert 0 <= u0 and u1 <= W and 0 <= v0 and v1 <= H
    assert abs((u0 + u1) / 2 - W / 2) < 0.05 * W
    diff = np.abs(scene["cameras"][f0].astype(int) - without["cameras"][f0].astype(int)).sum(-1)
    changed = diff > 40
    rows, cols = np.nonzero(changed)
    # JPEG blocks (8 px) smear an edge by a few pixels at most.
    inside = (cols >= u0 - 4) & (cols <= u1 + 4) & (rows >= v0 - 4) & (rows <= v1 + 4)
    assert changed.sum() > 0.5 * (u1 - u0) * (v1 - v0), changed.sum()
    assert inside.mean() > 0.97, inside.mean()
    _, zb = _project(corners, scene["cam_intrinsics"][b0], scene["cam_to_ego"][b0])
    assert (zb < 0).all()
    np.testing.assert_array_equal(scene["cameras"][b0], without["cameras"][b0])
