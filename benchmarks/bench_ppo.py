"""Throughput of one stage-3 PPO update (rollout + reward + learning) and where its time goes.

    python benchmarks/bench_ppo.py                          # configs/tiny.py, randomly initialised
    python benchmarks/bench_ppo.py --scorer                 # + updates that log the true scorer
    python benchmarks/bench_ppo.py --batch 16 --group 8 --horizon 2 --repeats 5
    python benchmarks/bench_ppo.py --config configs/ablations/classifier_rl.py   # another stage 3

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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

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
    """(compile + first run s, median s of ``repeats`` further runs)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=os.path.join(REPO, "configs", "tiny.py"),
                    help="config file whose model, rwm and ppo settings are timed")
    ap.add_argument("--batch", type=int, default=8, help="B scenes per update")
    ap.add_argument("--group", type=int, default=None,
                    help="G samples per scene (default: the config's ppo.group_size)")
    ap.add_argument("--horizon", type=int, default=2, help="T planning steps per episode")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scorer", action="store_true",
                    help="also time updates that compute the true scorer's reward (logging)")
    ap.add_argument("--log-every", type=int, default=10,
                    help="with --scorer: the mean update when the scorer runs on every N-th "
                         "update only (ppo.log_scorer with ppo.log_every = N)")
    ap.add_argument("--no-semantic", action="store_true", help="skip the semantic LM")
    args = ap.parse_args()

    from bench_il import load_config
    config = load_config(args.config)
    config.data.batch_size = args.batch
    config.model.use_semantic = not args.no_semantic
    config.ppo.update(dict(group_size=args.group or config.ppo.group_size, horizon=args.horizon,
                           log_scorer=False))
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
    state = ppo.init_state(config, il_vars, jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), tokens), jax.random.PRNGKey(2))
    frozen = {"policy": il_vars}
    rng = jax.random.PRNGKey(3)

    def zero_reward(scene_, plans, tokens_, ec, with_scorer=None):
        return {"zero": jnp.zeros(plans.shape[:1], jnp.float32)}

    def roll(reward):
        return jax.jit(lambda v, s, r: rollout_lib.rollout(
            model, v, s, r, reward, num_steps=cfg.horizon, group_size=cfg.group_size)[0])

    variables = stage_results.rl_policy_variables(il_vars, state.params)
    c_roll, t_roll = _time(roll(zero_reward), variables, scene, rng, repeats=args.repeats)
    rows, compile_s = {}, {"rollout": c_roll}
    # The RWM reward alone, then (--scorer) the RWM + the true scorer on every update.
    for name, use_scorer in (("rwm", False), ("rwm+scorer", True))[:2 if args.scorer else 1]:
        reward_fn = ppo.make_reward_fn(rwm, rwm_params, use_scorer=use_scorer)
        c_rew, t_rew = _time(roll(reward_fn), variables, scene, rng, repeats=args.repeats)
        cfg_u = config.copy_and_resolve_references()
        cfg_u.ppo.log_every = 1                    # the scorer (if any) on every update
        update = jax.jit(ppo.make_update(cfg_u, model, reward_fn))   # no donation: reused state
        c_upd, t_upd = _time(update, state, frozen, scene, rng, repeats=args.repeats)
        compile_s[name] = c_rew + c_upd
        rows[name] = {"update": t_upd, "rollout": t_roll, "reward": max(t_rew - t_roll, 0.0),
                      "learning": max(t_upd - t_rew, 0.0)}
    if args.scorer and args.log_every > 1:
        # ppo.log_scorer computes the scorer on the written updates only (every log_every-th):
        # the mean update is (N - 1) updates without it and one with it.
        n, a, b = args.log_every, rows["rwm"], rows["rwm+scorer"]
        rows[f"rwm, scorer every {n}"] = {k: ((n - 1) * a[k] + b[k]) / n for k in a}

    samples = args.batch * cfg.group_size
    dev = jax.devices()[0]
    print(f"device: {dev.platform} ({dev.device_kind}) x {jax.device_count()}")
    print(f"config: {os.path.relpath(args.config, REPO)} (ppo.trainable={cfg.trainable}, "
          f"chain_noise={cfg.chain_noise}, bc_weight={cfg.get('bc_weight', 0.0)})")
    print(f"update: B={args.batch} scenes x G={cfg.group_size} samples, T={args.horizon} steps, "
          f"S={config.model.planner.sample_steps} denoising steps, epochs={cfg.epochs} x "
          f"minibatches={cfg.minibatches}; median of {args.repeats} runs")
    print("compile+first run (s): " + ", ".join(f"{k} {v:.1f}" for k, v in compile_s.items()))
    print(f"{'reward':24s} {'ms/update':>10s} {'samples/s':>10s} {'rollout':>8s} "
          f"{'reward':>8s} {'learning':>8s}")
    for name, r in rows.items():
        parts = [r["rollout"], r["reward"], r["learning"]]
        total = max(sum(parts), 1e-12)
        print(f"{name:24s} {r['update'] * 1e3:10.1f} {samples / r['update']:10.1f} " +
              " ".join(f"{100 * p / total:7.1f}%" for p in parts))


if __name__ == "__main__":
    main()
