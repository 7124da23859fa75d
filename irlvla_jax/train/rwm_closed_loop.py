"""The reward world model on the states stage 3 shows it: closed-loop held-out quality.

Stage 2 trains and first judges the RWM on logged t = 0 frames; stage 3 asks it about the states
the policy drives into, which it re-observes (warped BEV features, shifted world). This module
measures the RWM there, with the same figures as ``rwm_quality`` (per-metric accuracy / AUC,
Spearman with the true EPDMS, regret of the RWM's pick), at planning steps T = 1 .. ``steps``:

    for each held-out batch, one compiled program (``lax.scan`` over the planning steps):
      T = 1 is the logged frame; before each later step the frozen IL policy's sampled plan is
      executed for 0.5 s (LQR + bicycle, ``rollout.execute``) and the world moves on
      (``rollout.advance_scene``), exactly as in a stage-3 episode. At every step:
        candidates: the logged expert future from the current pose (its invalid tail — past the
          end of the log — holds the last logged pose), ``irl.num_vocab`` vocabulary plans, the
          policy's top ``irl.num_policy`` modes planned on the re-observed tokens, and
          ``irl.num_perturb`` perturbed experts (the stage-2 recipe);
        labels: the true JAX scorer on the shifted scene;
        predictions: every RWM given, each reading what it reads in stage 3 (the sensor RWM the
          re-observed tokens, the privileged one the shifted scene's ground truth).

Known limits of the later steps, stated with the figures: EC is not labelled there (its
reference, the plan of 0.5 s earlier, would be the log's while the ego drove its own path:
``has_previous`` is False), and the log's agents end 4 s after t = 0, so at step T the last
0.5 (T - 1) s of a plan are scored against no agents (NC / TTC look easier than they are).

    result = evaluate(config, policy_model, policy_vars, {"sensor": (rwm, params)}, batches, rng)
"""

from __future__ import annotations

from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from irlvla_jax import geometry, parallel, types
from irlvla_jax.models import policy as policy_lib
from irlvla_jax.models import reward_model as rwm_lib
from irlvla_jax.sim.scorer import scorer_labels
from irlvla_jax.train import candidates as cand_lib
from irlvla_jax.train import rollout as rollout_lib
from irlvla_jax.train import rwm_quality


held_expert = cand_lib.held_expert


def advance(policy_model: policy_lib.VLAPolicy, policy_vars, scene: types.Scene, rng: jax.Array,
            max_steps: int):
    """Closed-loop training states for stage 2 (``irl.closed_loop_train_steps``): each scene
    [B] drives a uniform 0 .. ``max_steps`` planning steps of a stage-3 episode of the frozen IL
    policy (its sampled plan executed for 0.5 s, the world shifted, the BEV map warped and the
    tokens re-observed, as :func:`make_step`), one compiled scan of ``max_steps`` steps with the
    rows that stop earlier held. Returns (tokens of the state reached, its Scene [B] with
    ``has_previous`` False where the ego moved (EC unlabelled there, as in :func:`make_step`),
    moves [B] int32)."""
    b = scene.speed_limit.shape[0]
    k_n, k_steps = jax.random.split(rng)
    moves = jax.random.randint(k_n, (b,), 0, max_steps + 1)
    tokens0 = policy_lib.encode(policy_model, policy_vars, scene).replace(aux={})

    def body(carry, inputs):
        scn, state, pose, tokens = carry
        key, i = inputs
        chain = policy_lib.plan(policy_model, policy_vars, tokens, key, stochastic=True)
        end = rollout_lib.execute(chain.traj, state)[:, -1]
        scn2 = rollout_lib.advance_scene(scn, end)
        pose2 = geometry.to_global(end[:, :3], pose)
        tok2 = rollout_lib.reobserve(policy_model, policy_vars, tokens0.bev_map, pose2, scn2,
                                     tokens0.meta, tokens0.meta_logits).replace(aux={})
        go = i < moves

        def pick(new, old):
            return jax.tree.map(lambda x, y: jnp.where(go.reshape((b,) + (1,) * (x.ndim - 1)),
                                                       x, y), new, old)
        return (pick(scn2, scn), pick(rollout_lib.reframe_state(end), state), pick(pose2, pose),
                pick(tok2, tokens)), None

    carry0 = (scene, rollout_lib.initial_states(scene), jnp.zeros((b, 3), jnp.float32), tokens0)
    (scn, _, _, tokens), _ = jax.lax.scan(
        body, carry0, (jax.random.split(k_steps, max_steps), jnp.arange(max_steps)))
    return tokens, scn.replace(has_previous=scn.has_previous & (moves == 0)), moves


