"""IL throughput: samples/s and step time of the jitted train step, and its FLOPs.

    python benchmarks/bench_il.py                       # tiny config, this machine's devices
    python benchmarks/bench_il.py --config configs/navsim.py --steps 20 --batch 64

Batches are random well-formed scenes (tests/policy_scenes.py) of the config's sizes, so the
numbers measure the model and the step, not the input pipeline. FLOPs come from XLA's cost
analysis of the compiled step (per step, whole global batch).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

from irlvla_jax import parallel, types  # noqa: E402
from irlvla_jax.models import policy as policy_lib  # noqa: E402
from irlvla_jax.train import il  # noqa: E402
import policy_scenes  # noqa: E402


def load_config(path):
    spec = importlib.util.spec_from_file_location("bench_cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/tiny.py")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=0, help="global batch (0: config's)")
    ap.add_argument("--no-semantic", action="store_true", help="disable the semantic LM")
    args = ap.parse_args()
    config = load_config(args.config)
    if args.batch:
        config.data.batch_size = args.batch
    if args.no_semantic:
        config.model.use_semantic = False
    mesh = parallel.make_mesh(config.mesh)
    parallel.check_batch_divisible(config.data.batch_size, mesh)
    sizes = types.SceneSizes.from_config(config.data.sizes)
    batch = parallel.shard_batch(policy_scenes.random_scenes(sizes, config.data.batch_size), mesh)
    model = policy_lib.VLAPolicy(config.model)

    t0 = time.perf_counter()
    state = parallel.replicate(il.create_state(model, config, jax.random.PRNGKey(0)), mesh)
    t_init = time.perf_counter() - t0
    step = il.make_train_step(model, config, mesh)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, jax.random.PRNGKey(0)).compile()
    t_compile = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

    state, m = compiled(state, batch, jax.random.PRNGKey(1))          # warm-up
    jax.block_until_ready(m)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        state, m = compiled(state, batch, jax.random.PRNGKey(2 + i))
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    step_s = float(np.median(times))
    print(f"config={config.name} devices={jax.device_count()} ({jax.devices()[0].platform}) "
          f"batch={config.data.batch_size} semantic={config.model.use_semantic} "
          f"params={n_params / 1e6:.2f}M dtype={config.model.dtype}")
    print(f"init {t_init:.1f}s  compile {t_compile:.1f}s")
    print(f"step time {step_s * 1e3:.1f} ms (median of {args.steps})  "
          f"IL samples/s {config.data.batch_size / step_s:.1f}")
    print(f"model FLOPs per step {flops / 1e9:.2f} GFLOP  "
          f"({flops / config.data.batch_size / 1e9:.3f} GFLOP/sample, "
          f"{flops / step_s / 1e12:.3f} TFLOP/s achieved)")
    print(f"loss {float(m['loss']):.3f}")


if __name__ == "__main__":
    main()
