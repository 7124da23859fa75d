"""Rewards per second of the reward world model vs trajectories per second of the JAX scorer.

    python benchmarks/bench_rwm.py                       # tiny config, built-in road scenes
    python benchmarks/bench_rwm.py --split synthetic_val --batch 16 --candidates 64

Both run on the same scenes and the same K candidates per scene (expert + vocabulary +
perturbations), each compiled once and then timed over ``--repeats`` calls (compile time is
reported apart). The official NAVSIM scorer is Python/shapely: its figure is the spec's (tens of
milliseconds per trajectory, spec/IRL_VLA.md), quoted for reference, not measured here.
The RWM's parameters are random: its speed does not depend on what it has learned. Both sides
share the per-scene work across the K candidates (the RWM encodes the scene once; the scorer
builds the observation, PDM-Closed reference and human trajectory once), both include it in the
timed call, and the RWM is timed as configured (``config.rwm.interaction`` features included).
The scorer runs without the previous-frame plan (EC weight 0), which the IRL labeller adds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from irlvla_jax import tracking, types  # noqa: E402
from irlvla_jax.models import anchors as anchors_lib  # noqa: E402
from irlvla_jax.models import reward_model as rwm_lib  # noqa: E402
from irlvla_jax.train import candidates as cand_lib  # noqa: E402

OFFICIAL_MS_PER_TRAJECTORY = (10.0, 100.0)   # "tens of ms per trajectory" (spec/IRL_VLA.md)


def road_scenes(sizes: types.SceneSizes, batch: int, seed: int = 0) -> types.Scene:
    """``batch`` straight two-lane road scenes (ego lane on route) with a few agents ahead at
    random speeds: a stand-in when no dataset is built."""
    rng = np.random.default_rng(seed)
    s = types.zeros_scene(sizes, (batch,))
    v = sizes.max_polygon_vertices

    def rect(x0, x1, y0, y1):
        ring = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
        return np.concatenate([ring, np.repeat(ring[:1], v - 4, 0)])

    for i, (poly, kind, route) in enumerate([
            (rect(-60, 200, -1.75, 1.75), types.ROADBLOCK, False),
            (rect(-60, 200, 1.75, 5.25), types.ROADBLOCK, False),
            (rect(-60, 200, -1.75, 1.75), types.LANE, True),
            (rect(-60, 200, 1.75, 5.25), types.LANE, False)]):
        s.map_polygons[:, i], s.map_polygon_type[:, i] = poly, kind
        s.map_polygon_on_route[:, i], s.map_polygon_valid[:, i] = route, True
        s.map_vertex_valid[:, i, :4] = True
    s.centerline[:, :, 0] = np.linspace(-60, 200, sizes.max_centerline)
    s.centerline_valid[:] = True
    s.speed_limit[:] = 15.0
    speed = rng.uniform(3.0, 14.0, batch).astype(np.float32)
    s.ego_history_time[:] = [-1.5, -1.0, -0.5, 0.0]
    s.ego_history[:, :, 0] = speed[:, None] * s.ego_history_time
    s.ego_history_velocity[:, :, 0] = speed[:, None]
    s.ego_velocity[:, 0] = speed
    s.expert_future[:, :, 0] = speed[:, None] * 0.5 * np.arange(1, sizes.num_future + 1)
    s.expert_future_valid[:] = True
    s.driving_command[:, 1] = 1.0
    s.has_previous[:] = True
    t = 0.5 * np.arange(types.NUM_AGENT_STEPS)
    for a in range(min(3, sizes.max_agents)):
        x0, vx = rng.uniform(15, 60, batch), rng.uniform(0, 10, batch)
        s.agent_states[:, a, :, 0] = x0[:, None] + vx[:, None] * t
        s.agent_states[:, a, :, 3] = vx[:, None]
        s.agent_valid[:, a] = True
        s.agent_size[:, a] = (4.5, 2.0, 1.5)
    return jax.tree.map(jnp.asarray, s)


def _time(fn, *args, repeats: int):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return compile_s, (time.perf_counter() - t0) / repeats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/tiny.py")
    p.add_argument("--split", default="", help="dataset split to read scenes from "
                   "('' = built-in road scenes)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--candidates", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-scorer", action="store_true")
    p.add_argument("--out", default="", help="write the result as JSON here")
    args = p.parse_args(argv)
    spec = importlib.util.spec_from_file_location("cfg", args.config)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    if config.rwm.scene_encoder != "privileged":
        config.rwm.scene_encoder = "privileged"    # no IL checkpoint here: time the own encoder
    sizes = types.SceneSizes.from_config(config.data.sizes)
    if args.split:
        from irlvla_jax.data import loader
        scenes, _ = loader.load_split_numpy(config, args.split, args.batch)
        scene = jax.tree.map(jnp.asarray, scenes)
    else:
        scene = road_scenes(sizes, args.batch)
    b, k = scene.speed_limit.shape[0], args.candidates
    vocab = anchors_lib.default_anchors(max(1, k // 2))
    trajs, _ = cand_lib.make_candidates(scene.expert_future[:, :types.PLAN_LEN], vocab, None,
                                        jax.random.PRNGKey(0), vocab.shape[0],
                                        k - 1 - vocab.shape[0], config.irl.perturb)

    model = rwm_lib.RewardModel(config.rwm)
    params = rwm_lib.init_params(model, scene, jax.random.PRNGKey(0))
    rwm_fn = jax.jit(lambda p_, s_, t_: rwm_lib.reward(model, p_, s_, t_))
    rwm_compile, rwm_s = _time(rwm_fn, params, scene, trajs, repeats=args.repeats)
    result = {
        "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
        "scenes": b, "candidates_per_scene": k, "rwm_params": rwm_lib.num_params(params),
        "rwm_rewards_per_s": b * k / rwm_s, "rwm_compile_s": rwm_compile,
        "official_trajectories_per_s": [1000.0 / OFFICIAL_MS_PER_TRAJECTORY[1],
                                        1000.0 / OFFICIAL_MS_PER_TRAJECTORY[0]],
    }
    print(f"RWM: {result['rwm_rewards_per_s']:.1f} rewards/s (compile {rwm_compile:.1f} s); "
          f"compiling the JAX scorer next (minutes on a small CPU)...", flush=True)
    if not args.skip_scorer:
        from irlvla_jax.sim import scorer
        score_fn = jax.jit(lambda s_, t_: scorer.score(s_, t_)[0].epdms())
        sc_compile, sc_s = _time(score_fn, scene, trajs, repeats=args.repeats)
        result.update(scorer_trajectories_per_s=b * k / sc_s, scorer_compile_s=sc_compile,
                      rwm_speedup_vs_scorer=sc_s / rwm_s)
    rows = {"RWM (rewards/s)": {"per_s": result["rwm_rewards_per_s"],
                                "compile_s": rwm_compile}}
    if "scorer_trajectories_per_s" in result:
        rows["JAX scorer (traj/s)"] = {"per_s": result["scorer_trajectories_per_s"],
                                       "compile_s": result["scorer_compile_s"]}
    rows["official scorer (spec: tens of ms/traj)"] = {"per_s": "10-100"}
    tracking.print_table(f"RWM vs scorer, {b} scenes x {k} candidates on "
                         f"{result['device']}", rows, ["per_s", "compile_s"])
    print(json.dumps(result))
    if args.out:
        tracking.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
