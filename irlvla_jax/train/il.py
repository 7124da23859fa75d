"""Stage 1: imitation learning of the VLA policy on expert driving.

    python launch.py il --config configs/tiny.py --config.il.num_steps=50

Losses (spec/IRL_VLA.md, DiffVLA/DiffusionDrive): focal classification of the anchor nearest the
expert + L1 on that mode's x0 prediction; Hungarian-matched detection (class + box); BEV semantic
cross-entropy; meta-action cross-entropy (when the semantic LM is on). ``train_step`` is pure and
jitted over a mesh with the batch on 'data'; the loop around it checkpoints (orbax, resumable),
logs JSON lines + TensorBoard, evaluates on the held-out split periodically (L2 at 1/2/3/4 s,
collision rate, EPDMS when the scorer exists) and writes ``<workdir>/il/eval.json`` at the end.
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from irlvla_jax import geometry, parallel, tracking, types
from irlvla_jax.models import anchors as anchors_lib
from irlvla_jax.models import detection as det_lib
from irlvla_jax.models import policy as policy_lib
from irlvla_jax.models import weights
from irlvla_jax.train import losses
from irlvla_jax.train.state import TrainState, make_optimizer

log = logging.getLogger(__name__)

L2_HORIZONS_S = (1.0, 2.0, 3.0, 4.0)
# Future index f is t = 0.5 (f + 1) s, so horizon h seconds is index 2h - 1.
_L2_IDX = tuple(int(2 * h) - 1 for h in L2_HORIZONS_S)


def variables_of(state: TrainState) -> dict:
    """The model variables of a TrainState: ``{'params': ..., **model_state}``."""
    return {"params": state.params, **state.model_state}


# ----------------------------------------------------------------------------------------------
# Losses.

def il_loss(model: policy_lib.VLAPolicy, config, params, model_state, batch: types.Scene,
            rng: jax.Array, train: bool = True) -> tuple[jax.Array, dict]:
    """Total IL loss of a batch and its parts.

    batch: Scene with a leading [B] axis. Returns (loss [], metrics dict of [] arrays).
    Weights: ``config.il.loss_weights`` (traj_cls, traj_reg, det, bev, meta); inside the
    detection loss, class vs box terms are weighted by ``config.model.detection``.
    """
    mcfg, w = config.model, config.il.loss_weights
    noise_rng, dropout_rng = jax.random.split(rng)
    tokens, x0, logits, anchors = model.apply(
        {"params": params, **model_state}, batch, noise_rng, train,
        method=policy_lib.VLAPolicy.il_forward, rngs={"dropout": dropout_rng})

    # trajectory: classify the anchor nearest the expert, regress that mode's trajectory
    expert = batch.expert_future[:, :types.PLAN_LEN].astype(jnp.float32)
    valid = batch.expert_future_valid[:, :types.PLAN_LEN]
    l_cls, l_reg, target = losses.trajectory_imitation_loss(
        x0, logits, anchors, expert, valid, mcfg.planner, config.il.focal_alpha,
        config.il.focal_gamma)

    # detection (Hungarian-matched) on the agents present at t = 0
    gt = det_lib.detection_targets(batch.agent_states, batch.agent_size, batch.agent_class,
                                   batch.agent_valid, mcfg.detection.num_queries,
                                   mcfg.detection.range_m)
    l_det, det_metrics = det_lib.detection_loss(tokens.aux["boxes"], tokens.aux["class_logits"],
                                                *gt, mcfg.detection)
    l_bev = det_lib.map_loss(tokens.aux["seg_logits"], batch.bev_semantic)

    total = w.traj_cls * l_cls + w.traj_reg * l_reg + w.det * l_det + w.bev * l_bev
    metrics = {"traj_cls": l_cls, "traj_l1": l_reg, "det": l_det, "bev_ce": l_bev,
               "mode_acc": losses.accuracy(logits, target), **det_metrics}
    if tokens.meta_logits is not None:
        l_meta = losses.cross_entropy(tokens.meta_logits, batch.meta_action)
        total = total + w.meta * l_meta
        metrics.update(meta_ce=l_meta, meta_acc=losses.accuracy(tokens.meta_logits,
                                                                 batch.meta_action))
    metrics["loss"] = total
    return total, metrics


# ----------------------------------------------------------------------------------------------
# Jitted steps.

def make_train_step(model: policy_lib.VLAPolicy, config, mesh=None,
                    state_sharding=None) -> Callable:
    """``train_step(state, batch, rng) -> (state, metrics)``, jitted.

    With a mesh: the state as ``state_sharding`` (a pytree of shardings from
    ``parallel.state_shardings``: FSDP; None: replicated), rng replicated, the batch split over
    the mesh (gradients are averaged across it by XLA because the loss is a mean over the
    global batch). The input state is donated.
    """
    def train_step(state: TrainState, batch: types.Scene, rng: jax.Array):
        grad_fn = jax.value_and_grad(
            lambda p: il_loss(model, config, p, state.model_state, batch, rng, True),
            has_aux=True)
        (_, metrics), grads = grad_fn(state.params)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return state.apply_gradients(grads), metrics

    if mesh is None:
        return jax.jit(train_step, donate_argnums=0)
    rep, dat = parallel.replicated(mesh), parallel.data_sharding(mesh)
    st = rep if state_sharding is None else state_sharding
    return jax.jit(train_step, in_shardings=(st, dat, rep), out_shardings=(st, rep),
                   donate_argnums=0)


def eval_outputs(model: policy_lib.VLAPolicy, variables, batch: types.Scene, rng: jax.Array
                 ) -> dict[str, jax.Array]:
    """Deterministic plan + open-loop metrics per scene.

    Returns traj [B,8,3], l2 [B,4] (xy error at 1/2/3/4 s), l2_valid [B,4] bool,
    collision [B] bool (the ego footprint along the plan overlaps a valid agent box at the same
    0.5 s frame).
    """
    tokens = policy_lib.encode(model, variables, batch, train=False)
    chain = policy_lib.plan(model, variables, tokens, rng, stochastic=False)
    traj = chain.traj
    expert = batch.expert_future[:, :types.PLAN_LEN]
    valid = batch.expert_future_valid[:, :types.PLAN_LEN]
    err = jnp.linalg.norm(traj[..., :2] - expert[..., :2], axis=-1)               # [B,8]
    idx = jnp.asarray(_L2_IDX)
    ego = geometry.ego_corners(traj)                                               # [B,8,4,2]
    st = batch.agent_states[:, :, 1:1 + types.PLAN_LEN]                            # [B,A,8,5]
    agents = geometry.box_corners(st[..., :2], st[..., 2], batch.agent_size[:, :, None, 0],
                                  batch.agent_size[:, :, None, 1])                 # [B,A,8,4,2]
    hit = geometry.convex_intersect(ego[:, None], agents)                          # [B,A,8]
    hit = hit & batch.agent_valid[:, :, 1:1 + types.PLAN_LEN]
    return {"traj": traj, "l2": err[:, idx], "l2_valid": valid[:, idx],
            "collision": jnp.any(hit, axis=(1, 2))}


def make_eval_step(model: policy_lib.VLAPolicy, config, mesh=None,
                   state_sharding=None) -> Callable:
    """``eval_step(state, batch, rng) -> eval_outputs dict`` (jitted; outputs sharded like the
    batch; the state as in :func:`make_train_step`)."""
    def eval_step(state, batch, rng):
        return eval_outputs(model, variables_of(state), batch, rng)
    if mesh is None:
        return jax.jit(eval_step)
    rep, dat = parallel.replicated(mesh), parallel.data_sharding(mesh)
    st = rep if state_sharding is None else state_sharding
    return jax.jit(eval_step, in_shardings=(st, dat, rep), out_shardings=dat)


def evaluate_open_loop(eval_step: Callable, state: TrainState, batches: Iterable,
                       rng: jax.Array, epdms_fn: Callable | None = None) -> dict[str, float]:
    """The IL policy's held-out open-loop metrics: L2 to the expert at 1-4 s, collision rate
    and (with ``epdms_fn(batch, traj [B,8,3]) -> [B]``) EPDMS without EC, over ``batches`` of
    ``(Scene, metas)``. Per-batch results stay on device until the end (one transfer)."""
    outs, scores = [], []
    for i, (batch, _) in enumerate(batches):
        dev_out = eval_step(state, batch, jax.random.fold_in(rng, i))
        if epdms_fn is not None:
            scores.append(epdms_fn(batch, dev_out["traj"]))
        outs.append({k: dev_out[k] for k in ("l2", "l2_valid", "collision")})
    if not outs:
        raise ValueError("evaluate_open_loop: the evaluation split yielded no batches")
    outs, scores = parallel.to_host((outs, scores))
    l2_sum, l2_cnt = np.zeros(len(L2_HORIZONS_S)), np.zeros(len(L2_HORIZONS_S))
    coll, n = 0.0, 0
    for out in outs:
        v = np.asarray(out["l2_valid"], np.float64)
        l2_sum += (np.asarray(out["l2"]) * v).sum(0)
        l2_cnt += v.sum(0)
        coll += float(np.sum(out["collision"]))
        n += int(np.shape(out["collision"])[0])
    res = {f"l2_{int(h)}s": float(s / max(c, 1)) for h, s, c in zip(L2_HORIZONS_S, l2_sum, l2_cnt)}
    res["l2_avg"] = float(np.mean([res[f"l2_{int(h)}s"] for h in L2_HORIZONS_S]))
    res["collision_rate"] = coll / n
    res["num_scenes"] = n
    if scores:
        res["epdms"] = float(np.concatenate([np.asarray(x) for x in scores]).mean())
    return res


# ----------------------------------------------------------------------------------------------
# Setup helpers shared with the later stages.

def load_or_compute_anchors(config) -> np.ndarray:
    """[M,8,3] anchors from ``<data dir>/anchors.npy``, computed from at most
    ``config.il.anchor_scenes`` train scenes (and written there by process 0) when the file does
    not exist yet."""
    path = anchors_lib.anchor_path(config)
    m = config.model.planner.num_anchors
    if os.path.exists(path):
        return anchors_lib.load_anchors(path, m)
    # at most config.il.anchor_scenes scenes (a sample seeded by config.seed), only their
    # futures decoded (no cameras): a few bytes per scene on the host
    _, fut, valid = anchors_lib.sample_expert_futures(
        config, config.data.train_split, config.il.get("anchor_scenes", None), config.seed)
    fut = fut[:, :types.PLAN_LEN]
    ok = valid[:, :types.PLAN_LEN].all(-1)
    a = anchors_lib.compute_anchors(fut[ok], m, config.seed)
    # every process computes the same anchors (the same seeded sample); process 0 writes them
    if tracking.is_main_process():
        anchors_lib.save_anchors(path, a)
    log.info("wrote %d anchors from %d expert futures (%d sampled scenes) to %s", m,
             int(ok.sum()), len(ok), path)
    return a


def create_state(model: policy_lib.VLAPolicy, config, rng: jax.Array,
                 anchors: np.ndarray | None = None, total_steps: int | None = None
                 ) -> TrainState:
    """A fresh TrainState (params initialised from a zero scene, then the configured pretrained
    weights loaded; anchors installed; ``config.il.freeze`` param paths left untrained)."""
    sizes = types.SceneSizes.from_config(config.data.sizes)
    example = types.scene_shape_struct(sizes, (1,))
    variables = policy_lib.init_variables(model, example, rng)     # jitted inside
    if anchors is not None:
        variables = policy_lib.set_anchors(variables, anchors)
    params = policy_lib.load_pretrained(variables.pop("params"), config.model, sizes.image_hw)
    tx = weights.freeze(make_optimizer(config.il, total_steps), params, config.il.get("freeze", ()))
    return TrainState.create(params, tx, model_state=variables)


def create_sharded_state(model: policy_lib.VLAPolicy, config, rng: jax.Array, mesh,
                         anchors: np.ndarray | None = None):
    """(state, its shardings) on ``mesh``: with fsdp > 1 the state is created directly in its
    FSDP shards (init jitted with ``out_shardings``: no full copy on one device); otherwise
    created as :func:`create_state` does (the shardings then replicate it)."""
    abstract = jax.eval_shape(lambda r: create_state(model, config, r, anchors), rng)
    shardings = parallel.state_shardings(abstract, mesh, config.mesh)
    # The state and its shardings share one tree structure: the TrainState's optimizer is static
    # tree data, and every create_state call makes a new (unequal) one, so the state is rebuilt
    # from its leaves on the abstract state's structure.
    treedef = jax.tree.structure(abstract)
    if mesh.shape[parallel.FSDP] > 1:
        leaves = jax.jit(lambda r: jax.tree.leaves(create_state(model, config, r, anchors)),
                         out_shardings=jax.tree.leaves(shardings))(rng)
    else:
        leaves = jax.tree.leaves(create_state(model, config, rng, anchors))
    return jax.tree.unflatten(treedef, leaves), shardings


# ----------------------------------------------------------------------------------------------
def run(config, workdir: str) -> dict:
    """``python launch.py il``: train (resuming from the latest checkpoint) through the stage
    loop, evaluate on the held-out split, write ``<workdir>/il/eval.json``.

    Returns the final evaluation dict.
    """
    from irlvla_jax import evaluate
    from irlvla_jax.data import loader
    from irlvla_jax.train import loop

    icfg = config.il
    spec = loop.LoopSpec.of("il", icfg, samples_per_step=config.data.batch_size)
    out_dir = os.path.join(workdir, "il")
    mesh = parallel.make_mesh(config.mesh)
    parallel.check_batch_divisible(config.data.batch_size, mesh)
    model = policy_lib.VLAPolicy(config.model)
    root = jax.random.PRNGKey(config.seed)
    init_rng, step_rng, eval_rng = jax.random.split(root, 3)

    anchors = load_or_compute_anchors(config)
    state, state_sh = create_sharded_state(model, config, init_rng, mesh, anchors)
    train_step = make_train_step(model, config, mesh, state_sh)
    eval_step = make_eval_step(model, config, mesh, state_sh)
    scorer = evaluate.jitted_scorer(mesh)     # jitted lazily: compiled at its first call

    def epdms_fn(batch, traj):
        sub, _ = scorer(batch, traj[:, None])       # no previous frame: EC does not count
        return sub.epdms()[:, 0]
    # il.eval_epdms False: L2 and collisions only (no scorer to compile; small test runs)
    if not icfg.get("eval_epdms", True):
        epdms_fn = None

    def eval_batches(limit):
        it = loader.make_loader(config, config.data.eval_split, mesh, seed=config.seed,
                                shuffle=False, num_epochs=1)
        return itertools.islice(it, limit if limit >= 0 else None)

    def batches(start):
        it = loader.make_loader(config, config.data.train_split, mesh, seed=config.seed,
                                shuffle=config.data.shuffle, start_step=start)
        return (batch for batch, _ in it)

    def final_eval(st):
        ev = evaluate_open_loop(eval_step, st, eval_batches(icfg.final_eval_batches), eval_rng,
                                epdms_fn)
        ev["step"] = int(jax.device_get(st.step))
        return ev

    result = loop.run(
        spec, out_dir, train_step, state, batches, step_rng, config=config,
        place=lambda s: jax.device_put(s, state_sh),
        ckpt_extra={"anchors_file": anchors_lib.anchor_path(config)},
        periodic_eval=lambda st, step: evaluate_open_loop(
            eval_step, st, eval_batches(icfg.eval_batches), eval_rng, epdms_fn),
        final_eval=final_eval,
        postfix=lambda m: {"loss": f"{m['loss']:.3f}", "l1": f"{m['traj_l1']:.2f}"})
    tracking.write_result(os.path.join(out_dir, "eval.json"), result.final)
    return result.final
