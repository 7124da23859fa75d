"""How well a trained RWM ranks the IL policy's own modes: what classifier-only PPO can reach.

Classifier-only stage 3 (``ppo.trainable="classifier"``, configs/ablations/classifier_rl.py)
re-ranks the frozen denoiser's modes, so the reward model matters there through one question:
among the M modes the IL policy plans in a held-out scene, does the RWM's best have a high true
EPDMS? Per held-out scene this plans one deterministic chain of the IL policy (as ``evaluate``
does), scores all M modes with the true scorer and with the RWM (reading what it reads in stage
3), and reports the mean true EPDMS of the IL classifier's pick, the RWM's pick, the best mode
(oracle) and all modes, the within-scene Spearman of RWM vs scorer over the modes, and the true
sub-scores of the RWM's pick.

    python benchmarks/rwm_mode_ranking.py --config configs/tiny.py --workdir runs/X \
        [--config.previous_stages_dir=runs/tiny] [--config.rwm.bev_sampling=False ...]

Writes ``<workdir>/irl/mode_ranking.json``.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs", "tiny.py"))
flags.DEFINE_string("workdir", None, "the run whose irl/ checkpoint is measured")
flags.DEFINE_integer("scenes", -1, "held-out scenes (-1: the whole eval split)")


def spearman_rows(a, b):
    """Mean over rows of the Spearman correlation of a[i] and b[i] (rows with ties only: 0)."""
    import numpy as np
    from scipy.stats import spearmanr
    out = []
    for x, y in zip(a, b):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        out.append(spearmanr(x, y).correlation)
    return float(np.mean(out)) if out else float("nan")


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np

    from irlvla_jax import types
    from irlvla_jax.data import loader
    from irlvla_jax.models import policy as policy_lib
    from irlvla_jax.models import reward_model as rwm_lib
    from irlvla_jax.sim.scorer import scorer_labels
    from irlvla_jax.train import stage_results

    config = flags.FLAGS.config
    workdir = os.path.abspath(flags.FLAGS.workdir)
    if config.get("previous_stages_dir"):
        config.previous_stages_dir = os.path.join(REPO, config.previous_stages_dir)
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, ".xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
    model, pv = stage_results.load_il_policy(config, workdir)
    rwm, params = stage_results.load_reward_model(config, workdir)
    sensor = config.rwm.scene_encoder == "policy"

    @jax.jit
    def step(scene, rng):
        tokens = policy_lib.encode(model, pv, scene).replace(aux={})
        chain = policy_lib.plan(model, pv, tokens, rng, stochastic=False)
        trajs = jnp.concatenate([scene.expert_future[:, None, :types.PLAN_LEN], chain.trajs], 1)
        labels = scorer_labels(scene, trajs)
        pred = rwm_lib.apply(rwm, params, scene, trajs, tokens if sensor else None)
        return dict(true=labels.epdms(), reward=pred.reward(labels.ec_weight),
                    il_logits=chain.mode_logits,
                    **{f"y_{n}": getattr(labels, n) for n in types.SUBSCORE_NAMES})

    limit = None if flags.FLAGS.scenes < 0 else flags.FLAGS.scenes
    scenes, _ = loader.load_split_numpy(config, config.data.eval_split, limit)
    n = scenes.speed_limit.shape[0]
    b = min(config.data.batch_size, n)
    outs: dict[str, list] = {}
    for i in range(0, n - b + 1, b):
        batch = jax.tree.map(lambda x: jnp.asarray(x[i:i + b]), scenes)
        o = jax.device_get(step(batch, jax.random.PRNGKey(i)))
        for k, v in o.items():
            outs.setdefault(k, []).append(np.asarray(v))
    cat = {k: np.concatenate(v) for k, v in outs.items()}
    true, reward = cat["true"][:, 1:], cat["reward"][:, 1:]        # the M modes (0 = expert)
    rows = np.arange(true.shape[0])
    il_pick, rwm_pick = cat["il_logits"].argmax(1), reward.argmax(1)
    res = dict(
        num_scenes=int(true.shape[0]), num_modes=int(true.shape[1]),
        true_il_pick=float(true[rows, il_pick].mean()),
        true_rwm_pick=float(true[rows, rwm_pick].mean()),
        true_best_mode=float(true.max(1).mean()), true_mode_mean=float(true.mean()),
        true_expert=float(cat["true"][:, 0].mean()),
        spearman_modes=spearman_rows(reward, true),
        rwm_pick_vs_il_pick=float((true[rows, rwm_pick] - true[rows, il_pick]).mean()),
        rwm_pick_subscores={n: float(cat[f"y_{n}"][:, 1:][rows, rwm_pick].mean())
                            for n in types.SUBSCORE_NAMES},
        il_pick_subscores={n: float(cat[f"y_{n}"][:, 1:][rows, il_pick].mean())
                           for n in types.SUBSCORE_NAMES})
    path = os.path.join(workdir, "irl", "mode_ranking.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    app.run(main)
