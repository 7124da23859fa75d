"""Scorer throughput: trajectories scored per second vs batch size, candidates, agents, polygons.

    .venv/bin/python benchmarks/bench_scorer.py                        # B 1,4; K 64; A 50; P 128
    .venv/bin/python benchmarks/bench_scorer.py --batch 1,8 --k 64 --agents 50 --polygons 128
    .venv/bin/python benchmarks/bench_scorer.py --sweep                # one axis at a time
    JAX_PLATFORMS=cuda .venv/bin/python benchmarks/bench_scorer.py --batch 8,64 --k 256

    # Side by side with another source tree (e.g. the last commit), same machine load:
    git archive HEAD irlvla_jax | tar -x -C /tmp/base
    .venv/bin/python benchmarks/bench_scorer.py --baseline /tmp/base

Scenes are NAVSIM-sized synthetic worlds (a multi-lane road grid with ``--polygons`` map
polygons, ``--agents`` moving and static objects, a 200-vertex centreline, 8 red-light
connectors). Polygons have the vertex counts of the synthetic world's map (``REAL_VERTICES``:
roadblocks and lanes 106, connectors 42, intersections 4, car parks 74), as far as the source
tree's default ``max_polygon_vertices`` holds them (a tree that simplified rings to 24 vertices
gets 24). Two numbers per configuration:

* ``full``: ``scorer.score`` — observation, PDM-Closed and the human trajectory once per scene,
  then simulation + metrics + comfort for each of the K candidates;
* ``cands``: ``scorer.score_with`` on a precomputed observation and reference — the per-
  candidate cost alone (what a training loop pays when it caches the per-scene work).

Compilation is timed apart; each timing is the median of ``--reps`` runs, and the load average
(``os.getloadavg``, 1 min) is printed beside it, since the CPU may be shared. ``cpu s``: the
median process CPU time of a run (all threads); on a machine shared with other jobs it moves
far less than the wall time, so compare ratios of it when the load is high. ``fb`` columns: the
share of candidate poses whose ego-area pre-selection overflowed, and of candidates whose
NC/TTC agent pre-selection did, i.e. that took the exact fallback.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

# Appended, not prepended: --baseline runs this script with PYTHONPATH=<other tree>, which wins.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from irlvla_jax import types  # noqa: E402
from irlvla_jax.sim import observation, pdm_closed, scorer  # noqa: E402


#: Vertices per ring in the synthetic world's maps, by ``types.MAP_POLYGON_TYPES`` index
#: (roadblock, lane, lane connector, intersection, car park); red-light connectors: 42.
REAL_VERTICES = (106, 106, 42, 4, 74)
REAL_RED_LIGHT_VERTICES = 42


def _rectangle_ring(x0, x1, y0, y1, n):
    """The rectangle's boundary as n >= 4 vertices: its corners, the rest spread along its
    sides (longest side first) like a map's densely sampled boundaries -> [n, 2] float32."""
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)
    side = np.hypot(*np.diff(np.concatenate([corners, corners[:1]]), axis=0).T)
    per = np.maximum(1, np.floor(side / side.sum() * n).astype(int))
    per[np.argmax(side)] += n - per.sum()
    return np.concatenate([a + np.arange(k)[:, None] / k * (b - a) for a, b, k in
                           zip(corners, np.roll(corners, -1, 0), per)]).astype(np.float32)


def _put_ring(polys, valid, i, ring):
    polys[i, :len(ring)] = ring
    polys[i, len(ring):] = ring[0]
    valid[i, :len(ring)] = True


