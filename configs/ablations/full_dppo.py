"""Ablation: full DPPO of the diffusion planner (denoiser + mode classifier), the paper's stage 3,
instead of the default's classifier-only RL: lr 1e-4 and 40 updates, the setting of the full-DPPO
runs the README reports (measured with an earlier version of stage 3: rerun it for today's
figure).

    python launch.py rl --config configs/ablations/full_dppo.py
    python launch.py eval --config configs/ablations/full_dppo.py

Stages 1 and 2 are the default run's (``previous_stages_dir``): run ``python launch.py`` first.
"""

from configs import tiny


def get_config():
    c = tiny.get_config()
    c.name = "tiny_full_dppo"
    c.workdir = "runs/tiny_full_dppo"
    c.previous_stages_dir = "runs/tiny"
    c.ppo.trainable = "planner"
    c.ppo.lr = 1e-4
    c.ppo.num_updates = 40
    return c
