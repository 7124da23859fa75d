"""NAVSIM log pickles -> normalised frames: pickle loading, frame parsing, quaternion helpers.

A log pickle (``navsim_logs/<folder>/<log>.pkl``, spec/NAVSIM_FORMAT.md "A log pickle") is a
list of frame dicts at 2 Hz; :func:`read_log` turns it into :class:`Frame` objects (global rear-
axle pose, body-frame dynamics, ego-frame boxes, sensor paths), keeping a frame that fails to
parse as its :class:`~irlvla_jax.data.errors.BadInputError` so a scene that does not use it can
still be read. Every field is read through :class:`Fields`: a field of the wrong type or shape,
or a value no real log holds, is an error naming the file, the frame and the field. The navhard
stage-2 pickles parse into the same :class:`Frame` (``navhard.py``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence

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
             "cams", "lidar_path", "anns")
_ANN_KEYS = ("gt_boxes", "gt_names", "gt_velocity_3d", "track_tokens")
NAVSIM_FIX = "the log pickle does not follow the NAVSIM format"
#: Bounds a real log never reaches, so that a value beyond one is a broken field, not an unusual
#: scene: a car in city traffic does not drive 100 m/s (360 km/h), and the poses are unit
#: quaternions in float64 (float32 rounding alone stays below 1e-6).
MAX_EGO_SPEED = 100.0              # m/s implied by two consecutive ego poses
QUATERNION_NORM_TOL = 1e-3


def _shape_str(shape: tuple[int, ...]) -> str:
    dims = ["N" if s == -1 else str(s) for s in shape]
    return f"({dims[0]},)" if len(dims) == 1 else f"({', '.join(dims)})"


def _describe(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"a {v.dtype} array of shape {v.shape}"
    return f"{type(v).__name__} {v!r}" if isinstance(v, (str, int, float)) or v is None \
        else f"a {type(v).__name__}"


def _is_list(v: Any, ndim: int = 1) -> bool:
    """A list or tuple, or an ndarray of ``ndim`` dimensions."""
    return isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.ndim == ndim)


class Fields:
    """Typed reads of one frame's fields. Every failure is a BadInputError naming the file,
    the frame (index, or token where only that is known) and the (dotted) field."""

    def __init__(self, path: str | Path, frame: int | str | None, fix: str = NAVSIM_FIX):
        self.path, self.frame, self.fix = path, frame, fix

    def error(self, field: str, problem: str, reason: str = "bad_field") -> BadInputError:
        return BadInputError(self.path, reason, problem, self.fix, frame=self.frame, field=field)

    def get(self, d: Mapping, key: str, prefix: str = "") -> Any:
        """``d[key]``; a missing key is a ``missing_keys`` error on field ``prefix + key``."""
        if key not in d:
            raise self.error(prefix + key, "is missing", "missing_keys")
        return d[key]

    def mapping(self, v: Any, field: str) -> Mapping:
        if not isinstance(v, Mapping):
            raise self.error(field, f"should be a dict, got {_describe(v)}")
        return v

    def string(self, v: Any, field: str, optional: bool = False) -> str | None:
        if not (isinstance(v, str) or (optional and v is None)):
            raise self.error(field, f"should be a string{' or None' if optional else ''}, "
                             f"got {_describe(v)}")
        return None if v is None else str(v)

    def integer(self, v: Any, field: str) -> int:
        if not isinstance(v, numbers.Integral) or isinstance(v, (bool, np.bool_)):
            raise self.error(field, f"should be an integer, got {_describe(v)}")
        return int(v)

    def strings(self, v: Any, field: str) -> list[str]:
        """A list (tuple, 1-D array) of strings; an empty array of any dtype is an empty list."""
        if isinstance(v, np.ndarray) and v.size == 0:
            return []
        if not _is_list(v):
            raise self.error(field, f"should be a list of strings, got {_describe(v)}")
        for k, x in enumerate(v):
            if not isinstance(x, str):
                raise self.error(field, f"item {k} should be a string, got {_describe(x)}")
        return [str(x) for x in v]

    def array(self, v: Any, shape: tuple[int, ...], field: str) -> np.ndarray:
        """``v`` as float64 of ``shape`` (-1: any length), all finite; an empty array of any
        shape is the empty array of ``shape`` when its first dimension may be 0."""
        try:
            raw = np.asarray(v)
        except (TypeError, ValueError):      # ragged nested sequences
            raw = None
        if raw is None or (raw.dtype.kind not in "biuf" and raw.size):
            held = "" if raw is None or isinstance(v, np.ndarray) or v is None else \
                f" of {raw.dtype} values"
            raise self.error(field, f"should be a numeric array of shape {_shape_str(shape)}, "
                             f"got {_describe(v)}{held}")
        if raw.size == 0 and shape[0] == -1:
            return np.zeros((0, *shape[1:]))
        a = raw.astype(np.float64)
        if a.ndim != len(shape) or any(s not in (-1, n) for s, n in zip(shape, a.shape)):
            raise self.error(field, f"should have shape {_shape_str(shape)}, got {a.shape}")
        bad = np.argwhere(~np.isfinite(a))
        if len(bad):
            where = ", ".join(f"{a[tuple(k)]} at {k.tolist()}" for k in bad[:3])
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise self.error(field, f"has non-finite values ({where}{more})", "bad_value")
        return a

    def quaternion(self, v: Any, field: str) -> np.ndarray:
        """A [w, x, y, z] unit quaternion (norm within QUATERNION_NORM_TOL of 1)."""
        q = self.array(v, (4,), field)
        norm = float(np.linalg.norm(q))
        if abs(norm - 1.0) > QUATERNION_NORM_TOL:
            raise self.error(field, f"should be a unit quaternion [w, x, y, z], got {q.tolist()} "
                             f"(norm {norm:.6g})", "bad_value")
        return q

    def command(self, v: Any, field: str) -> np.ndarray:
        """The one-hot (4,) driving command (left, straight, right, unknown)."""
        c = self.array(v, (4,), field)
        if not (np.isin(c, (0.0, 1.0)).all() and c.sum() == 1):
            raise self.error(field, f"should be one-hot over (left, straight, right, unknown), "
                             f"got {c.tolist()}", "bad_value")
        return c

    def route(self, v: Any, field: str) -> list[str]:
        """Roadblock ids: a list of strings (or integers); None is an empty route."""
        if v is None:
            return []
        if not _is_list(v):
            raise self.error(field, f"should be a list of roadblock ids, got {_describe(v)}")
        for k, r in enumerate(v):
            if not isinstance(r, (str, numbers.Integral)) or isinstance(r, (bool, np.bool_)):
                raise self.error(field, f"item {k} should be a roadblock id, got {_describe(r)}")
        return [str(r) for r in v]

    def lights(self, v: Any, field: str) -> list[tuple[str, bool]]:
        """Traffic lights: (lane connector id: integer, is_red: bool) pairs; None is none."""
        if v is None or (isinstance(v, np.ndarray) and v.size == 0):
            return []
        if not _is_list(v, ndim=2):
            raise self.error(field, f"should be a list of (lane_connector_id, is_red), got "
                             f"{_describe(v)}")
        out = []
        for k, item in enumerate(v):
            if not _is_list(item) or len(item) != 2:
                raise self.error(field, f"item {k} should be a (lane_connector_id, is_red) pair, "
                                 f"got {_describe(item)}")
            c, red = item
            if not (isinstance(c, numbers.Integral) or (isinstance(c, str) and c.isdigit())) \
                    or isinstance(c, (bool, np.bool_)):
                raise self.error(field, f"item {k}: the lane connector id should be an integer, "
                                 f"got {_describe(c)}")
            if not isinstance(red, (bool, np.bool_, numbers.Integral)) or red not in (0, 1):
                raise self.error(field, f"item {k}: is_red should be a bool, got "
                                 f"{_describe(red)}")
            out.append((str(int(c)), bool(red)))
        return out

    def boxes(self, ann: Mapping, keys: Sequence[str], prefix: str
              ) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
        """Boxes (N, 7) (sizes >= 0), names (``types.AGENT_CLASSES``), velocities (N, 3),
        track tokens from ``ann`` under ``keys`` = (boxes, names, velocities, tracks), all of
        one length."""
        kb, kn, kv, kt = keys
        boxes = self.array(self.get(ann, kb, prefix), (-1, 7), prefix + kb)
        neg = np.argwhere(boxes[:, 3:6] < 0)
        if len(neg):
            raise self.error(prefix + kb, f"box {int(neg[0, 0])} has a negative size "
                             f"{boxes[neg[0, 0], 3:6].tolist()} (l, w, h)", "bad_value")
        names = self.strings(self.get(ann, kn, prefix), prefix + kn)
        unknown = sorted(set(names) - set(types.AGENT_CLASSES))
        if unknown:
            raise self.error(prefix + kn, f"unknown agent class(es) {unknown}; NAVSIM's are "
                             f"{types.AGENT_CLASSES}", "bad_value")
        vel = self.array(self.get(ann, kv, prefix), (-1, 3), prefix + kv)
        tracks = self.strings(self.get(ann, kt, prefix), prefix + kt)
        if not len(vel) == len(names) == len(tracks) == len(boxes):
            raise self.error(prefix.rstrip("."), f"fields have different lengths (boxes "
                             f"{len(boxes)}, velocities {len(vel)}, names {len(names)}, tracks "
                             f"{len(tracks)})")
        return boxes, names, vel, tracks

    def cams(self, v: Any, field: str) -> dict[str, Mapping]:
        """Camera name (upper case) -> its dict; None is no cameras. Each camera's fields are
        read where it is used (:func:`camera`)."""
        cams = {str(k).upper(): c for k, c in
                self.mapping({} if v is None else v, field).items()}
        for name, c in cams.items():
            self.mapping(c, f"{field}.{name}")
        return cams


def camera(cams: Mapping[str, Mapping], name: str, f: Fields
           ) -> tuple[str, np.ndarray, np.ndarray]:
    """Camera ``name`` of a frame -> (data_path, intrinsics (3, 3), sensor2lidar (4, 4))."""
    if name not in cams:
        raise BadInputError(f.path, "missing_keys", f"has no camera {name} (it has "
                            f"{sorted(cams)})", "choose data.sizes.cameras among the log's cameras",
                            frame=f.frame, field=f"cams.{name}")
    cam, pre = cams[name], f"cams.{name}."
    path = f.string(f.get(cam, "data_path", pre), pre + "data_path")
    K = f.array(f.get(cam, "cam_intrinsic", pre), (3, 3), pre + "cam_intrinsic")
    s2l = np.eye(4)
    s2l[:3, :3] = f.array(f.get(cam, "sensor2lidar_rotation", pre), (3, 3),
                          pre + "sensor2lidar_rotation")
    s2l[:3, 3] = f.array(f.get(cam, "sensor2lidar_translation", pre), (3,),
                         pre + "sensor2lidar_translation")
    return path, K, s2l


def ego_jump(a: Frame, b: Frame, path: str | Path, frame: int | str, field: str
             ) -> BadInputError | None:
    """The error for consecutive frames ``a`` -> ``b`` (``b`` is ``frame``) whose poses imply
    an ego speed above MAX_EGO_SPEED; None when they do not (or time does not advance)."""
    dt = (b.timestamp - a.timestamp) * 1e-6
    dist = float(np.hypot(*(b.pose[:2] - a.pose[:2])))
    if dt <= 0 or dist <= MAX_EGO_SPEED * dt:
        return None
    return BadInputError(path, "bad_value", f"the ego moves {dist:.4g} m in {dt:g} s from the "
                         f"previous frame ({dist / dt:.3g} m/s > {MAX_EGO_SPEED:g} m/s)",
                         "one of the two ego poses is wrong", frame=frame, field=field)


def _parse_log_frame(d: Any, path: Path, i: int) -> Frame:
    f = Fields(path, i)
    if not isinstance(d, Mapping):
        raise BadInputError(path, "bad_frame", f"is a {type(d).__name__}, not a dict",
                            NAVSIM_FIX, frame=i)
    missing = [k for k in _LOG_KEYS if k not in d]
    if missing:
        raise BadInputError(path, "missing_keys", "is missing" if len(missing) == 1 else
                            f"lacks keys {missing}",
                            "regenerate the log with the OpenScene/NAVSIM tools", frame=i,
                            field=", ".join(missing))
    t = f.array(d["ego2global_translation"], (3,), "ego2global_translation")
    q = f.quaternion(d["ego2global_rotation"], "ego2global_rotation")
    dyn = f.array(d["ego_dynamic_state"], (4,), "ego_dynamic_state")
    if "lidar2ego" in d:
        l2e = f.array(d["lidar2ego"], (4, 4), "lidar2ego")
    else:
        l2e = np.eye(4)
        l2e[:3, :3] = _quat_matrix(f.quaternion(d.get("lidar2ego_rotation", [1, 0, 0, 0]),
                                                "lidar2ego_rotation"))
        l2e[:3, 3] = f.array(d.get("lidar2ego_translation", [0, 0, 0]), (3,),
                             "lidar2ego_translation")
    # Every NAVSIM frame has ``anns``, empty arrays when there are no boxes (only the private
    # test split, which this reader does not serve, withholds it).
    boxes, names, vel, tracks = f.boxes(f.mapping(d["anns"], "anns"), _ANN_KEYS, "anns.")
    return Frame(f.string(d["token"], "token"), f.integer(d["timestamp"], "timestamp"),
                 np.array([t[0], t[1], yaw_of(q)]), dyn[:2], dyn[2:],
                 f.command(d["driving_command"], "driving_command"),
                 f.route(d["roadblock_ids"], "roadblock_ids"),
                 f.lights(d["traffic_lights"], "traffic_lights"),
                 boxes, names, vel[:, :2], tracks, f.string(d["map_location"], "map_location"),
                 f.string(d["lidar_path"], "lidar_path", optional=True), l2e,
                 f.cams(d["cams"], "cams"),
                 f.string(d.get("sample_next"), "sample_next", optional=True))


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
