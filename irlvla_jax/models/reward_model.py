"""The reward world model (RWM): scene + candidate trajectories -> EPDMS sub-scores -> reward.

    ctx = rwm.encode_scene(scene)                 # once per scene: SceneContext [B, N, D]
    pred = rwm.score_candidates(ctx, trajs)        # trajs [B, K, 8, 3] -> Predictions [B, K]
    reward = pred.reward(scene.has_previous)       # [B, K]: EPDMS formula on expected scores

Scene encoder, by ``cfg.scene_encoder``:
  * ``"policy"`` (default, the paper's RWM): the scene enters through sensor features only —
    the frozen stage-1 policy's :class:`~irlvla_jax.models.planner.SceneTokens` computed from
    cameras and LiDAR (BEV tokens, detection/object tokens, map-head tokens, meta tokens) and
    the ego status (the caller encodes with the frozen policy and passes them in; gradients are
    stopped here), projected to the RWM width. In the closed loop it reads the re-observed
    (warped) tokens, as the policy does. No logged future, no map polygons, no route.
  * ``"privileged"`` (ablation and upper bound): its own light encoder over the Scene's
    ground-truth vector fields — one token per agent (its *logged* boxes at 0..4 s, size,
    class), per drivable-map polygon (vertices, type, on-route), per centreline chunk, per red
    light (polygon, red flag per step, on-route), per lane vector, plus one ego token (status,
    command, speed limit); then ``scene_layers`` self-attention blocks over those tokens.
:func:`privileged_inputs` says which ground truth a config's RWM reads.
Trajectory encoder: per waypoint (x, y, cos h, sin h, speed, yaw rate, acceleration) -> MLP +
a learned time embedding: 8 tokens per candidate. With ``cfg.interaction`` (a privileged ablation, off
by default) each waypoint also gets a few candidate-scene relations the attention would otherwise have to learn
from raw coordinates (:func:`interaction_features`): box overlap with / clearance to the agents
at the same time (their logged boxes at t = 0.5 .. 4 s), gap and time headway to the nearest
agent ahead in the ego's corridor (TTC, NC), whether the ego is on an active red-light lane
connector (TLC), off the drivable area (DAC), outside the route's lanes (DDC) and its distance
to the route centreline (LK). They are plain geometry of the scene's vector fields, shared by
both scene encoders, and enter through their own zero-initialised embedding added to the
trajectory embedding (a no-op at initialisation). ``num_blocks`` blocks of [self-attention
within the candidate -> cross-attention to the scene tokens -> FFN]. The K candidates of a
scene share its tokens: queries of all K candidates attend to the same keys in one call, so
the scene is never copied K times.
Heads (on the mean of the 8 tokens): NC and DDC 3-class over {0, 0.5, 1}; DAC, TLC, TTC, LK,
HC, EC binary (logit of "passes"); EP a sigmoid-bounded regression.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from irlvla_jax import geometry as geo
from irlvla_jax import types
from irlvla_jax.models import bev as bev_lib
from irlvla_jax.models import layers
from irlvla_jax.models.planner import SceneTokens
from irlvla_jax.models.policy import ego_status_features

#: Binary heads, in the order of ``Predictions.binary_logits``'s last axis.
BINARY_METRICS = ("dac", "tlc", "ttc", "lk", "hc", "ec")
#: Values of the 3-class heads' classes (NC, DDC).
THREE_CLASS_VALUES = (0.0, 0.5, 1.0)
POS_SCALE_M = 50.0       # positions are divided by this before any MLP
SPEED_SCALE = 10.0       # m/s
ACCEL_SCALE = 5.0        # m/s^2
CENTERLINE_CHUNK = 10    # centreline vertices per token
PLAN_DT = 0.5
SCENE_ENCODERS = ("policy", "privileged")


def privileged_inputs(rwm_cfg) -> tuple[str, ...]:
    """The ground truth ``config.rwm`` makes the RWM read: () for the default sensor RWM;
    "scene_vectors" (logged agent futures, map polygons, route, red lights, lanes) for
    ``scene_encoder="privileged"``, "interaction" for the hand-written geometric tests."""
    enc = rwm_cfg.scene_encoder
    if enc == "vector":
        raise ValueError("config.rwm.scene_encoder = 'vector' was renamed 'privileged' (it reads "
                         "ground truth: an ablation); the default is 'policy' (sensor features)")
    if enc not in SCENE_ENCODERS:
        raise ValueError(f"config.rwm.scene_encoder = {enc!r}: expected one of {SCENE_ENCODERS}")
    out = ("scene_vectors",) if enc == "privileged" else ()
    return out + (("interaction",) if rwm_cfg.get("interaction", False) else ())


@flax.struct.dataclass
class SceneContext:
    """Encoded scene, shared by all candidates. tokens [B,N,D], valid [B,N] bool; geometry:
    the raw fields :func:`interaction_features` needs (:func:`scene_geometry`), or None;
    bev_map [B,H,W,C]: the policy's BEV feature map (``rwm.bev_sampling``), or None."""
    tokens: Any
    valid: Any
    geometry: Any = None
    bev_map: Any = None


