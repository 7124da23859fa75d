"""Privileged ablation (off by default): the planner also reads the current frame's agent boxes
as tokens, i.e. ground-truth perception that a NAVSIM agent does not receive. Reported as an
ablation only. Trains every stage anew (the policy's inputs change).

    python launch.py --config configs/ablations/agent_vectors.py
"""

from configs import tiny


def get_config():
    c = tiny.get_config()
    c.name = "tiny_agent_vectors"
    c.workdir = "runs/tiny_agent_vectors"
    c.model.agent_vectors = True
    return c
