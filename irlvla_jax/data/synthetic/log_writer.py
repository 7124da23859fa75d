"""Write one simulated log in NAVSIM's format: ``navsim_logs/<split>/<log>.pkl`` (a list of
frame dicts, spec/NAVSIM_FORMAT.md "A log pickle") and its sensor blobs
``sensor_blobs/<split>/<log>/CAM_*/<hash>.jpg`` + ``MergedPointCloud/<hash>.pcd``.

Everything is derived from names and the seed, so the same inputs give byte-identical pickles.
The pickles are written for the official devkit: numpy-1 module paths (``numpy1_pickle``) and
the full map location name (``us-nv-las-vegas-strip``, never nuPlan's ``las_vegas`` alias, which
NAVSIM's Scene loader rejects).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import shapely

from irlvla_jax.data import numpy1_pickle, render, sensor_io
from irlvla_jax.data.synthetic import rig
from irlvla_jax.data.synthetic.road import RoadMap
from irlvla_jax.data.synthetic.world import LogTruth

#: Ground and box colours of the rendered world.
_GROUND = {"road": (72, 72, 76), "intersection": (78, 78, 80), "carpark": (96, 92, 88),
           "walkway": (165, 160, 150), "crosswalk": (205, 205, 200), "stop": (235, 235, 235)}
_BOX = {"vehicle": (40, 90, 170), "bicycle": (200, 120, 30), "pedestrian": (200, 60, 60),
        "traffic_cone": (250, 120, 0), "barrier": (230, 230, 60),
        "czone_sign": (250, 160, 0), "generic_object": (120, 120, 120)}
RENDER_RADIUS_M = 75.0
LOG_START_US = 1_620_000_000_000_000
FRAME_US = 500_000


def token(*parts) -> str:
    """A deterministic 16-hex-character token from its parts."""
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:16]


def log_name(split: str, index: int, seed: int) -> str:
    """A nuPlan-like log name, e.g. ``2021.06.08.12.54.54_veh-35_01008_01518``."""
    h = int(token(split, index, seed), 16)
    start = 1000 + h % 5000
    return (f"2021.{1 + h % 12:02d}.{1 + h // 12 % 28:02d}.{h // 7 % 24:02d}."
            f"{h // 11 % 60:02d}.{h // 13 % 60:02d}_veh-{10 + h % 40}_{start:05d}_{start + 400:05d}")


def _quat_wxyz(yaw: float) -> np.ndarray:
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def _pose_matrix(x: float, y: float, yaw: float) -> np.ndarray:
    m = np.eye(4)
    c, s = math.cos(yaw), math.sin(yaw)
    m[:2, :2] = [[c, -s], [s, c]]
    m[:2, 3] = x, y
    return m


class GroundCache:
    """The map's ground polygons and lane lines for rendering, with an index to crop them."""

    def __init__(self, road: RoadMap):
        items = [(p, "road") for p, _ in road.road_segments.values()]
        items += [(n.box, "intersection") for n in road.nodes.values()]
        items += [(p, "carpark") for p, _, _ in road.carparks.values()]
        items += [(p, "walkway") for p in road.walkways.values()]
        items += [(cw[1], "crosswalk") for n in road.nodes.values() for cw in n.crosswalks]
        items += [(p, "stop") for p, _ in road.stop_polygons.values()]
        self.polys = [(np.asarray(p.simplify(0.05).exterior.coords)[:-1], _GROUND[k])
                      for p, k in items]
        # Lane markings: buffered once here (the renderer would buffer every line for every
        # camera); cameras draw them as polygons, the LiDAR gets them as lines for intensity.
        marks = [(g, (250, 250, 250) if t == 0 else (235, 200, 60))
                 for g, t in road.boundaries.values()]
        self.polys += [(np.asarray(g.buffer(0.075, cap_style="flat").exterior.coords)[:-1], c)
                       for g, c in marks]
        self.poly_tree = shapely.STRtree([p for p, _ in items] + [g for g, _ in marks])
        self.lines = [(np.asarray(g.coords), c) for g, c in marks]
        self.line_tree = shapely.STRtree([g for g, _ in marks])

    def local(self, x: float, y: float, yaw: float):
        """(ground_polygons, ground_lines) near the pose, in its frame (x fwd, y left)."""
        c, s = math.cos(yaw), math.sin(yaw)
        rot = np.array([[c, s], [-s, c]])
        area = shapely.box(x - RENDER_RADIUS_M, y - RENDER_RADIUS_M, x + RENDER_RADIUS_M,
                           y + RENDER_RADIUS_M)
        polys = [((self.polys[i][0] - (x, y)) @ rot.T, self.polys[i][1])
                 for i in sorted(self.poly_tree.query(area))]
        lines = [((self.lines[i][0] - (x, y)) @ rot.T, 0.15, self.lines[i][1])
                 for i in sorted(self.line_tree.query(area))]
        return polys, lines