@flax.struct.dataclass
class Predictions:
    """RWM outputs for K candidates per scene.

    nc_logits, ddc_logits [B,K,3] (classes 0, 0.5, 1); binary_logits [B,K,6] (``BINARY_METRICS``,
    logit of the value 1); ep_logit [B,K] (EP = sigmoid); geometry (see the field).
    """
    nc_logits: Any
    ddc_logits: Any
    binary_logits: Any
    ep_logit: Any
    #: [B,K,8,INTERACTION_DIM] the per-waypoint scene geometry predicted from the waypoint
    #: tokens (``rwm.aux_geometry``: an auxiliary training target, never an input), or None
    geometry: Any = None

    def subscores(self, ec_weight) -> types.SubScores:
        """Expected sub-scores [B,K]; ec_weight [B] or [B,K] (1 where EC counts)."""
        values = jnp.asarray(THREE_CLASS_VALUES, jnp.float32)
        p = jax.nn.sigmoid(self.binary_logits.astype(jnp.float32))
        b = {n: p[..., i] for i, n in enumerate(BINARY_METRICS)}
        w = jnp.asarray(ec_weight, jnp.float32)
        w = jnp.broadcast_to(w[..., None] if w.ndim == 1 else w, self.ep_logit.shape)
        return types.SubScores(
            nc=jax.nn.softmax(self.nc_logits.astype(jnp.float32), -1) @ values,
            ddc=jax.nn.softmax(self.ddc_logits.astype(jnp.float32), -1) @ values,
            ep=jax.nn.sigmoid(self.ep_logit.astype(jnp.float32)), ec_weight=w, **b)

    def reward(self, ec_weight):
        """[B,K] predicted EPDMS: the EPDMS formula applied to the expected sub-scores."""
        return self.subscores(ec_weight).epdms()


# ----------------------------------------------------------------------------------------------
# Features (plain functions: what the network sees, roughly unit-scaled).

def trajectory_features(trajs):
    """trajs [...,8,3] (x, y, heading; t = 0.5..4 s, ego frame) -> [...,8,7]: x/50, y/50,
    cos h, sin h, speed/10, yaw rate (rad/s), longitudinal acceleration/5 — speed and yaw rate
    by finite differences from the origin (the ego at t = 0), so a candidate's dynamics are
    explicit instead of left for the network to difference."""
    trajs = trajs.astype(jnp.float32)
    prev = jnp.concatenate([jnp.zeros_like(trajs[..., :1, :]), trajs[..., :-1, :]], -2)
    speed = jnp.linalg.norm(trajs[..., :2] - prev[..., :2], axis=-1) / PLAN_DT
    yaw_rate = jnp.arctan2(jnp.sin(trajs[..., 2] - prev[..., 2]),
                           jnp.cos(trajs[..., 2] - prev[..., 2])) / PLAN_DT
    prev_speed = jnp.concatenate([speed[..., :1], speed[..., :-1]], -1)
    accel = (speed - prev_speed) / PLAN_DT
    h = trajs[..., 2]
    return jnp.stack([trajs[..., 0] / POS_SCALE_M, trajs[..., 1] / POS_SCALE_M, jnp.cos(h),
                      jnp.sin(h), speed / SPEED_SCALE, yaw_rate, accel / ACCEL_SCALE], -1)


#: Per-waypoint candidate-scene relations (:func:`interaction_features`).
INTERACTION_DIM = 9
CORRIDOR_MARGIN_M = 0.5   # lateral slack of the "agent ahead in my corridor" test
FAR_GAP_M = 30.0          # gap reported when nothing is ahead / near
_LANE_TYPES = (types.LANE, types.LANE_CONNECTOR)
_DRIVABLE_TYPES = (types.ROADBLOCK, types.INTERSECTION, types.CARPARK_AREA)
DRIVABLE_CAPACITY = 24    # drivable polygons nearest the ego tested for DAC (synthetic: <= 19)
ROUTE_CAPACITY = 16       # on-route lanes + intersections tested for DDC (synthetic: <= 10)


def _nearest_polygons(polys, vertex_valid, mask, capacity: int):
    """The ``capacity`` polygons of ``mask`` nearest the ego (by their nearest vertex), zero
    rings (contain nothing) in the unused slots. polys [B,P,V,2], vertex_valid [B,P,V],
    mask [B,P] -> [B,C,V,2]. Testing points against these instead of all P polygons is what
    keeps the map features cheap; a scene with more than C polygons of the layer near the
    ego loses only its farthest ones."""
    capacity = min(capacity, polys.shape[1])
    d = jnp.where(vertex_valid, jnp.sum(polys ** 2, -1), jnp.inf).min(-1)       # [B,P]
    order = jnp.argsort(jnp.where(mask, d, jnp.inf), axis=-1)[:, :capacity]
    keep = jnp.take_along_axis(mask, order, axis=-1)
    sel = jnp.take_along_axis(polys, order[..., None, None], axis=1)
    return jnp.where(keep[..., None, None], sel, 0.0)


