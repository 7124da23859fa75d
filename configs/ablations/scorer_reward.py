"""Ablation / upper bound for stage 3: PPO rewarded by the true JAX EPDMS scorer instead of the
reward world model. Everything else is the embedded default (configs/tiny.py).

    python launch.py rl --config configs/ablations/scorer_reward.py
    python launch.py eval --config configs/ablations/scorer_reward.py

Stages 1 and 2 are the default run's (``previous_stages_dir``): run ``python launch.py`` first.
"""

from configs import tiny


def get_config():
    c = tiny.get_config()
    c.name = "tiny_scorer_reward"
    c.workdir = "runs/tiny_scorer_reward"
    c.previous_stages_dir = "runs/tiny"
    c.ppo.reward = "scorer"
    return c
