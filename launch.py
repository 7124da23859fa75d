"""The one entry point: ``python launch.py [STAGE] [--config FILE] [--config.a.b=V ...] [--workdir DIR]``.

Stages (run in this order by ``all``, the default):
  data  generate the synthetic NAVSIM-format world (embedded default) and build the TFDS dataset
  il    stage 1: imitation learning of the VLA policy
  irl   stage 2: the reward world model, by inverse RL from the expert and the EPDMS scorer
  rl    stage 3: PPO of the diffusion planner inside the reward world model
  eval  EPDMS of the IL and RL policies side by side -> <workdir>/eval/eval.json

With no arguments it runs ``all`` on configs/tiny.py (CPU, minutes). Examples:
  python launch.py data --config.data.dir=/scratch/irlvla
  python launch.py il --config configs/navsim.py --config.il.num_steps=100000 --workdir runs/x
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, REPO)

STAGES = ("data", "il", "irl", "rl", "eval")

config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs", "tiny.py"),
                                "An ml_collections config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (default: config.workdir).")


def _stage_fn(stage: str):
    """The stage's ``run(config, workdir)``, imported when it runs (a stage's imports stay
    out of the others' start-up)."""
    if stage == "data":
        from irlvla_jax.data.prepare import prepare_data
        return lambda config, workdir: prepare_data(config)
    if stage == "il":
        from irlvla_jax.train import il
        return il.run
    if stage == "irl":
        from irlvla_jax.train import irl
        return irl.run
    if stage == "rl":
        from irlvla_jax.train import ppo
        return ppo.run
    if stage == "eval":
        from irlvla_jax import evaluate
        return evaluate.run
    raise app.UsageError(f"unknown stage '{stage}'; choose from {', '.join(STAGES)}, all")


def main(argv):
    args = [a for a in argv[1:]]
    if len(args) > 1:
        raise app.UsageError(f"expected one stage, got {args}")
    stage = args[0] if args else "all"
    if stage not in (*STAGES, "all"):
        raise app.UsageError(f"unknown stage '{stage}'; choose from {', '.join(STAGES)}, all")
    config = flags.FLAGS.config
    workdir = os.path.abspath(flags.FLAGS.workdir or os.path.join(REPO, config.workdir))
    from irlvla_jax.parallel import maybe_initialize_distributed
    maybe_initialize_distributed()
    os.makedirs(workdir, exist_ok=True)
    if config.get("compilation_cache", True):
        # Stages compile some of the same programs (the scorer in il/irl/rl/eval) and re-runs
        # compile all of them again: XLA's persistent cache makes both a disk read.
        import jax
        jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, ".xla_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
    if config.get("previous_stages_dir"):
        config.previous_stages_dir = os.path.join(REPO, config.previous_stages_dir)
    from irlvla_jax.checkpoint import exit_on_checkpoint_error
    todo = STAGES if stage == "all" else (stage,)
    for s in todo:
        fn = _stage_fn(s)
        t0 = time.time()
        print(f"\n=== {s} ({config.name}) -> {workdir}", flush=True)
        with exit_on_checkpoint_error():
            fn(config, workdir)
        print(f"=== {s} done in {time.time() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    app.run(main)