def scene_geometry(scene: types.Scene) -> dict:
    """The scene fields :func:`interaction_features` uses, batched [B]: agent boxes at the 8
    waypoint times (t = 0.5 .. 4 s), their size and validity; red-light polygons and whether
    each is an active red (valid, on the route the scorer uses, red) at 2 Hz frames 0..8; the
    ``DRIVABLE_CAPACITY`` drivable polygons (roadblocks, intersections, car parks) and the
    ``ROUTE_CAPACITY`` on-route lanes / intersections nearest the ego; the centreline."""
    nf = types.SCORED_AGENT_STEPS
    red = (jnp.asarray(scene.red_light_is_red, bool)[..., :nf]
           & (scene.red_light_valid & scene.red_light_on_route)[..., None])
    t, v = scene.map_polygon_type, scene.map_polygon_valid.astype(bool)
    lane = v & ((t == _LANE_TYPES[0]) | (t == _LANE_TYPES[1]))
    drivable = v & functools.reduce(jnp.logical_or, [t == d for d in _DRIVABLE_TYPES])
    route = (lane & scene.map_polygon_on_route.astype(bool)) | (v & (t == types.INTERSECTION))
    polys = scene.map_polygons.astype(jnp.float32)
    vv = scene.map_vertex_valid.astype(bool)
    return dict(agent_states=scene.agent_states[:, :, 1:nf].astype(jnp.float32),   # [B,A,8,5]
                agent_valid=scene.agent_valid[:, :, 1:nf].astype(bool),
                agent_size=scene.agent_size.astype(jnp.float32),
                red_polygons=scene.red_light_polygons.astype(jnp.float32),          # [B,L,V,2]
                red_active=red,                                                     # [B,L,9]
                drivable_polygons=_nearest_polygons(polys, vv, drivable, DRIVABLE_CAPACITY),
                route_polygons=_nearest_polygons(polys, vv, route, ROUTE_CAPACITY),
                centerline=scene.centerline[..., :2].astype(jnp.float32),           # [B,R,2]
                centerline_valid=scene.centerline_valid.astype(bool))


