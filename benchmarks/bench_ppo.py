"""Throughput of one stage-3 PPO update (rollout + reward + learning) and where its time goes.

    python benchmarks/bench_ppo.py                          # configs/tiny.py, randomly initialised
    python benchmarks/bench_ppo.py --scorer                 # + the true scorer's reward each step
    python benchmarks/bench_ppo.py --batch 16 --group 8 --horizon 2 --repeats 5

Prints scene-samples per second of a whole update (B scenes x G samples; each sample is a
T-step closed-loop episode) and the share of time in each part, measured by timing three
compiled programs on the same inputs:
  rollout   policy encoding + DDIM chains + bicycle execution + re-observation (reward 0)
  reward    rollout with the reward function(s) minus the rollout alone
  learning  the whole update minus the rollout with rewards (advantages, epochs x minibatches)
Parameters are random (no checkpoint needed): throughput does not depend on their values.
Runs on whatever JAX backend is present (CPU, or an accelerator when there is one).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from irlvla_jax import types  # noqa: E402
from irlvla_jax.models import policy as policy_lib  # noqa: E402
from irlvla_jax.models import reward_model as rwm_lib  # noqa: E402
from irlvla_jax.train import ppo  # noqa: E402
from irlvla_jax.train import rollout as rollout_lib  # noqa: E402
from irlvla_jax.train import stage_results  # noqa: E402


def bench_scenes(sizes: types.SceneSizes, b: int, seed: int = 0) -> types.Scene:
    """B scenes of the right shapes: random camera pixels, the ego driving at 5..12 m/s along a
    straight lane with a few agents ahead (content hardly changes the cost)."""
    rng = np.random.default_rng(seed)
    s = types.zeros_scene(sizes, (b,))
    d = s.to_dict()
    d["cameras"] = rng.integers(0, 255, d["cameras"].shape, dtype=np.uint8)
    d["cam_intrinsics"][:] = np.eye(3, dtype=np.float32)
    d["cam_to_ego"][:] = np.eye(4, dtype=np.float32)
    v = rng.uniform(5, 12, b).astype(np.float32)
    d["ego_velocity"][:, 0] = v
    d["ego_history_velocity"][:, :, 0] = v[:, None]
    d["ego_history_time"][:] = [-1.5, -1.0, -0.5, 0.0]
    d["ego_history"][:, :, 0] = v[:, None] * d["ego_history_time"]
    d["expert_future"][:, :, 0] = v[:, None] * 0.5 * np.arange(1, sizes.num_future + 1)
    d["expert_future_valid"][:] = True
    d["driving_command"][:, 1] = 1.0
    t = 0.5 * np.arange(types.NUM_AGENT_STEPS)
    for a in range(min(4, sizes.max_agents)):
        d["agent_states"][:, a, :, 0] = 15.0 + 10 * a + 5.0 * t
        d["agent_states"][:, a, :, 3] = 5.0
        d["agent_valid"][:, a] = True
        d["agent_size"][:, a] = (4.5, 2.0, 1.5)
    lane = np.linspace(-20, 60, sizes.lane_points, dtype=np.float32)
    d["lane_vectors"][:, 0, :, 0] = lane
    d["lane_valid"][:, 0] = True
    d["centerline"][:, :, 0] = np.linspace(-50, 150, sizes.max_centerline)
    d["centerline_valid"][:] = True
    d["speed_limit"][:] = 15.0
    return types.Scene(**{k: jnp.asarray(x) for k, x in d.items()})


def _time(fn, *args, repeats: int) -> tuple[float, float]:
    """(compile + first run s, mean s of ``repeats`` further runs)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return first, (time.perf_counter() - t0) / repeats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8, help="B scenes per update")
    ap.add_argument("--group", type=int, default=4, help="G samples per scene")
    ap.add_argument("--horizon", type=int, default=2, help="T planning steps per episode")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scorer", action="store_true",
                    help="also compute the true scorer's reward at every step")
    ap.add_argument("--no-semantic", action="store_true", help="skip the semantic LM")
    args = ap.parse_args()

    from configs import tiny
    config = tiny.get_config()
    config.data.batch_size = args.batch
    config.model.use_semantic = not args.no_semantic
    config.ppo.update(dict(group_size=args.group, horizon=args.horizon,
                           log_scorer=bool(args.scorer)))
    cfg = config.ppo
    sizes = types.SceneSizes.from_config(config.data.sizes)
    scene = bench_scenes(sizes, args.batch)
    model = policy_lib.VLAPolicy(stage_results.rl_model_config(config))
    il_vars = jax.jit(lambda r: policy_lib.init_variables(model, scene, r))(jax.random.PRNGKey(0))
    rwm = rwm_lib.RewardModel(config.rwm)
    tokens = jax.eval_shape(lambda: policy_lib.encode(model, il_vars, scene).replace(aux={}))
    rwm_params = rwm_lib.init_params(
        rwm, scene, jax.random.PRNGKey(1),
        policy_tokens=(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tokens)
                       if config.rwm.scene_encoder == "policy" else None))
    reward_fn = ppo.make_reward_fn(rwm, rwm_params, use_scorer=args.scorer)
    state = ppo.init_state(config, il_vars, jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), tokens), jax.random.PRNGKey(2))
    frozen = {"policy": il_vars}
    rng = jax.random.PRNGKey(3)

    def zero_reward(scene_, plans, tokens_):
        return {"zero": jnp.zeros(plans.shape[:1], jnp.float32)}

    def roll(reward):
        return jax.jit(lambda v, s, r: rollout_lib.rollout(
            model, v, s, r, reward, num_steps=cfg.horizon, group_size=cfg.group_size)[0])

    variables = stage_results.rl_policy_variables(il_vars, state.params)
    c_roll, t_roll = _time(roll(zero_reward), variables, scene, rng, repeats=args.repeats)
    c_rew, t_rew = _time(roll(reward_fn), variables, scene, rng, repeats=args.repeats)
    update = jax.jit(ppo.make_update(config, model, reward_fn))   # no donation: reused state
    c_upd, t_upd = _time(update, state, frozen, scene, rng, repeats=args.repeats)

    samples = args.batch * args.group
    parts = {"rollout": t_roll, "reward": max(t_rew - t_roll, 0.0),
             "learning": max(t_upd - t_rew, 0.0)}
    total = sum(parts.values())
    dev = jax.devices()[0]
    print(f"device: {dev.platform} ({dev.device_kind}) x {jax.device_count()}")
    print(f"update: B={args.batch} scenes x G={args.group} samples, T={args.horizon} steps, "
          f"S={config.model.planner.sample_steps} denoising steps, epochs={cfg.epochs} x "
          f"minibatches={cfg.minibatches}, reward={'rwm+scorer' if args.scorer else 'rwm'}")
    print(f"compile+first run (s): rollout {c_roll:.1f}, rollout+reward {c_rew:.1f}, "
          f"update {c_upd:.1f}")
    print(f"whole update: {t_upd * 1e3:.1f} ms -> {samples / t_upd:.1f} scene-samples/s "
          f"({samples * args.horizon / t_upd:.1f} planning steps/s)")
    for k, v in parts.items():
        print(f"  {k:9s} {v * 1e3:8.1f} ms  {100 * v / max(total, 1e-12):5.1f} %")


if __name__ == "__main__":
    main()
