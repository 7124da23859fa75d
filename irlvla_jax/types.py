"""The pytrees that cross module boundaries: the Scene contract, sub-scores, sizes.

Everything downstream of the data layer (the EPDMS scorer in ``irlvla_jax.sim``, the models,
the three training stages, evaluation) consumes a :class:`Scene`. It is a
``flax.struct.dataclass`` of fixed-shape arrays; a batch of scenes is the same class with a
leading batch axis ``B`` on every field.

Conventions (all fields)
------------------------
* **Frame.** Everything is in the ego *rear-axle* frame at t = 0 (the current frame, the 4th
  frame of the scene window): x forward, y left, metres; headings in radians, counter-clockwise
  from +x, wrapped to [-pi, pi). Velocities and accelerations of the ego are in its *body* frame
  at that frame's time (NAVSIM ``ego_dynamic_state``); velocities of agents are expressed in the
  t = 0 ego frame.
* **Time.** 2 Hz frames. History index ``h = 0..3`` is t = -1.5, -1.0, -0.5, 0 s. Agent frame
  index ``k = 0..8`` is t = 0, 0.5, ..., 4.0 s. Future index ``f = 0..F-1`` is t = 0.5 (f + 1) s.
* **Padding.** Every padded entity has a boolean ``*_valid`` mask. Padded numeric entries are 0,
  except polygon vertices: padded vertices **repeat the polygon's first vertex**, so every edge
  ``(v[i], v[(i + 1) % V])`` of a padded ring is either a real edge or has zero length.
  Geometry can therefore ignore the vertex mask; the mask is there for readers and plots.
* **Polygons are exact.** A ring holds every vertex of the map polygon, without the closing
  vertex: nothing is simplified, and a scene whose map needs more polygons or vertices than the
  sizes hold is refused by the reader (``map_too_large``), never cut. A polygon with holes or
  several parts is one ring joined by *bridges* (``data/polygon_rings.py``): each bridge is
  traversed twice, so crossing-parity containment is exact (points within 1e-6 m of a bridge
  read as boundary).
* **Strings never enter device arrays.** Tokens, log names, track tokens and map ids travel in a
  host-side metadata record (:class:`SceneMeta`) keyed by the example index.

Sizes are static and come from the config (``config.data.sizes``), see :class:`SceneSizes`;
:func:`scene_spec` is the single source of truth for every field's shape and dtype (the TFDS
features, the zero scene used by tests and ``jax.eval_shape``, and input validation all read it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

# ----------------------------------------------------------------------------------------------
# Enumerations shared by data, scorer and models.

#: NAVSIM camera names, in the order the sensor rig lists them.
CAMERA_NAMES = ("CAM_F0", "CAM_L0", "CAM_L1", "CAM_L2", "CAM_R0", "CAM_R1", "CAM_R2", "CAM_B0")

#: ``gt_names`` values of NAVSIM annotations; ``agent_class`` stores the index into this tuple.
AGENT_CLASSES = (
    "vehicle", "pedestrian", "bicycle", "traffic_cone", "barrier", "czone_sign", "generic_object",
)
#: Classes that nuPlan/NAVSIM treat as ``Agent`` (AGENT_TYPES); the rest are static objects.
DYNAMIC_CLASSES = (0, 1, 2)
VEHICLE, PEDESTRIAN, BICYCLE = 0, 1, 2

#: Polygon types of the PDM drivable-area map (``map_polygon_type``).
MAP_POLYGON_TYPES = ("ROADBLOCK", "LANE", "LANE_CONNECTOR", "INTERSECTION", "CARPARK_AREA")
ROADBLOCK, LANE, LANE_CONNECTOR, INTERSECTION, CARPARK_AREA = range(5)

#: Driving command one-hot order (NAVSIM ``driving_command``).
COMMANDS = ("left", "straight", "right", "unknown")

#: BEV semantic raster classes (TransFuser's layout).
BEV_CLASSES = ("background", "road", "walkway", "centerline", "static_object", "vehicle",
               "pedestrian")

#: Meta-action label = speed_class * len(META_PATH_CLASSES) + path_class (DiffVLA: 11 x 9).
META_SPEED_CLASSES = (
    "stopped", "start_from_stop", "emergency_brake", "hard_decel", "decel", "mild_decel",
    "keep_speed", "mild_accel", "accel", "hard_accel", "come_to_stop",
)
META_PATH_CLASSES = (
    "straight", "slight_left", "left_turn", "sharp_left", "slight_right", "right_turn",
    "sharp_right", "left_lane_change", "right_lane_change",
)
NUM_META_ACTIONS = len(META_SPEED_CLASSES) * len(META_PATH_CLASSES)

#: EPDMS sub-metric names, in SubScores field order.
SUBSCORE_NAMES = ("nc", "dac", "ddc", "tlc", "ep", "ttc", "lk", "hc", "ec")

NUM_HISTORY = 4   # frames at -1.5, -1.0, -0.5, 0 s
#: Agent boxes and light states are stored at t = 0, 0.5, ..., 5.0 s (navtrain's 10 future
#: frames); the scorer reads the first SCORED_AGENT_STEPS (0 .. 4 s, NAVSIM's horizon). The extra
#: second is what a closed-loop episode needs: at planning step t (the world advanced t frames)
#: the 4 s plan is scored against frames t .. t + 8 of the log, so episodes of up to
#: MAX_CLOSED_LOOP_STEPS planning steps never score against agents the log does not have.
NUM_AGENT_STEPS = 11
SCORED_AGENT_STEPS = 9
MAX_CLOSED_LOOP_STEPS = NUM_AGENT_STEPS - SCORED_AGENT_STEPS + 1
PLAN_LEN = 8      # planner output: 8 poses at 0.5 s

#: The Scene fields a NAVSIM agent receives (``AgentInput``: ego status history, driving
#: command, cameras with their calibration, LiDAR). Everything else in a Scene (agents, map,
#: lanes, route, red lights, the logged future, labels, bookkeeping) is a training target or a
#: scorer input, never a default policy / reward-model input (``models.policy.PRIVILEGED_INPUTS``).
AGENT_INPUT_FIELDS = ("ego_history", "ego_history_velocity", "ego_history_acceleration",
                      "ego_history_time", "ego_velocity", "ego_acceleration", "driving_command",
                      "cameras", "cam_intrinsics", "cam_to_ego", "lidar_bev")


# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SceneSizes:
    """Static sizes of a Scene (hashable: usable as a jit static argument).

    Built from ``config.data.sizes`` by :meth:`from_config`.
    """
    num_future: int = 10          # F: expert future frames kept (navtrain 10, navhard 8)
    cameras: tuple[str, ...] = ("CAM_F0", "CAM_L0", "CAM_R0", "CAM_B0")
    image_hw: tuple[int, int] = (72, 128)
    lidar_bev_hw: tuple[int, int] = (64, 64)   # LiDAR BEV raster
    bev_hw: tuple[int, int] = (64, 64)         # BEV semantic raster
    bev_range_m: float = 32.0                  # rasters cover [-r, r] x [-r, r] metres
    max_agents: int = 32                       # A
    max_polygons: int = 96                     # P (drivable map, 100 m square), all of it
    max_polygon_vertices: int = 112            # V: the longest ring (map and red lights)
    max_centerline: int = 200                  # R (route centreline vertices)
    max_red_lights: int = 8                    # L
    max_lanes: int = 32                        # M (lane vectors for the model's map tokens)
    lane_points: int = 10                      # K points per lane vector

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "SceneSizes":
        """From ``config.data.sizes`` (a ConfigDict or dict); unknown keys are an error."""
        kw = dict(cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(kw) - names
        if unknown:
            raise ValueError(f"config.data.sizes has unknown keys {sorted(unknown)}; "
                             f"known: {sorted(names)}")
        for k, v in kw.items():
            if isinstance(v, list):
                kw[k] = tuple(v)
        return cls(**kw)

    @property
    def num_cameras(self) -> int:
        return len(self.cameras)


def scene_spec(s: SceneSizes) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every Scene field for one (unbatched) scene, in field order.

    Field meanings (frame, units) are documented on :class:`Scene`.
    """
    H, F, A, T = NUM_HISTORY, s.num_future, s.max_agents, NUM_AGENT_STEPS
    P, V, R, L = s.max_polygons, s.max_polygon_vertices, s.max_centerline, s.max_red_lights
    C, (ih, iw), M, K = s.num_cameras, s.image_hw, s.max_lanes, s.lane_points
    f32, i32, u8, b = np.float32, np.int32, np.uint8, np.bool_
    return {
        # ego
        "ego_history": ((H, 3), f32),
        "ego_history_velocity": ((H, 2), f32),
        "ego_history_acceleration": ((H, 2), f32),
        "ego_history_time": ((H,), f32),
        "ego_velocity": ((2,), f32),
        "ego_acceleration": ((2,), f32),
        "driving_command": ((4,), f32),
        # expert
        "expert_future": ((F, 3), f32),
        "expert_future_valid": ((F,), b),
        # sensors
        "cameras": ((C, ih, iw, 3), u8),
        "cam_intrinsics": ((C, 3, 3), f32),
        "cam_to_ego": ((C, 4, 4), f32),
        "lidar_bev": ((*s.lidar_bev_hw, 2), f32),
        # agents
        "agent_states": ((A, T, 5), f32),
        "agent_valid": ((A, T), b),
        "agent_size": ((A, 3), f32),
        "agent_class": ((A,), i32),
        # drivable map + route
        "map_polygons": ((P, V, 2), f32),
        "map_vertex_valid": ((P, V), b),
        "map_polygon_type": ((P,), i32),
        "map_polygon_on_route": ((P,), b),
        "map_polygon_valid": ((P,), b),
        "centerline": ((R, 3), f32),
        "centerline_valid": ((R,), b),
        "speed_limit": ((), f32),
        "red_light_polygons": ((L, V, 2), f32),
        "red_light_vertex_valid": ((L, V), b),
        "red_light_is_red": ((L, T), b),
        "red_light_on_route": ((L,), b),
        "red_light_on_corrected_route": ((L,), b),
        "red_light_valid": ((L,), b),
        "lane_vectors": ((M, K, 3), f32),
        "lane_valid": ((M,), b),
        "lane_on_route": ((M,), b),
        # labels
        "bev_semantic": (s.bev_hw, u8),
        "meta_action": ((), i32),
        # scorer bookkeeping
        "has_previous": ((), b),
        "is_original": ((), b),
    }


