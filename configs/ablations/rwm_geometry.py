"""Stages 2-3 with a sensor RWM that looks at the plan's own positions and is taught the scene
geometry: still honest inputs (the policy's sensor tokens and BEV feature map, the ego status),
ground truth only as training targets.

* ``rwm.bev_sampling``: the policy's BEV feature map read at every waypoint's footprint corners,
  centre and 1 s-lookahead point (a zero-initialised embedding added to the waypoint token);
* ``rwm.aux_geometry`` + ``irl.geometry_weight``: the waypoint tokens also predict the
  ground-truth candidate-scene geometry (``reward_model.interaction_features``: box overlap /
  clearance / gap / headway to the logged agents, red connectors, off-road corners, off-route,
  distance to the centreline) — an auxiliary loss, never an input;
* ``irl.num_steps`` 600 (the sensor RWM's training losses still fall at 200).

    python launch.py irl --config configs/ablations/rwm_geometry.py
    python launch.py rl --config configs/ablations/rwm_geometry.py
    python launch.py eval --config configs/ablations/rwm_geometry.py

Stage 1 is the default run's (``previous_stages_dir``): run ``python launch.py`` first.

Measured at a7a6090's IL (seed 0, held-out IL EPDMS 0.527), stages 2-3 seeds 0 and 1: RWM at
t = 0 Spearman 0.631 (sd 0.008), regret 0.192 (0.011) where the default sensor RWM has 0.568 /
0.292 (seed 0); in closed loop T2 / T4 Spearman 0.510 / 0.315 (the default 0.491 / 0.299).
The 600 steps were not separated from the two options (no 600-step default-RWM run yet).
"""

from configs import tiny


def get_config():
    c = tiny.get_config()
    c.name = "tiny_rwm_geometry"
    c.workdir = "runs/tiny_rwm_geometry"
    c.previous_stages_dir = "runs/tiny"
    c.rwm.bev_sampling = True
    c.rwm.aux_geometry = True
    c.irl.geometry_weight = 1.0
    c.irl.num_steps = 600
    return c
