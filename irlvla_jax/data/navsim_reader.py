"""NAVSIM logs (+ sensor blobs + nuPlan maps) -> fixed-shape Scene dicts and SceneMeta.

    reader = SceneReader(navsim_root, maps_root, sizes)
    for scene, meta in reader.iter_split("navtest"):   # dict of np arrays per types.scene_spec
        ...
    print(reader.skip_report)                          # with skip_bad=True

Splits: any folder under ``navsim_logs/`` (its sensors in ``sensor_blobs/<same name>/``) is a
split of that name, read as 4 history + 10 future frames, a window starting at every frame
(scenes whose current frame has an empty route are dropped, as NAVSIM's filter does); a folder
``<name>/openscene_meta_datas/`` at the root is a two-stage split of that name (4 + 8). The NAVSIM
split names keep their meaning (:data:`SPLITS`): navtrain -> the ``trainval`` logs, navtest ->
``test``, and the two-stage splits. ``navhard_two_stage`` reads stage 1 from
``navhard_two_stage/openscene_meta_datas`` logs and stage 2 from
``navhard_two_stage/synthetic_scene_pickles`` (one scene a file; its group = the original scene
it follows, recorded in :class:`NavsimSceneMeta`). The real navtrain/navtest/navhard splits are
token subsets (NAVSIM's scene-filter yaml): pass ``token_lists={split: file}`` (a text file with
one token a line, a JSON list, or a YAML/JSON mapping with a ``tokens`` list).

Log pickles are parsed into frames by ``navsim_logs.py``, stage-2 scene pickles by
``navhard.py``; this module cuts windows and builds the scenes. Everything is expressed in the
t = 0 rear-axle frame (see ``irlvla_jax.types``); the route pipeline (correction, drivable map,
starting lane, Dijkstra centreline) is ``data.route``.
Entities cut to fit the sizes are counted in the meta (the drivable map and the red lights the
scorer reads are kept whole, vertex for vertex, or the scene is refused); bad input raises
:class:`~irlvla_jax.data.errors.BadInputError` (or is skipped and counted with ``skip_bad``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import shapely
from PIL import Image
from shapely.geometry import LineString, Point

from irlvla_jax import types
from irlvla_jax.data import labels, navhard, route
from irlvla_jax.data.errors import BadInputError, SkipReport
from irlvla_jax.data.maps import CROSSWALK, WALKWAYS, MapAPI
from irlvla_jax.data.navsim_logs import (CUR, FRAME_DT_US, NUM_HISTORY, Fields, Frame, camera,
                                         ego_jump, read_log)
from irlvla_jax.data.polygon_rings import pad_rings, polygon_ring
from irlvla_jax.data.sensor_io import read_pcd

DT_TOLERANCE_US = 100_000          # consecutive frames: 0.4 .. 0.6 s apart
PREVIOUS_MAX_US = 550_000          # EC: the previous frame must be < 0.55 s earlier


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    log_folder: str        # under navsim_logs/ and sensor_blobs/ (two-stage: the split folder)
    num_future: int        # future frames of a window
    two_stage: bool = False


#: The NAVSIM split names whose folder or window length is not the default; any other name is
#: its own folder (``SceneReader.split_spec``).
SPLITS = {
    "navtrain": SplitSpec("trainval", 10),
    "navtest": SplitSpec("test", 10),
    "navhard_two_stage": SplitSpec("navhard_two_stage", 8, two_stage=True),
    "warmup_two_stage": SplitSpec("warmup_two_stage", 8, two_stage=True),
}
_LOG_SPLIT_FUTURE = 10                    # a plain log folder: navtrain / navtest windows


@dataclasses.dataclass
class NavsimSceneMeta(types.SceneMeta):
    """SceneMeta plus what the reader knows beyond the contract.

    stage: 1 for logged scenes, 2 for navhard synthetic follow-ups; original_token: a stage-2
    scene's stage-1 scene (its two-stage group); truncated: entity kind -> how many were cut to
    fit the sizes (never the scorer's map polygons or the red lights that can matter to it:
    those raise ``map_too_large`` instead).
    """
    stage: int = 1
    original_token: str | None = None
    truncated: dict[str, int] = dataclasses.field(default_factory=dict)
    corrected_route: list[str] = dataclasses.field(default_factory=list)


# ----------------------------------------------------------------------------------------------
class _Local:
    """Global -> t = 0 rear-axle frame."""

    def __init__(self, pose: np.ndarray):
        self.p, self.h = pose[:2], float(pose[2])
        c, s = math.cos(self.h), math.sin(self.h)
        self.R = np.array([[c, s], [-s, c]])   # rotation by -h

    def xy(self, xy: np.ndarray) -> np.ndarray:
        """[..., 2] global -> [..., 2] local."""
        return (np.asarray(xy, np.float64) - self.p) @ self.R.T

    def pose(self, pose: np.ndarray) -> np.ndarray:
        """[..., 3] global -> [..., 3] local (heading wrapped)."""
        pose = np.asarray(pose, np.float64)
        return np.concatenate([self.xy(pose[..., :2]), route.wrap(pose[..., 2:] - self.h)], -1)

    def vec(self, v: np.ndarray) -> np.ndarray:
        return np.asarray(v, np.float64) @ self.R.T


def _rot(h: float) -> np.ndarray:
    c, s = math.cos(h), math.sin(h)
    return np.array([[c, -s], [s, c]])


def _exterior(geom) -> np.ndarray:
    """The exterior ring [n, 2] of a polygon (of its largest part), for the BEV label only."""
    if geom.geom_type != "Polygon":
        geom = max(getattr(geom, "geoms", [geom]), key=lambda g: g.area)
    return np.asarray(geom.exterior.coords)[:-1, :2]


def _resample(line: LineString, k: int) -> np.ndarray:
    """A polyline resampled to k points equally spaced by arc length -> [k, 3] (x, y,
    heading of the local direction)."""
    pts = shapely.line_interpolate_point(line, np.linspace(0.0, line.length, k))
    xy = shapely.get_coordinates(pts)[:, :2]
    d = np.diff(xy, axis=0)
    h = np.arctan2(d[:, 1], d[:, 0])
    return np.concatenate([xy, np.concatenate([h, h[-1:]])[:, None]], axis=1)


# ----------------------------------------------------------------------------------------------
class SceneReader:
    """Reads NAVSIM-format data into Scene dicts; see the module docstring.

    Args:
      navsim_root: ``$OPENSCENE_DATA_ROOT`` (holding navsim_logs/, sensor_blobs/, and for the
        two-stage splits navhard_two_stage/).
      maps_root: ``$NUPLAN_MAPS_ROOT``.
      sizes: the static Scene sizes.
      skip_bad: skip scenes with bad input and count them in ``skip_report`` instead of raising.
      token_lists: optional ``{split: token-list file}`` restricting a split to those scene
        tokens (NAVSIM's navtrain/navtest scene filters).
    """

    def __init__(self, navsim_root, maps_root, sizes: types.SceneSizes, skip_bad: bool = False,
                 token_lists: Mapping[str, str | Path] | None = None):
        if sizes.max_polygon_vertices < 3:
            raise ValueError("sizes.max_polygon_vertices must be >= 3 (a triangle), got "
                             f"{sizes.max_polygon_vertices}")
        self.root, self.maps_root = Path(navsim_root), Path(maps_root)
        self.sizes, self.skip_bad = sizes, skip_bad
        self.token_lists = dict(token_lists or {})
        self.skip_report = SkipReport()
        self._log_cache: tuple[Path, list] | None = None

    # -- splits -----------------------------------------------------------------------------------
    def split_spec(self, split: str) -> SplitSpec:
        """Where ``split`` lives and its window length: a NAVSIM name from :data:`SPLITS`, else
        the folder ``navsim_logs/<split>`` (4 + 10 windows) or, when only
        ``<split>/openscene_meta_datas`` exists, a two-stage split (4 + 8)."""
        if split in SPLITS:
            return SPLITS[split]
        if not split or Path(split).name != split or split in (".", ".."):
            raise ValueError(f"split {split!r} is not a folder name")
        if (self.root / split / navhard.STAGE1_LOGS).is_dir() and not (
                self.root / "navsim_logs" / split).is_dir():
            return SplitSpec(split, 8, two_stage=True)
        return SplitSpec(split, _LOG_SPLIT_FUTURE)

    def _log_dir(self, split: str) -> Path:
        s = self.split_spec(split)
        if s.two_stage:
            return self.root / s.log_folder / navhard.STAGE1_LOGS
        return self.root / "navsim_logs" / s.log_folder

    def _sensor_root(self, split: str) -> Path:
        s = self.split_spec(split)
        if s.two_stage:
            return self.root / s.log_folder / "sensor_blobs"
        return self.root / "sensor_blobs" / s.log_folder

    def splits(self) -> list[str]:
        """The splits under navsim_root: the NAVSIM names whose folder exists, then every other
        folder under ``navsim_logs/`` and every other two-stage folder, by name."""
        named = [s for s in SPLITS if self._log_dir(s).is_dir()]
        taken = {SPLITS[s].log_folder for s in named}
        logs = self.root / "navsim_logs"
        found = [d.name for d in sorted(logs.iterdir()) if d.is_dir()] if logs.is_dir() else []
        found += [d.parent.name for d in sorted(self.root.glob(f"*/{navhard.STAGE1_LOGS}"))
                  if d.is_dir() and d.parent.name not in ("navsim_logs", "sensor_blobs")]
        return named + [s for s in dict.fromkeys(found) if s not in taken and s not in SPLITS]

    def _tokens(self, split: str) -> set[str] | None:
        path = self.token_lists.get(split)
        if path is None:
            return None
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise BadInputError(path, "missing_file", f"cannot read token list ({e})",
                                "check token_lists")
        if path.suffix in (".json", ".yaml", ".yml"):
            if path.suffix == ".json":
                data = json.loads(text)
            else:
                import yaml  # only needed for NAVSIM's own filter files
                data = yaml.safe_load(text)
            data = data.get("tokens", data) if isinstance(data, dict) else data
            return {str(t) for t in data}
        return {ln.strip() for ln in text.splitlines() if ln.strip()}

    # -- iteration --------------------------------------------------------------------------------
    def _skip_or_raise(self, err: BadInputError, scenes: int | None = 1, up_to: int = 0
                       ) -> None:
        """Raise ``err``, or (skip_bad) count the ``scenes`` it removes (None: unknown, at most
        ``up_to``)."""
        if not self.skip_bad:
            raise err
        self.skip_report.add(err, scenes, up_to)

    def _max_windows(self, split: str, log_name: str, nf: int) -> int:
        """At most how many windows a log that cannot be read had: by its LiDAR sweeps (one a
        frame) in sensor_blobs; 0 when those are absent too."""
        sweeps = self._sensor_root(split) / log_name / "MergedPointCloud"
        n = sum(1 for _ in sweeps.glob("*")) if sweeps.is_dir() else 0
        return max(0, n - NUM_HISTORY - nf + 1)

    def iter_split(self, split: str, num_future: int | None = None
                   ) -> Iterator[tuple[dict[str, np.ndarray], NavsimSceneMeta]]:
        """Yield (scene dict, meta) for every scene of ``split`` in a deterministic order (logs
        sorted by name, windows by start frame; two-stage: stage 1 then stage 2 pickles).

        num_future: future frames per window (default: the split's, 10 or 8). Scene dicts have
        ``expert_future`` of ``sizes.num_future`` rows; rows beyond the window are invalid.
        """
        spec = self.split_spec(split)
        nf = spec.num_future if num_future is None else int(num_future)
        tokens = self._tokens(split)
        log_dir = self._log_dir(split)
        if not log_dir.is_dir():
            raise BadInputError(log_dir, "missing_split", f"no log folder for split {split!r} "
                                f"(splits under this root: {self.splits()})",
                                "check navsim_root and the split name, or generate the data")
        index = 0
        for path in sorted(log_dir.glob("*.pkl")):
            try:
                frames = self._frames(path)
            except BadInputError as e:   # the whole log is lost; how many scenes is unknown
                self._skip_or_raise(e, None, self._max_windows(split, path.stem, nf))
                continue
            for start in range(0, len(frames) - NUM_HISTORY - nf + 1):
                cur = frames[start + CUR]
                if isinstance(cur, Frame):
                    if not cur.route or (tokens is not None and cur.token not in tokens):
                        continue   # NAVSIM's has_route / token filters, not bad input
                try:
                    out = self._scene(frames, start, nf, split, path)
                except BadInputError as e:
                    self._skip_or_raise(e)
                    continue
                out[1].scene_index = index
                index += 1
                yield out
        if spec.two_stage:
            syn_dir = self.root / spec.log_folder / navhard.SCENE_PICKLES
            for path in sorted(syn_dir.glob("*.pkl")):
                try:
                    out = self._synthetic_scene(path, split, nf, tokens)
                except BadInputError as e:
                    self._skip_or_raise(e)
                    continue
                if out is None:
                    continue
                out[1].scene_index = index
                index += 1
                yield out

    def read_scene(self, split: str, log_name: str, token: str
                   ) -> tuple[dict[str, np.ndarray], NavsimSceneMeta]:
        """The scene whose current frame is ``token`` in log ``log_name`` (two-stage splits: a
        stage-2 token is looked up in synthetic_scene_pickles). Raises BadInputError."""
        spec = self.split_spec(split)
        path = self._log_dir(split) / f"{log_name}.pkl"
        if spec.two_stage and not path.exists():
            return self._read_stage2(split, token)
        frames = self._frames(path)
        idx = [i for i, f in enumerate(frames) if isinstance(f, Frame) and f.token == token]
        if not idx or idx[0] < CUR or idx[0] - CUR + NUM_HISTORY + spec.num_future > len(frames):
            raise BadInputError(path, "missing_scene", f"token {token!r} is not the current frame "
                                f"of a full {NUM_HISTORY}+{spec.num_future} window in this log",
                                "check the token / log name")
        return self._scene(frames, idx[0] - CUR, spec.num_future, split, path)

    def _read_stage2(self, split: str, token: str):
        """The stage-2 scene ``token``: its own ``<token>.pkl`` when there is one, else the
        first pickle holding it; a pickle that cannot be read only matters if none does."""
        spec = self.split_spec(split)
        syn = self.root / spec.log_folder / navhard.SCENE_PICKLES
        named = syn / f"{token}.pkl"
        candidates = [named] if named.exists() else []
        candidates += [p for p in sorted(syn.glob("*.pkl")) if p != named]
        unreadable = []
        for p in candidates:
            try:
                out = self._synthetic_scene(p, split, spec.num_future, {token})
            except BadInputError as e:
                if p == named:
                    raise
                unreadable.append(e)
                continue
            if out is not None:
                return out
        raise BadInputError(syn, "missing_scene", f"no scene with token {token!r}" + (
            f"; {len(unreadable)} pickle(s) could not be read: " + "; ".join(
                str(e) for e in unreadable[:3]) if unreadable else ""), "check the token")

    def _frames(self, path: Path) -> list:
        """Parsed frames of a log; a frame that fails to parse is stored as its error."""
        if self._log_cache and self._log_cache[0] == path:
            return self._log_cache[1]
        frames = read_log(path)
        self._log_cache = (path, frames)
        return frames

    # -- one scene --------------------------------------------------------------------------------
    def _scene(self, frames: list, start: int, nf: int, split: str, path: Path):
        # Agents and lights span t = 0..5 s (frames CUR..CUR+10: the scorer's 4 s and one more
        # second for closed-loop episodes) even when the window is shorter.
        end = min(len(frames), start + max(NUM_HISTORY + nf, CUR + types.NUM_AGENT_STEPS))
        used = frames[start:end]
        for f in used[:NUM_HISTORY + nf]:
            if isinstance(f, BadInputError):
                raise f
        for j, f in enumerate(used):   # later (agent-only) frames: stop at the first bad one
            if isinstance(f, BadInputError):
                used = used[:j]
                break
        for j in range(len(used) - 1):
            a, b = used[j], used[j + 1]
            dt = b.timestamp - a.timestamp
            linked = a.sample_next is None or a.sample_next == b.token
            if abs(dt - FRAME_DT_US) > DT_TOLERANCE_US or not linked:
                err = BadInputError(path, "window_gap", f"frames {start + j} and "
                                    f"{start + j + 1} are not consecutive (dt {dt} us, "
                                    f"sample_next {a.sample_next!r} vs token {b.token!r}): "
                                    "the window crosses a log boundary",
                                    "split the log at the gap")
            else:
                err = ego_jump(a, b, path, start + j + 1, "ego2global_translation")
            if err is not None:
                if j + 1 < NUM_HISTORY + nf:
                    raise err
                used = used[:j + 1]   # later (agent-only) frames: stop before the bad one
                break
        prev_ok = start >= 1 and isinstance(frames[start + CUR - 1], Frame) and \
            0 < used[CUR].timestamp - used[CUR - 1].timestamp < PREVIOUS_MAX_US
        meta = NavsimSceneMeta(token=used[CUR].token, log_name=path.stem,
                               map_location=used[CUR].map_location,
                               previous_token=used[CUR - 1].token if prev_ok else None,
                               track_tokens=[], split=split)
        scene = self._build(used, nf, self._sensor_root(split), meta, str(path))
        scene["has_previous"] = np.array(prev_ok)
        scene["is_original"] = np.array(True)
        types.check_scene(scene, self.sizes, where=f"{path} token {meta.token}")
        return scene, meta

    def _synthetic_scene(self, path: Path, split: str, nf: int, tokens: set[str] | None):
        s2 = navhard.read_stage2_scene(path, tokens)
        if s2 is None:
            return None
        meta = NavsimSceneMeta(token=s2.token, log_name=s2.log_name,
                               map_location=s2.map_location, previous_token=None, track_tokens=[],
                               split=split, stage=2, original_token=s2.original_token)
        n_future = min(nf, max(0, s2.num_frames - NUM_HISTORY))
        scene = self._build(s2.frames, n_future, self._sensor_root(split), meta, str(path))
        scene["has_previous"] = np.array(False)
        scene["is_original"] = np.array(False)
        types.check_scene(scene, self.sizes, where=f"{path} token {s2.token}")
        return scene, meta

    def _build(self, fr: list[Frame], nf: int, sensor_root: Path, meta: NavsimSceneMeta,
               where: str) -> dict[str, np.ndarray]:
        s = self.sizes
        cur = fr[CUR]
        loc = _Local(cur.pose)
        out: dict[str, np.ndarray] = {}
        # ego
        hist = fr[:NUM_HISTORY]
        out["ego_history"] = loc.pose(np.stack([f.pose for f in hist])).astype(np.float32)
        out["ego_history"][CUR] = 0.0
        out["ego_history_velocity"] = np.stack([f.velocity for f in hist]).astype(np.float32)
        out["ego_history_acceleration"] = np.stack([f.acceleration for f in hist]).astype(np.float32)
        out["ego_history_time"] = np.array([(f.timestamp - cur.timestamp) * 1e-6 for f in hist],
                                           np.float32)
        out["ego_velocity"] = out["ego_history_velocity"][CUR].copy()
        out["ego_acceleration"] = out["ego_history_acceleration"][CUR].copy()
        out["driving_command"] = cur.command.astype(np.float32)
        # expert future
        F = s.num_future
        fut = [f.pose for f in fr[NUM_HISTORY:NUM_HISTORY + min(nf, F)]]
        out["expert_future"] = np.zeros((F, 3), np.float32)
        out["expert_future_valid"] = np.zeros(F, bool)
        if fut:
            out["expert_future"][:len(fut)] = loc.pose(np.stack(fut))
            out["expert_future_valid"][:len(fut)] = True
        out.update(self._sensors(cur, sensor_root, where))
        out.update(self._agents(fr, loc, meta))
        try:
            m = MapAPI.load(self.maps_root, cur.map_location)
        except BadInputError as e:
            if e.reason != "missing_map":
                raise
            raise BadInputError(where, "missing_map", f"map location {cur.map_location!r} "
                                f"not found under data.maps_root ({e})",
                                "download the nuPlan maps into data.maps_root or check the "
                                "log's map_location", field="map_location") from None
        if not cur.route:
            raise BadInputError(where, "bad_route", f"scene {cur.token} has an empty route",
                                "NAVSIM drops such scenes; filter it out")
        plan = route.plan_route(m, cur.pose, cur.route, where=f"{where} token {cur.token}")
        meta.corrected_route = plan.corrected_ids
        out.update(self._map(m, plan, loc, fr, meta, f"{where} token {cur.token}"))
        # labels
        t0 = out["agent_valid"][:, 0]
        boxes = np.concatenate([out["agent_states"][t0, 0, :3], out["agent_size"][t0, :2]], 1)
        road = [loc.xy(np.asarray(p.exterior.coords)[:-1]) for p, t in
                zip(plan.dmap.polygons, plan.dmap.types)
                if t in (types.LANE, types.LANE_CONNECTOR, types.INTERSECTION)]
        walk_ids = m.proximal_objects(route.ego_center(cur.pose), s.bev_range_m * 1.5,
                                      [WALKWAYS, CROSSWALK])
        walks = [loc.xy(_exterior(m.polygon(i, layer)))
                 for layer in (WALKWAYS, CROSSWALK) for i in walk_ids[layer]]
        lines = [loc.xy(np.asarray(self._lane(m, tok, typ).baseline.coords)[:, :2])
                 for tok, typ in zip(plan.dmap.tokens, plan.dmap.types)
                 if typ in (types.LANE, types.LANE_CONNECTOR)]
        out["bev_semantic"] = labels.bev_semantic(road, walks, lines, boxes,
                                                  out["agent_class"][t0], s.bev_hw, s.bev_range_m)
        plan8 = out["expert_future"][:types.PLAN_LEN]
        ok = out["expert_future_valid"][:types.PLAN_LEN].all()
        out["meta_action"] = np.array(labels.meta_action(float(cur.velocity[0]), plan8) if ok
                                      else 0, np.int32)
        return out

    @staticmethod
    def _lane(m: MapAPI, token: str, typ: int):
        return m.lanes[token] if typ == types.LANE else m.lane_connectors[token]

    def _sensors(self, f: Frame, root: Path, where: str) -> dict[str, np.ndarray]:
        s = self.sizes
        imgs, Ks, c2e = [], [], []
        fields = Fields(where, f.token)
        for name in s.cameras:
            data_path, K, s2l = camera(f.cams, name, fields)
            p = root / data_path
            try:
                with Image.open(p) as im:
                    im.load()
                    arr, sx, sy = labels.resize_image(im, s.image_hw)
            except FileNotFoundError:
                raise BadInputError(p, "missing_sensor", f"camera image of frame {f.token} is "
                                    "missing", "download the sensor blobs of this split") from None
            except OSError as e:
                raise BadInputError(p, "corrupt_sensor", f"cannot decode image ({e})",
                                    "the JPEG is truncated or corrupt; re-download it") from None
            imgs.append(arr)
            Ks.append(labels.scale_intrinsics(K, sx, sy))
            c2e.append(f.lidar2ego @ s2l)
        out = {"cameras": np.stack(imgs).astype(np.uint8),
               "cam_intrinsics": np.stack(Ks).astype(np.float32),
               "cam_to_ego": np.stack(c2e).astype(np.float32)}
        if not f.lidar_path:
            raise BadInputError(where, "missing_keys", f"frame {f.token} has no lidar_path", "")
        p = root / f.lidar_path
        if not p.exists():
            raise BadInputError(p, "missing_sensor", f"point cloud of frame {f.token} is missing",
                                "download the sensor blobs of this split")
        try:
            pts = read_pcd(p)
        except (ValueError, OSError) as e:
            raise BadInputError(p, "corrupt_sensor", f"cannot read point cloud ({e})",
                                "the .pcd is truncated or corrupt; re-download it") from None
        xyz = pts[:3].T.astype(np.float64) @ f.lidar2ego[:3, :3].T + f.lidar2ego[:3, 3]
        out["lidar_bev"] = labels.lidar_bev(xyz, s.lidar_bev_hw, s.bev_range_m)
        return out

    def _agents(self, fr: list[Frame], loc: _Local, meta: NavsimSceneMeta):
        s, T = self.sizes, types.NUM_AGENT_STEPS
        tracks: dict[str, dict] = {}
        for k in range(T):
            if CUR + k >= len(fr):
                break
            f = fr[CUR + k]
            R = _rot(float(f.pose[2]))
            for b, name, v, tok in zip(f.boxes, f.names, f.box_velocity, f.tracks):
                cls = types.AGENT_CLASSES.index(name)
                xy = loc.xy(R @ b[:2] + f.pose[:2])
                h = route.wrap(b[6] + f.pose[2] - loc.h)
                vel = loc.vec(R @ v) if cls in types.DYNAMIC_CLASSES else np.zeros(2)
                t = tracks.setdefault(tok, {"cls": cls, "size": b[3:6], "states": {}})
                t["states"].setdefault(k, np.array([xy[0], xy[1], h, vel[0], vel[1]]))
        # Nearest first over the frames the scorer reads (0 .. 4 s); tracks seen only at 4.5 / 5 s
        # come after them, so the extra second never pushes a scored track out of max_agents.
        def rank(tok):
            st = tracks[tok]["states"]
            scored = [np.hypot(*v[:2]) for k, v in st.items() if k < types.SCORED_AGENT_STEPS]
            return (0, min(scored)) if scored else (1, min(np.hypot(*v[:2]) for v in st.values()))
        order = sorted(tracks, key=rank)
        if len(order) > s.max_agents:
            meta.truncated["agents"] = len(order) - s.max_agents
        A = s.max_agents
        states, valid = np.zeros((A, T, 5), np.float32), np.zeros((A, T), bool)
        size, cls = np.zeros((A, 3), np.float32), np.zeros(A, np.int32)
        for i, tok in enumerate(order[:A]):
            t = tracks[tok]
            for k, st in t["states"].items():
                states[i, k], valid[i, k] = st, True
            size[i], cls[i] = t["size"], t["cls"]
        meta.track_tokens = order[:A]
        return {"agent_states": states, "agent_valid": valid, "agent_size": size,
                "agent_class": cls}

    def _map(self, m: MapAPI, plan: route.RoutePlan, loc: _Local, fr: list[Frame],
             meta: NavsimSceneMeta, where: str) -> dict[str, np.ndarray]:
        s = self.sizes
        P, V = s.max_polygons, s.max_polygon_vertices
        out: dict[str, np.ndarray] = {}
        # The drivable map in PDM order, every polygon and vertex (polygon_rings).
        dm = plan.dmap
        on_route = set(plan.route_lane_ids)
        rings = [loc.xy(polygon_ring(poly)) for poly in dm.polygons]
        out["map_polygons"], out["map_vertex_valid"], out["map_polygon_valid"] = \
            pad_rings(rings, P, V, "drivable-map polygon", where)
        out["map_polygon_type"] = np.zeros(P, np.int32)
        out["map_polygon_type"][:len(rings)] = dm.types
        out["map_polygon_on_route"] = np.zeros(P, bool)
        out["map_polygon_on_route"][:len(rings)] = [
            t in on_route and k in (types.LANE, types.LANE_CONNECTOR)
            for t, k in zip(dm.tokens, dm.types)]
        # centreline: drop vertices well behind the ego first, then the far end
        c = plan.centerline
        R = s.max_centerline
        if len(c) > R:
            prog = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(c[:, :2], axis=0).T))])
            ego_s = LineString(c[:, :2]).project(Point(*loc.p))
            first = int(np.searchsorted(prog, ego_s - 20.0))
            first = max(0, min(first, len(c) - R))
            meta.truncated["centerline"] = len(c) - R
            c = c[first:first + R]
        cl = np.zeros((R, 3), np.float32)
        cl[:len(c), :2] = loc.xy(c[:, :2])
        cl[:len(c), 2] = c[:, 2] - loc.h      # keeps the unwrapped heading continuous
        out["centerline"] = cl
        out["centerline_valid"] = np.arange(R) < len(c)
        sp = plan.start_lane.speed_limit
        out["speed_limit"] = np.array(-1.0 if sp is None else sp, np.float32)
        out.update(self._red_lights(m, plan, loc, fr, meta, where))
        out.update(self._lane_vectors(m, plan, loc, meta))
        return out

    def _red_lights(self, m, plan, loc, fr, meta, where) -> dict[str, np.ndarray]:
        s, T = self.sizes, types.NUM_AGENT_STEPS
        L, V = s.max_red_lights, s.max_polygon_vertices
        ids: dict[str, np.ndarray] = {}
        unknown = set()
        for k in range(min(T, len(fr) - CUR)):
            for cid, red in fr[CUR + k].lights:
                if cid not in m.lane_connectors:
                    unknown.add(cid)
                    continue
                ids.setdefault(cid, np.zeros(T, bool))[k] |= red
        if unknown:
            meta.truncated["red_lights_not_in_map"] = len(unknown)
        raw, corr = set(plan.uncorrected_lane_ids), set(plan.route_lane_ids)
        # The scorer reads a light only when it is red on a route (TLC: the raw route,
        # PDM-Closed: the corrected one): those are never cut; the others fill what is left,
        # by first appearance.
        # Lights red on a route only at 4.5 / 5 s (closed-loop episodes) come next, then the rest.
        on_a_route = [c for c in ids if c in raw or c in corr]
        matters = [c for c in on_a_route if ids[c][:types.SCORED_AGENT_STEPS].any()]
        late = [c for c in on_a_route if c not in set(matters) and ids[c].any()]
        others = late + [c for c in ids if c not in set(matters) | set(late)]
        order = matters + others[:max(0, L - len(matters))]
        if len(order) < len(ids):
            meta.truncated["red_lights"] = len(ids) - len(order)
        rings = [loc.xy(polygon_ring(m.lane_connectors[cid].polygon, f"{where} connector {cid}",
                                     simple_only="red-light connector")) for cid in order]
        poly, vv, valid = pad_rings(rings, L, V, "red-light connector", where, "max_red_lights")
        red = np.zeros((L, T), bool)
        on, on_c = np.zeros(L, bool), np.zeros(L, bool)
        for i, cid in enumerate(order):
            red[i], on[i], on_c[i] = ids[cid], cid in raw, cid in corr
        return {"red_light_polygons": poly, "red_light_vertex_valid": vv,
                "red_light_is_red": red, "red_light_on_route": on,
                "red_light_on_corrected_route": on_c, "red_light_valid": valid}

    def _lane_vectors(self, m, plan, loc, meta) -> dict[str, np.ndarray]:
        s = self.sizes
        M, K = s.max_lanes, s.lane_points
        lanes = [self._lane(m, t, k) for t, k in zip(plan.dmap.tokens, plan.dmap.types)
                 if k in (types.LANE, types.LANE_CONNECTOR)]
        ego = Point(*loc.p)
        lanes.sort(key=lambda ln: ln.baseline.distance(ego))   # stable: PDM order on ties
        if len(lanes) > M:
            meta.truncated["lanes"] = len(lanes) - M
        vec = np.zeros((M, K, 3), np.float32)
        valid, on = np.zeros(M, bool), np.zeros(M, bool)
        corr = set(plan.route_lane_ids)
        for i, ln in enumerate(lanes[:M]):
            r = _resample(ln.baseline, K)
            vec[i, :, :2] = loc.xy(r[:, :2])
            vec[i, :, 2] = route.wrap(r[:, 2] - loc.h)
            valid[i], on[i] = True, ln.id in corr
        return {"lane_vectors": vec, "lane_valid": valid, "lane_on_route": on}
