"""Stage 3: PPO on the diffusion planner (DPPO), rewarded by the reward world model in closed loop.

    python launch.py rl                                   # needs <workdir>/il and <workdir>/irl
    python launch.py rl --config.ppo.reward=scorer        # ablation / upper bound: true EPDMS
    python launch.py rl --config.ppo.advantage=group      # GRPO-style baseline, no value head use

One PPO update is ONE compiled program (PureJaxRL style), jitted over the mesh with the scenes on
'data':

1. rollout (``rollout.py``): B scenes x G samples, T closed-loop planning steps (``lax.scan``),
   each a stochastic DDIM chain of S denoising steps + the classifier's sampled mode;
2. rewards: the RWM's predicted EPDMS of each step's plan (and the true scorer's, for logging or
   as the training reward);
3. advantages (``advantages.py``): GAE over the T steps with the value head, or the return
   standardised over the G samples of each scene;
4. epochs x minibatches (nested ``lax.scan``) of the DPPO loss on the stored chains.

The DPPO loss treats every denoising transition x_s -> x_{s+1} of the chosen mode as a Gaussian
action (std floored by ``sigma_min_logprob``: the floor is the entropy floor, sampling uses
``sigma_min_sample``) and the mode choice of the classifier as one more action. Each gets a PPO
clipped term with its own ratio; the advantage of the planning step is shared across the chain,
discounted by gamma_denoise^(S-1-s) (the mode choice, like the last step, gets weight 1), and the
clip range follows a per-step schedule (small for the noisy first steps). A KL term (Schulman's
k3 estimator on the stored chain's actions) keeps the policy near the frozen IL policy, and a
value head on the scene tokens is regressed on the GAE returns.

What trains (``ppo.trainable``): the diffusion planner (denoiser + mode classifier, "planner")
or only its mode-classification head ("classifier": RL re-ranks the IL denoiser's modes; the
chain's Gaussian terms then keep ratio 1), and the value head. The scene encoders (vision, BEV,
detection, map, semantic) stay frozen at their IL values, so the tokens a rollout stored are
still the policy's tokens during the update, and the RWM is never trained.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from irlvla_jax import parallel, tracking, types
from irlvla_jax.models import policy as policy_lib
from irlvla_jax.models import reward_model as rwm_lib
from irlvla_jax.models.planner import Chain, SceneTokens
from irlvla_jax.sim import scorer, simulate
from irlvla_jax.train import advantages as adv_lib
from irlvla_jax.train import loop, losses, stage_results
from irlvla_jax.train import rollout as rollout_lib
from irlvla_jax.train.state import TrainState, make_optimizer

# ----------------------------------------------------------------------------------------------
# Value head.

class ValueHead(nn.Module):
    """V(scene tokens): pooled BEV / object / map tokens + ego status -> MLP -> scalar."""
    hidden: int = 128

    @nn.compact
    def __call__(self, tokens: SceneTokens) -> jax.Array:
        """tokens [N,...] -> [N] value."""
        mv = tokens.map_valid.astype(jnp.float32)[..., None]
        feats = [jnp.mean(tokens.bev, 1), jnp.mean(tokens.obj, 1),
                 jnp.sum(tokens.map * mv, 1) / jnp.maximum(jnp.sum(mv, 1), 1.0),
                 tokens.ego_status]
        h = jnp.concatenate([f.astype(jnp.float32) for f in feats], -1)
        h = nn.LayerNorm()(h)
        h = nn.gelu(nn.Dense(self.hidden)(h))
        h = nn.gelu(nn.Dense(self.hidden)(h))
        return nn.Dense(1, kernel_init=nn.initializers.zeros)(h)[..., 0]


# ----------------------------------------------------------------------------------------------
# Models and variables.

def init_state(config, frozen_policy: Mapping[str, Any], tokens: SceneTokens, rng: jax.Array
               ) -> TrainState:
    """PPO TrainState: params = {'planner': the IL planner's params, 'value': a fresh head}.

    tokens: example SceneTokens [N,...] (shapes only)."""
    value = ValueHead(int(config.ppo.value_hidden)).init(rng, tokens)["params"]
    # A copy: the update donates the state, and the frozen IL policy must keep its own buffers.
    planner = jax.tree.map(jnp.copy, frozen_policy["params"]["planner"])
    params = {"planner": planner, "value": value}
    return TrainState.create(params, make_optimizer(
        config.ppo, total_steps=max(1, config.ppo.num_updates * config.ppo.epochs *
                                    config.ppo.minibatches)))


# ----------------------------------------------------------------------------------------------
# Rewards.

def make_reward_fn(rwm_model: rwm_lib.RewardModel | None, rwm_params, use_scorer: bool,
                   closed_loop_ec: bool = True) -> rollout_lib.RewardFn:
    """reward_fn(scene [N], plans [N,8,3], tokens, (ec, ec_weight)) -> {'rwm': [N], 'scorer':
    [N]} (each when available): the EPDMS of the plan, EC included.

    EC compares a plan with the plan of 0.5 s earlier. With ``closed_loop_ec``:
    * from the rollout's second step on (ec_weight 1) that is the previous step's own plan, and
      the rollout's exact EC (``comfort.extended_comfort`` of the two simulations) is used for
      both sources: it depends on the ego's two plans only, not on the world;
    * at the first step (ec_weight 0) the ego is at a logged frame and the plan of 0.5 s
      earlier is the log's (as in the RWM's training labels): the RWM's EC head, or the scorer
      against the previous frame's expert plan, counted where the scene has a previous frame.
    Without it EC has weight 0 everywhere.

    ``with_scorer`` (a traced bool, optional): compute the scorer's entry only where it is true
    (``lax.cond``; zeros otherwise): PPO logs the true scorer on logged updates only.
    """
    def fn(scene, plans, tokens, ec, with_scorer=None):
        loop_ec, loop_w = ec
        if closed_loop_ec:
            log_w = (1.0 - loop_w) * scene.has_previous.astype(jnp.float32)
        else:
            loop_w = log_w = jnp.zeros(plans.shape[:1], jnp.float32)

        def epdms(sub):
            # sub: SubScores [N] whose ec is the plan's EC against the log's previous frame
            return sub.replace(ec=loop_w * loop_ec + (1.0 - loop_w) * sub.ec,
                               ec_weight=loop_w + log_w).epdms()

        out = {}
        if rwm_model is not None:
            pt = tokens if rwm_model.cfg.scene_encoder == "policy" else None
            pred = rwm_lib.apply(rwm_model, rwm_params, scene, plans[:, None], pt)
            out["rwm"] = epdms(jax.tree.map(lambda x: x[:, 0], pred.subscores(log_w)))
        if use_scorer:
            def true_epdms():
                sub, _ = scorer.score(scene, plans[:, None],
                                      simulate.previous_frame_states(scene))
                return epdms(jax.tree.map(lambda x: x[:, 0], sub)).astype(jnp.float32)
            out["scorer"] = true_epdms() if with_scorer is None else jax.lax.cond(
                with_scorer, true_epdms, lambda: jnp.zeros(plans.shape[:1], jnp.float32))
        return out
    return fn


# ----------------------------------------------------------------------------------------------
# The DPPO objective.

def clipped_objective(logp: jax.Array, old_logp: jax.Array, adv: jax.Array, clip: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
    """PPO's clipped surrogate per action (to be maximised).

    logp, old_logp, adv: [...]; clip: broadcastable to [...] (the per-step clip range).
    Returns (objective [...] = min(r A, clip(r, 1-c, 1+c) A), clipped [...] bool: where the
    clipped branch is active, i.e. where the gradient vanishes).
    """
    ratio = jnp.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - clip, 1.0 + clip) * adv
    return jnp.minimum(unclipped, clipped), clipped < unclipped


class Batch(NamedTuple):
    """What the learning phase reads, one row per (planning step, sample): leaves [R,...]."""
    tokens: SceneTokens
    chain: Chain
    old_logp: jax.Array       # [R,S+1] chain steps (chosen mode) + mode, at rollout time
    old_joint: jax.Array      # [R,S+1] the same with every mode's transitions (see below)
    il_logp: jax.Array        # [R,S+1] under the frozen IL policy (for the KL term), as used
    adv: jax.Array            # [R]
    ret: jax.Array            # [R] value target


CHAIN_LOGPROBS = ("chosen", "joint")


def chain_terms(model, variables, tokens: SceneTokens, chain: Chain
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Log-probs of a stored chain's actions under ``variables``: (chosen [R,S+1], joint
    [R,S+1], classifier entropy [R]).

    Every denoising step moves all M modes (each sampled with its own noise), and the modes
    attend to each other, so the exact action of a step is the joint transition of all M.
    "chosen": the per-dimension log-density of the executed mode's transition only (the
    default's approximation); "joint": the same per-dimension average over all M modes'
    transitions (the exact joint density, tempered as the chosen one is). The last column of
    both is the classifier's log-prob of the chosen mode."""
    lp_all, mode_lp, ent = policy_lib.evaluate_chain(model, variables, tokens, chain,
                                                     all_modes=True)            # [R,S,M]
    chosen = jnp.take_along_axis(lp_all, chain.mode[:, None, None], axis=-1)[..., 0]
    joint = jnp.mean(lp_all, -1)
    return (jnp.concatenate([chosen, mode_lp[:, None]], -1),
            jnp.concatenate([joint, mode_lp[:, None]], -1), ent)


