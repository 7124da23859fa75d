"""Ablation: stages 2-3 with the sensor RWM as it was before the default took the plan-aware
options: the policy's sensor tokens only (no BEV features sampled under the plan, no auxiliary
geometry head), trained 200 steps on the logged frames only. Full DPPO against it is the
default's stage 3; README "Stage 3" has what it gains (nothing significant).

    python launch.py irl --config configs/ablations/plain_rwm.py
    python launch.py rl --config configs/ablations/plain_rwm.py
    python launch.py eval --config configs/ablations/plain_rwm.py

Stage 1 is the default run's (``previous_stages_dir``): run ``python launch.py`` first.
"""

from configs import tiny


def get_config():
    c = tiny.get_config()
    c.name = "tiny_plain_rwm"
    c.workdir = "runs/tiny_plain_rwm"
    c.previous_stages_dir = "runs/tiny"
    c.rwm.update(dict(bev_sampling=False, aux_geometry=False))
    c.irl.update(dict(geometry_weight=0.0, num_steps=200, closed_loop_train_steps=0))
    return c
