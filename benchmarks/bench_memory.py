"""Per-device memory of the IL train step at configs/navsim.py sizes, per mesh layout, with and
without remat: compiled for fake CPU devices, never allocated.

    python benchmarks/bench_memory.py                         # 8 devices: 8x1, 4x2, 1x8
    python benchmarks/bench_memory.py --devices 64 --layouts 8x8 64x1

For each layout ('data' x 'fsdp') and remat setting it prints, per device:
* params / optimizer / other: the IL state's bytes from its shardings
  (``parallel.state_shardings`` of ``jax.eval_shape(il.create_state)``: exact, full size);
* args / out / temp / peak: XLA's memory analysis of the compiled IL step
  (``jit(train_step).lower(abstract state, abstract batch).compile().memory_analysis()``);
  peak = args + out - aliased (the donated state) + temp.

The state is a ``ShapeDtypeStruct`` tree with its shardings and the batch another: nothing of the
3B model is allocated. Compiling the step with all 36 LM layers takes too long on a small CPU
host, so by default the step is compiled with ``--lm-layers`` (2 and 4) decoder layers and its
figures extrapolated linearly to the config's count (each decoder layer is the same program;
``--exact`` compiles the full model instead). The state columns are always exact.

XLA:CPU's buffer assignment stands in for the accelerator's: fusion and layout choices differ
on GPU/TPU, and XLA:CPU may compute bfloat16 matmuls in float32, so treat the temp figures as an
estimate of the accelerator's (the state figures are the same everywhere).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

REMAT_FIELDS = ("vision", "semantic.llm", "bev", "planner")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "navsim.py"))
    ap.add_argument("--devices", type=int, default=8, help="fake CPU devices")
    ap.add_argument("--layouts", nargs="*", default=["8x1", "4x2", "1x8"],
                    help="data x fsdp meshes, e.g. 8x1 4x2 1x8")
    ap.add_argument("--batch", type=int, default=0, help="global batch (0: the config's)")
    ap.add_argument("--remat", nargs="*", default=["", "nothing_saveable"],
                    help="remat policies to compare ('' = off), applied to the vision, LM, BEV "
                         "and planner blocks")
    ap.add_argument("--lm-layers", nargs=2, type=int, default=[2, 4],
                    help="LM depths compiled for the linear extrapolation")
    ap.add_argument("--state-only", action="store_true",
                    help="only the state columns (no compile: seconds, any device count)")
    ap.add_argument("--exact", action="store_true",
                    help="compile the full LM depth (slow) instead of extrapolating")
    return ap.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={ARGS.devices}"
                               # LLVM's passes only (codegen speed): buffer assignment unchanged
                               " --xla_backend_optimization_level=0").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import importlib.util  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from irlvla_jax import parallel, types  # noqa: E402
from irlvla_jax.models import policy as policy_lib  # noqa: E402
from irlvla_jax.train import il  # noqa: E402

GIB = 2 ** 30


def load_config(path):
    spec = importlib.util.spec_from_file_location("bench_cfg", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def set_remat(config, policy: str):
    for path in REMAT_FIELDS:
        node = config.model
        for key in path.split("."):
            node = node[key]
        node.remat = policy


def shard_bytes(abstract, shardings) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs under these shardings."""
    total = 0
    for leaf, sh in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        total += int(np.prod(sh.shard_shape(leaf.shape))) * np.dtype(leaf.dtype).itemsize
    return total


def state_figures(config, mesh):
    """(abstract state with shardings, {params, optimizer, other: bytes per device}, #params)."""
    model = policy_lib.VLAPolicy(config.model)
    abstract = jax.eval_shape(lambda r: il.create_state(model, config, r), jax.random.key(0))
    shardings = parallel.state_shardings(abstract, mesh, config.mesh)
    parts = {"params": shard_bytes(abstract.params, shardings.params),
             "optimizer": shard_bytes(abstract.opt_state, shardings.opt_state)}
    parts["other"] = shard_bytes(abstract, shardings) - parts["params"] - parts["optimizer"]
    with_sh = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                           abstract, shardings)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    return with_sh, shardings, parts, n_params


