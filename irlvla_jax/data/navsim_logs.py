"""NAVSIM log pickles -> normalised frames: pickle loading, frame parsing, quaternion helpers.

A log pickle (``navsim_logs/<folder>/<log>.pkl``, spec/NAVSIM_FORMAT.md "A log pickle") is a
list of frame dicts at 2 Hz; :func:`read_log` turns it into :class:`Frame` objects (global rear-
axle pose, body-frame dynamics, ego-frame boxes, sensor paths), keeping a frame that fails to
parse as its :class:`~irlvla_jax.data.errors.BadInputError` so a scene that does not use it can
still be read. The navhard stage-2 pickles parse into the same :class:`Frame` (``navhard.py``).
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from irlvla_jax import types
from irlvla_jax.data.errors import BadInputError

NUM_HISTORY = types.NUM_HISTORY
CUR = NUM_HISTORY - 1              # index of the current frame inside a window
FRAME_DT_US = 500_000              # NAVSIM logs are sampled at 2 Hz


@dataclasses.dataclass
class Frame:
    """One frame, normalised from either a log-pickle frame or a navhard synthetic-scene frame."""
    token: str
    timestamp: int                 # microseconds
    pose: np.ndarray               # (3,) global rear axle x, y, yaw
    velocity: np.ndarray           # (2,) body frame
    acceleration: np.ndarray       # (2,) body frame
    command: np.ndarray            # (4,) one-hot
    route: list[str]
    lights: list[tuple[str, bool]]
    boxes: np.ndarray              # (N, 7) ego frame x, y, z, l, w, h, yaw
    names: list[str]
    box_velocity: np.ndarray       # (N, 2) ego frame
    tracks: list[str]
    map_location: str
    lidar_path: str | None
    lidar2ego: np.ndarray          # (4, 4)
    cams: dict[str, dict]
    sample_next: str | None = None


def yaw_of(q: Sequence[float]) -> float:
    """Yaw of a [w, x, y, z] quaternion (pyquaternion's yaw_pitch_roll[0])."""
    w, x, y, z = (float(v) for v in q)
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def _quat_matrix(q: Sequence[float]) -> np.ndarray:
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


_LOG_KEYS = ("token", "timestamp", "map_location", "roadblock_ids", "ego2global_translation",
             "ego2global_rotation", "ego_dynamic_state", "traffic_lights", "driving_command",
             "cams", "lidar_path")


def finite_array(v, shape: tuple[int, ...], path, field: str) -> np.ndarray:
    """``v`` as float64 whose trailing axes are ``shape``, all finite; else BadInputError
    naming ``path`` and ``field``."""
    try:
        a = np.asarray(v, np.float64)
    except (TypeError, ValueError):
        a = None
    if a is None or a.shape[-len(shape):] != shape or (a.size and not np.isfinite(a).all()):
        raise BadInputError(path, "bad_frame", f"field {field!r} should be a finite array of shape "
                            f"{shape}, got {getattr(a, 'shape', type(v).__name__)}",
                            "the log pickle does not follow the NAVSIM format")
    return a


def _parse_log_frame(d: Any, path: Path, i: int) -> Frame:
    where = f"{path} frame {i}"
    if not isinstance(d, dict):
        raise BadInputError(path, "bad_frame", f"frame {i} is a {type(d).__name__}, not a dict",
                            "the log pickle does not follow the NAVSIM format")
    missing = [k for k in _LOG_KEYS if k not in d]
    if missing:
        raise BadInputError(path, "missing_keys", f"frame {i} lacks keys {missing}",
                            "regenerate the log with the OpenScene/NAVSIM tools")
    t = finite_array(d["ego2global_translation"], (3,), where, "ego2global_translation")
    q = finite_array(d["ego2global_rotation"], (4,), where, "ego2global_rotation")
    dyn = finite_array(d["ego_dynamic_state"], (4,), where, "ego_dynamic_state")
    if "lidar2ego" in d:
        l2e = finite_array(d["lidar2ego"], (4, 4), where, "lidar2ego")
    else:
        l2e = np.eye(4)
        l2e[:3, :3] = _quat_matrix(finite_array(d.get("lidar2ego_rotation", [1, 0, 0, 0]), (4,),
                                                where, "lidar2ego_rotation"))
        l2e[:3, 3] = finite_array(d.get("lidar2ego_translation", [0, 0, 0]), (3,), where,
                                  "lidar2ego_translation")
    anns = d.get("anns") or {}   # absent in the private test split: no agents
    boxes = finite_array(anns.get("gt_boxes", np.zeros((0, 7))), (7,), where,
                         "anns.gt_boxes").reshape(-1, 7)
    n = len(boxes)
    vel = finite_array(anns.get("gt_velocity_3d", np.zeros((n, 3))), (3,), where,
                       "anns.gt_velocity_3d").reshape(-1, 3)
    names = [str(x) for x in anns.get("gt_names", [])]
    tracks = [str(x) for x in anns.get("track_tokens", [])]
    if not (len(vel) == len(names) == len(tracks) == n):
        raise BadInputError(path, "bad_frame", f"frame {i}: anns fields have different lengths "
                            f"(boxes {n}, velocities {len(vel)}, names {len(names)}, tracks "
                            f"{len(tracks)})", "the log pickle is inconsistent")
    cams = {str(k).upper(): v for k, v in (d["cams"] or {}).items()}
    return Frame(str(d["token"]), int(d["timestamp"]), np.array([t[0], t[1], yaw_of(q)]),
                 dyn[:2], dyn[2:],
                 finite_array(d["driving_command"], (4,), where, "driving_command"),
                 [str(r) for r in (d["roadblock_ids"] or [])],
                 [(str(int(c)), bool(r)) for c, r in (d["traffic_lights"] or [])],
                 boxes, names, vel[:, :2], tracks, str(d["map_location"]),
                 d["lidar_path"], l2e, cams, d.get("sample_next"))


def load_pickle(path: Path) -> Any:
    """The unpickled file; a missing or unreadable one raises BadInputError."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError:
        raise BadInputError(path, "missing_file", "file not found", "check navsim_root")
    except Exception as e:   # truncated / corrupt pickles raise many different types
        raise BadInputError(path, "corrupt_pickle", f"cannot unpickle ({type(e).__name__}: {e})",
                            "the file is truncated or corrupt; re-download it") from None


def read_log(path: Path) -> list[Frame | BadInputError]:
    """The frames of a log pickle in order; a frame that fails to parse is its error."""
    raw = load_pickle(path)
    if not isinstance(raw, list):
        raise BadInputError(path, "corrupt_pickle", f"a log pickle holds a list of frames, "
                            f"this one holds a {type(raw).__name__}", "check the file")
    frames: list[Frame | BadInputError] = []
    for i, d in enumerate(raw):
        try:
            frames.append(_parse_log_frame(d, path, i))
        except BadInputError as e:
            frames.append(e)
    return frames