def action_logprobs(model, variables, tokens: SceneTokens, chain: Chain, joint: bool = False
                    ) -> tuple[jax.Array, jax.Array]:
    """[R,S+1] log-probs of a stored chain's actions (S denoising transitions + the mode
    choice) under ``variables`` (``joint``: every mode's transitions, :func:`chain_terms`),
    and the classifier entropy [R]."""
    chosen, jnt, ent = chain_terms(model, variables, tokens, chain)
    return (jnt if joint else chosen), ent


class BCBatch(NamedTuple):
    """The behaviour-cloning term's data (``config.ppo.bc_weight``): the first planning step
    of each scene, where the ego is at the logged state and the logged future is the target."""
    tokens: SceneTokens       # [B,...]
    expert: jax.Array         # [B,8,3] the logged future (a training target, never an input)
    valid: jax.Array          # [B,8]


def bc_loss(model: policy_lib.VLAPolicy, variables, bc: BCBatch, rng: jax.Array, il_cfg
            ) -> tuple[jax.Array, dict]:
    """IL's trajectory loss (``losses.trajectory_imitation_loss``, weighted as in IL by
    ``il_cfg.loss_weights``) of the planner on the logged future, from the stored tokens:
    keeps the denoiser's waypoints on the expert's manifold while PPO moves it."""
    x0, logits, anchors = model.apply(variables, bc.tokens, rng,
                                      method=policy_lib.VLAPolicy.denoise_noised_anchors)
    l_cls, l_reg, _ = losses.trajectory_imitation_loss(
        x0, logits, anchors, bc.expert, bc.valid, model.cfg.planner, il_cfg.focal_alpha,
        il_cfg.focal_gamma)
    w = il_cfg.loss_weights
    return w.traj_cls * l_cls + w.traj_reg * l_reg, {"bc_cls": l_cls, "bc_l1": l_reg}


