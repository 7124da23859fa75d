r"""The VLA policy: semantic reasoning + 3D reasoning -> scene tokens -> unified diffusion planner.

    scene --cameras--> vision encoder --+--> BEV encoder (+ LiDAR) --> detection head -> object tokens
                                        |                          \--> map head -> map tokens + BEV seg
                                        +--> semantic reasoner (adaptor + LM, command) -> meta tokens
          --ego status + command--> (encoded inside the planner)
    privileged ablations only (``config.model.privileged``, empty by default):
          --HD-map lane_vectors--> lane encoder -> more map tokens            ("lanes")
          --GT agent boxes at t=0--> agent encoder -> more map tokens         ("agents")
    SceneTokens --> DiffusionPlanner (x0 prediction around k-means anchors) --DDIM--> Chain

Honest inputs: by default the policy reads only what a NAVSIM agent receives (``AgentInput``:
cameras with their calibration, the LiDAR raster, the ego status history and the driving
command; ``types.AGENT_INPUT_FIELDS``). Map, lanes, boxes, route and the logged future are
training targets (BEV semantic map, detection, map head, meta actions) and scorer inputs.
``config.model.privileged`` names the ground-truth inputs an ablation adds (``PRIVILEGED_INPUTS``);
:func:`privileged_inputs` says which a config's policy reads (recorded in eval.json, shouted by
the submission writer).

``encode`` runs once per scene; the planner runs once per denoising step on the same tokens, so
stage 2/3 can sample many chains per scene cheaply. ``config.model.use_semantic = False`` skips
the language model (no meta tokens, meta-action logits are None) for speed ablations.

Variables: ``{'params': ..., 'anchors': ...}`` (+ any mutable collections of the encoders). The
anchors are not trained; replace the default ones with :func:`set_anchors` after ``init``.
Pretrained backbone and LM weights (``config.model.vision.pretrained``,
``config.model.semantic.llm.pretrained``) go into fresh params with :func:`load_pretrained`.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from irlvla_jax import types
from irlvla_jax.models import bev as bev_lib
from irlvla_jax.models import detection as det_lib
from irlvla_jax.models import layers
from irlvla_jax.models import planner as planner_lib
from irlvla_jax.models import vision as vision_lib
from irlvla_jax.models import weights as weights_lib
from irlvla_jax.models.planner import Chain, SceneTokens

log = logging.getLogger(__name__)

LANE_SCALE_M = 50.0     # lane vector coordinates are divided by this before the lane encoder
EGO_HISTORY_SCALE_M = 20.0


def ego_status_features(scene: types.Scene) -> jax.Array:
    """The planner's ego/command input, roughly unit-scaled.

    scene (batched) -> [B, 20]: velocity/10 [2], acceleration/5 [2], command one-hot [4],
    history poses (x/20, y/20, heading) [4*3].
    """
    b = scene.ego_velocity.shape[0]
    hist = scene.ego_history.astype(jnp.float32)
    hist = hist * jnp.asarray([1.0 / EGO_HISTORY_SCALE_M, 1.0 / EGO_HISTORY_SCALE_M, 1.0])
    return jnp.concatenate([scene.ego_velocity.astype(jnp.float32) / 10.0,
                            scene.ego_acceleration.astype(jnp.float32) / 5.0,
                            scene.driving_command.astype(jnp.float32),
                            hist.reshape(b, -1)], axis=-1)


def lane_features(lane_vectors: jax.Array) -> jax.Array:
    """lane_vectors [B,M,K,3] (x, y, heading) -> [B,M,K*4] (x/50, y/50, cos h, sin h)."""
    xy = lane_vectors[..., :2] / LANE_SCALE_M
    h = lane_vectors[..., 2:3]
    f = jnp.concatenate([xy, jnp.cos(h), jnp.sin(h)], axis=-1)
    return f.reshape(*lane_vectors.shape[:2], -1)


AGENT_SCALE_M = 50.0     # agent box centres are divided by this (like the lane vectors)

#: Ground-truth inputs a privileged ablation may add to the policy (``config.model.privileged``):
#: "lanes" = the HD-map lane / lane-connector baselines, "agents" = the annotated boxes at t = 0.
PRIVILEGED_INPUTS = ("lanes", "agents")


def privileged_inputs(model_cfg) -> tuple[str, ...]:
    """The privileged inputs ``config.model`` switches on (validated; () = AgentInput only).
    The old switch ``agent_vectors = True`` is refused with the new spelling."""
    if model_cfg.get("agent_vectors", False):
        raise ValueError("config.model.agent_vectors was replaced by config.model.privileged: "
                         "use --config.model.privileged='(\"agents\",)'")
    names = model_cfg.get("privileged", ())
    names = (names,) if isinstance(names, str) else tuple(names)
    bad = [n for n in names if n not in PRIVILEGED_INPUTS]
    if bad:
        raise ValueError(f"config.model.privileged = {names}: unknown {bad}; expected a subset of "
                         f"{PRIVILEGED_INPUTS}")
    return tuple(n for n in PRIVILEGED_INPUTS if n in names)


def agent_features(scene: types.Scene) -> tuple[jax.Array, jax.Array]:
    """The agents' current boxes as planner tokens (privileged ablation "agents").

    scene (batched) -> (features [B,A,8+C], valid [B,A]): x/50, y/50, cos h, sin h, vx/10,
    vy/10, length/5, width/5 at t = 0, then the class one-hot (C = len(AGENT_CLASSES)).
    """
    st = scene.agent_states[:, :, 0].astype(jnp.float32)                        # [B,A,5]
    size = scene.agent_size[..., :2].astype(jnp.float32) / 5.0
    f = jnp.concatenate([st[..., :2] / AGENT_SCALE_M, jnp.cos(st[..., 2:3]),
                         jnp.sin(st[..., 2:3]), st[..., 3:5] / 10.0, size,
                         jax.nn.one_hot(scene.agent_class, len(types.AGENT_CLASSES))], axis=-1)
    valid = scene.agent_valid[:, :, 0].astype(bool)
    return jnp.where(valid[..., None], f, 0.0), valid


def sincos_2d(h: int, w: int, dim: int) -> np.ndarray:
    """[h*w, dim] fixed 2-D sine/cosine position code of a grid (rows, then columns)."""
    q = dim // 4
    freqs = 1.0 / (100.0 ** (np.arange(q) / max(q, 1)))
    ys, xs = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    parts = []
    for c in (ys.reshape(-1), xs.reshape(-1)):
        a = c[:, None] * freqs[None] * np.pi
        parts += [np.sin(a), np.cos(a)]
    out = np.concatenate(parts, axis=-1)
    return np.pad(out, ((0, 0), (0, dim - out.shape[1]))).astype(np.float32)


class VLAPolicy(nn.Module):
    """The IRL-VLA policy. ``cfg`` = ``config.model`` (vision, bev, detection, map, semantic,
    planner blocks, ``dtype``, ``use_semantic``)."""
    cfg: Any

    def setup(self):
        cfg = self.cfg
        dt = layers.as_dtype(cfg.get("dtype", "float32"))
        self.dtype = dt
        self.vision = vision_lib.build_vision(cfg.vision, dt)
        self.bev_encoder = bev_lib.BEVEncoder(cfg.bev, dtype=dt)
        self.detection = det_lib.DetectionHead(cfg.detection, dtype=dt)
        self.map_head = det_lib.MapHead(cfg.map, dtype=dt)
        if cfg.get("use_semantic", True):
            from irlvla_jax.models import semantic as semantic_lib
            self.semantic = semantic_lib.SemanticReasoner(cfg.semantic, dtype=dt)
        d = int(cfg.planner.d_model)
        self.privileged = privileged_inputs(cfg)
        if "lanes" in self.privileged:
            self.lane_encoder = layers.MLP(2 * d, d, dtype=dt)
        if "agents" in self.privileged:
            self.agent_encoder = layers.MLP(2 * d, d, dtype=dt)
        self.bev_proj = nn.Dense(d, dtype=dt)
        self.map_proj = nn.Dense(d, dtype=dt)     # map-head tokens to the lane tokens' width
        self.planner = planner_lib.DiffusionPlanner(cfg.planner, dtype=dt)

    # -- scene encoding ------------------------------------------------------------------------
    def encode(self, scene: types.Scene, train: bool = False) -> SceneTokens:
        """Batched scene (cameras [B,C,H,W,3] u8, ...) -> :class:`SceneTokens`."""
        b, c, ih, iw, _ = scene.cameras.shape
        images = vision_lib.normalize_images(scene.cameras.reshape(b * c, ih, iw, 3), self.dtype)
        feats = self.vision(images, train=train)
        feats = feats.reshape(b, c, *feats.shape[1:])                     # [B,C,h,w,Dv]
        lidar = scene.lidar_bev if self.cfg.bev.get("use_lidar", False) else None
        bev = self.bev_encoder(feats, scene.cam_intrinsics, scene.cam_to_ego, (ih, iw), lidar,
                               train=train)                              # [B,Hq,Wq,Db]
        meta, meta_logits = None, None
        if self.cfg.get("use_semantic", True):
            visual = feats.reshape(b, -1, feats.shape[-1])
            meta, meta_logits = self.semantic(visual, scene.driving_command, train=train)
        return self.tokens_from_bev(bev, scene, meta, meta_logits, train=train)

    def tokens_from_bev(self, bev: jax.Array, scene: types.Scene, meta=None, meta_logits=None,
                        train: bool = False) -> SceneTokens:
        """The part of :meth:`encode` after the cameras: BEV map [B,Hq,Wq,Db] + the ego status
        (+ the privileged vectors an ablation switches on) + meta tokens -> :class:`SceneTokens`.
        Stage 3 re-observes a moved ego through it (warped BEV map, shifted scene) without
        re-rendering cameras."""
        b = bev.shape[0]
        obj, boxes, cls_logits = self.detection(bev, train=train)
        map_tok, seg_logits = self.map_head(bev, train=train)

        map_all = self.map_proj(map_tok)
        map_valid = jnp.ones(map_tok.shape[:2], bool)
        if "lanes" in self.privileged:
            # Privileged map: the HD map's lane baselines join the map token set.
            lanes = self.lane_encoder(lane_features(scene.lane_vectors).astype(self.dtype))
            map_all = jnp.concatenate([map_all, lanes.astype(self.dtype)], axis=1)
            map_valid = jnp.concatenate([map_valid, scene.lane_valid.astype(bool)], axis=1)
        if "agents" in self.privileged:
            # Privileged perception: the current frame's boxes join the map token set (which
            # carries a validity mask), so the planner sees every agent whatever the detector.
            feats, valid = agent_features(scene)
            agents = self.agent_encoder(feats.astype(self.dtype))
            map_all = jnp.concatenate([map_all, agents.astype(self.dtype)], axis=1)
            map_valid = jnp.concatenate([map_valid, valid], axis=1)

        p = int(self.cfg.planner.get("bev_pool", 1))
        pooled = nn.avg_pool(bev, (p, p), (p, p)) if p > 1 else bev
        hp, wp = pooled.shape[1:3]
        bev_tok = self.bev_proj(pooled.reshape(b, hp * wp, -1))
        bev_tok = bev_tok + jnp.asarray(sincos_2d(hp, wp, bev_tok.shape[-1]), bev_tok.dtype)

        return SceneTokens(meta=meta, meta_logits=meta_logits, bev=bev_tok, bev_map=bev,
                           map=map_all, map_valid=map_valid, obj=obj,
                           ego_status=ego_status_features(scene),
                           aux=dict(boxes=boxes, class_logits=cls_logits, seg_logits=seg_logits))

    # -- planner -----------------------------------------------------------------------------
    def denoise(self, tokens: SceneTokens, x_t: jax.Array, t: jax.Array):
        """x_t [B,M,8,3] normalised, t [B] int -> (x0 [B,M,8,3], mode logits [B,M])."""
        return self.planner(x_t, t, tokens)

    def anchors(self) -> jax.Array:
        """[M,8,3] anchors in network (normalised) space."""
        return self.planner.anchors_normalized()

    def il_forward(self, scene: types.Scene, noise_rng: jax.Array, train: bool = True):
        """Everything the IL losses need, in one pass.

        Returns (tokens, x0 [B,M,8,3] normalised prediction, mode logits [B,M],
        anchors [M,8,3] in metres)."""
        tokens = self.encode(scene, train=train)
        return (tokens, *self.denoise_noised_anchors(tokens, noise_rng))

    def denoise_noised_anchors(self, tokens: SceneTokens, noise_rng: jax.Array):
        """The planner's IL training pass from given tokens [B,...]: the anchors noised at a
        random training timestep, denoised. Returns (x0 [B,M,8,3] normalised, mode logits
        [B,M], anchors [M,8,3] in metres); ``losses.trajectory_imitation_loss`` scores them."""
        anchors_n = self.planner.anchors_normalized()
        b = tokens.bev.shape[0]
        x_t, t = planner_lib.training_inputs(anchors_n, b, noise_rng, self.cfg.planner)
        x0, logits = self.planner(x_t, t, tokens)
        return x0, logits, self.planner.anchors.value

    def __call__(self, scene: types.Scene, train: bool = False):
        """Init entry: encode + one denoising pass on the noise-free anchors.
        Returns (tokens, x0 [B,M,8,3], logits [B,M])."""
        tokens = self.encode(scene, train=train)
        anchors_n = self.planner.anchors_normalized()
        b = scene.ego_velocity.shape[0]
        x = jnp.broadcast_to(anchors_n, (b, *anchors_n.shape))
        x0, logits = self.planner(x, jnp.zeros((b,), jnp.int32), tokens)
        return tokens, x0, logits


# ----------------------------------------------------------------------------------------------
# Functional entry points (what the training stages call).

# Compiler options of the init program. The program is ~200 independent initialisers (a
# threefry hash + erf_inv each, ~1000 small fusions, every threefry a while loop on CPU) that
# run once: LLVM's optimisation passes cost far more time than they could ever save (CPU, small
# test policy: init compile 17 s -> 11 s unloaded, 64 s -> 19 s on a loaded machine). The hashes
# are integer arithmetic, so the values are the same up to 1 ulp in the truncated-normal
# transform (no FMA contraction at -O0).
_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def init_variables(model: VLAPolicy, scene: types.Scene, rng: jax.Array,
                   anchors: np.ndarray | None = None) -> dict:
    """Initialise all variables from a (batched) example scene; install ``anchors`` [M,8,3].

    Only the example's per-scene shapes and dtypes matter (parameter values depend on ``rng``
    and the shapes alone), so the model is initialised on one all-zero scene of those shapes:
    the compiled init program is the same whatever the example's batch size or content, and
    the persistent compilation cache can share it between callers. Called eagerly it compiles
    with cheap compiler options (see ``_INIT_COMPILER_OPTIONS``); inside an outer ``jax.jit``
    it is inlined into the caller's program as before (wrapping it in ``jax.jit`` is no longer
    needed).
    """
    one = jax.tree.map(lambda x: jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype), scene)

    def init(r):
        example = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), one)
        return dict(model.init({"params": r}, example, train=False))

    if isinstance(rng, jax.core.Tracer):      # inside a caller's jit / eval_shape: inline
        variables = init(rng)
    else:
        variables = jax.jit(init, compiler_options=_INIT_COMPILER_OPTIONS)(rng)
    if anchors is not None:
        variables = set_anchors(variables, anchors)
    return variables


def load_pretrained(params: Mapping[str, Any], cfg: Any, image_hw: Sequence[int]) -> dict:
    """``params`` (the policy's, from :func:`init_variables`) with the pretrained weights that
    ``cfg`` (``config.model``) names; nothing named: ``params`` itself, unchanged.

    * ``cfg.vision.pretrained``: a ``.safetensors``/``.npz`` state dict in torchvision ResNet
      names (``norm='frozen_bn'``: each BatchNorm's weight, bias and running statistics fold
      into its affine) or timm ViT names (the position table resized to the patch grid of
      ``image_hw`` [H, W]); our 1x1 ``proj`` keeps its initial value.
    * ``cfg.semantic.llm.pretrained``: an HF LLaMA/Qwen2 directory (config.json, safetensors
      shards); its config must equal ``cfg.semantic.llm``. Its ``tokenizer.json`` builds the
      prompt (``semantic.prompt_table``).

    Shapes are checked against the params before anything is read (``weights.WeightLoadError``
    names the file, the tensor and both shapes). Works on concrete params (each tensor placed on
    its parameter's devices) and inside ``jax.eval_shape`` / ``jax.jit`` (see ``weights``).
    """
    vcfg = cfg.vision
    if vcfg.get("pretrained", ""):
        if vcfg.kind == "vit":
            table = weights_lib.vit_timm_mapping(vcfg, vision_lib.feature_hw(vcfg, image_hw),
                                                 prefix="vision/")
        else:
            table = weights_lib.resnet_torchvision_mapping(vcfg, prefix="vision/")
        params = weights_lib.load_weights(params, vcfg.pretrained, table)
    elif vcfg.kind == "resnet" and vcfg.norm == "frozen_bn":
        log.warning("config.model.vision.norm = 'frozen_bn' without vision.pretrained: the "
                    "frozen BatchNorms start as identities (no normalisation)")
    llm_dir = cfg.semantic.llm.get("pretrained", "")
    if llm_dir and cfg.get("use_semantic", True):
        from irlvla_jax.models import semantic as semantic_lib
        params = semantic_lib.load_hf_llama(params, llm_dir, prefix="semantic/llm",
                                            cfg=cfg.semantic.llm)
    return params


def set_anchors(variables: Mapping[str, Any], anchors) -> dict:
    """``variables`` with the planner's anchors replaced by ``anchors`` [M,8,3] (metres)."""
    return planner_lib.set_anchors(variables, anchors, path=("planner",))


def get_anchors(variables: Mapping[str, Any]) -> jax.Array:
    """[M,8,3] anchors (metres) stored in ``variables``."""
    return variables["anchors"]["planner"]["value"]


def encode(model: VLAPolicy, variables, scene: types.Scene, train: bool = False) -> SceneTokens:
    return model.apply(variables, scene, train, method=VLAPolicy.encode)


def _denoiser(model: VLAPolicy, variables, tokens: SceneTokens):
    return lambda x, t: model.apply(variables, tokens, x, t, method=VLAPolicy.denoise)


def plan(model: VLAPolicy, variables, tokens: SceneTokens, rng: jax.Array, *,
         stochastic: bool = False, steps: int | None = None, eta: float | None = None,
         sigma_min: float | None = None) -> Chain:
    """Sample a DDIM chain per scene (see :func:`planner.sample_chain`); B = tokens' batch."""
    anchors_n = model.apply(variables, method=VLAPolicy.anchors)
    b = tokens.ego_status.shape[0]
    return planner_lib.sample_chain(_denoiser(model, variables, tokens), anchors_n, b, rng,
                                    model.cfg.planner, stochastic=stochastic, steps=steps,
                                    eta=eta, sigma_min=sigma_min)


def evaluate_chain(model: VLAPolicy, variables, tokens: SceneTokens, chain: Chain,
                   all_modes: bool = False):
    """(logprob [B,S] ([B,S,M] with ``all_modes``), mode_logprob [B], mode entropy [B]) of a
    stored chain under variables."""
    return planner_lib.evaluate_chain(_denoiser(model, variables, tokens), chain,
                                      model.cfg.planner, all_modes=all_modes)


def chain_logprob(model: VLAPolicy, variables, tokens: SceneTokens, chain: Chain) -> jax.Array:
    """[B,S] per-step log-probs of a stored chain (DPPO's ratio numerator)."""
    return evaluate_chain(model, variables, tokens, chain)[0]