def step_memory(config, mesh) -> tuple[dict, float]:
    """XLA's memory analysis (bytes per device) of the compiled IL step, and the compile time."""
    abstract, shardings, _, _ = state_figures(config, mesh)
    sizes = types.SceneSizes.from_config(config.data.sizes)
    dat = parallel.data_sharding(mesh)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dat),
                         types.scene_shape_struct(sizes, (config.data.batch_size,)))
    rng = jax.ShapeDtypeStruct((2,), np.uint32, sharding=NamedSharding(mesh, P()))
    model = policy_lib.VLAPolicy(config.model)
    step = il.make_train_step(model, config, mesh, shardings)
    t0 = time.perf_counter()
    compiled = step.lower(abstract, batch, rng).compile()
    seconds = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    out = {"args": ma.argument_size_in_bytes, "out": ma.output_size_in_bytes,
           "alias": ma.alias_size_in_bytes, "temp": ma.temp_size_in_bytes}
    out["peak"] = out["args"] + out["out"] - out["alias"] + out["temp"]
    return out, seconds


def main():
    args = ARGS
    base = load_config(args.config)
    if args.batch:
        base.data.batch_size = args.batch
    n_layers = int(base.model.semantic.llm.num_layers)
    depths = [n_layers] if args.exact else list(args.lm_layers)
    print(f"config {base.name}: global batch {base.data.batch_size}, model.dtype "
          f"{base.model.dtype}, {args.devices} fake {jax.devices()[0].platform} devices, "
          f"LM {n_layers} layers" + ("" if args.exact else
                                     f" (step compiled at {depths[0]} and {depths[1]} layers, "
                                     f"extrapolated linearly to {n_layers})"))
    rows = []
    for layout in args.layouts:
        data, fsdp = (int(v) for v in layout.lower().split("x"))
        devices = jax.devices()[:data * fsdp]
        for policy in args.remat:
            config = load_config(args.config)
            if args.batch:
                config.data.batch_size = args.batch
            config.mesh.data, config.mesh.fsdp = data, fsdp
            set_remat(config, policy)
            mesh = parallel.make_mesh(config.mesh, devices)
            parallel.check_batch_divisible(config.data.batch_size, mesh)
            _, _, state, n_params = state_figures(config, mesh)
            mems, secs = [], []
            for depth in ([] if args.state_only else depths):
                c = config.copy_and_resolve_references()
                c.model.semantic.llm.num_layers = depth
                m, s = step_memory(c, mesh)
                mems.append(m)
                secs.append(s)
                print(f"  compiled {layout} remat={policy or 'off'} LM {depth} layers in "
                      f"{s:.0f} s: peak {m['peak'] / GIB:.2f} GiB", flush=True)
            if args.state_only:
                mem = {k: float("nan") for k in ("args", "out", "alias", "temp", "peak")}
            elif len(depths) == 1:
                mem = mems[0]
            else:
                (d0, d1), (m0, m1) = depths, mems
                mem = {k: m0[k] + (m1[k] - m0[k]) * (n_layers - d0) / (d1 - d0) for k in m0}
            rows.append((layout, policy or "off", state, mem, n_params))
    print()
    print(f"IL train step, per device, GiB ({rows[0][4] / 1e9:.2f}B params; global batch "
          f"{base.data.batch_size})")
    head = ("| data x fsdp | remat | params | optimizer | state total | step args | step temp "
            "| step peak |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for layout, policy, state, mem, _ in rows:
        total = state["params"] + state["optimizer"] + state["other"]
        print(f"| {layout} | {policy} | {state['params'] / GIB:.2f} | "
              f"{state['optimizer'] / GIB:.2f} | {total / GIB:.2f} | {mem['args'] / GIB:.2f} | "
              f"{mem['temp'] / GIB:.2f} | {mem['peak'] / GIB:.2f} |")


if __name__ == "__main__":
    main()