def synthetic_scene(sizes: types.SceneSizes, rng: np.random.Generator, n_agents: int,
                    n_polygons: int) -> types.Scene:
    """A NAVSIM-sized scene: 4 parallel lanes along +x, cross streets, clutter polygons."""
    s = types.zeros_scene(sizes)
    V = sizes.max_polygon_vertices

    def put(i, x0, x1, y0, y1, kind, on_route=False):
        n = min(REAL_VERTICES[kind], V)
        _put_ring(s.map_polygons, s.map_vertex_valid, i, _rectangle_ring(x0, x1, y0, y1, n))
        s.map_polygon_type[i], s.map_polygon_on_route[i] = kind, on_route
        s.map_polygon_valid[i] = True

    i = 0
    for lane in range(4):                                  # the road: roadblock + lane each
        y0 = -1.75 - 3.5 + 3.5 * lane
        for kind in (types.ROADBLOCK, types.LANE):
            if i < n_polygons:
                put(i, -100, 100, y0, y0 + 3.5, kind, on_route=(lane == 1 and kind == types.LANE))
                i += 1
    while i < n_polygons:                                  # side streets and intersections
        x = rng.uniform(-100, 100)
        y = rng.choice([-1, 1]) * rng.uniform(9, 90)
        kind = [types.ROADBLOCK, types.LANE, types.LANE_CONNECTOR, types.INTERSECTION][i % 4]
        put(i, x - 2, x + 2, min(y, 0.0), max(y, 0.0) + 5.0, kind)
        i += 1

    R = sizes.max_centerline
    s.centerline[:, 0] = np.linspace(-50, 150, R)
    s.centerline_valid[:] = True
    s.speed_limit[...] = 13.9
    v = rng.uniform(5, 12)
    s.ego_history_time[:] = [-1.5, -1.0, -0.5, 0.0]
    s.ego_history[:, 0] = v * s.ego_history_time
    s.ego_history_velocity[:, 0] = v
    s.ego_velocity[0] = v
    s.expert_future[:, 0] = v * 0.5 * np.arange(1, sizes.num_future + 1)
    s.expert_future_valid[:] = True
    s.is_original[...] = True
    s.has_previous[...] = True

    tk = 0.5 * np.arange(types.NUM_AGENT_STEPS)
    for a in range(min(n_agents, sizes.max_agents)):
        x, y = rng.uniform(-60, 90), rng.choice([-3.5, 0.0, 3.5, 7.0]) + rng.normal(0, 0.3)
        if abs(x) < 8 and abs(y) < 3:
            x += 20.0                                      # keep clear of the ego at t = 0
        dynamic = a % 3 != 2
        vx = rng.uniform(0, 12) if dynamic else 0.0
        s.agent_states[a, :, 0] = x + vx * tk
        s.agent_states[a, :, 1] = y
        s.agent_states[a, :, 3] = vx
        s.agent_valid[a] = True
        s.agent_size[a] = (4.5, 2.0, 1.6) if dynamic else (0.5, 0.5, 1.0)
        s.agent_class[a] = types.VEHICLE if dynamic else types.AGENT_CLASSES.index("traffic_cone")
    for r in range(sizes.max_red_lights):
        x0 = rng.uniform(20, 90)
        _put_ring(s.red_light_polygons, s.red_light_vertex_valid, r,
                  _rectangle_ring(x0, x0 + 4, -1.75, 1.75, min(REAL_RED_LIGHT_VERTICES, V)))
        s.red_light_is_red[r] = rng.random(types.NUM_AGENT_STEPS) < 0.3
        s.red_light_on_route[r] = s.red_light_on_corrected_route[r] = True
        s.red_light_valid[r] = True
    return s


def candidate_plans(rng, batch, k, speed):
    """[B, K, 8, 3] plans fanning out in speed and heading."""
    t = 0.5 * np.arange(1, 9)
    v = speed[:, None] * rng.uniform(0.3, 1.4, (batch, k))
    yaw = rng.normal(0, 0.05, (batch, k))
    h = yaw[..., None] * t
    x = v[..., None] * t * np.cos(h / 2)
    y = v[..., None] * t * np.sin(h / 2)
    return np.stack([x, y, h], -1).astype(np.float32)


def _time(fn, args, reps):
    """-> (median wall seconds, median process CPU seconds, the output). CPU time (all of the
    process's threads) moves far less than wall time when other jobs share the cores."""
    out = fn(*args)
    jax.block_until_ready(out)
    ts, cs = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
        cs.append(time.process_time() - c)
    return float(np.median(ts)), float(np.median(cs)), out


