"""Ablation: stage 3 with half the PPO updates (100 instead of 200); ``--config.ppo.reward=scorer``
gives the scorer-reward column of the README's 100-update row.

    python launch.py rl --config configs/ablations/rl_100_updates.py
    python launch.py eval --config configs/ablations/rl_100_updates.py

Stages 1 and 2 are the default run's (``previous_stages_dir``): run ``python launch.py`` first.
"""

from configs import tiny


def get_config():
    c = tiny.get_config()
    c.name = "tiny_rl_100_updates"
    c.workdir = "runs/tiny_rl_100_updates"
    c.previous_stages_dir = "runs/tiny"
    c.ppo.num_updates = 100
    return c
