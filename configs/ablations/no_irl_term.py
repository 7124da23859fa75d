"""Ablation: the reward world model without the inverse-RL term (``irl.irl_weight = 0``): only
the supervised sub-score losses on scorer labels. Measures what the expert-ranking (hinge +
max-entropy) term adds. Stage 1 is the default run's.

    python launch.py irl --config configs/ablations/no_irl_term.py
    python launch.py rl --config configs/ablations/no_irl_term.py
    python launch.py eval --config configs/ablations/no_irl_term.py
"""

from configs import tiny


def get_config():
    c = tiny.get_config()
    c.name = "tiny_no_irl_term"
    c.workdir = "runs/tiny_no_irl_term"
    c.previous_stages_dir = "runs/tiny"
    c.irl.irl_weight = 0.0
    return c
