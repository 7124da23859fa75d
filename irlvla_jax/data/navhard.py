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
from typing import Any

import numpy as np

from irlvla_jax import types
from irlvla_jax.data.errors import BadInputError
from irlvla_jax.data.navsim_logs import (CUR, FRAME_DT_US, NUM_HISTORY, Frame, finite_array,
                                         load_pickle)

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


def _parse_synthetic_frame(d: Any, path: Path, i: int, map_name: str) -> Frame:
    """A navhard synthetic-scene frame (``frames[i]`` of the scene pickle)."""
    where = f"{path} frame {i}"
    try:
        ego = d["ego_status"]
        pose = finite_array(ego["ego_pose"], (3,), where, "ego_status.ego_pose")
        if not ego.get("in_global_frame", True):
            raise BadInputError(path, "bad_frame", f"frame {i}: ego pose not in the global frame",
                                "synthetic scenes must store global ego poses")
        ann = d.get("annotations") or {}
        boxes = finite_array(ann.get("boxes", np.zeros((0, 7))), (7,), where,
                             "boxes").reshape(-1, 7)
        vel = finite_array(ann.get("velocity_3d", np.zeros((len(boxes), 3))), (3,), where,
                           "velocity_3d").reshape(-1, 3)
        cams = {str(k).upper(): v for k, v in (d.get("camera_dict") or {}).items()}
        l2e = finite_array(d["lidar2ego"], (4, 4), where, "lidar2ego") if "lidar2ego" in d \
            else np.eye(4)
        return Frame(str(d["token"]), int(d["timestamp"]), pose,
                     finite_array(ego["ego_velocity"], (2,), where, "ego_velocity"),
                     finite_array(ego["ego_acceleration"], (2,), where, "ego_acceleration"),
                     finite_array(ego["driving_command"], (4,), where, "driving_command"),
                     [str(r) for r in (d.get("roadblock_ids") or [])],
                     [(str(int(c)), bool(r)) for c, r in (d.get("traffic_lights") or [])],
                     boxes, [str(x) for x in ann.get("names", [])], vel[:, :2],
                     [str(x) for x in ann.get("track_tokens", [])], map_name,
                     d.get("lidar_path"), l2e, cams)
    except (KeyError, TypeError) as e:
        raise BadInputError(path, "missing_keys", f"synthetic frame {i} lacks {e}",
                            "the synthetic scene pickle does not follow the NAVSIM format")


def read_stage2_scene(path: Path, tokens: set[str] | None) -> Stage2Scene | None:
    """Parse a stage-2 scene pickle; None when ``tokens`` is given and lacks its token.

    Raises BadInputError for a missing, corrupt or malformed pickle.
    """
    d = load_pickle(path)
    try:
        sm = d["scene_metadata"]
        raw = d["frames"]
        nh = int(sm.get("num_history_frames", NUM_HISTORY))
    except (KeyError, TypeError, AttributeError) as e:
        raise BadInputError(path, "missing_keys", f"synthetic scene pickle lacks {e}",
                            "expected a dict with scene_metadata and frames") from None
    if nh != NUM_HISTORY:
        raise BadInputError(path, "bad_frame", f"num_history_frames is {nh}, expected "
                            f"{NUM_HISTORY}", "")
    map_name = str(sm.get("map_name", ""))
    frames = [_parse_synthetic_frame(f, path, i, map_name) for i, f in enumerate(raw)]
    if len(frames) < NUM_HISTORY:
        raise BadInputError(path, "bad_frame", f"{len(frames)} frames, need {NUM_HISTORY}", "")
    token = frames[CUR].token
    if tokens is not None and token not in tokens:
        return None
    # Beyond the scene's frames, the pickle carries extended lights / detections for scoring.
    ext_lights = list(d.get("extended_traffic_light_data") or [])
    ext_dets = list(d.get("extended_detections_tracks") or [])
    cur = frames[CUR]
    for k in range(len(frames) - CUR, types.NUM_AGENT_STEPS):
        j = k - (len(frames) - CUR)
        if j >= len(ext_lights) and j >= len(ext_dets):
            break
        lights = [(str(int(c)), bool(r)) for c, r in ext_lights[j]] if j < len(ext_lights) \
            else []
        det = ext_dets[j] if j < len(ext_dets) else {}
        boxes = np.asarray(det.get("boxes", np.zeros((0, 7))), np.float64).reshape(-1, 7)
        vel = np.asarray(det.get("velocity_3d", np.zeros((len(boxes), 3))),
                         np.float64).reshape(-1, 3)
        # Extended detections are in the current ego frame; express them in a frame that
        # carries the current pose so the common code re-expresses them correctly.
        frames.append(dataclasses.replace(
            cur, token=f"{cur.token}_ext{j}", timestamp=cur.timestamp + FRAME_DT_US * k,
            lights=lights, boxes=boxes, names=[str(x) for x in det.get("names", [])],
            box_velocity=vel[:, :2], tracks=[str(x) for x in det.get("track_tokens", [])],
            lidar_path=None, cams={}))
    return Stage2Scene(frames=frames, num_frames=len(raw), token=token,
                       log_name=str(sm.get("log_name", path.stem)), map_location=map_name,
                       original_token=str(sm.get("corresponding_original_scene")))
