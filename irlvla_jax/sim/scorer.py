"""The EPDMS scorer API: plans in, NAVSIM v2 sub-scores out (spec/EPDMS.md §1, §3.5, §6.4).

    sub, details = score(scenes, plans)          # scenes [B], plans [B, K, 8, 3]
    sub.epdms()                                  # [B, K]

Per scene the per-scene work is done once and shared by its K candidates: the scoring
observation (log replay), the PDM-Closed reference (EP normaliser) and the human expert's
trajectory (human filter). Each candidate is simulated (LQR + bicycle), scored together with
the reference, and its sub-scores assembled. Everything is pure ``jnp`` — jit it
(:data:`score_jit`) and shard the batch axis over a mesh.

A plan with a non-finite (NaN or inf) pose scores 0 on every sub-metric (NC, DAC, DDC, TLC, EP,
TTC, LK, HC, EC; the human filter does not lift them), hence EPDMS and PDMS 0. NAVSIM has no
score for it: its Python scorer raises or computes on NaN geometry, and ``run_pdm_score.py``
marks a token whose scoring raised invalid and leaves it out of the averages. A batched, jitted
scorer can neither raise nor drop one candidate, and leaving it out would reward a planner for
emitting NaN; the worst score is the honest equivalent, and it keeps per-metric means and the
reward model's labels from crediting such a plan. Finite plans are unaffected.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from irlvla_jax import types
from irlvla_jax.sim import comfort, metrics, observation, pdm_closed, simulate
from irlvla_jax.sim.trajectory import NUM_STEPS, STATE_DIM

#: Sub-metrics the human filter may lift (EC is not among them; spec §6.4).
HUMAN_FILTER_METRICS = ("nc", "dac", "ddc", "tlc", "ep", "ttc", "lk", "hc")
#: Two-stage weights exp(-d^2 / (2 sigma^2)) with sigma^2 = 0.1 (navsim scene_aggregator).
TWO_STAGE_SIGMA2 = 0.1


@flax.struct.dataclass
class ScoreDetails:
    """What the scorer computed on the way (leading axes [B] or [B, K] as noted).

    states [B,K,41,11]: the simulated candidates. reference_states [B,41,11]: PDM-Closed
    simulated; reference_poses [B,51,3]: its IDM poses (zeros when the reference was passed in
    as states). human_states [B,41,11]: the simulated expert. raw: ``metrics.score_states``
    dict for the candidates ([B,K] sub-metrics and [B,K,41] ego-area flags; ``area_overflow``
    [B,K,41] marks poses with a point in more than ``ego_area.AREA_CAPACITY`` polygon boxes and
    ``agent_overflow`` [B,K,41] steps near more than ``metrics.AGENT_CAPACITY`` agents, where
    the exact fallback recomputed the flags / NC and TTC against everything: diagnostics only,
    the results are exact either way).
    reference_progress, reference_multiplier [B]. unfiltered: SubScores [B,K] before the human
    filter. human: SubScores [B] of the expert. pdms_v1 [B,K]: NAVSIM v1 PDMS. epdms [B,K].
    """
    states: Any
    reference_states: Any
    reference_poses: Any
    human_states: Any
    raw: Any
    reference_progress: Any
    reference_multiplier: Any
    unfiltered: types.SubScores
    human: types.SubScores
    pdms_v1: Any
    epdms: Any


def pdms_v1(sub: types.SubScores, trajectory_comfort):
    """NAVSIM v1 PDMS = NC * DAC * (5 TTC + 5 EP + 2 C) / 12, C the comfort of the simulated
    trajectory alone. sub: SubScores [...], trajectory_comfort [...] -> [...]."""
    return sub.nc * sub.dac * (5 * sub.ttc + 5 * sub.ep + 2 * trajectory_comfort) / 12.0


def apply_human_filter(agent: types.SubScores, human: types.SubScores, applies):
    """Lift every sub-metric the human scores exactly 0 on to 1 for the agent (spec §6.4).

    agent: SubScores [..., K]; human: SubScores [...]; applies: bool [...] (original scenes).
    """
    def lift(name):
        a, h = getattr(agent, name), getattr(human, name)[..., None]
        return jnp.where(applies[..., None] & (h == 0.0), 1.0, a)
    return agent.replace(**{n: lift(n) for n in HUMAN_FILTER_METRICS})


def _worst_unless(valid, sub: types.SubScores):
    """sub with every sub-score 0 where ``valid`` is False. valid [...] bool, sub [...]."""
    return sub.replace(**{n: jnp.where(valid, getattr(sub, n), 0.0)
                          for n in types.SUBSCORE_NAMES})


def _score_scene(scene, plans, prev_states, obs, ref_states, human_filter):
    """One scene: plans [K,8,3], prev_states [K,41,11] or None, ref_states [41,11]."""
    states = jax.vmap(simulate.simulate_plan, in_axes=(None, 0))(scene, plans)
    human_states = simulate.simulate_plan(scene, scene.expert_future[:types.PLAN_LEN])
    # One scoring pass for reference, human and candidates: they share observation and map.
    raw = metrics.score_states(
        jnp.concatenate([ref_states[None], human_states[None], states]), obs, scene)
    multi = metrics.multiplier(raw)
    # Each candidate is normalised against the reference alone, as NAVSIM scores the pair
    # {PDM-Closed, agent} together.
    ep = metrics.normalise_progress(raw["progress"], multi, raw["progress"][0], multi[0])
    # The human filter scores the human on its own, a batch of one trajectory without
    # PDM-Closed (navsim/evaluate/pdm_score.py), so its EP is normalised against itself: 1 in
    # every case (raw / (raw * multi) >= 1 above 5 m, else 1), and the filter never lifts EP.
    human_ep = metrics.normalise_progress(raw["progress"][1], multi[1], raw["progress"][1],
                                          multi[1])
    k = plans.shape[0]
    ones = jnp.ones((k,), jnp.float32)
    if prev_states is None:
        ec, ec_weight = ones, 0.0 * ones
    else:
        ec = jax.vmap(comfort.extended_comfort)(states, prev_states)
        ec_weight = jnp.where(scene.has_previous, 1.0, 0.0) * ones
    agent = types.SubScores(
        nc=raw["nc"][2:], dac=raw["dac"][2:], ddc=raw["ddc"][2:], tlc=raw["tlc"][2:],
        ep=ep[2:], ttc=raw["ttc"][2:], lk=raw["lk"][2:],
        hc=jax.vmap(comfort.history_comfort, in_axes=(0, None))(states, scene),
        ec=ec, ec_weight=ec_weight)
    # The human is scored without history (HC = 1) and has no EC.
    human = types.SubScores(
        nc=raw["nc"][1], dac=raw["dac"][1], ddc=raw["ddc"][1], tlc=raw["tlc"][1], ep=human_ep,
        ttc=raw["ttc"][1], lk=raw["lk"][1], hc=jnp.float32(1.0), ec=jnp.float32(1.0),
        ec_weight=jnp.float32(0.0))
    filtered = apply_human_filter(agent, human, jnp.asarray(scene.is_original)) \
        if human_filter else agent
    v1 = pdms_v1(agent, jax.vmap(comfort.trajectory_comfort)(states))
    epdms = filtered.epdms()
    # Non-finite plans score 0 everywhere (module docstring). Zeroed last: EPDMS computed from
    # zeroed sub-scores is fused differently by XLA and moves finite plans' EPDMS by an ulp.
    finite = jnp.isfinite(plans).all((1, 2)) & jnp.isfinite(states).all((1, 2))
    agent, filtered = _worst_unless(finite, agent), _worst_unless(finite, filtered)
    v1, epdms = jnp.where(finite, v1, 0.0), jnp.where(finite, epdms, 0.0)
    cand_raw = jax.tree.map(lambda x: x[2:], raw)
    details = ScoreDetails(
        states=states, reference_states=ref_states, reference_poses=None,
        human_states=human_states, raw=cand_raw, reference_progress=raw["progress"][0],
        reference_multiplier=multi[0], unfiltered=agent, human=human, pdms_v1=v1,
        epdms=epdms)
    return filtered, details


def _check(scene, plans, prev_states):
    b = scene.batch_shape
    if len(b) != 1:
        raise ValueError(f"score: scene must be batched [B], got batch shape {b}")
    if plans.ndim != 4 or plans.shape[0] != b[0] or plans.shape[2:] != (types.PLAN_LEN, 3):
        raise ValueError(f"score: plans has shape {plans.shape}, expected ({b[0]}, K, "
                         f"{types.PLAN_LEN}, 3)")
    if prev_states is not None:
        want = (NUM_STEPS + 1, STATE_DIM)
        if prev_states.shape[-2:] != want or prev_states.shape[0] != b[0] or \
                prev_states.ndim not in (3, 4):
            raise ValueError(f"score: prev_states has shape {prev_states.shape}, expected "
                             f"({b[0]}, [K,] {want[0]}, {want[1]})")


def score_with(scene, plans, obs, reference_states, prev_states=None, *, human_filter=True):
    """Score plans against a given observation and reference trajectory (no PDM-Closed run).

    Args:
      scene: Scene batched [B].
      plans: [B, K, 8, 3] poses at 0.5 s in the t = 0 rear-axle frame.
      obs: Observation batched [B] (``irlvla_jax.sim.observation``), >= 41 time indices.
      reference_states: [B, 41, 11] the simulated reference (PDM-Closed) trajectory.
      prev_states: optional [B, 41, 11] or [B, K, 41, 11] simulated states of the plan made
        0.5 s earlier (EC); None -> EC weight 0.
      human_filter: apply the human filter on original scenes (static).
    Returns:
      (SubScores [B, K], ScoreDetails); a plan with a non-finite pose scores 0 on every
      sub-metric (module docstring).
    """
    plans = jnp.asarray(plans, jnp.float32)
    _check(scene, plans, prev_states)
    if prev_states is not None and prev_states.ndim == 3:
        prev_states = jnp.broadcast_to(prev_states[:, None], plans.shape[:2] + prev_states.shape[1:])
    return jax.vmap(_score_scene, in_axes=(0, 0, 0, 0, 0, None))(
        scene, plans, prev_states, obs, reference_states, human_filter)


def score(scene, plans, prev_states=None, *, human_filter=True):
    """Score K candidate plans per scene with NAVSIM v2 EPDMS (log-replay traffic).

    Args:
      scene: Scene batched [B].
      plans: [B, K, 8, 3] (x, y, heading) at t = 0.5 .. 4 s, t = 0 rear-axle frame.
      prev_states: optional [B, 41, 11] or [B, K, 41, 11] (see :func:`score_with`).
      human_filter: apply the human filter on original scenes (static under jit).
    Returns:
      (SubScores [B, K], ScoreDetails); ``sub.epdms()`` is the per-candidate EPDMS. A plan
      with a non-finite pose scores 0 on every sub-metric (module docstring).
    """
    _check(scene, jnp.asarray(plans), prev_states)       # before the expensive per-scene work
    obs = jax.vmap(observation.build_observation)(scene)
    ref_poses, ref_states = jax.vmap(pdm_closed.pdm_closed)(scene)
    sub, details = score_with(scene, plans, obs, ref_states, prev_states,
                              human_filter=human_filter)
    return sub, details.replace(reference_poses=ref_poses)


#: ``score`` compiled; ``human_filter`` is static.
score_jit = jax.jit(score, static_argnames=("human_filter",))


def scorer_labels(scene, trajs) -> types.SubScores:
    """The scorer's sub-scores as training labels (the reward model's targets, PPO's reward):
    human filter on, EC against the expert's plan made 0.5 s earlier
    (``simulate.previous_frame_states``), EC weight = ``scene.has_previous``; no gradient.

    scene: Scene batched [B]; trajs: [B, K, 8, 3] plans (as :func:`score`) -> SubScores [B, K].
    """
    sub, _ = score(scene, trajs, simulate.previous_frame_states(scene), human_filter=True)
    return jax.lax.stop_gradient(sub)


# ----------------------------------------------------------------------------------------------
# Aggregation over scenes

def two_stage_weights(endpoint, starts, valid):
    """Stage-2 weights of a two-stage (navhard) group (spec §1, §6.4).

    endpoint [..., 2]: the agent's raw stage-1 plan endpoint; starts [..., S, 2]: the stage-2
    scenes' start positions (same frame); valid [..., S] bool -> weights [..., S] summing to 1
    over valid scenes, exp(-d^2 / 0.2) normalised, uniform where they sum to ~0.
    """
    d2 = jnp.sum((starts - endpoint[..., None, :]) ** 2, -1)
    w = jnp.where(valid, jnp.exp(-d2 / (2 * TWO_STAGE_SIGMA2)), 0.0)
    total = w.sum(-1, keepdims=True)
    uniform = valid / jnp.maximum(valid.sum(-1, keepdims=True), 1)
    return jnp.where(total > 1e-12, w / jnp.where(total > 0, total, 1.0), uniform)


def two_stage_score(stage1, stage2, endpoint, starts, valid):
    """Two-stage EPDMS (navsim ``scene_aggregator``).

    Args:
      stage1: [G, F] stage-1 EPDMS of each group's original scene at F frames (F = 2: now and
        0.5 s earlier).
      stage2: [G, F, S] EPDMS of the stage-2 follow-up scenes; valid [G, F, S] bool.
      endpoint: [G, F, 2] agent's stage-1 endpoint; starts: [G, F, S, 2] stage-2 starts.
    Returns:
      (group [G] = mean over frames of stage1 * weighted stage2, final [] = mean over groups).
    """
    w = two_stage_weights(endpoint, starts, valid)
    s2 = jnp.sum(w * stage2, -1)
    group = jnp.mean(stage1 * s2, -1)
    return group, jnp.mean(group)
