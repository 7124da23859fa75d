"""IL throughput: samples/s and step time of the jitted train step, and its FLOPs.

    python benchmarks/bench_il.py                       # tiny config, this machine's devices
    python benchmarks/bench_il.py --config configs/navsim.py --steps 20 --batch 64
    python benchmarks/bench_il.py --config configs/navsim.py --cost-only   # FLOPs, no run

Batches are random well-formed scenes (tests/policy_scenes.py) of the config's sizes, so the
numbers measure the model and the step, not the input pipeline. FLOPs come from XLA's cost
analysis of the compiled step (per device, times the device count for the whole global batch);
MFU divides the per-device rate by the device's peak (datasheet table below, or --peak-tflops).
``--cost-only`` (:func:`il_step_flops`) lowers the step on abstract shapes and prints XLA's cost
analysis of the lowered program without creating the state or compiling: a 3B model's FLOPs per
scene on a CPU in a minute (``benchmarks/bench_data.py`` uses it for the step's demand).
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


# Dense peak TFLOP/s per chip for MFU, by jax device_kind substring (bf16 on accelerators;
# vendor datasheet figures, without sparsity). CPU has no fixed peak: pass --peak-tflops.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0,
               "TPU v5p": 459.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v4": 275.0,
               "TPU v6": 918.0}


def peak_tflops(device_kind: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():
        if key.lower() in device_kind.lower():
            return value
    return None


def load_config(path):
    spec = importlib.util.spec_from_file_location("bench_cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def il_step_flops(config, batch: int) -> float:
    """FLOPs of one IL train step on a global batch of ``batch`` scenes at ``config``'s sizes,
    from XLA's cost analysis of the lowered (not compiled) step on abstract inputs: no
    parameters are allocated, so it runs on a CPU for any model size."""
    config = config.copy_and_resolve_references()
    config.data.batch_size = batch
    mesh = parallel.make_mesh(config.mesh)
    parallel.check_batch_divisible(batch, mesh)
    model = policy_lib.VLAPolicy(config.model)
    sizes = types.SceneSizes.from_config(config.data.sizes)
    state = jax.eval_shape(lambda r: il.create_state(model, config, r), jax.random.PRNGKey(0))
    lowered = il.make_train_step(model, config, mesh).lower(
        state, types.scene_shape_struct(sizes, (batch,)), jax.random.PRNGKey(0))
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/tiny.py")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=0, help="global batch (0: config's)")
    ap.add_argument("--no-semantic", action="store_true", help="disable the semantic LM")
    ap.add_argument("--dtype", default="", help="compute dtype override, e.g. bfloat16")
    ap.add_argument("--cost-only", action="store_true",
                    help="print the step's FLOPs from the lowered program; no state, no run")
    ap.add_argument("--peak-tflops", type=float, default=0.0,
                    help="per-device peak TFLOP/s for MFU (default: from the device kind; "
                         "required on CPU)")
    args = ap.parse_args()
    config = load_config(args.config)
    if args.batch:
        config.data.batch_size = args.batch
    if args.no_semantic:
        config.model.use_semantic = False
    if args.dtype:
        config.model.dtype = args.dtype
    if args.cost_only:
        b = config.data.batch_size
        flops = il_step_flops(config, b)
        print(f"config={config.name} batch={b} dtype={config.model.dtype} (lowered, not compiled)")
        print(f"model FLOPs per step {flops / 1e9:.2f} GFLOP ({flops / b / 1e9:.3f} GFLOP/sample)")
        return
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
    # XLA's cost analysis of an SPMD program is per device (checked: a matmul sharded over 4
    # fake devices reports a quarter of the unsharded FLOPs); the step's total is x devices.
    flops_dev = float(cost.get("flops", float("nan"))) if cost else float("nan")
    flops = flops_dev * jax.device_count()

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
    kind = jax.devices()[0].device_kind
    peak = args.peak_tflops or peak_tflops(kind)
    if peak:
        achieved = flops_dev / step_s / 1e12
        print(f"MFU {100 * achieved / peak:.2f}% of {peak:.0f} TFLOP/s per device ({kind})")
    else:
        print(f"MFU: no peak figure known for device kind '{kind}'; pass --peak-tflops")
    print(f"loss {float(m['loss']):.3f}")


if __name__ == "__main__":
    main()
