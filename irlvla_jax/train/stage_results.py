"""A previous stage's result, loaded for the next one: checkpoints of ``<workdir>/{il,irl,rl}``.

    model, variables = stage_results.load_il_policy(config, workdir)        # stage 2 and 3
    rwm, params = stage_results.load_reward_model(config, workdir)          # stage 3
    planner = stage_results.rl_planner(config, workdir)                     # evaluation

A missing stage is a ``SystemExit`` that names the command to run; a stage trained with another
model configuration (its ``config.json`` differs on a structural field) says which fields
changed instead of failing inside orbax with a shape error.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from irlvla_jax import types
from irlvla_jax.checkpoint import Checkpointer
from irlvla_jax.models import anchors as anchors_lib
from irlvla_jax.models import policy as policy_lib
from irlvla_jax.models import reward_model as rwm_lib
from irlvla_jax.train import loop

Planner = Callable[[types.Scene], np.ndarray]
STAGE_TITLES = {"il": "stage-1 (IL)", "irl": "stage-2 (reward world model)",
                "rl": "stage-3 (RL)"}


def checkpoint_dir(workdir: str, stage: str) -> str | None:
    """The folder holding the stage's latest checkpoint (``<workdir>/<stage>/checkpoints``), or
    None when the stage has not saved one."""
    d = os.path.join(workdir, stage, "checkpoints")
    if os.path.isdir(d) and Checkpointer(d).latest_step is not None:
        return d
    return None


def find_stage(config, workdir: str, stage: str) -> str | None:
    """The run folder whose ``<stage>`` has a checkpoint: ``workdir``, else
    ``config.previous_stages_dir`` (an ablation of a later stage reusing earlier ones), else
    None."""
    for root in (workdir, config.get("previous_stages_dir", "") or None):
        if root and checkpoint_dir(root, stage) is not None:
            return root
    return None


def require(config, workdir: str, stage: str, needed_by: str) -> str:
    """The stage's checkpoint folder; SystemExit saying what to run when it is missing or was
    trained with another model configuration. needed_by: who asks, e.g. "irl: stage 2 samples
    candidates from the IL policy"."""
    root = find_stage(config, workdir, stage)
    if root is None:
        where = os.path.join(workdir, stage)
        prev = config.get("previous_stages_dir", "")
        if prev:
            where += f" or {os.path.join(prev, stage)}"
        raise SystemExit(f"{needed_by}; no {STAGE_TITLES[stage]} checkpoint under {where}: "
                         f"run `python launch.py {stage}` first (with the same --workdir)")
    stage_dir = os.path.join(root, stage)
    loop.check_config(stage_dir, config, f"the {STAGE_TITLES[stage]} checkpoint under "
                                         f"{stage_dir}")
    return checkpoint_dir(root, stage)


def _restore_raw(ckpt_dir: str):
    """The latest checkpoint as saved (no target: optimizer states of other stages are not
    needed): (state tree, extra)."""
    ck = Checkpointer(ckpt_dir)
    raw, _, extra = ck.restore(ck.latest_step, None)
    return raw, extra


def _field(raw: Any, name: str):
    return raw[name] if isinstance(raw, Mapping) else getattr(raw, name)


def load_il_policy(config, workdir: str, needed_by: str = "this stage needs the IL policy"):
    """The frozen stage-1 policy: (VLAPolicy, variables ``{'params', 'anchors', ...}``)."""
    raw, extra = _restore_raw(require(config, workdir, "il", needed_by))
    variables = {"params": _field(raw, "params"), **dict(_field(raw, "model_state") or {})}
    variables = jax.tree.map(jnp.asarray, variables)
    if "anchors" not in variables:
        path = extra.get("anchors_file") or anchors_lib.anchor_path(config)
        variables = policy_lib.set_anchors(variables, anchors_lib.load_anchors(
            path, config.model.planner.num_anchors))
    return policy_lib.VLAPolicy(config.model), variables


def load_reward_model(config, workdir: str,
                      needed_by: str = "this stage needs the reward world model"):
    """The trained stage-2 reward world model: (RewardModel, params)."""
    raw, _ = _restore_raw(require(config, workdir, "irl", needed_by))
    params = jax.tree.map(jnp.asarray, _field(raw, "params"))
    return rwm_lib.RewardModel(config.rwm), params


def rl_model_config(config):
    """``config.model`` with the planner's chain noise (eta, sigma floors, white or smooth
    noise) taken from ``config.ppo``: RL samples and re-evaluates chains with the same noise."""
    m = copy.deepcopy(config.model)
    with m.unlocked():
        m.planner.eta = float(config.ppo.eta)
        m.planner.sigma_min_sample = float(config.ppo.sigma_min_sample)
        m.planner.sigma_min_logprob = float(config.ppo.sigma_min_logprob)
        m.planner.chain_noise = str(config.ppo.get("chain_noise", "white"))
        m.planner.chain_noise_dims = int(config.ppo.get("chain_noise_dims", 3))
    return m


def rl_policy_variables(frozen_policy: Mapping[str, Any], params: Mapping[str, Any]) -> dict:
    """The RL policy's variables: the frozen IL variables (``{'params', 'anchors', ...}``)
    whose ``params['planner']`` is the RL state's ``params['planner']``."""
    p = dict(frozen_policy["params"])
    p["planner"] = params["planner"]
    return {**frozen_policy, "params": p}


# ----------------------------------------------------------------------------------------------
# Trained policies as planners for evaluation.

def deterministic_plan_fn(model: policy_lib.VLAPolicy) -> Callable:
    """Jitted ``plan(variables, scene [B]) -> [B,8,3]``: the DDIM means (eta 0, no sampling
    noise) of the classifier's best mode."""
    @jax.jit
    def plan(variables, scene):
        tokens = policy_lib.encode(model, variables, scene)
        return policy_lib.plan(model, variables, tokens, jax.random.PRNGKey(0),
                               stochastic=False, eta=0.0).traj
    return plan


def as_planner(plan_fn: Callable, variables) -> Planner:
    """A host planner: Scene [B] (numpy or jax) -> np.ndarray [B,8,3]."""
    def planner(scene):
        return np.asarray(plan_fn(variables, jax.tree.map(jnp.asarray, scene)))
    return planner


def il_planner(config, workdir: str) -> Planner:
    """The latest IL checkpoint as a deterministic planner."""
    model, variables = load_il_policy(config, workdir, "eval: scoring the IL policy")
    return as_planner(deterministic_plan_fn(model), variables)


def rl_planner(config, workdir: str) -> Planner:
    """The latest RL checkpoint (its trained planner on the frozen IL encoders) as a
    deterministic planner."""
    raw, _ = _restore_raw(require(config, workdir, "rl", "eval: scoring the RL policy"))
    _, il_vars = load_il_policy(config, workdir, "eval: the RL policy's encoders are the IL "
                                                 "policy's")
    params = jax.tree.map(jnp.asarray, _field(raw, "params"))
    model = policy_lib.VLAPolicy(rl_model_config(config))
    return as_planner(deterministic_plan_fn(model), rl_policy_variables(il_vars, params))


def trained_planners(config, workdir: str) -> dict[str, Planner]:
    """The trained policies found under workdir: ``il_policy`` and ``rl_policy`` where their
    stage has a checkpoint."""
    found = {}
    for name, stage, fn in (("il_policy", "il", il_planner), ("rl_policy", "rl", rl_planner)):
        if find_stage(config, workdir, stage) is not None:
            found[name] = fn(config, workdir)
    return found