def ppo_loss(params, model, value_head: ValueHead, frozen_policy, mb: Batch, cfg,
             bc: Callable | None = None) -> tuple[jax.Array, dict]:
    """DPPO loss of a minibatch (scalar) and its metrics. cfg = ``config.ppo``; bc: None, or
    ``bc(variables) -> (loss, metrics)`` added with weight ``cfg.bc_weight``."""
    variables = stage_results.rl_policy_variables(frozen_policy, params)
    chosen, joint, entropy = chain_terms(model, variables, mb.tokens, mb.chain)   # [R,S+1]
    use_joint = cfg.get("chain_logprob", "chosen") == "joint"
    logp, old_logp = (joint, mb.old_joint) if use_joint else (chosen, mb.old_logp)
    s = logp.shape[-1] - 1
    adv = jnp.concatenate([adv_lib.chain_advantages(mb.adv, s, cfg.gamma_denoise),
                           mb.adv[:, None]], -1)
    clip = adv_lib.clip_schedule(s, cfg.clip_first, cfg.clip_last, cfg.clip_rate)
    # The mode choice is one categorical action with its own clip range (config.ppo.clip_mode).
    clip = jnp.concatenate([clip, jnp.full((1,), cfg.clip_mode, clip.dtype)])
    obj, was_clipped = clipped_objective(logp, old_logp, adv, clip)
    pg_loss = -jnp.mean(obj)
    d = mb.il_logp - logp
    kl = jnp.mean(jnp.exp(d) - 1.0 - d)            # k3 estimate of KL(pi || pi_IL)
    value = value_head.apply({"params": params["value"]}, mb.tokens)
    v_loss = 0.5 * jnp.mean((value - mb.ret) ** 2)
    loss = pg_loss + cfg.kl_coef * kl + cfg.vf_coef * v_loss
    extra = {}
    if bc is not None:
        l_bc, extra = bc(variables)
        loss = loss + cfg.bc_weight * l_bc
    log_ratio = logp - old_logp
    # How far the chosen-mode ratio is from the exact joint one (the approximation's error),
    # per denoising transition, in log-ratio units (the clip ranges are ~0.02 .. 0.1).
    gap = jax.lax.stop_gradient(jnp.abs((joint - mb.old_joint) - (chosen - mb.old_logp))[:, :s])
    return loss, {"loss": loss, "pg_loss": pg_loss, "kl_il": kl, "value_loss": v_loss,
                  "clip_frac": jnp.mean(was_clipped.astype(jnp.float32)),
                  "approx_kl_old": jnp.mean(jnp.exp(log_ratio) - 1.0 - log_ratio),
                  "log_ratio_gap_joint": jnp.mean(gap),
                  "log_ratio_gap_joint_max": jnp.max(gap),
                  "mode_entropy": jnp.mean(entropy), **extra}


