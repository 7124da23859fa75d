"""Tiny hand-built NAVSIM inputs for the map and reader tests: a nuPlan-style gpkg and a log.

The road runs along heading ROAD_H through a local frame (s along the road, l to its left):

  block 5 (s -100..-20) -> conn 6 (-20..0) -> block 1 (0..100) -> conn 3 (100..120, inside
  intersection 4) -> block 2 (120..220);  block 9 is an isolated block far to the left.
Each block has a left lane (lane_index 0, l = +1.75) and a right lane (index 1, l = -1.75).
Lane ids: block b has lanes 10b+1 (left), 10b+2 (right); connector block c has connectors 10c+1,
10c+2 (left->left, right->right). Layers are stored in EPSG:4326 and reprojected on read.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
from PIL import Image
from shapely.geometry import LineString, Polygon

from irlvla_jax.data.sensor_io import write_pcd

CRS = "EPSG:32611"
LOCATION = "us-nv-las-vegas-strip"
ROAD_H = 1.0
EGO_XY = np.array([300100.0, 4000050.0])   # ego rear axle at t = 0, in the right lane at s = 60
EGO_S, LANE_W = 60.0, 3.5
_U = np.array([math.cos(ROAD_H), math.sin(ROAD_H)])
_N = np.array([-math.sin(ROAD_H), math.cos(ROAD_H)])
ORIGIN = EGO_XY - EGO_S * _U + 1.75 * _N


def to_global(s, l):
    """Road-frame (s, l) -> global UTM (x, y)."""
    return tuple(ORIGIN + float(s) * _U + float(l) * _N)


def _rect(s0, s1, l0, l1):
    return Polygon([to_global(s0, l0), to_global(s1, l0), to_global(s1, l1), to_global(s0, l1)])


def _line(s0, s1, l, n=5):
    return LineString([to_global(s, l) for s in np.linspace(s0, s1, n)])


BLOCKS = {1: (0, 100), 2: (120, 220), 5: (-100, -20)}
CONNECTORS = {3: (100, 120, 1, 2), 6: (-20, 0, 5, 1)}   # id: (s0, s1, from block, to block)


#: The bite cut into block 1's left side: centre (s, l) and radius (m).
BITE_S, BITE_L, BITE_R = 50.0, LANE_W, 2.5


def bitten_block(n: int = 100) -> Polygon:
    """Block 1's roadblock as a concave polygon of exactly ``n`` vertices: the rectangle
    s 0..100, l -3.5..3.5 with a half-disc bite (``BITE_*``) out of its left side, the arc
    sampled every few degrees and the sides densely (as nuPlan's curved boundaries are)."""
    arc = n - 40
    phi = np.linspace(np.pi, 2 * np.pi, arc)[::-1]          # from the bite's right end, down
    bite = [(BITE_S + BITE_R * math.cos(a), BITE_L + BITE_R * math.sin(a)) for a in phi]
    right = [(s, -LANE_W) for s in np.linspace(0, 100, 25, endpoint=False)]
    right += [(100, l) for l in np.linspace(-LANE_W, LANE_W, 3, endpoint=False)]
    left = [(s, LANE_W) for s in np.linspace(100, BITE_S + BITE_R, 6, endpoint=False)]
    left += bite + [(s, LANE_W) for s in np.linspace(BITE_S - BITE_R, 0, 6)[1:]]
    left += [(0, l) for l in np.linspace(LANE_W, -LANE_W, 2, endpoint=False)[1:]]
    pts = right + left
    assert len(pts) == n, len(pts)
    return Polygon([to_global(s, l) for s, l in pts])


def carparks_near_ego(n: int) -> list[Polygon]:
    """``n`` small car parks in a grid right of the road, all within PDM's 100 m square."""
    return [_rect(-40 + 9 * (i % 15), -34 + 9 * (i % 15), -8 - 7 * (i // 15), -3 - 7 * (i // 15))
            for i in range(n)]


def write_map(root: Path, block_1: Polygon | None = None, carparks: list | None = None) -> Path:
    """Write ``root/nuplan-maps-v1.0.json`` and the las-vegas map.gpkg; return the gpkg path.
    block_1: roadblock 1's polygon (default the rectangle); carparks: car-park polygons."""
    root = Path(root)
    path = root / LOCATION / "9.15.1915" / "map.gpkg"
    path.parent.mkdir(parents=True, exist_ok=True)
    (root / "nuplan-maps-v1.0.json").write_text(json.dumps({LOCATION: {"version": "9.15.1915"}}))

    def write(layer, rows, geoms):
        g = gpd.GeoDataFrame(pd.DataFrame(rows), geometry=geoms, crs=CRS).to_crs("EPSG:4326")
        pyogrio.write_dataframe(g, path, layer=layer)

    pyogrio.write_dataframe(pd.DataFrame({"key": ["projectedCoordSystem", "geographicCoordSystem"],
                                          "value": [CRS, "epsg:4326"]}), path, layer="meta")
    lanes, lgeo, base, bgeo = [], [], [], []
    for b, (s0, s1) in {**BLOCKS, 9: (0, 50)}.items():
        off = 40.0 if b == 9 else 0.0   # block 9 sits 40 m to the left, unconnected
        for idx, l in enumerate((1.75, -1.75)):
            lid = 10 * b + 1 + idx
            lanes.append(dict(fid=lid, lane_fid=lid, lane_group_fid=b, lane_index=idx,
                              speed_limit_mps=13.4 if b != 2 else np.nan))
            lgeo.append(_rect(s0, s1, off + l - LANE_W / 2, off + l + LANE_W / 2))
            base.append(dict(lane_fid=float(lid), lane_connector_fid=np.nan))
            bgeo.append(_line(s0, s1, off + l, n=11))
    conns, cgeo, cpoly, cpgeo = [], [], [], []
    for c, (s0, s1, fb, tb) in CONNECTORS.items():
        for idx, l in enumerate((1.75, -1.75)):
            cid = 10 * c + 1 + idx
            conns.append(dict(fid=cid, exit_lane_fid=10 * fb + 1 + idx,
                              entry_lane_fid=10 * tb + 1 + idx, lane_group_connector_fid=c,
                              speed_limit_mps=10.0, traffic_light_stop_line_fids=""))
            cgeo.append(_line(s0, s1, l, n=3))
            cpoly.append(dict(lane_connector_fid=cid))
            cpgeo.append(_rect(s0, s1, l - LANE_W / 2, l + LANE_W / 2))
            base.append(dict(lane_fid=np.nan, lane_connector_fid=float(cid)))
            bgeo.append(_line(s0, s1, l, n=3))
    write("lanes_polygons", lanes, lgeo)
    write("lane_connectors", conns, cgeo)
    write("gen_lane_connectors_scaled_width_polygons", cpoly, cpgeo)
    write("baseline_paths", base, bgeo)
    blocks = [_rect(*BLOCKS[b], -LANE_W, LANE_W) for b in (1, 2, 5)] + [_rect(0, 50, 36.5, 43.5)]
    if block_1 is not None:
        blocks[0] = block_1
    write("lane_groups_polygons", [dict(fid=b) for b in (1, 2, 5, 9)], blocks)
    if carparks:
        write("carpark_areas", [dict(fid=100 + i) for i in range(len(carparks))], carparks)
    write("lane_group_connectors",
          [dict(fid=c, from_lane_group_fid=v[2], to_lane_group_fid=v[3], intersection_fid=4)
           for c, v in CONNECTORS.items()],
          [_rect(v[0], v[1], -LANE_W, LANE_W) for v in CONNECTORS.values()])
    write("intersections", [dict(fid=4)], [_rect(100, 120, -6, 6)])
    write("walkways", [dict(fid=7)], [_rect(0, 100, 3.5, 6.5)])
    write("crosswalks", [dict(fid=8)], [_rect(104, 107, -6, 6)])
    return path


# ----------------------------------------------------------------------------------------------
SPEED = 5.0          # ego and lead vehicle drive the right lane at 5 m/s
AGENT_AHEAD = 10.0
IMAGE_WH = (64, 36)
CAMS = ("CAM_F0", "CAM_L0", "CAM_L1", "CAM_L2", "CAM_R0", "CAM_R1", "CAM_R2", "CAM_B0")


def _quat(yaw):
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def ego_pose(k: int, cur: int = 3):
    """Global rear-axle pose of frame k (frame ``cur`` is at s = EGO_S)."""
    return (*to_global(EGO_S + SPEED * 0.5 * (k - cur), -1.75), ROAD_H)


def make_frames(log_name: str, n: int = 14, route=("1", "3", "2"), t0_us: int = 1_600_000_000_000_000):
    """``n`` consecutive 2 Hz frames: the ego and a vehicle 10 m ahead (track "veh"), a
    pedestrian (track "ped") only in frames 3..5, red light on connector 32."""
    lidar2ego = np.eye(4)
    lidar2ego[:3, 3] = [1.5, 0.0, 1.8]
    frames = []
    for k in range(n):
        x, y, h = ego_pose(k)
        token = f"{k:016x}"
        e2g = np.eye(4)
        e2g[:2, :2] = [[math.cos(h), -math.sin(h)], [math.sin(h), math.cos(h)]]
        e2g[:2, 3] = [x, y]
        names, boxes, vel, tracks = ["vehicle"], [[AGENT_AHEAD, 0.0, 0.8, 4.5, 2.0, 1.6, 0.0]], \
            [[0.0, 0.0, 0.0]], ["veh"]
        if 3 <= k <= 5:
            names.append("pedestrian")
            boxes.append([5.0, 6.0, 0.9, 0.5, 0.5, 1.7, -math.pi / 2])
            vel.append([0.0, -1.0, 0.0])
            tracks.append("ped")
        cams = {}
        for c in CAMS:
            rot = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)  # cam (x r, y d, z f)
            cams[c] = dict(data_path=f"{log_name}/{c}/{token}.jpg", sensor2lidar_rotation=rot,
                           sensor2lidar_translation=np.array([0.5, 0.0, 0.0]),
                           cam_intrinsic=np.array([[50.0, 0, 31.5], [0, 50.0, 17.5], [0, 0, 1]]),
                           distortion=np.zeros(5))
        frames.append(dict(
            token=token, frame_idx=k, timestamp=t0_us + 500_000 * k, log_name=log_name,
            log_token="log", scene_name="scene", scene_token="scene", vehicle_name="car",
            map_location="las_vegas", roadblock_ids=list(route),
            can_bus=np.array([x, y, 0, *_quat(h), 0, 0, 0, SPEED, 0, 0, 0, 0, 0, 0, 0]),
            lidar_path=f"{log_name}/MergedPointCloud/{token}.pcd",
            lidar2ego_translation=lidar2ego[:3, 3], lidar2ego_rotation=np.array([1.0, 0, 0, 0]),
            ego2global_translation=np.array([x, y, 0.0]),
            ego2global_rotation=np.array(_quat(h)), ego2global=e2g, lidar2ego=lidar2ego,
            lidar2global=e2g @ lidar2ego,
            ego_dynamic_state=[SPEED, 0.0, 0.0, 0.0],
            traffic_lights=[(32, True), (31, False)],
            driving_command=np.array([0, 1, 0, 0]),
            cams=cams,
            sample_prev=f"{k - 1:016x}" if k else None,
            sample_next=f"{k + 1:016x}" if k < n - 1 else None,
            anns=dict(gt_boxes=np.array(boxes), gt_names=np.array(names),
                      gt_velocity_3d=np.array(vel), instance_tokens=np.array(tracks),
                      track_tokens=np.array(tracks))))
    return frames


def write_log(navsim_root: Path, folder: str, log_name: str, frames=None, sensors=True):
    """Write ``navsim_logs/<folder>/<log>.pkl`` and the sensor blobs of every frame."""
    frames = make_frames(log_name) if frames is None else frames
    logs = Path(navsim_root) / "navsim_logs" / folder
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{log_name}.pkl", "wb") as f:
        pickle.dump(frames, f)
    if sensors:
        blobs = Path(navsim_root) / "sensor_blobs" / folder
        rng = np.random.default_rng(0)
        pts = np.zeros((6, 200), np.float32)
        pts[0], pts[1] = rng.uniform(-20, 20, 200), rng.uniform(-20, 20, 200)
        pts[2] = rng.uniform(-1.8, 0.5, 200)   # LiDAR frame is 1.8 m above the ego frame
        img = Image.new("RGB", IMAGE_WH, (200, 30, 30))
        for fr in frames:
            write_pcd(blobs / fr["lidar_path"], pts)
            for c in fr["cams"].values():
                p = blobs / c["data_path"]
                p.parent.mkdir(parents=True, exist_ok=True)
                img.save(p)
    return frames


def write_two_stage(navsim_root: Path, folder: str = "navhard_two_stage", log_name: str = "log_a",
                    n: int = 14) -> list[dict]:
    """A two-stage split folder: stage 1 = one log of ``n`` frames (``openscene_meta_datas/``);
    stage 2 (``synthetic_scene_pickles/``) = ``s2_full.pkl`` (4 + 8 frames from frame 2, no
    extension), ``s2_short.pkl`` (4 + 2 frames from frame 4, then extended lights/detections:
    a cyclist "bike" 15 m ahead in the first extended step) and ``s9_broken.pkl`` (no
    ``scene_metadata``). Stage-2 tokens are the stage-1 ones with ``_s2``. Returns the log."""
    root = Path(navsim_root)
    frames = write_log(root, folder, log_name, make_frames(log_name, n=n))
    split = root / folder
    split.mkdir(parents=True, exist_ok=True)
    (root / "navsim_logs" / folder).rename(split / "openscene_meta_datas")
    (root / "sensor_blobs" / folder).rename(split / "sensor_blobs")
    for d in (root / "navsim_logs", root / "sensor_blobs"):
        if not any(d.iterdir()):
            d.rmdir()

    def synthetic_frame(fr):
        pose = [*fr["ego2global_translation"][:2], 2 * math.atan2(fr["ego2global_rotation"][3],
                                                                   fr["ego2global_rotation"][0])]
        a = fr["anns"]
        return dict(token=f"{fr['token']}_s2", timestamp=fr["timestamp"],
                    roadblock_ids=fr["roadblock_ids"], traffic_lights=fr["traffic_lights"],
                    annotations=dict(boxes=a["gt_boxes"], names=a["gt_names"],
                                     velocity_3d=a["gt_velocity_3d"],
                                     instance_tokens=a["instance_tokens"],
                                     track_tokens=a["track_tokens"]),
                    ego_status=dict(ego_pose=np.array(pose),
                                    ego_velocity=np.array(fr["ego_dynamic_state"][:2]),
                                    ego_acceleration=np.array(fr["ego_dynamic_state"][2:]),
                                    driving_command=fr["driving_command"], in_global_frame=True),
                    lidar_path=fr["lidar_path"], lidar2ego=fr["lidar2ego"],
                    camera_dict={k.lower(): v for k, v in fr["cams"].items()})

    def scene(first, count, **extra):
        sub = frames[first:first + count]
        return dict(scene_metadata=dict(
            log_name=log_name, scene_token=f"{sub[3]['token']}_s2", map_name="las_vegas",
            initial_token=sub[0]["token"], num_history_frames=4, num_future_frames=count - 4,
            corresponding_original_scene=sub[3]["token"],
            corresponding_original_initial_token=sub[0]["token"]),
            frames=[synthetic_frame(f) for f in sub], **extra)

    pickles = split / "synthetic_scene_pickles"
    pickles.mkdir()
    bike = dict(boxes=np.array([[15.0, 0.0, 0.8, 1.8, 0.6, 1.5, 0.0]]), names=["bicycle"],
                velocity_3d=np.zeros((1, 3)), track_tokens=["bike"])
    content = {
        "s2_full": scene(2, 12),
        "s2_short": scene(4, 6, extended_traffic_light_data=[[(32, True)], [(32, False)]],
                          extended_detections_tracks=[bike, dict(bike, track_tokens=["bike2"])]),
        "s9_broken": dict(frames=[]),
    }
    for name, d in content.items():
        with open(pickles / f"{name}.pkl", "wb") as f:
            pickle.dump(d, f)
    return frames