def write_log(road: RoadMap, ground: GroundCache, truth: LogTruth, render_frames: list,
              root: Path, split: str, name: str, seed: int, image_wh: tuple[int, int],
              lidar_points: int) -> Path:
    """Write the pickle and sensor blobs of one log; returns the pickle's path."""
    root = Path(root)
    cams = rig.camera_rig(image_wh)
    cam_to_lidar = {cam.name: rig.sensor_to_lidar(cam) for cam in cams}
    lidar2ego = rig.lidar_to_ego()
    blob_dir = root / "sensor_blobs" / split / name
    n = len(truth.ego_pose)
    tokens = [token(split, name, i, "lidar_pc") for i in range(n)]
    log_token, scene_token = token(split, name, "log"), token(split, name, "scene")
    frames = []
    for i in range(n):
        x, y, yaw = (float(v) for v in truth.ego_pose[i])
        ego2global = _pose_matrix(x, y, yaw)
        vx, vy = (float(v) for v in truth.ego_velocity[i])
        ax, ay = (float(v) for v in truth.ego_acceleration[i])
        yaw_rate = float(truth.yaw_rate[i])
        can_bus = np.array([x, y, 0.0, *_quat_wxyz(yaw), ax, ay, 0.0, vx, vy, 0.0, 0.0, 0.0,
                            yaw_rate, 0.0, 0.0], np.float64)

        # Annotations, in the ego frame.
        ag = truth.agents[i]
        c, s = math.cos(yaw), math.sin(yaw)
        rot = np.array([[c, s], [-s, c]])
        boxes = ag["boxes"]
        local = np.zeros((len(boxes), 7))
        if len(boxes):
            local[:, :2] = (boxes[:, :2] - (x, y)) @ rot.T
            local[:, 2:6] = boxes[:, 2:6]
            local[:, 6] = np.angle(np.exp(1j * (boxes[:, 6] - yaw)))
        vel = np.zeros((len(boxes), 3))
        if len(boxes):
            vel[:, :2] = ag["velocity"] @ rot.T
        anns = dict(gt_boxes=local, gt_names=np.array(ag["names"], dtype=object),
                    gt_velocity_3d=vel,
                    instance_tokens=[token(name, i, t, "inst") for t in ag["tokens"]],
                    track_tokens=[token(name, t, "track") for t in ag["tokens"]])

        # Sensors: render in the ego frame (small floats), object 0 of the world is the ego.
        names, wboxes = render_frames[i]
        near = np.hypot(*(wboxes[:, :2] - (x, y)).T) < RENDER_RADIUS_M
        near[0] = False
        rb = wboxes[near].copy()
        rb[:, :2] = (rb[:, :2] - (x, y)) @ rot.T
        rb[:, 6] -= yaw
        colors = np.array([_BOX[names[j]] for j in np.flatnonzero(near)], np.uint8).reshape(-1, 3)
        polys, lines = ground.local(x, y, yaw)
        world = render.RenderWorld(polys, [], rb, colors)
        cam_dict = {}
        for cam in cams:
            rel = f"{name}/{cam.name}/{token(tokens[i], cam.name)}.jpg"
            sensor_io.write_jpeg(root / "sensor_blobs" / split / rel,
                                 render.render_camera(world, cam.cam_to_ego, cam.intrinsic,
                                                      image_wh))
            r, t = (m.copy() for m in cam_to_lidar[cam.name])
            cam_dict[cam.name] = dict(data_path=rel, sensor2lidar_rotation=r,
                                      sensor2lidar_translation=t, cam_intrinsic=cam.intrinsic,
                                      distortion=np.zeros(5))
        lidar_rel = f"{name}/MergedPointCloud/{token(tokens[i], 'lidar')}.pcd"
        world.ground_lines = lines
        pts = render.lidar_scan(world, lidar2ego, lidar_points,
                                np.random.default_rng([seed, i, 3]))
        sensor_io.write_pcd(blob_dir.parent / lidar_rel, pts)

        frames.append(dict(
            token=tokens[i], frame_idx=i, timestamp=LOG_START_US + i * FRAME_US,
            log_name=name, log_token=log_token, scene_name=f"{name}-scene-0",
            scene_token=scene_token, vehicle_name=(name.split("_") + ["veh-0"])[1],
            map_location=road.location,   # the full name: NAVSIM asserts it is one of four
            roadblock_ids=[str(r) for r in truth.route[i]],
            can_bus=can_bus, lidar_path=lidar_rel,
            lidar2ego_translation=lidar2ego[:3, 3].copy(),
            lidar2ego_rotation=np.array([1.0, 0.0, 0.0, 0.0]),
            ego2global_translation=can_bus[:3].copy(), ego2global_rotation=can_bus[3:7].copy(),
            ego2global=ego2global, lidar2ego=lidar2ego.copy(), lidar2global=ego2global @ lidar2ego,
            ego_dynamic_state=[vx, vy, ax, ay],
            traffic_lights=[(int(f), bool(r)) for f, r in truth.traffic_lights[i]],
            driving_command=truth.command[i].astype(np.int64),
            cams=cam_dict,
            sample_prev=tokens[i - 1] if i > 0 else None,
            sample_next=tokens[i + 1] if i + 1 < n else None,
            anns=anns))
    path = root / "navsim_logs" / split / f"{name}.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        numpy1_pickle.dump(frames, f)   # NAVSIM pins numpy 1.23
    return path