def mask_gradients(grads, trainable: str):
    """Zero the gradients of what ``config.ppo.trainable`` keeps frozen.

    "planner": the whole diffusion planner (denoiser + mode classifier) and the value head.
    "classifier": only the planner's mode-classification head (``cls_head_*``) and the value
    head; the denoiser, and so every mode's trajectory, stays the IL one. The chain's Gaussian
    terms then have ratio 1 and RL re-ranks the modes. (On the embedded default, DPPO updates
    of the denoiser made the waypoints jerky: the mean |jerk| of the plans rose from 0.7 to
    5.9 m/s^3 and EC fell from 0.62 to 0.06.) With AdamW and no weight decay, zero gradients
    leave those parameters exactly unchanged.
    """
    if trainable == "planner":
        return grads
    if trainable != "classifier":
        raise ValueError(f"config.ppo.trainable = {trainable!r}: expected 'planner' or "
                         f"'classifier'")

    def keep(path, g):
        names = [getattr(k, "key", str(k)) for k in path]
        ok = names[0] == "value" or any(str(n).startswith("cls_head") for n in names)
        return g if ok else jnp.zeros_like(g)
    return jax.tree_util.tree_map_with_path(keep, grads)


# ----------------------------------------------------------------------------------------------
# One update = one program.

def is_logged_update(opt_step: jax.Array, opt_steps_per_update: int, log_every: int) -> jax.Array:
    """Whether the update starting at optimizer step ``opt_step`` is one whose metrics the stage
    loop writes (update u, 0-based, is written when (u + 1) % log_every == 0)."""
    return (opt_step // opt_steps_per_update + 1) % log_every == 0


def make_update(config, model: policy_lib.VLAPolicy, reward_fn: rollout_lib.RewardFn
                ) -> Callable:
    """``update(state, frozen, scene [B], rng) -> (state, metrics)`` (pure; jit it with
    :func:`jit_update`). frozen = {'policy': IL variables}; metrics are scalars."""
    cfg = config.ppo
    g, horizon = int(cfg.group_size), int(cfg.horizon)
    value_head = ValueHead(int(cfg.value_hidden))
    if cfg.advantage not in ("gae", "group"):
        raise ValueError(f"config.ppo.advantage = {cfg.advantage!r}: expected 'gae' or 'group'")
    rollout_lib.check_episode_length(horizon)
    if cfg.get("chain_logprob", "chosen") not in CHAIN_LOGPROBS:
        raise ValueError(f"config.ppo.chain_logprob = {cfg.chain_logprob!r}: expected one of "
                         f"{CHAIN_LOGPROBS}")

    # The true scorer as a logged figure (not the training reward) is computed on the updates
    # whose metrics the stage loop writes (every log_every-th), not on the others.
    opt_steps = int(cfg.epochs) * int(cfg.minibatches)
    every = int(cfg.log_every)
    scorer_logged_only = cfg.reward != "scorer" and bool(cfg.get("log_scorer", False))

    def update(state: TrainState, frozen, scene: types.Scene, rng: jax.Array):
        k_roll, k_perm = jax.random.split(rng)
        b = scene.speed_limit.shape[0]
        variables = stage_results.rl_policy_variables(frozen["policy"], state.params)
        rfn = reward_fn
        if scorer_logged_only and every > 1:
            logged = is_logged_update(state.step, opt_steps, every)

            def rfn(*args):
                return reward_fn(*args, with_scorer=logged)
        traj, _ = rollout_lib.rollout(model, variables, scene, k_roll, rfn,
                                      num_steps=horizon, group_size=g)
        if cfg.reward not in traj.rewards:
            raise ValueError(f"config.ppo.reward = {cfg.reward!r} is not computed; available: "
                             f"{sorted(traj.rewards)}")
        rewards = traj.rewards[cfg.reward]                                       # [T,N]
        n = rewards.shape[1]
        flat = lambda x: x.reshape(horizon * n, *x.shape[2:])                    # noqa: E731
        tokens = jax.tree.map(flat, traj.tokens)
        chain = jax.tree.map(flat, traj.chain)
        values = value_head.apply({"params": state.params["value"]}, tokens).reshape(horizon, n)
        if cfg.advantage == "gae":
            adv, ret = adv_lib.gae(rewards, values, cfg.gamma, cfg.gae_lambda)
            if cfg.normalize_advantages:
                adv = (adv - adv.mean()) / (adv.std() + 1e-6)
        else:
            ret = adv_lib.discounted_returns(rewards, cfg.gamma)
            adv = adv_lib.group_normalize(ret.reshape(horizon, b, g)).reshape(horizon, n)
        old_logp = jnp.concatenate([chain.logprob, chain.mode_logprob[:, None]], -1)
        # the joint log-probs at rollout time (the rollout's own parameters)
        _, old_joint, _ = chain_terms(model, variables, tokens, chain)
        il_logp, _ = action_logprobs(model, frozen["policy"], tokens, chain,
                                     joint=cfg.get("chain_logprob", "chosen") == "joint")
        data = Batch(tokens=tokens, chain=chain, old_logp=old_logp,
                     old_joint=jax.lax.stop_gradient(old_joint),
                     il_logp=jax.lax.stop_gradient(il_logp), adv=flat(adv), ret=flat(ret))

        use_bc = float(cfg.get("bc_weight", 0.0)) > 0
        if use_bc:
            bc_data = BCBatch(tokens=jax.tree.map(lambda x: x[0, ::g], traj.tokens),
                              expert=scene.expert_future[:, :types.PLAN_LEN].astype(jnp.float32),
                              valid=scene.expert_future_valid[:, :types.PLAN_LEN])

        rows = horizon * n
        mbs = int(cfg.minibatches)
        if rows % mbs:
            raise ValueError(f"config.ppo.minibatches={mbs} does not divide the {rows} rows "
                             f"(horizon x batch x group_size) of an update")
        grad_fn = jax.value_and_grad(ppo_loss, has_aux=True)

        def epoch(st, key):
            perm = jax.random.permutation(key, rows)
            shuffled = jax.tree.map(lambda x: x[perm].reshape(mbs, rows // mbs, *x.shape[1:]),
                                    data)

            def minibatch(st2, xs):
                mb, k_bc = xs
                bc = None
                if use_bc:
                    def bc(variables):
                        return bc_loss(model, variables, bc_data, k_bc, config.il)
                (_, m), grads = grad_fn(st2.params, model, value_head, frozen["policy"], mb, cfg,
                                        bc)
                grads = mask_gradients(grads, cfg.trainable)
                m["grad_norm"] = optax.tree.norm(grads)
                return st2.apply_gradients(grads), m

            return jax.lax.scan(minibatch, st, (shuffled, jax.random.split(key, mbs)))

        state, learn = jax.lax.scan(epoch, state, jax.random.split(k_perm, int(cfg.epochs)))
        metrics = {k: jnp.mean(v) for k, v in learn.items()}
        metrics.update({f"reward/{k}": jnp.mean(v) for k, v in traj.rewards.items()})
        metrics.update({f"reward_first_step/{k}": jnp.mean(v[0]) for k, v in traj.rewards.items()})
        metrics["value_mean"] = jnp.mean(values)
        metrics["return_mean"] = jnp.mean(ret)
        metrics["adv_std"] = jnp.std(adv)
        metrics["plan_progress_m"] = jnp.mean(traj.chain.traj[..., -1, 0])
        return state, metrics

    return update


def jit_update(update: Callable, mesh=None, state_sharding=None, frozen_sharding=None
               ) -> Callable:
    """Jit an update; with a mesh: scenes split over it, state and frozen variables as
    ``state_sharding`` / ``frozen_sharding`` (``parallel.state_shardings``: FSDP; None:
    replicated), rng replicated."""
    if mesh is None:
        return jax.jit(update, donate_argnums=0)
    rep, dat = parallel.replicated(mesh), parallel.data_sharding(mesh)
    st = rep if state_sharding is None else state_sharding
    fr = rep if frozen_sharding is None else frozen_sharding
    return jax.jit(update, in_shardings=(st, fr, dat, rep), out_shardings=(st, rep),
                   donate_argnums=0)


# ----------------------------------------------------------------------------------------------
# The stage.

def _example_tokens(model, il_vars, config) -> SceneTokens:
    sizes = types.SceneSizes.from_config(config.data.sizes)
    example = types.zeros_scene(sizes, (1,), jnp)
    return jax.eval_shape(lambda v, s: policy_lib.encode(model, v, s).replace(aux={}),
                          il_vars, example)


def train(config, workdir: str, update_fn: Callable, state: TrainState, frozen,
          batches: Callable[[int], Any], *, rng: jax.Array, place: Callable | None = None,
          show_progress: bool = True) -> TrainState:
    """Run ``update_fn`` through the stage loop (``loop.run``) from the latest checkpoint in
    ``<workdir>/rl/checkpoints`` to ``ppo.num_updates``. batches(start) -> iterator of Scene [B]
    from update ``start`` on (deterministic); update u uses ``fold_in(rng, u)``, so a resumed
    run repeats an uninterrupted one. Returns the final state."""
    cfg = config.ppo
    result = loop.run(
        loop.LoopSpec.of("rl", cfg, num_steps_key="num_updates",
                         samples_per_step=config.data.batch_size * cfg.group_size),
        os.path.join(workdir, "rl"), lambda st, scene, r: update_fn(st, frozen, scene, r),
        state, batches, rng, config=config, place=place,
        postfix=lambda m: {k.split("/")[-1]: f"{m[k]:.3f}" for k in m if k.startswith("reward/")},
        show_progress=show_progress)
    return result.state


def run(config, workdir: str) -> dict:
    """``python launch.py rl``: fine-tune the IL policy with PPO against the RWM, evaluate the
    RL policy's true EPDMS on the held-out split next to the IL policy's, write
    ``<workdir>/rl/eval.json`` and print the table. Returns the eval dict."""
    from irlvla_jax import evaluate
    from irlvla_jax.data import loader
    cfg = config.ppo
    needed = "rl: stage 3 fine-tunes the IL policy against the reward world model"
    _, il_vars = stage_results.load_il_policy(config, workdir, needed)
    rwm_model = rwm_params = None
    if cfg.reward != "scorer":       # the true-scorer ablation needs no stage 2
        rwm_model, rwm_params = stage_results.load_reward_model(config, workdir, needed)
    model = policy_lib.VLAPolicy(stage_results.rl_model_config(config))
    mesh = parallel.make_mesh(config.mesh)
    parallel.check_batch_divisible(config.data.batch_size, mesh)
    rng = jax.random.PRNGKey(config.seed)
    k_init, k_train = jax.random.split(jax.random.fold_in(rng, 3))
    tokens = _example_tokens(model, il_vars, config)
    state = init_state(config, il_vars, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                                     tokens), k_init)
    use_scorer = cfg.reward == "scorer" or bool(cfg.log_scorer)
    reward_fn = make_reward_fn(rwm_model, rwm_params, use_scorer, bool(cfg.closed_loop_ec))
    state_sh = parallel.state_shardings(state, mesh, config.mesh)
    frozen = {"policy": il_vars}
    frozen_sh = parallel.state_shardings(frozen, mesh, config.mesh)
    frozen = jax.device_put(frozen, frozen_sh)
    update = jit_update(make_update(config, model, reward_fn), mesh, state_sh, frozen_sh)

    def batches(start):
        it = loader.make_loader(config, config.data.train_split, mesh, seed=config.seed + 3,
                                shuffle=config.data.shuffle, start_step=start)
        return (scene for scene, _ in it)

    state = train(config, workdir, update, state, frozen, batches, rng=k_train,
                  place=lambda st: jax.device_put(st, state_sh))

    # Streamed batch by batch (each process its rows), never the whole split in host memory.
    limit = None if cfg.eval_scenes < 0 else cfg.eval_scenes
    plan_fn = stage_results.deterministic_plan_fn(model)
    il_host = parallel.to_host(il_vars)
    rl_vars = stage_results.rl_policy_variables(il_host, parallel.to_host(state.params))
    table, _, _ = evaluate.evaluate_stream(
        {"il_policy": stage_results.as_planner(plan_fn, il_host),
         "rl_policy": stage_results.as_planner(plan_fn, rl_vars)},
        evaluate.split_batches(config, config.data.eval_split, mesh, limit))
    result = {"split": config.data.eval_split, "reward": cfg.reward,
              "advantage": cfg.advantage, "horizon": cfg.horizon,
              "epdms": table["rl_policy"]["epdms"], "policies": table}
    result.update({k: table["rl_policy"][k] for k in types.SUBSCORE_NAMES})
    tracking.write_result(os.path.join(workdir, "rl", "eval.json"), result)
    tracking.print_table(f"EPDMS on {config.data.eval_split} (rl: reward={cfg.reward}, "
                         f"advantage={cfg.advantage}, T={cfg.horizon})", table,
                         evaluate.COLUMNS)
    return result
