"""Ablation: full DPPO of the diffusion planner (denoiser + mode classifier), the paper's stage 3,
instead of the default's classifier-only RL, with the recipe that keeps comfort: chain noise in a
smooth basis (t, t^2, t^3 per coordinate), lr 1e-4, and IL's trajectory loss on the logged future
at each scene's first planning step (``ppo.bc_weight`` 0.05).

    python launch.py rl --config configs/ablations/full_dppo.py
    python launch.py eval --config configs/ablations/full_dppo.py

Stages 1 and 2 are the default run's (``previous_stages_dir``): run ``python launch.py`` first.
With the RWM of ``configs/ablations/rwm_geometry.py`` instead: ``full_dppo_geometry_rwm.py``.
README "Full DPPO" has the figures (held-out EPDMS, EC, jerk, 3 seeds).
"""

from configs import tiny


def apply_recipe(c):
    """Full DPPO with smooth chain noise and the BC term (shared with the geometry-RWM variant)."""
    c.ppo.trainable = "planner"
    c.ppo.chain_noise = "smooth"
    c.ppo.lr = 1e-4
    c.ppo.bc_weight = 0.05
    return c


def get_config():
    c = apply_recipe(tiny.get_config())
    c.name = "tiny_full_dppo"
    c.workdir = "runs/tiny_full_dppo"
    c.previous_stages_dir = "runs/tiny"
    return c
