"""Ablation: full DPPO (``full_dppo.py``'s recipe) against the sensor RWM of ``rwm_geometry.py``
(BEV features sampled under the plan, the auxiliary geometry head, 600 IRL steps): the best
honest-input stage 3 measured so far (README "Full DPPO").

    python launch.py irl --config configs/ablations/full_dppo_geometry_rwm.py
    python launch.py rl --config configs/ablations/full_dppo_geometry_rwm.py
    python launch.py eval --config configs/ablations/full_dppo_geometry_rwm.py

Stage 1 is the default run's (``previous_stages_dir``): run ``python launch.py`` first.
"""

from configs.ablations import full_dppo, rwm_geometry


def get_config():
    c = full_dppo.apply_recipe(rwm_geometry.get_config())
    c.name = "tiny_full_dppo_geometry_rwm"
    c.workdir = "runs/tiny_full_dppo_geometry_rwm"
    return c