def make_step(config, policy_model: policy_lib.VLAPolicy,
              rwms: Mapping[str, rwm_lib.RewardModel], steps: int, label_fn=scorer_labels):
    """(policy_vars, vocab [M,8,3], rwm_params {name: params}, scene [B], rng) -> dict of
    [steps, ...] arrays: per RWM name its predictions next to the labels
    (``reward_model.prediction_outputs``), ``source`` [steps, K] and the candidates ``trajs``
    [steps, B, K, 8, 3] (each in its step's ego frame). Not jitted (see :func:`evaluate`)."""
    icfg = config.irl

    def step(policy_vars, vocab, rwm_params, scene, rng):
        rollout_lib.check_episode_length(steps, scene.agent_valid.shape[-1],
                                         "config.irl.closed_loop_steps")
        tokens0 = policy_lib.encode(policy_model, policy_vars, scene).replace(aux={})

        def observe(scn, pose):
            return rollout_lib.reobserve(policy_model, policy_vars, tokens0.bev_map, pose, scn,
                                         tokens0.meta, tokens0.meta_logits).replace(aux={})

        def body(carry, inputs):
            scn, state, pose = carry
            key, t = inputs
            tokens = jax.lax.cond(t == 0, lambda: tokens0, lambda: observe(scn, pose))
            k_plan, k_cand = jax.random.split(key)
            chain = policy_lib.plan(policy_model, policy_vars, tokens, k_plan, stochastic=True)
            policy_trajs = cand_lib.top_modes(chain, icfg.num_policy) if icfg.num_policy else None
            trajs, source = cand_lib.make_candidates(
                held_expert(scn), vocab, policy_trajs, k_cand,
                icfg.num_vocab, icfg.num_perturb, icfg.perturb)
            # EC is labelled on the logged frame only (see the module docstring).
            labelled = scn.replace(has_previous=scn.has_previous & (t == 0))
            labels = label_fn(labelled, trajs)
            out = {name: rwm_lib.prediction_outputs(m, rwm_params[name], labelled, trajs,
                                                    tokens, labels)
                   for name, m in rwms.items()}
            out["source"], out["trajs"] = source, trajs
            # the policy's plan is executed for 0.5 s and the world moves on (stage 3's step)
            end = rollout_lib.execute(chain.traj, state)[:, -1]
            carry = (rollout_lib.advance_scene(scn, end), rollout_lib.reframe_state(end),
                     geometry.to_global(end[:, :3], pose))
            return carry, out

        b = scene.speed_limit.shape[0]
        carry0 = (scene, rollout_lib.initial_states(scene), jnp.zeros((b, 3), jnp.float32))
        keys = jax.random.split(rng, steps)
        _, outs = jax.lax.scan(body, carry0, (keys, jnp.arange(steps)))
        return outs
    return step


def evaluate(config, policy_model, policy_vars, rwms: Mapping[str, tuple], batches: Iterable,
             rng: jax.Array, steps: int, train_means: Mapping[str, Mapping[str, float]] | None
             = None, step_fn=None) -> dict[str, dict[str, dict]]:
    """Closed-loop quality of each RWM: {name: {"T1": metrics, ..., "T<steps>": metrics}}
    (``rwm_quality.quality_metrics`` rows "rwm", plus "num_scenes" and the candidates' mean
    true EPDMS); ``rwms`` maps a name to (RewardModel, params); ``train_means`` maps a name to
    its training label statistics; ``step_fn``: an already jitted :func:`make_step` of the
    same models and steps (default: compile one)."""
    models = {k: m for k, (m, _) in rwms.items()}
    params = {k: p for k, (_, p) in rwms.items()}
    vocab = policy_lib.get_anchors(policy_vars)
    fn = step_fn or jax.jit(make_step(config, policy_model, models, steps))
    cat: dict[str, dict[str, list]] = {k: {} for k in rwms}
    source = None
    for i, scene in enumerate(batches):
        out = parallel.to_host(fn(policy_vars, vocab, params, scene, jax.random.fold_in(rng, i)))
        source = np.asarray(out.pop("source"))[0]
        out.pop("trajs")
        for name, o in out.items():
            for k, v in o.items():
                cat[name].setdefault(k, []).append(np.asarray(v))
    if source is None:
        raise ValueError("rwm_closed_loop.evaluate: no held-out batch to evaluate")
    result = {}
    for name, arrays in cat.items():
        arrays = {k: np.concatenate(v, axis=1) for k, v in arrays.items()}     # [steps, N, ...]
        rows = {}
        for t in range(steps):
            o = {k: v[t] for k, v in arrays.items() if k != "source"}
            o["source"] = source
            row = rwm_quality.quality_metrics(o, (train_means or {}).get(name))["rwm"]
            row["num_scenes"] = int(o["true"].shape[0])
            row["true_epdms_mean"] = float(np.mean(o["true"]))
            rows[f"T{t + 1}"] = row
        result[name] = rows
    return result


#: The columns the closed-loop table prints.
TABLE_COLUMNS = ["auc_dac", "auc_ttc", "acc_nc", "acc_ddc", "mae_ep", "spearman", "regret",
                 "true_epdms_mean"]