def interaction_features(geom: dict, trajs):
    """Candidate-scene relations per waypoint: geom from :func:`scene_geometry` [B],
    trajs [B,K,8,3] -> [B,K,8,INTERACTION_DIM]:

      overlap     1 if the ego box (approximated in its own frame) overlaps an agent's box at
                  the same time (a collision candidate, NC);
      clearance   min over agents of the box gap (Chebyshev in the ego frame) / 10, in [-1, 3];
      gap ahead   longitudinal gap to the nearest agent ahead within the ego's corridor / 10;
      headway     that gap / the waypoint's speed, in s / 3, in [0, 1] (TTC projects 0.9 s);
      red now     the ego's rear bumper, centre or front bumper is on an active red-light
                  connector (TLC);
      red half    the same for the front bumper half-way from the previous waypoint (0.25 s
                  earlier), so a short connector is not skipped between waypoints;
      off road    fraction of the ego's 4 corners outside every drivable polygon (DAC);
      oncoming    the centre is in no on-route lane and no intersection (DDC);
      off centre  distance of the centre to the route centreline (polyline) / 2 m, in
                  [0, 2.5] (LK).
    """
    trajs = trajs.astype(jnp.float32)
    h = trajs[..., 2]                                                     # [B,K,8]
    fwd = jnp.stack([jnp.cos(h), jnp.sin(h)], -1)
    centre = trajs[..., :2] + geo.EGO_REAR_AXLE_TO_CENTER * fwd          # [B,K,8,2]
    front = centre + geo.EGO_HALF_LENGTH * fwd
    rear = centre - geo.EGO_HALF_LENGTH * fwd
    # Agents at the waypoint times, in each waypoint's ego frame.
    a = geom["agent_states"]                                              # [B,A,8,5]
    a_xy = jnp.swapaxes(a[..., :2], 1, 2)[:, None]                       # [B,1,8,A,2]
    a_h = jnp.swapaxes(a[..., 2], 1, 2)[:, None]                         # [B,1,8,A]
    valid = jnp.swapaxes(geom["agent_valid"], 1, 2)[:, None]             # [B,1,8,A]
    rel = a_xy - centre[..., None, :]
    c, s = jnp.cos(h)[..., None], jnp.sin(h)[..., None]
    dx = c * rel[..., 0] + s * rel[..., 1]                                # [B,K,8,A]
    dy = -s * rel[..., 0] + c * rel[..., 1]
    dh = a_h - h[..., None]
    half_l = 0.5 * geom["agent_size"][:, None, None, :, 0]
    half_w = 0.5 * geom["agent_size"][:, None, None, :, 1]
    ext_x = half_l * jnp.abs(jnp.cos(dh)) + half_w * jnp.abs(jnp.sin(dh))
    ext_y = half_l * jnp.abs(jnp.sin(dh)) + half_w * jnp.abs(jnp.cos(dh))
    gap_x = jnp.abs(dx) - geo.EGO_HALF_LENGTH - ext_x
    gap_y = jnp.abs(dy) - geo.EGO_HALF_WIDTH - ext_y
    box_gap = jnp.where(valid, jnp.maximum(gap_x, gap_y), FAR_GAP_M)
    overlap = jnp.any(box_gap < 0.0, -1)
    clearance = jnp.min(box_gap, -1, initial=FAR_GAP_M)
    ahead = valid & (dx > 0) & (gap_y < CORRIDOR_MARGIN_M)
    gap_ahead = jnp.min(jnp.where(ahead, gap_x, FAR_GAP_M), -1, initial=FAR_GAP_M)
    prev = jnp.concatenate([jnp.zeros_like(trajs[..., :1, :2]), trajs[..., :-1, :2]], -2)
    speed = jnp.linalg.norm(trajs[..., :2] - prev, axis=-1) / PLAN_DT
    headway = jnp.clip(jnp.maximum(gap_ahead, 0.0) / jnp.maximum(speed, 0.5), 0.0, 3.0)
    # Red lights: points on active red connectors at the waypoint's 2 Hz frame (k + 1) and,
    # half-way from the previous waypoint, at frame k.
    polys = geom["red_polygons"][:, None, None]                           # [B,1,1,L,V,2]
    red = jnp.swapaxes(geom["red_active"].astype(bool), 1, 2)             # [B,9,L]
    prev_front = 0.5 * (front + jnp.concatenate(
        [jnp.broadcast_to(jnp.asarray([geo.EGO_REAR_AXLE_TO_CENTER + geo.EGO_HALF_LENGTH, 0.0]),
                          front[..., :1, :].shape), front[..., :-1, :]], -2))

    def on_red(points, frames):
        inside = geo.points_in_polygon(points[..., None, :], polys)      # [B,K,8,L]
        return jnp.any(inside & red[:, frames][:, None], -1)
    k = jnp.arange(types.PLAN_LEN)
    red_now = on_red(centre, k + 1) | on_red(front, k + 1) | on_red(rear, k + 1)
    red_half = on_red(prev_front, k)
    # Map: the 4 corners against the drivable polygons, the centre against the route lanes
    # and intersections (zero rings in unused slots contain nothing).
    on_drivable = geo.points_in_polygon(geo.ego_corners(trajs)[..., None, :],
                                        geom["drivable_polygons"][:, None, None, None])
    off_road = 1.0 - jnp.mean(jnp.any(on_drivable, -1), -1)             # [B,K,8]
    oncoming = ~jnp.any(geo.points_in_polygon(centre[..., None, :],
                                              geom["route_polygons"][:, None, None]), -1)
    cl, clv = geom["centerline"][:, None, None], geom["centerline_valid"][:, None, None]
    seg_a, seg_d = cl[..., :-1, :], cl[..., 1:, :] - cl[..., :-1, :]       # [B,1,1,R-1,2]
    q = centre[..., None, :] - seg_a                                       # [B,K,8,R-1,2]
    u = jnp.clip(jnp.sum(q * seg_d, -1) / jnp.maximum(jnp.sum(seg_d * seg_d, -1), 1e-9),
                 0.0, 1.0)
    d2 = jnp.sum((q - u[..., None] * seg_d) ** 2, -1)
    d2 = jnp.where(clv[..., :-1] & clv[..., 1:], d2, 1e4)
    off_centre = jnp.minimum(jnp.sqrt(jnp.min(d2, -1)), 5.0) / 2.0
    f32 = jnp.float32
    return jnp.stack([overlap.astype(f32), jnp.clip(clearance / 10.0, -1.0, 3.0),
                      jnp.clip(gap_ahead / 10.0, -1.0, 3.0), headway / 3.0,
                      red_now.astype(f32), red_half.astype(f32), off_road,
                      oncoming.astype(f32), off_centre], -1)


# Trajectory-conditioned sensor features (``cfg.bev_sampling``): the policy's BEV feature map
# read at the plan's own positions.
#: Points of the ego footprint read per waypoint: its 4 corners (FL, RL, RR, FR), its centre,
#: and the centre 1 s ahead at the waypoint's speed (what the next second drives into).
BEV_SAMPLE_POINTS = ("front_left", "rear_left", "rear_right", "front_right", "centre", "ahead_1s")
LOOKAHEAD_S = 1.0


