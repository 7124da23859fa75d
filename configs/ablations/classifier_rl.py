"""Ablation: stage 3 trains only the planner's mode-classification head (``ppo.trainable =
"classifier"``): the denoiser stays IL's and RL re-ranks IL's modes. This was the default before
full DPPO (the paper's stage 3) was; its other stage-3 settings are those it was measured with:
white chain noise, lr 1e-3, no BC term, 4 samples per scene.

    python launch.py rl --config configs/ablations/classifier_rl.py
    python launch.py eval --config configs/ablations/classifier_rl.py

Stages 1 and 2 are the default run's (``previous_stages_dir``): run ``python launch.py`` first.
README "Stage 3" has its figures beside the default's.
"""

from configs import tiny


def get_config():
    c = tiny.get_config()
    c.name = "tiny_classifier_rl"
    c.workdir = "runs/tiny_classifier_rl"
    c.previous_stages_dir = "runs/tiny"
    c.ppo.update(dict(trainable="classifier", chain_noise="white", lr=1e-3, bc_weight=0.0,
                      group_size=4))
    return c
