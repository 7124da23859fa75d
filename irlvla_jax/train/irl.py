"""Stage 2: the reward world model, learned by inverse RL from expert driving and scorer feedback.

    python launch.py irl                  # after `python launch.py il`
    run(config, workdir) -> dict          # the same, from Python

One jitted step per batch of scenes (batch on the mesh's 'data' axis):
  1. candidates per scene: expert + ``num_vocab`` k-means vocabulary trajectories (the stage-1
     policy's anchors) + ``num_policy`` samples of the frozen stage-1 policy + ``num_perturb``
     perturbed experts (``candidates.py``);
  2. labels: the JAX EPDMS scorer on every candidate, on device, every step (no label files;
     one program with the update when ``irl.fuse_step``, else its own compiled program). EC
     needs the plan made 0.5 s earlier: the expert's, re-expressed in the t = -0.5 s frame and
     simulated from that frame's logged state (``sim.scorer.scorer_labels``);
  3. loss: per-metric CE (NC, DDC: 3 classes) / BCE (DAC, TLC, TTC, LK, HC, EC) / soft-target
     BCE on the sigmoid (EP), class-balanced within the batch (``irl.balance``,
     ``balance_power``) with a matching logit adjustment (``irl.calibrate``) so that the heads'
     probabilities stay calibrated for the expected-score reward, weighted by ``irl.loss_weights``;
     plus the inverse-RL term (``irl.irl_weight``): the expert demonstration must be rewarded at
     least as highly as every candidate the scorer ranks no higher than it — a hinge on the
     predicted-reward margin ``r(expert) - r(candidate)`` and a max-entropy IRL term
     ``-log softmax(r / T)[expert]`` over the expert and those candidates.
Outputs under ``<workdir>/irl``: orbax checkpoints (resume), metrics.jsonl + TensorBoard,
eval.json (held-out quality vs a training-mean baseline, ``rwm_quality.quality_metrics``), printed as a
table, and eval_outputs.npz (the held-out predictions and labels behind it).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from irlvla_jax import parallel, tracking, types
from irlvla_jax.models import reward_model as rwm_lib
from irlvla_jax.sim.scorer import scorer_labels
from irlvla_jax.train import candidates as cand_lib
from irlvla_jax.train import loop, rwm_quality, stage_results
from irlvla_jax.train.state import TrainState, make_optimizer

LabelFn = Callable[[types.Scene, jax.Array], types.SubScores]
THREE_CLASS = rwm_quality.THREE_CLASS


# ----------------------------------------------------------------------------------------------
# Losses

def _balanced_weights(onehot, mask, max_weight: float, power: float = 1.0):
    """Per-example weights that (partly) equalise the classes present in the batch.

    onehot [...,C], mask [...] -> (per-example weights [...], per-class weights [C]).
    A class of frequency f gets (1 / (C_present * f)) ** power (power 1: inverse frequency,
    0.5: inverse square root), clipped to max_weight, so rare failures (a few DAC = 0 among
    hundreds) get up to max_weight; the per-example weights are 0 where mask is false. A class
    absent from the batch gets max_weight in the per-class weights (what one example of it
    would get), which only matters for the logit adjustment of :func:`supervised_loss`.
    """
    m = mask.astype(jnp.float32)
    counts = jnp.sum(onehot * m[..., None], axis=tuple(range(onehot.ndim - 1)))
    total = jnp.maximum(jnp.sum(m), 1.0)
    present = jnp.maximum(jnp.sum(counts > 0), 1)
    w_class = (total / (present * jnp.maximum(counts, 1e-6))) ** power
    w_class = jnp.minimum(w_class, max_weight)
    return (onehot @ w_class) * m, w_class


def _weighted_mean(x, w):
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1e-6)


def class_index(x):
    """{0, 0.5, 1} sub-score -> class 0..2. x [...] -> int32 [...]."""
    return jnp.clip(jnp.round(2.0 * x), 0, 2).astype(jnp.int32)


def supervised_loss(pred: rwm_lib.Predictions, labels: types.SubScores, cfg: Mapping[str, Any]):
    """Per-metric losses, weighted. pred/labels [B,K] -> (total [], dict of per-metric []).

    With ``cfg.balance`` the classes of each head are re-weighted within the batch
    (:func:`_balanced_weights`, exponent ``cfg.balance_power``), which gives the rare failures
    a learning signal. Weighted cross-entropy on its own would bias the head's probabilities
    towards the rare classes (its optimum is p(c|x) w_c / sum_c' p(c'|x) w_c'), which the
    expected-score reward and the argmax decision would inherit. With ``cfg.calibrate`` the loss
    is taken on the logits plus log w_c instead, so that the same optimum is reached by
    logits + log w, i.e. the model's own logits stay calibrated log-probabilities (a logit
    adjustment): the re-weighted gradients are kept, the prior shift never reaches the outputs.
    """
    balance = bool(cfg["balance"])
    calibrate = balance and bool(cfg.get("calibrate", False))
    max_w = float(cfg["balance_max_weight"])
    power = float(cfg.get("balance_power", 1.0))
    ones = jnp.ones_like(labels.ep, bool)
    out = {}
    for name in THREE_CLASS:
        logits = getattr(pred, f"{name}_logits")
        y = jax.nn.one_hot(class_index(getattr(labels, name)), 3)
        if balance:
            w, w_class = _balanced_weights(y, ones, max_w, power)
            if calibrate:
                logits = logits + jnp.log(w_class)
        else:
            w = ones.astype(jnp.float32)
        out[name] = _weighted_mean(optax.softmax_cross_entropy(logits, y), w)
    for i, name in enumerate(rwm_lib.BINARY_METRICS):
        y = getattr(labels, name)
        mask = (labels.ec_weight > 0) if name == "ec" else ones
        logit = pred.binary_logits[..., i]
        if balance:
            w, w_class = _balanced_weights(jax.nn.one_hot((y > 0.5).astype(jnp.int32), 2), mask,
                                           max_w, power)
            if calibrate:
                logit = logit + jnp.log(w_class[1]) - jnp.log(w_class[0])
        else:
            w = mask.astype(jnp.float32)
        out[name] = _weighted_mean(optax.sigmoid_binary_cross_entropy(logit, y), w)
    out["ep"] = jnp.mean(optax.sigmoid_binary_cross_entropy(pred.ep_logit, labels.ep))
    weights = cfg["loss_weights"]
    total = sum(float(weights[k]) * v for k, v in out.items())
    return total, out


def irl_loss(reward, true_epdms, source, cfg: Mapping[str, Any]):
    """The inverse-RL term: the expert's demonstration defines what is rewarded.

    reward [B,K] predicted (candidate 0 = the expert), true_epdms [B,K] from the scorer, source
    [K] (``candidates.EXPERT`` ...). Pairs (expert, j) count for every j of a source in
    ``cfg.pair_sources`` that the scorer ranks no higher than the expert.
    Returns (loss [], metrics): hinge max(0, margin - (r_E - r_j)) averaged over the pairs, plus
    ``maxent_weight`` * -log softmax(r / temperature)[expert] over the expert and its pairs.
    """
    allowed = jnp.isin(source, jnp.asarray([cand_lib.SOURCE_NAMES.index(s)
                                            for s in cfg["pair_sources"]]))
    pairs = allowed[None, :] & (source != cand_lib.EXPERT)[None, :] & \
        (true_epdms[:, :1] >= true_epdms)                                   # [B,K]
    pf = pairs.astype(jnp.float32)
    gap = reward[:, :1] - reward
    hinge = _weighted_mean(jax.nn.relu(float(cfg["margin"]) - gap), pf)
    logits = jnp.where(pairs | (source == cand_lib.EXPERT)[None, :],
                       reward / float(cfg["temperature"]), -jnp.inf)
    has = pairs.any(-1).astype(jnp.float32)
    maxent = _weighted_mean(-jax.nn.log_softmax(logits, -1)[:, 0], has)
    loss = hinge + float(cfg["maxent_weight"]) * maxent
    return loss, dict(irl_hinge=hinge, irl_maxent=maxent,
                      expert_preferred=_weighted_mean((gap > 0).astype(jnp.float32), pf),
                      irl_pairs=jnp.sum(pf))


def bev_seg_loss(model: rwm_lib.RewardModel, params, tokens, scene: types.Scene, logged=None):
    """Auxiliary loss of the RWM's BEV sampler (``irl.bev_seg_weight``): its features decoded
    into the scene's BEV-semantic raster (a training label, never an RWM input) -> mean CE []
    over the rows at their logged frame (``logged`` [B]; the raster is not moved with the ego)."""
    target = scene.bev_semantic.astype(jnp.int32)                       # [B,h,w]
    logits = rwm_lib.bev_seg_logits(model, params, tokens, target.shape[1:3])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    ce = -jnp.mean(jnp.take_along_axis(logp, target[..., None], -1)[..., 0], (1, 2))   # [B]
    w = jnp.ones_like(ce) if logged is None else logged.astype(jnp.float32)
    return _weighted_mean(ce, w)


def geometry_loss(pred: rwm_lib.Predictions, scene: types.Scene, trajs):
    """Auxiliary loss (``irl.geometry_weight``): the RWM's per-waypoint tokens predict the
    candidate-scene geometry the scorer's checks rest on (``reward_model.interaction_features``
    of the ground truth: box overlap / clearance / gap / headway to the logged agents, red
    connectors, off-road corners, off-route, distance to the centreline) -> mean squared error [].
    The ground truth is a training target here, never an input of the RWM."""
    target = rwm_lib.interaction_features(rwm_lib.scene_geometry(scene), trajs)
    return jnp.mean((pred.geometry - jax.lax.stop_gradient(target)) ** 2)


def label_statistics(labels: types.SubScores):
    """Means the 'training mean' baseline needs: each sub-score's mean and the 3-class
    frequencies. labels [B,K] -> dict of [] (EC over scenes where it counts)."""
    out = {f"label/{n}": jnp.mean(getattr(labels, n)) for n in types.SUBSCORE_NAMES if n != "ec"}
    m = (labels.ec_weight > 0).astype(jnp.float32)
    out["label/ec"] = _weighted_mean(labels.ec, m)
    for n in THREE_CLASS:
        freq = jnp.mean(jax.nn.one_hot(class_index(getattr(labels, n)), 3), axis=(0, 1))
        out.update({f"label/{n}_class{c}": freq[c] for c in range(3)})
    out["label/epdms"] = jnp.mean(labels.epdms())
    return out


# ----------------------------------------------------------------------------------------------
# The step

PolicyFn = Callable[[Any, types.Scene, jax.Array], tuple[jax.Array, Any]]


def make_candidates_fn(config, policy_fn: PolicyFn | None):
    """(frozen, scene [B], rng) -> (trajs [B,K,8,3], source [K], policy tokens or None,
    scene [B], logged [B] bool).

    ``policy_fn`` may return a third value, the scene it moved the ego into (a closed-loop
    state: :func:`make_policy_fn` with ``advance_steps``): candidates, labels and the update
    are then of that state, and ``logged`` says which rows are still at their logged frame."""
    icfg = config.irl

    def fn(frozen, scene, rng):
        k_pol, k_cand = jax.random.split(rng)
        policy_trajs, tokens = None, None
        b = scene.speed_limit.shape[0]
        logged = jnp.ones((b,), bool)
        if policy_fn is not None and frozen.get("policy") is not None:
            out = policy_fn(frozen["policy"], scene, k_pol)
            policy_trajs, tokens = out[:2]
            if len(out) > 2:
                scene, logged = out[2], out[3]
        expert = cand_lib.held_expert(scene)
        num_perturb = icfg.num_perturb + (icfg.num_policy if policy_trajs is None else 0)
        trajs, source = cand_lib.make_candidates(expert, frozen["vocab"], policy_trajs, k_cand,
                                                 icfg.num_vocab, num_perturb, icfg.perturb)
        return trajs, source, tokens, scene, logged
    return fn



def make_train_step(config, model: rwm_lib.RewardModel, label_fn: LabelFn = scorer_labels,
                    policy_fn: PolicyFn | None = None):
    """The IRL train step (not jitted; see :func:`jit_train_step`).

    step(state: TrainState, frozen: {'vocab': [M,8,3], 'policy': variables | None},
         scene: Scene [B], rng) -> (state, metrics dict of []).
    ``policy_fn(policy_variables, scene, rng) -> (trajs [B,Np,8,3], SceneTokens)`` samples the
    frozen stage-1 policy; None (or frozen['policy'] None) replaces its slots by perturbations.

    The step is the composition of three pure parts, exposed as attributes so that
    :func:`jit_train_step` can compile them as one program or as three:
    ``step.candidates(frozen, scene, rng) -> (trajs, source, tokens)``,
    ``step.labels(scene, trajs) -> SubScores`` and
    ``step.update(state, scene, trajs, source, tokens, labels) -> (state, metrics)``.
    """
    icfg = config.irl
    cands = make_candidates_fn(config, policy_fn)
    seg_weight = float(icfg.get("bev_seg_weight", 0.0))
    geom_weight = float(icfg.get("geometry_weight", 0.0))
    if geom_weight > 0 and not config.rwm.get("aux_geometry", False):
        raise ValueError("config.irl.geometry_weight > 0 trains the RWM's geometry head: it "
                         "needs config.rwm.aux_geometry = True")
    if seg_weight > 0 and not config.rwm.get("bev_sampling", False):
        raise ValueError("config.irl.bev_seg_weight > 0 trains the RWM's BEV sampler: it needs "
                         "config.rwm.bev_sampling = True")

    def labels_fn(scene, trajs):
        return jax.lax.stop_gradient(label_fn(scene, trajs))

    def update(state: TrainState, scene: types.Scene, trajs, source, tokens, labels,
               logged=None):
        true = labels.epdms()

        def loss_fn(params):
            pred = rwm_lib.apply(model, params, scene, trajs, tokens)
            sup, parts = supervised_loss(pred, labels, icfg)
            reward = pred.reward(labels.ec_weight)
            irl, irl_metrics = irl_loss(reward, true, source, icfg)
            total = sup + float(icfg.irl_weight) * irl
            if seg_weight > 0:
                parts = dict(parts, bev_seg=bev_seg_loss(model, params, tokens, scene, logged))
                total = total + seg_weight * parts["bev_seg"]
            if geom_weight > 0:
                parts = dict(parts, geometry=geometry_loss(pred, scene, trajs))
                total = total + geom_weight * parts["geometry"]
            return total, (parts, irl_metrics, reward)

        (loss, (parts, irl_metrics, reward)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        state = state.apply_gradients(grads)
        if logged is not None:
            metrics_extra = dict(logged_fraction=jnp.mean(logged.astype(jnp.float32)))
        else:
            metrics_extra = {}
        metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads), **metrics_extra,
                       reward_mae=jnp.mean(jnp.abs(reward - true)), **irl_metrics,
                       **{f"loss/{k}": v for k, v in parts.items()}, **label_statistics(labels))
        return state, metrics

    def step(state: TrainState, frozen, scene: types.Scene, rng):
        trajs, source, tokens, scene, logged = cands(frozen, scene, rng)
        return update(state, scene, trajs, source, tokens, labels_fn(scene, trajs), logged)

    step.candidates, step.labels, step.update = cands, labels_fn, update
    return step


def jit_train_step(step, mesh=None, fuse: bool = True, state_sharding=None,
                   frozen_sharding=None):
    """jit the step; with a mesh the scene batch is split over it, the state and the frozen
    variables are as ``state_sharding`` / ``frozen_sharding`` (``parallel.state_shardings``:
    FSDP; None: replicated), the rest replicated.

    ``fuse=True`` compiles candidates + scorer labels + RWM update as ONE program. ``fuse=False``
    (``config.irl.fuse_step``) compiles them as three programs that still run back to back on
    device with no host work in between: XLA's compile time grows faster than linearly with
    program size, and on CPU the fused step (policy sampler + scorer with PDM-Closed + RWM
    backward) takes many minutes to compile, while the three parts compile in a fraction of it
    and the labeller is shared with the evaluation step.
    """
    rep = parallel.replicated(mesh) if mesh is not None else None
    dat = parallel.data_sharding(mesh) if mesh is not None else None
    st = rep if state_sharding is None else state_sharding
    fr = rep if frozen_sharding is None else frozen_sharding
    if fuse:
        if mesh is None:
            return jax.jit(step, donate_argnums=(0,))
        return jax.jit(step, in_shardings=(st, fr, dat, rep), out_shardings=(st, rep),
                       donate_argnums=(0,))
    cands, labels = _jit_shared(step.candidates), _jit_shared(step.labels)
    if mesh is None:
        update = jax.jit(step.update, donate_argnums=(0,))
    else:
        update = jax.jit(step.update, out_shardings=(st, rep), donate_argnums=(0,))

    def run(state, frozen, scene, rng):
        trajs, source, tokens, scene, logged = cands(frozen, scene, rng)
        return update(state, scene, trajs, source, tokens, labels(scene, trajs), logged)
    return run


_JITTED: dict = {}


def _jit_shared(fn):
    """One jitted wrapper per underlying function, so train and eval share compiled programs."""
    if fn not in _JITTED:
        _JITTED[fn] = jax.jit(fn)
    return _JITTED[fn]


def make_eval_step(config, model: rwm_lib.RewardModel, label_fn: LabelFn = scorer_labels,
                   policy_fn: PolicyFn | None = None):
    """(params, frozen, scene [B], rng) -> dict of arrays: reward, true [B,K], probs of the
    binary heads [B,K,6], of the 3-class heads [B,K,3] (nc_prob, ddc_prob), ep_pred [B,K], the
    labels [B,K] per sub-score, ec_weight [B,K], source [K], the candidates trajs [B,K,8,3].

    Like the train step it exposes its parts (``step.candidates``, ``step.labels``,
    ``step.predict(params, scene, trajs, source, tokens, labels)``) for :func:`jit_eval_step`.
    """
    cands = make_candidates_fn(config, policy_fn)

    def predict(params, scene, trajs, source, tokens, labels):
        out = rwm_lib.prediction_outputs(model, params, scene, trajs, tokens, labels)
        return dict(out, source=source, trajs=trajs)

    def step(params, frozen, scene, rng):
        trajs, source, tokens, scene, _ = cands(frozen, scene, rng)
        return predict(params, scene, trajs, source, tokens, label_fn(scene, trajs))

    step.candidates, step.labels, step.predict = cands, label_fn, predict
    return step


def jit_eval_step(step, fuse: bool = True, train_step=None, share_candidates: bool = True):
    """jit an eval step as one program, or as parts reusing ``train_step``'s compiled
    label program and (``share_candidates``: when they are the same function) its candidate
    program (same functions and shapes: no second compilation)."""
    if fuse:
        return jax.jit(step)
    cands = _jit_shared(train_step.candidates if train_step is not None and share_candidates
                        else step.candidates)
    labels = _jit_shared(train_step.labels if train_step is not None else step.labels)
    predict = jax.jit(step.predict)

    def run(params, frozen, scene, rng):
        trajs, source, tokens, scene, _ = cands(frozen, scene, rng)
        return predict(params, scene, trajs, source, tokens, labels(scene, trajs))
    return run


# ----------------------------------------------------------------------------------------------
# Held-out evaluation

def evaluate_reward_model(eval_step, params, frozen, batches, rng, train_means=None,
                          dump: str | None = None):
    """The RWM's held-out quality: run ``eval_step`` over ``batches`` (iterable of Scene [B])
    -> :func:`rwm_quality.quality_metrics` dict; with ``dump`` the concatenated arrays are
    also saved there (.npz, process 0) for inspection."""
    outs: dict[str, list] = {}
    source = None
    for i, scene in enumerate(batches):
        o = parallel.to_host(eval_step(params, frozen, scene, jax.random.fold_in(rng, i)))
        for k, v in o.items():
            if k == "source":
                source = np.asarray(v)
            else:
                outs.setdefault(k, []).append(np.asarray(v))
    cat = {k: np.concatenate(v) for k, v in outs.items()}
    if source is not None:
        cat["source"] = source
    if dump and tracking.is_main_process():
        np.savez_compressed(dump, **cat)
    result = rwm_quality.quality_metrics(cat, train_means)
    result["rwm"]["num_scenes"] = result["mean_baseline"]["num_scenes"] = int(cat["true"].shape[0])
    return result


# ----------------------------------------------------------------------------------------------
# The training loop (resumable)

def init_state(config, model: rwm_lib.RewardModel, example_scene: types.Scene, rng,
               policy_tokens=None) -> TrainState:
    """A fresh TrainState for the RWM (AdamW, warmup-cosine, clipping from ``config.irl``)."""
    params = rwm_lib.init_params(model, example_scene, rng, policy_tokens=policy_tokens)
    return TrainState.create(params, make_optimizer(config.irl))


def train(config, workdir: str, step_fn, state: TrainState, frozen, batches: Callable[[int], Iterator],
          *, rng: jax.Array, place: Callable | None = None, show_progress: bool = True):
    """Run ``step_fn`` through the stage loop (``loop.run``) from the latest checkpoint in
    ``<workdir>/irl`` to ``irl.num_steps``.

    batches(start_step) -> iterator of Scene batches from that step on (deterministic, so a
    resumed run sees the same data as an uninterrupted one); the step's rng is
    ``fold_in(rng, step)``. Returns (state, the label means over all steps: the training-mean
    baseline's statistics).
    """
    result = loop.run(
        loop.LoopSpec.of("irl", config.irl, samples_per_step=config.data.batch_size),
        os.path.join(workdir, "irl"), lambda st, scene, r: step_fn(st, frozen, scene, r),
        state, batches, rng, config=config, place=place, running_means="label/",
        postfix=lambda m: {"loss": f"{m['loss']:.3f}", "pref": f"{m['expert_preferred']:.2f}"},
        show_progress=show_progress)
    return result.state, result.running_means


# ----------------------------------------------------------------------------------------------
# The stage

def make_policy_fn(policy_model, num: int, advance_steps: int = 0):
    """Samples of the frozen policy: ``num`` modes of one stochastic DDIM chain per scene, the
    classifier's top ``num`` (policy_vars, scene [B], rng) -> (trajs [B,num,8,3], tokens).
    ``num`` 0: (None, tokens) — only the sensor tokens the default RWM reads.

    ``advance_steps`` > 0 (``irl.closed_loop_train_steps``): every scene first drives a uniform
    0 .. advance_steps planning steps of a stage-3 episode of the IL policy
    (``rwm_closed_loop.advance``: plan, execute 0.5 s, shift the world, re-observe), and the
    samples and tokens are of the state reached; returns (trajs, tokens, that scene with EC
    unlabelled where it moved, logged [B] bool)."""
    from irlvla_jax.models import policy as policy_lib
    from irlvla_jax.train import rwm_closed_loop

    def fn(variables, scene, rng):
        k_adv, k_plan = jax.random.split(rng)
        if advance_steps > 0:
            tokens, scene, moves = rwm_closed_loop.advance(policy_model, variables, scene,
                                                           k_adv, advance_steps)
        else:
            tokens = policy_lib.encode(policy_model, variables, scene)
        tokens = jax.lax.stop_gradient(tokens)
        trajs = None
        if num > 0:
            chain = policy_lib.plan(policy_model, variables, tokens, k_plan, stochastic=True)
            trajs = jax.lax.stop_gradient(cand_lib.top_modes(chain, num))
        if advance_steps > 0:
            return trajs, tokens, scene, moves == 0
        return trajs, tokens
    return fn


def _eval_batches(config, limit: int | None, mesh: jax.sharding.Mesh) -> Iterator[types.Scene]:
    """The held-out split's first ``limit`` scenes (all when None) in stored order, streamed as
    Scene batches of ``config.data.batch_size`` on the mesh's 'data' axis
    (``loader.make_loader``: each process reads and decodes only its rows; one batch at a time
    in host memory). A last partial batch is dropped. A split (or ``limit``) smaller than one
    batch is one batch of its first scenes, rounded down to a multiple of the mesh's batch
    devices (on one device: all of them)."""
    from irlvla_jax.data import loader
    split = config.data.eval_split
    n = len(loader.open_source(config, split))
    n = n if limit is None else min(n, int(limit))
    if n < int(config.data.batch_size):
        d = parallel.batch_devices(mesh)
        if n < d:
            raise ValueError(f"irl: {n} held-out scenes of {split!r} (irl.eval_scenes={limit}) "
                             f"are fewer than the mesh's {d} batch devices")
        config = config.copy_and_resolve_references()
        config.data.batch_size = n // d * d
    it = loader.make_loader(config, split, mesh, seed=0, shuffle=False, num_epochs=1, limit=limit)
    return (scene for scene, _ in it)


def run(config, workdir: str) -> dict:
    """Stage 2 end to end: load the IL policy, train the RWM (resumable), evaluate held out.

    Returns the evaluation dict (also written to ``<workdir>/irl/eval.json``).
    """
    from irlvla_jax.data import loader
    icfg = config.irl
    policy_model, policy_vars = stage_results.load_il_policy(
        config, workdir, "irl: stage 2 samples candidates from the IL policy")
    mesh = parallel.make_mesh(config.mesh)
    model = rwm_lib.RewardModel(config.rwm)
    needs_tokens = config.rwm.scene_encoder == "policy"
    policy_fn = (make_policy_fn(policy_model, icfg.num_policy)
                 if icfg.num_policy > 0 or needs_tokens else None)
    advance = int(icfg.get("closed_loop_train_steps", 0))
    train_policy_fn = (make_policy_fn(policy_model, icfg.num_policy, advance)
                       if advance > 0 else policy_fn)
    from irlvla_jax.models import policy as policy_lib
    frozen = {"vocab": policy_lib.get_anchors(policy_vars), "policy": policy_vars}
    if icfg.num_vocab > frozen["vocab"].shape[0]:
        raise ValueError(f"config.irl.num_vocab={icfg.num_vocab} exceeds the policy's "
                         f"{frozen['vocab'].shape[0]} anchors")
    sizes = types.SceneSizes.from_config(config.data.sizes)
    example = types.zeros_scene(sizes, (1,), jnp)
    tokens = None
    if needs_tokens:
        tokens = policy_lib.encode(policy_model, policy_vars, example)
    rng = jax.random.PRNGKey(config.seed)
    k_init, k_train, k_eval = jax.random.split(rng, 3)
    state = init_state(config, model, example, k_init, tokens)
    state_sh = parallel.state_shardings(state, mesh, config.mesh)
    frozen_sh = parallel.state_shardings(frozen, mesh, config.mesh)
    frozen = jax.device_put(frozen, frozen_sh)
    fuse = bool(icfg.get("fuse_step", False))
    train_step = make_train_step(config, model, scorer_labels, train_policy_fn)
    step_fn = jit_train_step(train_step, mesh, fuse=fuse, state_sharding=state_sh,
                             frozen_sharding=frozen_sh)

    def batches(start):
        it = loader.make_loader(config, config.data.train_split, mesh, seed=config.seed,
                                shuffle=config.data.shuffle, start_step=start)
        return (scene for scene, _ in it)

    state, means = train(config, workdir, step_fn, state, frozen, batches, rng=k_train,
                         place=lambda st: jax.device_put(st, state_sh))
    # held out at the logged frames (the closed-loop table below has the later states); the
    # label program is shared with training, the candidates' only when they are the same
    eval_step = jit_eval_step(make_eval_step(config, model, scorer_labels, policy_fn), fuse,
                              train_step, share_candidates=advance == 0)
    limit = None if icfg.eval_scenes < 0 else icfg.eval_scenes
    result = evaluate_reward_model(eval_step, state.params, frozen,
                                   _eval_batches(config, limit, mesh), k_eval, means,
                                   dump=os.path.join(workdir, "irl", "eval_outputs.npz"))
    result["train_label_means"] = means
    result["privileged_inputs"] = list(rwm_lib.privileged_inputs(config.rwm))
    steps = int(icfg.get("closed_loop_steps", 0))
    from irlvla_jax.train import rwm_closed_loop
    if steps > 0:
        # the policy variables as placed on the mesh (frozen), like the RWM's and the scenes'
        result["closed_loop"] = rwm_closed_loop.evaluate(
            config, policy_model, frozen["policy"], {"rwm": (model, state.params)},
            _eval_batches(config, limit, mesh), jax.random.fold_in(k_eval, 1), steps,
            {"rwm": means})["rwm"]
    tracking.write_result(os.path.join(workdir, "irl", "eval.json"), result)
    names = [k for k in result["rwm"] if k != "num_scenes"]
    tracking.print_table(f"RWM held-out quality ({result['rwm']['num_scenes']} scenes)",
                         {n: {"rwm": result["rwm"][n], "mean_baseline":
                              result["mean_baseline"].get(n)} for n in names},
                         ["rwm", "mean_baseline"])
    if steps > 0:
        tracking.print_table("RWM in closed loop (planning step T; T1 = the logged frame)",
                             result["closed_loop"], rwm_closed_loop.TABLE_COLUMNS)
    return result
