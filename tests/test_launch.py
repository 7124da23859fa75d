"""The launcher as a user meets it: wrong stages, stages run out of order and bad step counts end
with a message that says what to do, and a non-zero exit."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args, cwd=REPO):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env=env)


def test_an_unknown_stage_is_refused():
    proc = _launch("trian")
    assert proc.returncode != 0
    assert "unknown stage 'trian'" in proc.stdout + proc.stderr


@pytest.mark.parametrize("stage,needs", [("irl", "il"), ("rl", "il")])
def test_a_stage_before_its_inputs_says_which_stage_to_run(stage, needs, tmp_path):
    proc = _launch(stage, "--workdir", str(tmp_path))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert f"run `python launch.py {needs}` first" in out, out[-2000:]


def test_a_negative_step_count_is_refused_before_any_work(tmp_path):
    proc = _launch("il", "--workdir", str(tmp_path), "--config.il.num_steps=-5")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "config.il.num_steps = -5" in out, out[-2000:]
    assert not (tmp_path / "il" / "checkpoints").exists()