def footprint_points(trajs):
    """trajs [...,8,3] (rear-axle poses, ego frame) -> [...,8,P,2] the ego-frame points of
    ``BEV_SAMPLE_POINTS`` at each waypoint (speed by finite differences from the origin)."""
    trajs = trajs.astype(jnp.float32)
    corners = geo.ego_corners(trajs)                                       # [...,8,4,2]
    centre = geo.ego_center(trajs)                                         # [...,8,2]
    prev = jnp.concatenate([jnp.zeros_like(trajs[..., :1, :2]), trajs[..., :-1, :2]], -2)
    speed = jnp.linalg.norm(trajs[..., :2] - prev, axis=-1) / PLAN_DT
    h = trajs[..., 2]
    ahead = centre + (LOOKAHEAD_S * speed)[..., None] * jnp.stack([jnp.cos(h), jnp.sin(h)], -1)
    return jnp.concatenate([corners, centre[..., None, :], ahead[..., None, :]], -2)


def sample_bev(bev_map, points, range_m: float):
    """Bilinear read of a BEV feature map at ego-frame points.

    bev_map [B,H,W,C] (layout of ``bev.bev_cell_centers`` over [-r, r]^2: row 0 = x = +r
    ahead, column 0 = y = +r left; ``bev.bev_cell_coords``); points [B,...,2] ->
    (features [B,...,C], inside [B,...] bool). Points off the map read 0 (as the warp's).
    """
    b, h, w, c = bev_map.shape
    pts = points.reshape(b, -1, 2).astype(jnp.float32)
    row, col = bev_lib.bev_cell_coords(pts, (h, w), range_m)
    r0, c0 = jnp.floor(row), jnp.floor(col)
    flat = bev_map.reshape(b, h * w, c).astype(jnp.float32)
    out = jnp.zeros((*pts.shape[:2], c), jnp.float32)
    for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
        ri, ci = r0 + dr, c0 + dc
        wgt = (1.0 - jnp.abs(row - ri)) * (1.0 - jnp.abs(col - ci))
        ok = (ri >= 0) & (ri <= h - 1) & (ci >= 0) & (ci <= w - 1)
        idx = (jnp.clip(ri, 0, h - 1) * w + jnp.clip(ci, 0, w - 1)).astype(jnp.int32)
        val = jnp.take_along_axis(flat, idx[..., None], axis=1)
        out = out + jnp.where(ok, wgt, 0.0)[..., None] * val
    inside = (jnp.abs(pts[..., 0]) < range_m) & (jnp.abs(pts[..., 1]) < range_m)
    return out.reshape(*points.shape[:-1], c), inside.reshape(points.shape[:-1])


class BEVSampler(nn.Module):
    """Per-waypoint sensor features along a candidate: a 3x3 conv + GELU over the policy's BEV
    feature map (the shape of the policy's own BEV-segmentation head, so road / walkway /
    vehicle evidence is one linear read away), read bilinearly at the ego footprint's corners,
    centre and 1 s-lookahead point of every waypoint (``footprint_points``), with an "on the
    map" flag per point -> [B,K,8,P*(C+1)]. ``seg_logits`` decodes the same conv features into
    the BEV classes (the optional auxiliary loss ``irl.bev_seg_weight`` against the scene's
    BEV-semantic label: a training label, never an input)."""
    dim: int
    range_m: float
    dtype: Any = jnp.float32

    def setup(self):
        self.conv = nn.Conv(self.dim, (3, 3), padding="SAME", dtype=self.dtype, name="conv")
        self.seg_out = nn.Dense(len(types.BEV_CLASSES), dtype=jnp.float32, name="seg_out")

    def features(self, bev_map):
        return nn.gelu(self.conv(bev_map.astype(self.dtype))).astype(jnp.float32)

    def __call__(self, bev_map, trajs):
        """bev_map [B,H,W,Cb], trajs [B,K,8,3] -> [B,K,8,P*(dim+1)]."""
        f, inside = sample_bev(self.features(bev_map), footprint_points(trajs), self.range_m)
        x = jnp.concatenate([f, inside[..., None].astype(jnp.float32)], -1)   # [B,K,8,P,C+1]
        return x.reshape(*x.shape[:-2], -1)

    def seg_logits(self, bev_map, hw):
        """bev_map [B,H,W,Cb] -> [B,*hw,len(BEV_CLASSES)] (bilinear upsampling, as the
        policy's map head)."""
        f = self.features(bev_map)
        f = jax.image.resize(f, (f.shape[0], *hw, f.shape[-1]), "linear")
        return self.seg_out(f)


def _pose_feats(p):
    """[...,3] -> [...,4] (x/50, y/50, cos h, sin h)."""
    return jnp.concatenate([p[..., :2] / POS_SCALE_M, jnp.cos(p[..., 2:3]), jnp.sin(p[..., 2:3])],
                           -1)


