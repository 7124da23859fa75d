"""Ablation: full DPPO (``full_dppo.py``'s recipe, with 8 samples per scene) against the sensor
RWM of ``rwm_geometry.py`` (BEV features sampled under the plan, the auxiliary geometry head, 600
IRL steps) trained on closed-loop states too (``irl.closed_loop_train_steps`` 1): the best
honest-input stage 3 measured so far, +0.043 EPDMS over IL, 95% CI [+0.009, +0.080] over stage-3
seeds 0-2, EC 0.596 (IL 0.611), jerk 1.31x IL's (README "Full DPPO").

    python launch.py irl --config configs/ablations/full_dppo_geometry_rwm.py
    python launch.py rl --config configs/ablations/full_dppo_geometry_rwm.py
    python launch.py eval --config configs/ablations/full_dppo_geometry_rwm.py

Stage 1 is the default run's (``previous_stages_dir``): run ``python launch.py`` first.
"""

from configs.ablations import full_dppo, rwm_geometry


def get_config():
    c = full_dppo.apply_recipe(rwm_geometry.get_config())
    c.irl.closed_loop_train_steps = 1
    c.ppo.group_size = 8
    c.name = "tiny_full_dppo_geometry_rwm"
    c.workdir = "runs/tiny_full_dppo_geometry_rwm"
    return c
