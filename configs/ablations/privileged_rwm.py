"""Ablation / upper bound for stages 2-3: the reward world model reads ground truth instead of
sensor features — its own encoder over the logged agent futures, the drivable-map polygons, the
route and the red lights (``rwm.scene_encoder="privileged"``) plus hand-written per-waypoint
geometric tests mirroring the scorer's checks (``rwm.interaction``), instead of the policy's
sensor tokens and BEV features under the plan. The policy is the default run's (honest inputs);
only what the reward model sees changes.

    python launch.py irl --config configs/ablations/privileged_rwm.py
    python launch.py rl --config configs/ablations/privileged_rwm.py
    python launch.py eval --config configs/ablations/privileged_rwm.py

Stage 1 is the default run's (``previous_stages_dir``): run ``python launch.py`` first.
"""

from configs import tiny


def get_config():
    c = tiny.get_config()
    c.name = "tiny_privileged_rwm"
    c.workdir = "runs/tiny_privileged_rwm"
    c.previous_stages_dir = "runs/tiny"
    c.rwm.scene_encoder = "privileged"
    c.rwm.interaction = True
    c.rwm.bev_sampling = False    # it reads the policy's BEV map: a sensor-RWM option
    return c