def scene_entity_features(scene: types.Scene) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Per-entity features of a batched Scene: name -> (features [B,N,F], valid [B,N]).

    agents [B,A,9*7+3+7], polygons [B,P,2V+5+1], centreline [B,R/10,40], red lights
    [B,L,2V+9+1], lanes [B,M,4K+1], ego [B,1,20+1].
    """
    f32 = jnp.float32
    b = scene.speed_limit.shape[0]
    nf = types.SCORED_AGENT_STEPS      # logged boxes at 0 .. 4 s, not the closed loop's 5th s
    a = scene.agent_states[:, :, :nf].astype(f32)
    av = scene.agent_valid[:, :, :nf].astype(f32)[..., None]
    agent = jnp.concatenate([_pose_feats(a[..., :3]), a[..., 3:5] / SPEED_SCALE, av], -1) * av
    agents = jnp.concatenate([
        agent.reshape(*agent.shape[:2], -1), scene.agent_size.astype(f32) / 5.0,
        jax.nn.one_hot(scene.agent_class, len(types.AGENT_CLASSES))], -1)

    polys = jnp.concatenate([
        (scene.map_polygons.astype(f32) / POS_SCALE_M).reshape(*scene.map_polygons.shape[:2], -1),
        jax.nn.one_hot(scene.map_polygon_type, len(types.MAP_POLYGON_TYPES)),
        scene.map_polygon_on_route.astype(f32)[..., None]], -1)

    r = scene.centerline.shape[1]
    pad = (-r) % CENTERLINE_CHUNK
    cl = jnp.pad(_pose_feats(scene.centerline.astype(f32)), ((0, 0), (0, pad), (0, 0)))
    clv = jnp.pad(scene.centerline_valid.astype(bool), ((0, 0), (0, pad)))
    cl = (cl * clv[..., None]).reshape(b, -1, CENTERLINE_CHUNK * 4)
    clv = clv.reshape(b, -1, CENTERLINE_CHUNK).any(-1)

    lights = jnp.concatenate([
        (scene.red_light_polygons.astype(f32) / POS_SCALE_M).reshape(
            *scene.red_light_polygons.shape[:2], -1),
        scene.red_light_is_red[..., :nf].astype(f32),
        scene.red_light_on_route.astype(f32)[..., None]], -1)

    lanes = jnp.concatenate([
        _pose_feats(scene.lane_vectors.astype(f32)).reshape(*scene.lane_vectors.shape[:2], -1),
        scene.lane_on_route.astype(f32)[..., None]], -1)

    ego = jnp.concatenate([ego_status_features(scene),
                           scene.speed_limit.astype(f32)[:, None] / SPEED_SCALE], -1)[:, None]
    return dict(
        agents=(agents, scene.agent_valid[:, :, :nf].any(-1)),
        polygons=(polys, scene.map_polygon_valid.astype(bool)),
        centerline=(cl, clv),
        red_lights=(lights, scene.red_light_valid.astype(bool)),
        lanes=(lanes, scene.lane_valid.astype(bool)),
        ego=(ego, jnp.ones((b, 1), bool)))


# ----------------------------------------------------------------------------------------------
class _ZeroInitMLP(nn.Module):
    """``Dense(hidden) -> gelu -> Dense(out)`` with the output layer initialised to zero: an
    added input pathway (the interaction features) starts as a no-op and grows where it helps,
    instead of adding random features to the trajectory embedding from step 0."""
    hidden_dim: int
    out_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(self.hidden_dim, dtype=self.dtype, name="fc1")(x))
        return nn.Dense(self.out_dim, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                        name="fc2")(h)


class RewardModel(nn.Module):
    """The RWM. ``cfg`` = ``config.rwm`` (scene_encoder, d_model, num_heads, mlp_dim,
    scene_layers, num_blocks, dtype, interaction)."""
    cfg: Any

    def setup(self):
        cfg = self.cfg
        privileged_inputs(cfg)          # validates scene_encoder
        dt = layers.as_dtype(cfg.get("dtype", "float32"))
        d, heads, mlp = int(cfg.d_model), int(cfg.num_heads), int(cfg.mlp_dim)
        if d % heads:
            raise ValueError(f"config.rwm.d_model={d} is not a multiple of num_heads={heads}")
        self.dt = dt
        self.bev_sampling = bool(cfg.get("bev_sampling", False))
        if self.bev_sampling and cfg.scene_encoder != "policy":
            raise ValueError("config.rwm.bev_sampling reads the policy's BEV feature map: it "
                             "needs scene_encoder='policy'")
        names = (("agents", "polygons", "centerline", "red_lights", "lanes", "ego")
                 if cfg.scene_encoder == "privileged" else ("meta", "bev", "map", "obj", "ego"))
        self.entity_names = names
        self.entity_mlps = {n: layers.MLP(2 * d, d, dtype=dt, name=f"embed_{n}") for n in names}
        self.type_embed = self.param("type_embed", nn.initializers.normal(0.02), (len(names), d))
        self.scene_blocks = [layers.TransformerBlock(heads, heads, d // heads, mlp, dtype=dt,
                                                     name=f"scene_block_{i}")
                             for i in range(int(cfg.scene_layers))]
        self.traj_embed = layers.MLP(2 * d, d, dtype=dt, name="traj_embed")
        if cfg.get("interaction", False):
            self.inter_embed = _ZeroInitMLP(2 * d, d, dtype=dt, name="inter_embed")
        if self.bev_sampling:
            self.bev_sampler = BEVSampler(int(cfg.get("bev_sample_dim", 32)),
                                          float(cfg.bev_range_m), dtype=dt, name="bev_sampler")
            self.bev_embed = _ZeroInitMLP(2 * d, d, dtype=dt, name="bev_embed")
        self.time_embed = self.param("time_embed", nn.initializers.normal(0.02),
                                     (types.PLAN_LEN, d))
        self.self_blocks = [layers.TransformerBlock(heads, heads, d // heads, mlp, dtype=dt,
                                                    name=f"traj_self_{i}")
                            for i in range(int(cfg.num_blocks))]
        self.cross_blocks = [layers.CrossAttentionBlock(heads, d // heads, mlp, dtype=dt,
                                                        name=f"traj_cross_{i}")
                             for i in range(int(cfg.num_blocks))]
        self.out_norm = layers.RMSNorm(dtype=dt)
        self.head_3class = nn.Dense(6, dtype=jnp.float32, name="head_nc_ddc")
        self.head_binary = nn.Dense(len(BINARY_METRICS), dtype=jnp.float32, name="head_binary")
        self.head_ep = nn.Dense(1, dtype=jnp.float32, name="head_ep")
        if cfg.get("aux_geometry", False):
            self.geom_norm = layers.RMSNorm(dtype=dt)
            self.head_geometry = nn.Dense(INTERACTION_DIM, dtype=jnp.float32,
                                          name="head_geometry")

    # -- scene -----------------------------------------------------------------------------
    def encode_scene(self, scene: types.Scene, policy_tokens: SceneTokens | None = None
                     ) -> SceneContext:
        """Batched scene [B] (+ the frozen policy's tokens when scene_encoder == 'policy')
        -> SceneContext (tokens [B,N,D], valid [B,N])."""
        if self.cfg.scene_encoder == "privileged":
            ents = scene_entity_features(scene)
        else:
            if policy_tokens is None:
                raise ValueError("RewardModel: config.rwm.scene_encoder == 'policy' needs the "
                                 "stage-1 policy's SceneTokens (policy_tokens=...)")
            t = jax.lax.stop_gradient(policy_tokens)   # frozen: the RWM never trains the policy
            b = t.ego_status.shape[0]
            ents = {"ego": (t.ego_status[:, None], jnp.ones((b, 1), bool)),
                    "bev": (t.bev, jnp.ones(t.bev.shape[:2], bool)),
                    "map": (t.map, t.map_valid.astype(bool)),
                    "obj": (t.obj, jnp.ones(t.obj.shape[:2], bool))}
            ents["meta"] = ((t.meta, jnp.ones(t.meta.shape[:2], bool)) if t.meta is not None
                            else (jnp.zeros((b, 1, 1), jnp.float32), jnp.zeros((b, 1), bool)))
        toks, valid = [], []
        for i, n in enumerate(self.entity_names):
            f, v = ents[n]
            toks.append(self.entity_mlps[n](f.astype(self.dt)) + self.type_embed[i].astype(self.dt))
            valid.append(v)
        x, valid = jnp.concatenate(toks, 1), jnp.concatenate(valid, 1)
        mask = layers.key_padding_mask(valid)
        for blk in self.scene_blocks:
            x = blk(x, mask)
        geom = scene_geometry(scene) if self.cfg.get("interaction", False) else None
        bev_map = None
        if self.bev_sampling:
            if policy_tokens.bev_map is None:
                raise ValueError("RewardModel: config.rwm.bev_sampling needs the policy's BEV "
                                 "feature map (SceneTokens.bev_map)")
            bev_map = jax.lax.stop_gradient(policy_tokens.bev_map)
            if self.is_initializing():      # create the auxiliary decoder's parameters too
                self.bev_sampler.seg_logits(bev_map, bev_map.shape[1:3])
        return SceneContext(tokens=x, valid=valid, geometry=geom, bev_map=bev_map)

    # -- candidates ------------------------------------------------------------------------
    def score_candidates(self, ctx: SceneContext, trajs) -> Predictions:
        """ctx (tokens [B,N,D]) and trajs [B,K,8,3] (ego frame) -> Predictions [B,K]."""
        b, k = trajs.shape[:2]
        if trajs.shape[2:] != (types.PLAN_LEN, 3):
            raise ValueError(f"RewardModel: trajs has shape {trajs.shape}, expected "
                             f"(B, K, {types.PLAN_LEN}, 3)")
        x = self.traj_embed(trajectory_features(trajs).astype(self.dt))
        if self.cfg.get("interaction", False):
            if ctx.geometry is None:
                raise ValueError("RewardModel: config.rwm.interaction needs the scene geometry "
                                 "in the SceneContext (encode it with this model)")
            x = x + self.inter_embed(interaction_features(ctx.geometry, trajs).astype(self.dt))
        if self.bev_sampling:
            x = x + self.bev_embed(self.bev_sampler(ctx.bev_map, trajs).astype(self.dt))
        x = x + self.time_embed.astype(self.dt)                           # [B,K,8,D]
        d = x.shape[-1]
        mask = layers.key_padding_mask(ctx.valid)
        for self_blk, cross_blk in zip(self.self_blocks, self.cross_blocks):
            x = self_blk(x.reshape(b * k, types.PLAN_LEN, d)).reshape(b, k * types.PLAN_LEN, d)
            x = cross_blk(x, ctx.tokens, mask)         # all K candidates share the scene keys
            x = x.reshape(b, k, types.PLAN_LEN, d)
        h = self.out_norm(jnp.mean(x, axis=2)).astype(jnp.float32)       # [B,K,D]
        three = self.head_3class(h)
        geometry = None
        if self.cfg.get("aux_geometry", False):
            geometry = self.head_geometry(self.geom_norm(x).astype(jnp.float32))  # [B,K,8,G]
        return Predictions(nc_logits=three[..., :3], ddc_logits=three[..., 3:],
                           binary_logits=self.head_binary(h), ep_logit=self.head_ep(h)[..., 0],
                           geometry=geometry)

    def bev_seg_logits(self, policy_tokens: SceneTokens, hw) -> jax.Array:
        """The sampler's features decoded into BEV classes [B,*hw,7] (auxiliary training
        target only; needs ``rwm.bev_sampling``)."""
        return self.bev_sampler.seg_logits(jax.lax.stop_gradient(policy_tokens.bev_map), hw)

    def __call__(self, scene: types.Scene, trajs, policy_tokens: SceneTokens | None = None
                 ) -> Predictions:
        """scene [B], trajs [B,K,8,3] -> Predictions [B,K] (encode once, score K)."""
        return self.score_candidates(self.encode_scene(scene, policy_tokens), trajs)


# ----------------------------------------------------------------------------------------------
# Functional entry points.

def init_params(model: RewardModel, scene: types.Scene, rng: jax.Array, num_candidates: int = 2,
                policy_tokens: SceneTokens | None = None):
    """Parameters from an example batched scene [B] (the trajectories are dummies)."""
    b = scene.speed_limit.shape[0]
    trajs = jnp.zeros((b, num_candidates, types.PLAN_LEN, 3), jnp.float32)
    # jit: an eager init dispatches every op separately (tens of seconds on a small CPU)
    return jax.jit(model.init)(rng, scene, trajs, policy_tokens)["params"]


def apply(model: RewardModel, params, scene: types.Scene, trajs,
          policy_tokens: SceneTokens | None = None) -> Predictions:
    """scene [B], trajs [B,K,8,3] -> Predictions [B,K]."""
    return model.apply({"params": params}, scene, trajs, policy_tokens)


def encode_scene(model: RewardModel, params, scene: types.Scene,
                 policy_tokens: SceneTokens | None = None) -> SceneContext:
    """scene [B] -> SceneContext [B,N,D] (encode once; reuse for many candidate sets)."""
    return model.apply({"params": params}, scene, policy_tokens, method=RewardModel.encode_scene)


def score_candidates(model: RewardModel, params, ctx: SceneContext, trajs) -> Predictions:
    """SceneContext [B,N,D], trajs [B,K,8,3] -> Predictions [B,K]."""
    return model.apply({"params": params}, ctx, trajs, method=RewardModel.score_candidates)


def bev_seg_logits(model: RewardModel, params, policy_tokens: SceneTokens, hw) -> jax.Array:
    """The BEV sampler's features decoded into BEV classes [B,*hw,7] (``rwm.bev_sampling``)."""
    return model.apply({"params": params}, policy_tokens, tuple(hw),
                       method=RewardModel.bev_seg_logits)


