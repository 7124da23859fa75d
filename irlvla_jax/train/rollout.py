"""Closed-loop rollouts of the diffusion policy inside the world model (stage 3).

An episode is T planning steps of 0.5 s, for N = B x G rows (G samples of each of B scenes).
At every step, for every row:

1. the policy plans from the current ego state: a stochastic DDIM chain (its per-step Gaussian
   log-probs and the classifier's sampled mode are stored for PPO);
2. the reward function scores the plan in the current scene (RWM by default, the true scorer as
   an ablation; both can be logged). The scene's agents and lights are the log's at
   t*0.5 .. t*0.5 + 4 s: episodes are at most ``types.MAX_CLOSED_LOOP_STEPS`` (3) steps long,
   so no step is scored against agents the log does not have (:func:`check_episode_length`).
   It also gets the plan's extended comfort (EC): from the second step on, the plan is
   compared with the plan of the step before, both simulated for 4 s from their own start
   state (``comfort.extended_comfort``), which is what NAVSIM's EC measures between
   consecutive frames. EC depends on the ego's own two plans only, not on the world, so it is
   computed exactly whatever the reward source;
3. the ego executes the first 0.5 s of the plan: the LQR tracker + kinematic bicycle of
   ``irlvla_jax.sim`` for 5 steps of 0.1 s, starting from the carried ego state (speed,
   acceleration, steering are kept across steps; the pose is re-zeroed in each new frame);
4. the world moves on: ``scene_ops.shift_scene(scene, executed pose, steps=1)`` re-expresses map,
   lanes, route and agents in the new ego frame and advances the log by one 2 Hz frame, so the
   other agents follow their logged futures. The ego's own history / velocity / acceleration are
   then overwritten with what it *executed* (the log's ego is not the policy's ego);
5. the policy re-observes the scene without re-rendering its cameras: the t = 0 BEV feature map
   is warped by the SE(2) ego motion since t = 0 (bilinear resampling of every cell centre;
   cells that come from outside the t = 0 map are 0), and the tokens downstream of the BEV map
   are recomputed from it (``VLAPolicy.tokens_from_bev``): detection/object tokens and map-head
   tokens from the warped map, lane tokens and the ego status from the shifted scene's vectors
   (these equal a fresh encoding of the shifted scene). The semantic reasoner's meta tokens
   depend only on the cameras and the command and are kept from t = 0.

Everything is one ``lax.scan`` over T inside the caller's jit. Shapes: ``N = B * G``; the rows of
scene b are ``b * G .. b * G + G - 1``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from irlvla_jax import geometry, scene_ops, types
from irlvla_jax.models import bev as bev_lib
from irlvla_jax.models import policy as policy_lib
from irlvla_jax.models.planner import Chain, SceneTokens
from irlvla_jax.sim import bicycle, comfort, lqr, trajectory
from irlvla_jax.sim.trajectory import StateIndex as S

STEPS_PER_PLAN = round(trajectory.PLAN_DT / trajectory.DT)   # 5 bicycle steps per 0.5 s

#: reward_fn(scene [N], plans [N,8,3], tokens SceneTokens [N], ec (value [N], weight [N]))
#: -> dict name -> [N] f32. tokens: what the policy observed (for an RWM that reads them); ec:
#: the plan's extended comfort against the previous step's plan, weight 0 at the first step
#: (no previous plan). The rollout stores every entry; PPO chooses which one it trains on.
RewardFn = Callable[[types.Scene, jax.Array, SceneTokens, tuple[jax.Array, jax.Array]],
                    Mapping[str, jax.Array]]


class Transition(NamedTuple):
    """One planning step of N rows (stacked to [T, N, ...] by the scan).

    tokens: SceneTokens [N,...] the planner read (aux dropped) — PPO re-evaluates the stored
      chain on them under new planner parameters.
    chain: Chain [N,...] the sampled denoising chain (x [N,S+1,M,8,3], logprob [N,S], mode [N]).
    rewards: dict name -> [N] (e.g. 'rwm', 'scorer').
    pose: [N,3] the ego's rear-axle pose at the start of the step, in the t = 0 frame.
    states: [N,6,11] the executed ego states of the step (row 0 = the start), in the step's frame.
    ec, ec_weight: [N] the plan's extended comfort against the previous step's plan, and 1 where
      it counts (every step but the first).
    """
    tokens: SceneTokens
    chain: Chain
    rewards: dict
    pose: jax.Array
    states: jax.Array
    ec: jax.Array
    ec_weight: jax.Array


# ----------------------------------------------------------------------------------------------
# Episode length.

def check_episode_length(num_steps: int, agent_frames: int = types.NUM_AGENT_STEPS,
                         what: str = "config.ppo.horizon") -> None:
    """Refuse closed-loop episodes that would be scored against agents the log does not have.

    At planning step t (0-based) the world has advanced t frames, and the 4 s plan is scored
    against log frames t .. t + 8 (``types.SCORED_AGENT_STEPS``). A Scene stores
    ``agent_frames`` frames (11: 0 .. 5 s, navtrain's 10 future frames), so an episode may have
    at most ``agent_frames - 8`` planning steps (3); past that, NC / TTC / TLC of the last
    steps would see no agents or lights in their final seconds and look better than they are.
    """
    limit = int(agent_frames) - types.SCORED_AGENT_STEPS + 1
    if not 1 <= int(num_steps) <= limit:
        raise ValueError(
            f"{what} = {num_steps}: a closed-loop episode may have 1 .. {limit} planning steps of "
            f"0.5 s: step t is scored against logged agents and lights at t*0.5 .. t*0.5 + 4 s, "
            f"and the log's agents end at {0.5 * (int(agent_frames) - 1):g} s "
            f"({agent_frames} frames of 2 Hz). Lower it to {limit} or less.")


# ----------------------------------------------------------------------------------------------
# Ego motion.

def execute(plan: jax.Array, state: jax.Array, num_steps: int = STEPS_PER_PLAN) -> jax.Array:
    """Track the plan with the LQR controller + bicycle model for ``num_steps`` x 0.1 s.

    plan [...,8,3] poses in the frame where ``state`` [...,11] has its pose (normally (0,0,0))
    -> [...,num_steps+1,11] states (row 0 = ``state``). The velocity/curvature profile fit is the
    simulator's (``lqr.fit_profiles`` on the 41 reference poses), so the first 5 steps equal
    ``sim.simulate.simulate`` from the same state.
    """
    if plan.shape[-2:] != (types.PLAN_LEN, 3) or state.shape[-1] != trajectory.STATE_DIM:
        raise ValueError(f"execute: plan {plan.shape} / state {state.shape}, expected "
                         f"(..., {types.PLAN_LEN}, 3) / (..., {trajectory.STATE_DIM})")
    lead = plan.shape[:-2]
    ref = trajectory.reference_poses(plan).reshape(-1, trajectory.NUM_STEPS + 1, 3)
    st0 = state.reshape(-1, trajectory.STATE_DIM)

    def one(ref_poses, s0):
        velocity, curvature = lqr.fit_profiles(ref_poses)

        def body(s, i):
            nxt = bicycle.step(s, lqr.control(i, s, ref_poses, velocity, curvature))
            return nxt, nxt

        _, states = jax.lax.scan(body, s0, jnp.arange(num_steps))
        return jnp.concatenate([s0[None], states], axis=0)

    out = jax.vmap(one)(ref, st0)
    return out.reshape(*lead, num_steps + 1, trajectory.STATE_DIM)


def initial_states(scene: types.Scene) -> jax.Array:
    """Scene [N] -> [N,11] the true ego state at t = 0 (``trajectory.initial_state``)."""
    return jax.vmap(trajectory.initial_state)(scene)


def reframe_state(state: jax.Array) -> jax.Array:
    """[...,11] -> the same state in its own rear-axle frame: pose (0,0,0); the body-frame
    speeds, accelerations and steering do not depend on the frame."""
    return state.at[..., S.X].set(0.0).at[..., S.Y].set(0.0).at[..., S.HEADING].set(0.0)


def advance_scene(scene: types.Scene, state: jax.Array) -> types.Scene:
    """Move the world to the ego's executed pose, one 2 Hz frame later.

    scene: Scene [N] in the frame of the step's start; state: [N,11] the executed state after
    0.5 s, in that frame. Returns Scene [N] in the new ego frame, with agents/lights one frame
    on (``shift_scene``) and the ego history / velocity / acceleration replaced by the executed
    ones (the oldest history row drops out).
    """
    pose = state[..., :3]
    moved = jax.vmap(scene_ops.shift_scene, in_axes=(0, 0, None))(scene, pose, 1)
    hist = jnp.concatenate([scene.ego_history[:, 1:], pose[:, None]], axis=1)     # old frame
    hist = geometry.to_local(hist, pose[:, None])
    vel = jnp.stack([state[..., S.VX], state[..., S.VY]], -1)
    acc = jnp.stack([state[..., S.AX], state[..., S.AY]], -1)
    hist_vel = jnp.concatenate([scene.ego_history_velocity[:, 1:], vel[:, None]], axis=1)
    hist_acc = jnp.concatenate([scene.ego_history_acceleration[:, 1:], acc[:, None]], axis=1)
    return moved.replace(ego_history=hist, ego_history_velocity=hist_vel,
                         ego_history_acceleration=hist_acc, ego_velocity=vel,
                         ego_acceleration=acc,
                         ego_history_time=jnp.broadcast_to(
                             jnp.asarray([-1.5, -1.0, -0.5, 0.0], jnp.float32),
                             scene.ego_history_time.shape))


# ----------------------------------------------------------------------------------------------
# Re-observation.

def warp_bev(bev_map: jax.Array, pose: jax.Array, range_m: float) -> jax.Array:
    """Re-express a BEV feature map in the frame of a moved ego (SE(2) warp, bilinear).

    bev_map [N,H,W,D] in the frame where ``pose`` [N,3] is the new rear-axle origin; layout of
    ``bev.bev_cell_centers`` (row 0 = x = +r ahead, column 0 = y = +r left) over [-r, r]^2.
    Returns [N,H,W,D]: cell (i, j) holds the old map sampled at the point the new cell centre
    occupies; points outside the old map read 0.
    """
    n, h, w, d = bev_map.shape
    centers = jnp.asarray(bev_lib.bev_cell_centers((h, w), range_m))              # [H,W,2]
    pts = jnp.concatenate([centers, jnp.zeros((h, w, 1), jnp.float32)], -1)
    old = geometry.to_global(pts[None], pose[:, None, None, :])[..., :2]          # [N,H,W,2]
    coords = jnp.stack(bev_lib.bev_cell_coords(old, (h, w), range_m))             # [2,N,H,W]

    def one(img, rc):       # img [H,W,D], rc [2,H,W]
        return jax.vmap(lambda ch: jax.scipy.ndimage.map_coordinates(
            ch, [rc[0], rc[1]], order=1, mode="constant", cval=0.0), in_axes=-1,
            out_axes=-1)(img)

    return jax.vmap(one, in_axes=(0, 1))(bev_map.astype(jnp.float32), coords).astype(
        bev_map.dtype)


def reobserve(model: policy_lib.VLAPolicy, variables, bev0: jax.Array, pose: jax.Array,
              scene: types.Scene, meta, meta_logits) -> SceneTokens:
    """Tokens of the moved ego: bev0 [N,Hq,Wq,D] the t = 0 BEV map, pose [N,3] the ego now in
    the t = 0 frame, scene [N] the shifted scene; meta [N,Nmeta,D] | None kept from t = 0."""
    bev = warp_bev(bev0, pose, float(model.cfg.bev.range_m))
    return model.apply(variables, bev, scene, meta, meta_logits, False,
                       method=policy_lib.VLAPolicy.tokens_from_bev)


def repeat_rows(tree: Any, g: int) -> Any:
    """Every leaf [B,...] -> [B*G,...] (row b*G + k = scene b), None leaves kept."""
    return jax.tree.map(lambda x: jnp.repeat(x, g, axis=0), tree)


# ----------------------------------------------------------------------------------------------
def rollout(model: policy_lib.VLAPolicy, variables, scene: types.Scene, rng: jax.Array,
            reward_fn: RewardFn, *, num_steps: int, group_size: int,
            eta: float | None = None, sigma_min: float | None = None
            ) -> tuple[Transition, dict]:
    """Closed-loop episodes of ``num_steps`` planning steps for every scene x sample.

    Args:
      model, variables: the policy and its variables (``{'params', 'anchors', ...}``).
      scene: Scene [B] in the t = 0 ego frame.
      rng: key; reward_fn: see :data:`RewardFn`.
      num_steps: T (static); group_size: G samples per scene (static).
      eta, sigma_min: the sampling noise of the DDIM chain (None: the planner config's).
    Returns:
      (Transition with leaves [T, N, ...], final dict after the last step: 'pose' [N,3] (t = 0
      frame), 'state' [N,11] (own frame), 'scene' Scene [N] and 'tokens' SceneTokens [N] as
      the ego re-observes it).
    """
    check_episode_length(num_steps, scene.agent_valid.shape[-1], "rollout num_steps")
    tokens0 = policy_lib.encode(model, variables, scene, train=False)
    tokens0 = repeat_rows(tokens0.replace(aux={}), group_size)
    scene_n = repeat_rows(scene, group_size)
    n = scene_n.speed_limit.shape[0]

    def observe(scn, pose):
        return reobserve(model, variables, tokens0.bev_map, pose, scn, tokens0.meta,
                         tokens0.meta_logits).replace(aux={})

    def step(carry, inputs):
        scn, state, pose, prev_full = carry
        key, t = inputs
        # t = 0 sees the encoded scene itself; later steps re-observe the moved ego.
        tokens = jax.lax.cond(t == 0, lambda: tokens0, lambda: observe(scn, pose))
        chain = policy_lib.plan(model, variables, tokens, key, stochastic=True, eta=eta,
                                sigma_min=sigma_min)
        # The whole 4 s simulation of the plan (EC compares it with the next step's); its
        # first 0.5 s is what the ego executes.
        full = execute(chain.traj, state, num_steps=trajectory.NUM_STEPS)      # [N,41,11]
        states = full[:, :STEPS_PER_PLAN + 1]                        # [N,6,11] step frame
        ec = jax.vmap(comfort.extended_comfort)(full, prev_full)
        ec_weight = jnp.broadcast_to((t > 0).astype(jnp.float32), ec.shape)
        rewards = {k: v.astype(jnp.float32)
                   for k, v in reward_fn(scn, chain.traj, tokens, (ec, ec_weight)).items()}
        end = states[:, -1]
        new_scene = advance_scene(scn, end)
        new_pose = geometry.to_global(end[:, :3], pose)
        tr = Transition(tokens=tokens, chain=chain, rewards=rewards, pose=pose, states=states,
                        ec=ec, ec_weight=ec_weight)
        return (new_scene, reframe_state(end), new_pose, full), tr

    full0 = jnp.zeros((n, trajectory.NUM_STEPS + 1, trajectory.STATE_DIM), jnp.float32)
    carry0 = (scene_n, initial_states(scene_n), jnp.zeros((n, 3), jnp.float32), full0)
    keys = jax.random.split(rng, num_steps)
    (scn, state, pose, _), traj = jax.lax.scan(step, carry0, (keys, jnp.arange(num_steps)))
    # What the ego would observe next (unused inside an update: XLA drops it there).
    tokens = observe(scn, pose)
    return traj, {"pose": pose, "state": state, "scene": scn, "tokens": tokens}