@flax.struct.dataclass
class Scene:
    """One scene (or a batch: a leading ``B`` axis on every field). See the module docstring.

    Ego (t = 0 rear-axle frame)
      ego_history [4,3] f32: rear-axle poses (x, y, heading) at t = -1.5, -1, -0.5, 0 s;
        row 3 is (0, 0, 0) by construction. This is NAVSIM's ``past_human_trajectory`` (HC).
      ego_history_velocity [4,2] f32: body-frame (vx, vy) m/s at each history frame.
      ego_history_acceleration [4,2] f32: body-frame (ax, ay) m/s^2 at each history frame.
      ego_history_time [4] f32: frame times in s relative to t = 0 (from the log timestamps,
        so HC can reproduce the 14-vs-15-state padding quirk).
      ego_velocity [2], ego_acceleration [2] f32: = the history's last row (convenience).
      driving_command [4] f32: one-hot (left, straight, right, unknown).
    Expert
      expert_future [F,3] f32: logged rear-axle poses at t = 0.5 .. 0.5F s; the planner target
        is the first 8 (``PLAN_LEN``); the human-filter trajectory is the first 8 as well.
      expert_future_valid [F] bool: False past the end of the log (never for built scenes).
    Sensors
      cameras [C,H,W,3] u8: RGB, resized to ``image_hw``, camera order = ``sizes.cameras``.
        The TFDS dataset stores each as a JPEG (``data.camera_jpeg_quality``, 90: mean abs
        error < 3 levels); every loader path returns them decoded, with this shape.
      cam_intrinsics [C,3,3] f32: pinhole K scaled to the resized image (pixels).
      cam_to_ego [C,4,4] f32: camera (OpenCV: x right, y down, z forward) to ego rear axle.
      lidar_bev [h,w,2] f32: (point density in [0,1], max height above ground / 4 m) per cell;
        row 0 is x = +range (ahead), column 0 is y = +range (left) — the same raster layout as
        ``bev_semantic``.
    Agents (one row a track; identity = row; host metadata has the track tokens)
      agent_states [A,11,5] f32: box centre (x, y), heading, (vx, vy) at t = 0, 0.5, .., 5 s
        (the scorer reads 0 .. 4 s; the last second serves closed-loop episodes).
      agent_valid [A,11] bool: the track is annotated in that 2 Hz frame.
      agent_size [A,3] f32: (length, width, height) m.
      agent_class [A] i32: index into ``AGENT_CLASSES``.
    Map (the PDM drivable-area map: every object intersecting the 100 m square around the ego
    centre, in PDMDrivableMap order: roadblocks, then lanes per roadblock, then lane connectors
    per roadblock connector, then intersections, then carparks)
      map_polygons [P,V,2] f32, map_vertex_valid [P,V] bool, map_polygon_valid [P] bool: the
        exact rings (module docstring, "Polygons are exact"), valid prefix.
      map_polygon_type [P] i32: index into ``MAP_POLYGON_TYPES``.
      map_polygon_on_route [P] bool: the lane / lane connector is in the *corrected* route's
        lane dict (``route_lane_ids``: on-route lanes, used for ONCOMING).
      centerline [R,3] f32: PDM-Closed centreline vertices (x, y, unwrapped heading) in order,
        junction vertices duplicated as in NAVSIM, valid prefix ``centerline_valid [R]``.
      speed_limit [] f32: the starting lane's ``speed_limit_mps``; -1 when None (PDM-Closed
        falls back to 15 m/s).
      red_light_polygons [L,V,2] f32 (+ red_light_vertex_valid [L,V], red_light_valid [L]):
        lane-connector polygons (exact rings) of connectors that carry a traffic light in any of
        the 11 frames: every one red on the raw or corrected route in one of the first 9 frames
        (the ones the scorer reads), then those red on a route at 4.5 / 5 s, then the others
        while rows are left.
      red_light_is_red [L,11] bool: red at 2 Hz frame k (t = 0.5 k); 10 Hz step j uses k = j // 5.
      red_light_on_route [L] bool: in the *uncorrected* route (used by the scoring observation).
      red_light_on_corrected_route [L] bool: in the corrected route (used inside PDM-Closed).
      lane_vectors [M,K,3] f32: lane and lane-connector baselines near the ego, resampled to K
        points (x, y, heading), nearest first; lane_valid [M], lane_on_route [M] bool.
    Labels
      bev_semantic [h,w] u8: index into ``BEV_CLASSES``; row 0 = ahead, column 0 = left.
      meta_action [] i32: speed_class * 9 + path_class (``META_*_CLASSES``), from the expert.
    Scorer bookkeeping
      has_previous [] bool: the log has a frame 0.5 s (within 0.55 s) earlier, so EC counts.
      is_original [] bool: a logged (not synthetic two-stage) scene: the human filter applies.
    """
    ego_history: Any
    ego_history_velocity: Any
    ego_history_acceleration: Any
    ego_history_time: Any
    ego_velocity: Any
    ego_acceleration: Any
    driving_command: Any
    expert_future: Any
    expert_future_valid: Any
    cameras: Any
    cam_intrinsics: Any
    cam_to_ego: Any
    lidar_bev: Any
    agent_states: Any
    agent_valid: Any
    agent_size: Any
    agent_class: Any
    map_polygons: Any
    map_vertex_valid: Any
    map_polygon_type: Any
    map_polygon_on_route: Any
    map_polygon_valid: Any
    centerline: Any
    centerline_valid: Any
    speed_limit: Any
    red_light_polygons: Any
    red_light_vertex_valid: Any
    red_light_is_red: Any
    red_light_on_route: Any
    red_light_on_corrected_route: Any
    red_light_valid: Any
    lane_vectors: Any
    lane_valid: Any
    lane_on_route: Any
    bev_semantic: Any
    meta_action: Any
    has_previous: Any
    is_original: Any

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Scene":
        """From a mapping with exactly the Scene's field names (e.g. a TFDS/grain example)."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise KeyError(f"scene record is missing fields {missing}")
        return cls(**{n: d[n] for n in names})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading axes beyond the per-scene shape (``()`` for one scene, ``(B,)`` for a batch)."""
        return tuple(np.shape(self.speed_limit))


