"""The reward world model (RWM): scene + candidate trajectories -> EPDMS sub-scores -> reward.

    ctx = rwm.encode_scene(scene)                 # once per scene: SceneContext [B, N, D]
    pred = rwm.score_candidates(ctx, trajs)        # trajs [B, K, 8, 3] -> Predictions [B, K]
    reward = pred.reward(scene.has_previous)       # [B, K]: EPDMS formula on expected scores

Scene encoder, by ``cfg.scene_encoder``:
  * ``"vector"``: its own light encoder over the Scene's vector fields — one token per agent
    (its 9 boxes at 0..4 s, size, class), per drivable-map polygon (vertices, type, on-route),
    per centreline chunk, per red light (polygon, red flag per step, on-route), per lane vector,
    plus one ego token (status, command, speed limit); then ``scene_layers`` self-attention
    blocks over those tokens.
  * ``"policy"``: the stage-1 policy's :class:`~irlvla_jax.models.planner.SceneTokens` (the
    caller encodes with the frozen policy and passes them in; gradients are stopped here),
    projected to the RWM width.
Trajectory encoder: per waypoint (x, y, cos h, sin h, speed, yaw rate, acceleration) -> MLP +
a learned time embedding: 8 tokens per candidate. ``num_blocks`` blocks of [self-attention
within the candidate -> cross-attention to the scene tokens -> FFN]. The K candidates of a
scene share its tokens: queries of all K candidates attend to the same keys in one call, so
the scene is never copied K times.
Heads (on the mean of the 8 tokens): NC and DDC 3-class over {0, 0.5, 1}; DAC, TLC, TTC, LK,
HC, EC binary (logit of "passes"); EP a sigmoid-bounded regression.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from irlvla_jax import types
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


@flax.struct.dataclass
class SceneContext:
    """Encoded scene, shared by all candidates. tokens [B,N,D], valid [B,N] bool."""
    tokens: Any
    valid: Any


@flax.struct.dataclass
class Predictions:
    """RWM outputs for K candidates per scene.

    nc_logits, ddc_logits [B,K,3] (classes 0, 0.5, 1); binary_logits [B,K,6] (``BINARY_METRICS``,
    logit of the value 1); ep_logit [B,K] (EP = sigmoid).
    """
    nc_logits: Any
    ddc_logits: Any
    binary_logits: Any
    ep_logit: Any

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
    a = scene.agent_states.astype(f32)
    av = scene.agent_valid.astype(f32)[..., None]
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
        scene.red_light_is_red.astype(f32), scene.red_light_on_route.astype(f32)[..., None]], -1)

    lanes = jnp.concatenate([
        _pose_feats(scene.lane_vectors.astype(f32)).reshape(*scene.lane_vectors.shape[:2], -1),
        scene.lane_on_route.astype(f32)[..., None]], -1)

    ego = jnp.concatenate([ego_status_features(scene),
                           scene.speed_limit.astype(f32)[:, None] / SPEED_SCALE], -1)[:, None]
    return dict(
        agents=(agents, scene.agent_valid.any(-1)),
        polygons=(polys, scene.map_polygon_valid.astype(bool)),
        centerline=(cl, clv),
        red_lights=(lights, scene.red_light_valid.astype(bool)),
        lanes=(lanes, scene.lane_valid.astype(bool)),
        ego=(ego, jnp.ones((b, 1), bool)))


# ----------------------------------------------------------------------------------------------
class RewardModel(nn.Module):
    """The RWM. ``cfg`` = ``config.rwm`` (scene_encoder, d_model, num_heads, mlp_dim,
    scene_layers, num_blocks, dtype)."""
    cfg: Any

    def setup(self):
        cfg = self.cfg
        if cfg.scene_encoder not in ("vector", "policy"):
            raise ValueError(f"config.rwm.scene_encoder = {cfg.scene_encoder!r}: expected "
                             f"'vector' or 'policy'")
        dt = layers.as_dtype(cfg.get("dtype", "float32"))
        d, heads, mlp = int(cfg.d_model), int(cfg.num_heads), int(cfg.mlp_dim)
        if d % heads:
            raise ValueError(f"config.rwm.d_model={d} is not a multiple of num_heads={heads}")
        self.dt = dt
        names = (("agents", "polygons", "centerline", "red_lights", "lanes", "ego")
                 if cfg.scene_encoder == "vector" else ("meta", "bev", "map", "obj", "ego"))
        self.entity_names = names
        self.entity_mlps = {n: layers.MLP(2 * d, d, dtype=dt, name=f"embed_{n}") for n in names}
        self.type_embed = self.param("type_embed", nn.initializers.normal(0.02), (len(names), d))
        self.scene_blocks = [layers.TransformerBlock(heads, heads, d // heads, mlp, dtype=dt,
                                                     name=f"scene_block_{i}")
                             for i in range(int(cfg.scene_layers))]
        self.traj_embed = layers.MLP(2 * d, d, dtype=dt, name="traj_embed")
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

    # -- scene -----------------------------------------------------------------------------
    def encode_scene(self, scene: types.Scene, policy_tokens: SceneTokens | None = None
                     ) -> SceneContext:
        """Batched scene [B] (+ the frozen policy's tokens when scene_encoder == 'policy')
        -> SceneContext (tokens [B,N,D], valid [B,N])."""
        if self.cfg.scene_encoder == "vector":
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
        return SceneContext(tokens=x, valid=valid)

    # -- candidates ------------------------------------------------------------------------
    def score_candidates(self, ctx: SceneContext, trajs) -> Predictions:
        """ctx (tokens [B,N,D]) and trajs [B,K,8,3] (ego frame) -> Predictions [B,K]."""
        b, k = trajs.shape[:2]
        if trajs.shape[2:] != (types.PLAN_LEN, 3):
            raise ValueError(f"RewardModel: trajs has shape {trajs.shape}, expected "
                             f"(B, K, {types.PLAN_LEN}, 3)")
        x = self.traj_embed(trajectory_features(trajs).astype(self.dt))
        x = x + self.time_embed.astype(self.dt)                           # [B,K,8,D]
        d = x.shape[-1]
        mask = layers.key_padding_mask(ctx.valid)
        for self_blk, cross_blk in zip(self.self_blocks, self.cross_blocks):
            x = self_blk(x.reshape(b * k, types.PLAN_LEN, d)).reshape(b, k * types.PLAN_LEN, d)
            x = cross_blk(x, ctx.tokens, mask)         # all K candidates share the scene keys
            x = x.reshape(b, k, types.PLAN_LEN, d)
        h = self.out_norm(jnp.mean(x, axis=2)).astype(jnp.float32)       # [B,K,D]
        three = self.head_3class(h)
        return Predictions(nc_logits=three[..., :3], ddc_logits=three[..., 3:],
                           binary_logits=self.head_binary(h), ep_logit=self.head_ep(h)[..., 0])

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


def reward(model: RewardModel, params, scene: types.Scene, trajs,
           policy_tokens: SceneTokens | None = None):
    """scene [B], trajs [B,K,8,3] -> predicted EPDMS [B,K] (EC counted where has_previous)."""
    pred = apply(model, params, scene, trajs, policy_tokens)
    return pred.reward(jnp.asarray(scene.has_previous, jnp.float32))


def num_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
