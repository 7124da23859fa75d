"""navhard two-stage, stage 2: the synthetic follow-up scenes of ``*_two_stage`` splits.

A two-stage split folder holds ``openscene_meta_datas/`` (stage 1: ordinary log pickles, read
like any log), ``sensor_blobs/`` and ``synthetic_scene_pickles/`` (stage 2: one scene a file, a
dict of ``scene_metadata`` and ``frames``; spec/NAVSIM_FORMAT.md "navhard two-stage synthetic
scene pickles"). A stage-2 scene's group is the stage-1 scene it follows
(``corresponding_original_scene``). Beyond its own frames, the pickle carries extended traffic
lights and detections for scoring, which :func:`read_stage2_scene` appends as frames.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from irlvla_jax import types
from irlvla_jax.data.errors import BadInputError
from irlvla_jax.data.navsim_logs import (CUR, FRAME_DT_US, NUM_HISTORY, Fields, Frame, ego_jump,
                                         load_pickle)

STAGE1_LOGS = "openscene_meta_datas"          # stage-1 folder inside a two-stage split folder
SCENE_PICKLES = "synthetic_scene_pickles"     # stage-2 folder inside a two-stage split folder


@dataclasses.dataclass
class Stage2Scene:
    """One stage-2 scene pickle, parsed.

    frames: the scene's frames, then one frame per extended light/detection step (current ego
    pose, no sensors) up to ``types.NUM_AGENT_STEPS`` from the current frame;
    num_frames: how many frames the pickle itself holds; original_token: the stage-1 scene
    this one follows (its two-stage group).
    """
    frames: list[Frame]
    num_frames: int
    token: str
    log_name: str
    map_location: str
    original_token: str


_SCENE_FIX = "the synthetic scene pickle does not follow the NAVSIM format"
_ANN_KEYS = ("boxes", "names", "velocity_3d", "track_tokens")


def _parse_synthetic_frame(d: Any, path: Path, i: int, map_name: str) -> Frame:
    """A navhard synthetic-scene frame (``frames[i]`` of the scene pickle)."""
    f = Fields(path, i, _SCENE_FIX)
    d = f.mapping(d, "frames")
    ego = f.mapping(f.get(d, "ego_status"), "ego_status")
    pose = f.array(f.get(ego, "ego_pose", "ego_status."), (3,), "ego_status.ego_pose")
    if not ego.get("in_global_frame", True):
        raise f.error("ego_status.in_global_frame", "the ego pose is not in the global frame")
    ann = f.mapping(f.get(d, "annotations"), "annotations")
    boxes, names, vel, tracks = f.boxes(ann, _ANN_KEYS, "annotations.")
    l2e = f.array(d["lidar2ego"], (4, 4), "lidar2ego") if "lidar2ego" in d else np.eye(4)
    return Frame(f.string(f.get(d, "token"), "token"),
                 f.integer(f.get(d, "timestamp"), "timestamp"), pose,
                 f.array(f.get(ego, "ego_velocity", "ego_status."), (2,),
                         "ego_status.ego_velocity"),
                 f.array(f.get(ego, "ego_acceleration", "ego_status."), (2,),
                         "ego_status.ego_acceleration"),
                 f.command(f.get(ego, "driving_command", "ego_status."),
                           "ego_status.driving_command"),
                 f.route(d.get("roadblock_ids"), "roadblock_ids"),
                 f.lights(d.get("traffic_lights"), "traffic_lights"),
                 boxes, names, vel[:, :2], tracks, map_name,
                 f.string(d.get("lidar_path"), "lidar_path", optional=True), l2e,
                 f.cams(d.get("camera_dict"), "camera_dict"))


def read_stage2_scene(path: Path, tokens: set[str] | None) -> Stage2Scene | None:
    """Parse a stage-2 scene pickle; None when ``tokens`` is given and lacks its token (then
    only the token is read).

    Raises BadInputError for a missing, corrupt or malformed pickle.
    """
    d = load_pickle(path)
    f = Fields(path, None, _SCENE_FIX)
    if not isinstance(d, Mapping) or "scene_metadata" not in d or "frames" not in d:
        raise BadInputError(path, "missing_keys", "a synthetic scene pickle is a dict with "
                            "scene_metadata and frames", _SCENE_FIX)
    sm = f.mapping(d["scene_metadata"], "scene_metadata")
    raw = d["frames"]
    if not isinstance(raw, (list, tuple)):
        raise f.error("frames", f"should be a list of frames, got a {type(raw).__name__}")
    nh = f.integer(sm.get("num_history_frames", NUM_HISTORY), "scene_metadata.num_history_frames")
    if nh != NUM_HISTORY:
        raise BadInputError(path, "bad_frame", f"num_history_frames is {nh}, expected "
                            f"{NUM_HISTORY}", "")
    if len(raw) < NUM_HISTORY:
        raise BadInputError(path, "bad_frame", f"{len(raw)} frames, need {NUM_HISTORY}", "")
    cur = Fields(path, CUR, _SCENE_FIX)
    token = cur.string(cur.get(cur.mapping(raw[CUR], "frames"), "token"), "token")
    if tokens is not None and token not in tokens:
        return None
    map_name = str(sm.get("map_name", ""))
    frames = [_parse_synthetic_frame(fr, path, i, map_name) for i, fr in enumerate(raw)]
    for i in range(1, len(frames)):
        err = ego_jump(frames[i - 1], frames[i], path, i, "ego_status.ego_pose")
        if err:
            raise err
    # Beyond the scene's frames, the pickle carries extended lights / detections for scoring,
    # one entry per agent step from len(frames) - CUR on.
    ext_lights = _sequence(f, d.get("extended_traffic_light_data"), "extended_traffic_light_data")
    ext_dets = _sequence(f, d.get("extended_detections_tracks"), "extended_detections_tracks")
    cur_frame, first = frames[CUR], len(frames) - CUR
    for k in range(first, types.NUM_AGENT_STEPS):
        j = k - first
        if j >= len(ext_lights) and j >= len(ext_dets):
            break
        e = Fields(path, f"{cur_frame.token}_ext{j}", _SCENE_FIX)
        lights = e.lights(ext_lights[j], "extended_traffic_light_data") \
            if j < len(ext_lights) else []
        if j < len(ext_dets):
            boxes, names, vel, tracks = e.boxes(
                e.mapping(ext_dets[j], "extended_detections_tracks"), _ANN_KEYS,
                "extended_detections_tracks.")
        else:
            boxes, names, vel, tracks = np.zeros((0, 7)), [], np.zeros((0, 3)), []
        # Extended detections are in the current ego frame; express them in a frame that
        # carries the current pose so the common code re-expresses them correctly.
        frames.append(dataclasses.replace(
            cur_frame, token=f"{cur_frame.token}_ext{j}",
            timestamp=cur_frame.timestamp + FRAME_DT_US * k, lights=lights, boxes=boxes,
            names=names, box_velocity=vel[:, :2], tracks=tracks, lidar_path=None, cams={}))
    return Stage2Scene(frames=frames, num_frames=len(raw), token=token,
                       log_name=str(sm.get("log_name", path.stem)), map_location=map_name,
                       original_token=str(sm.get("corresponding_original_scene")))


def _sequence(f: Fields, v: Any, field: str) -> list:
    """An optional per-step list (None: empty)."""
    if v is None:
        return []
    if not isinstance(v, (list, tuple)):
        raise f.error(field, f"should be a list (one entry per step), got a {type(v).__name__}")
    return list(v)