def zeros_scene(sizes: SceneSizes, batch: tuple[int, ...] = (), xp=np) -> Scene:
    """An all-padding scene (every mask False) with the given leading batch shape."""
    return Scene(**{k: xp.zeros((*batch, *shape), dtype) for k, (shape, dtype) in
                    scene_spec(sizes).items()})


def scene_shape_struct(sizes: SceneSizes, batch: tuple[int, ...] = ()) -> Scene:
    """``jax.ShapeDtypeStruct`` leaves, for ``jax.eval_shape`` and AOT lowering."""
    return Scene(**{k: jax.ShapeDtypeStruct((*batch, *shape), dtype) for k, (shape, dtype) in
                    scene_spec(sizes).items()})


def check_scene(scene: Scene | Mapping[str, Any], sizes: SceneSizes, where: str = "scene",
                batch: tuple[int, ...] | None = None) -> None:
    """Raise ``ValueError`` naming ``where`` and the field if a shape or dtype is off, or if a
    float field holds NaN/inf. ``batch=None`` accepts any leading shape."""
    d = scene.to_dict() if isinstance(scene, Scene) else dict(scene)
    for k, (shape, dtype) in scene_spec(sizes).items():
        if k not in d:
            raise ValueError(f"{where}: missing field {k!r}")
        a = np.asarray(d[k])
        lead = a.shape[: a.ndim - len(shape)]
        if a.shape[a.ndim - len(shape):] != shape or (batch is not None and lead != batch):
            raise ValueError(f"{where}: field {k!r} has shape {a.shape}, expected "
                             f"{'(...)' if batch is None else batch}+{shape}")
        if a.dtype != dtype:
            raise ValueError(f"{where}: field {k!r} has dtype {a.dtype}, expected {np.dtype(dtype)}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ValueError(f"{where}: field {k!r} holds NaN or inf")


@dataclasses.dataclass
class SceneMeta:
    """Host-side strings for one scene (never on device)."""
    token: str
    log_name: str
    map_location: str
    previous_token: str | None
    track_tokens: list[str]          # one per agent row (padding rows absent)
    split: str = ""
    scene_index: int = -1


# ----------------------------------------------------------------------------------------------
@flax.struct.dataclass
class SubScores:
    """EPDMS sub-scores; each field has the same shape (e.g. [B, K]), float32.

    nc, ddc in {0, 0.5, 1}; dac, tlc, ttc, lk, hc, ec in {0, 1}; ep in [0, 1].
    ``ec_weight`` is 1 where the scene has a previous frame (EC counts) and 0 otherwise.
    """
    nc: Any
    dac: Any
    ddc: Any
    tlc: Any
    ep: Any
    ttc: Any
    lk: Any
    hc: Any
    ec: Any
    ec_weight: Any

    def multiplier(self):
        return self.nc * self.dac * self.ddc * self.tlc

    def epdms(self):
        """Per-candidate EPDMS: NC*DAC*DDC*TLC*(5EP+5TTC+2LK+2HC+2EC*w)/(14+2w)."""
        w = self.ec_weight
        weighted = 5 * self.ep + 5 * self.ttc + 2 * self.lk + 2 * self.hc + 2 * self.ec * w
        return self.multiplier() * weighted / (14.0 + 2.0 * w)

    def stack(self):
        """[..., 9] array in ``SUBSCORE_NAMES`` order."""
        return jnp.stack([getattr(self, n) for n in SUBSCORE_NAMES], axis=-1)
