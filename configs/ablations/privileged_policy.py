"""Privileged ablation (off by default): the policy also reads ground truth a NAVSIM agent does
not receive — the HD map's lane baselines ("lanes") and the annotated boxes at t = 0
("agents") — as extra planner tokens. Reported as an ablation only: its eval.json records the
inputs, and a NAVSIM submission from it is invalid (the writer says so). Trains every stage anew
(the policy's inputs change).

    python launch.py --config configs/ablations/privileged_policy.py
"""

from configs import tiny


def get_config():
    c = tiny.get_config()
    c.name = "tiny_privileged_policy"
    c.workdir = "runs/tiny_privileged_policy"
    c.model.privileged = ("lanes", "agents")
    return c
