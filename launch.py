"""The one entry point: ``python launch.py [STAGE] [--config FILE] [--config.a.b=V ...] [--workdir DIR]``.

Stages (run in this order by ``all``, the default):
  data    generate the synthetic NAVSIM-format world (embedded default) and build the TFDS dataset
  il      stage 1: imitation learning of the VLA policy
  irl     stage 2: the reward world model, by inverse RL from the expert and the EPDMS scorer
  rl      stage 3: PPO of the diffusion planner inside the reward world model
  eval    EPDMS of the baselines, IL and RL policies side by side -> <workdir>/eval/eval.json,
          BEV pictures, every policy's plans, and the run's report <workdir>/report.html
  submit  a NAVSIM leaderboard pickle of one policy's plans -> <workdir>/eval/submission.pkl

With no arguments it runs ``all`` on configs/tiny.py (CPU, minutes); ``--help`` lists the
configs and common overrides. Examples:
  python launch.py data --config.data.dir=/scratch/irlvla
  python launch.py il --config configs/navsim.py --config.il.num_steps=100000 --workdir runs/x
"""

from __future__ import annotations

import glob
import os
import shlex
import sys
import time

from absl import app, flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, REPO)

from irlvla_jax import tracking  # noqa: E402  (needs the repo on sys.path)

STAGES = ("data", "il", "irl", "rl", "eval", "submit")
#: What each stage does, for --help.
STAGE_HELP = {
    "data": "synthetic NAVSIM-format world (or real NAVSIM) -> TFDS dataset in config.data.dir",
    "il": "stage 1: imitation learning of the VLA policy -> <workdir>/il",
    "irl": "stage 2: reward world model by inverse RL -> <workdir>/irl",
    "rl": "stage 3: PPO of the planner against the reward model -> <workdir>/rl",
    "eval": "EPDMS table, BEV pictures -> <workdir>/eval; the run's <workdir>/report.html",
    "submit": "NAVSIM leaderboard pickle of one policy -> <workdir>/eval/submission.pkl",
}

config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs", "tiny.py"),
                                "An ml_collections config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (default: config.workdir).")
flags.DEFINE_string("coordinator_address", None,
                    "Multi-process jobs: HOST:PORT of process 0 (with --num_processes and "
                    "--process_id); without it SLURM / TPU pods are detected by JAX.")
flags.DEFINE_integer("num_processes", None, "Multi-process jobs: the number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process jobs: this process's index.")


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
    if stage == "submit":
        from irlvla_jax import submission
        return submission.run
    raise app.UsageError(f"unknown stage '{stage}'; choose from {', '.join(STAGES)}, all")


def usage() -> str:
    """The help a person needs: stages, configs (found on disk), common overrides."""
    ablations = sorted(os.path.splitext(os.path.basename(p))[0] for p in
                       glob.glob(os.path.join(REPO, "configs", "ablations", "[!_]*.py")))
    lines = ["usage: python launch.py [STAGE] [--config FILE] [--config.a.b=V ...] "
             "[--workdir DIR] [--verbosity N]", "",
             "stages (default: all = the six in order):"]
    lines += [f"  {name:7s} {text}" for name, text in STAGE_HELP.items()]
    lines += ["configs: configs/tiny.py (default: synthetic world, CPU, minutes), "
              "configs/navsim.py (real NAVSIM),",
              f"  configs/ablations/{{{','.join(ablations)}}}.py",
              "common overrides (any config field: --config.SECTION.FIELD=VALUE):",
              "  --workdir runs/x   --config.data.dir=/scratch/irlvla   "
              "--config.data.batch_size=16",
              "  --config.il.num_steps=100   --config.irl.num_steps=50   "
              "--config.ppo.num_updates=20",
              "  --config.ppo.reward=scorer   --config.eval.num_scenes=32   "
              "--config.eval.submission_policy=il_policy",
              "  --config.mesh.fsdp=8 (FSDP: state split over 8 devices)",
              "multi-process: --coordinator_address=HOST:PORT --num_processes=N --process_id=I "
              "(SLURM / TPU pods: detected)",
              "  --verbosity=0 (libraries' INFO logs)   --helpfull (every flag)"]
    return "\n".join(lines)


def record_command(workdir: str) -> None:
    """Append this command line to ``<workdir>/commands.txt`` (the run's report shows it)."""
    import jax
    if jax.process_index() != 0:
        return
    line = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
    with open(os.path.join(workdir, "commands.txt"), "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  (cd {shlex.quote(os.getcwd())}) {line}\n")


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
    maybe_initialize_distributed(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
                                 flags.FLAGS.process_id)
    os.makedirs(workdir, exist_ok=True)
    record_command(workdir)
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
    tracking.run_app(main, usage())