def reward(model: RewardModel, params, scene: types.Scene, trajs,
           policy_tokens: SceneTokens | None = None):
    """scene [B], trajs [B,K,8,3] -> predicted EPDMS [B,K] (EC counted where has_previous)."""
    pred = apply(model, params, scene, trajs, policy_tokens)
    return pred.reward(jnp.asarray(scene.has_previous, jnp.float32))


def prediction_outputs(model: RewardModel, params, scene: types.Scene, trajs, tokens,
                       labels: types.SubScores) -> dict:
    """The RWM's predictions of candidates trajs [B,K,8,3] next to their labels, as
    ``train.rwm_quality.quality_metrics`` reads them: reward, true [B,K], binary_prob [B,K,6],
    nc_prob / ddc_prob [B,K,3], ep_pred, ec_weight [B,K], y_<sub-score> [B,K]."""
    pred = apply(model, params, scene, trajs, tokens)
    out = dict(reward=pred.reward(labels.ec_weight), true=labels.epdms(),
               binary_prob=jax.nn.sigmoid(pred.binary_logits),
               nc_prob=jax.nn.softmax(pred.nc_logits, -1),
               ddc_prob=jax.nn.softmax(pred.ddc_logits, -1),
               ep_pred=jax.nn.sigmoid(pred.ep_logit), ec_weight=labels.ec_weight)
    out.update({f"y_{n}": getattr(labels, n) for n in types.SUBSCORE_NAMES})
    return out


def num_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