def bench(batch, k, agents, polygons, reps, seed=0):
    sizes = types.SceneSizes(max_agents=agents, max_polygons=polygons,
                             max_polygon_vertices=types.SceneSizes().max_polygon_vertices,
                             max_centerline=200, max_red_lights=8, num_future=8,
                             cameras=("CAM_F0",), image_hw=(8, 8), lidar_bev_hw=(4, 4),
                             bev_hw=(4, 4), max_lanes=2, lane_points=2)
    rng = np.random.default_rng(seed)
    scenes = [synthetic_scene(sizes, rng, agents, polygons) for _ in range(batch)]
    scene = jax.tree.map(lambda *x: jnp.asarray(np.stack(x)), *scenes)
    plans = jnp.asarray(candidate_plans(rng, batch, k, np.asarray(scene.ego_velocity[:, 0])))
    load0 = os.getloadavg()[0]

    full = jax.jit(scorer.score)
    t0 = time.perf_counter()
    full_c = full.lower(scene, plans).compile()
    compile_full = time.perf_counter() - t0
    t_full, c_full, (_, details) = _time(full_c, (scene, plans), reps)

    obs = jax.jit(jax.vmap(observation.build_observation))(scene)
    _, ref = jax.jit(jax.vmap(pdm_closed.pdm_closed))(scene)
    cands = jax.jit(scorer.score_with)
    t0 = time.perf_counter()
    cands_c = cands.lower(scene, plans, obs, ref).compile()
    compile_cands = time.perf_counter() - t0
    t_cands, c_cands, _ = _time(cands_c, (scene, plans, obs, ref), reps)
    n = batch * k
    raw = details.raw
    return dict(device=jax.devices()[0].platform, batch=batch, k=k, agents=agents,
                polygons=polygons, full_traj_per_s=n / t_full, cands_traj_per_s=n / t_cands,
                full_s=t_full, cands_s=t_cands, full_cpu_s=c_full, cands_cpu_s=c_cands,
                compile_full_s=compile_full,
                compile_cands_s=compile_cands,
                area_fallback=float(np.asarray(raw["area_overflow"]).mean()),
                agent_fallback=float(np.asarray(raw["agent_overflow"]).any(-1).mean()),
                load=0.5 * (load0 + os.getloadavg()[0]))


def _ints(s):
    return [int(x) for x in s.split(",")]


HEADER = (f"{'src':>4} {'dev':>4} {'B':>4} {'K':>5} {'A':>4} {'P':>4} | {'full traj/s':>11} "
          f"{'cands traj/s':>12} | {'full s':>7} {'cands s':>7} | {'full cpu s':>10} "
          f"{'cands cpu s':>11} | {'compile s':>9} | {'fb area':>7} {'fb agent':>8} | load")


def _row(src, r):
    return (f"{src:>4} {r['device']:>4} {r['batch']:>4} {r['k']:>5} {r['agents']:>4} "
            f"{r['polygons']:>4} | {r['full_traj_per_s']:>11.0f} {r['cands_traj_per_s']:>12.0f} | "
            f"{r['full_s']:>7.3f} {r['cands_s']:>7.3f} | "
            f"{r.get('full_cpu_s', float('nan')):>10.3f} "
            f"{r.get('cands_cpu_s', float('nan')):>11.3f} | "
            f"{r['compile_full_s']:>4.0f},{r['compile_cands_s']:>4.0f} | "
            f"{100 * r.get('area_fallback', float('nan')):>6.1f}% "
            f"{100 * r.get('agent_fallback', float('nan')):>7.1f}% | {r.get('load', float('nan')):.1f}")


def _baseline(src, b, k, agents, polygons, reps):
    """The same measurement with the ``irlvla_jax`` package of another source tree."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
        cmd = [sys.executable, os.path.abspath(__file__), "--batch", str(b), "--k", str(k),
               "--agents", str(agents), "--polygons", str(polygons), "--reps", str(reps),
               "--json", f.name, "--quiet"]
        subprocess.run(cmd, env=env, check=True, cwd=os.path.abspath(src))
        return json.loads(open(f.name).read().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=_ints, default=[1, 4])
    p.add_argument("--k", type=_ints, default=[64])
    p.add_argument("--agents", type=_ints, default=[50])
    p.add_argument("--polygons", type=_ints, default=[128])
    p.add_argument("--sweep", action="store_true",
                   help="around B 4, K 64, A 50, P 128: B 1,4,16; A 20,100; P 64,256")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--baseline", default="",
                   help="a source tree to measure too (its irlvla_jax), interleaved per config")
    p.add_argument("--json", default="", help="also write the results here (JSON lines)")
    p.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.sweep:
        configs = [(b, 64, 50, 128) for b in (1, 4, 16)] + [(4, 64, 20, 128), (4, 64, 100, 128),
                                                             (4, 64, 50, 64), (4, 64, 50, 256)]
    else:
        configs = [(b, k, ag, po) for ag in a.agents for po in a.polygons for k in a.k
                   for b in a.batch]
    if not a.quiet:
        print(f"devices: {jax.devices()}  (timings: median of {a.reps}; load: 1-min average)")
        print(HEADER)
    for b, k, agents, polygons in configs:
        if a.baseline:
            print(_row("base", _baseline(a.baseline, b, k, agents, polygons, a.reps)),
                  flush=True)
        r = bench(b, k, agents, polygons, a.reps)
        if not a.quiet:
            print(_row("new" if a.baseline else "", r), flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
