"""The launcher as a user meets it: wrong stages, stages run out of order and bad step counts end
with a message that says what to do, and a non-zero exit; ``--help`` says what to run; a run
prints its events, not its libraries' INFO logs."""

import glob
import os
import re
import subprocess
import sys

import numpy as np
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


def test_a_negative_step_count_is_refused_before_any_work(tmp_path, monkeypatch):
    # SLURM_NTASKS=1 (a one-task SLURM job): start-up must not try to join a cluster
    monkeypatch.setenv("SLURM_NTASKS", "1")
    proc = _launch("il", "--workdir", str(tmp_path), "--config.il.num_steps=-5")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "config.il.num_steps = -5" in out, out[-2000:]
    assert not (tmp_path / "il" / "checkpoints").exists()


def _printed_lines(out: str) -> list[str]:
    """The lines a person reads, progress bars left out: the output split at newlines and
    carriage returns, ANSI escapes removed, blank segments and tqdm bars dropped."""
    out = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out)
    bar = re.compile(r"\d+%\||it/s\]|/s\]|\?it/s|<\?")
    return [s for s in re.split(r"[\r\n]", out) if s.strip() and not bar.search(s)]


def test_help_names_the_stages_configs_and_common_overrides():
    proc = _launch("--help")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) <= 20, proc.stdout
    text = proc.stdout
    for word in ("data", "il", "irl", "rl", "eval", "submit", "configs/tiny.py",
                 "configs/navsim.py", "--config.ppo.reward=scorer", "--workdir", "--verbosity"):
        assert word in text, word
    for path in glob.glob(os.path.join(REPO, "configs", "ablations", "[!_]*.py")):
        assert os.path.splitext(os.path.basename(path))[0] in text
    sub = subprocess.run([sys.executable, "-m", "irlvla_jax.submission", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert sub.returncode == 0 and len(sub.stdout.strip().splitlines()) <= 16, sub.stdout
    assert "--submission FILE" in sub.stdout and "--partial" in sub.stdout


def test_a_small_run_prints_few_lines_and_no_absl_info(tmp_path):
    """``data`` (random scenes: TFDS builds and reads a dataset) then ``submit`` (from plans an
    eval stage left): one line per stage event, no absl INFO line, no routine warning."""
    from irlvla_jax import evaluate, types
    data = _launch("data", "--config.data.source=random", "--config.data.random_scenes=4",
                   f"--config.data.dir={tmp_path / 'data'}", "--workdir", str(tmp_path / "run"))
    assert data.returncode == 0, data.stderr[-3000:]
    metas = [types.SceneMeta(token=f"t{i}", log_name="log", map_location="road",
                             previous_token=None, track_tokens=[]) for i in range(4)]
    evaluate.save_plans(str(tmp_path / "run" / evaluate.PLANS_FILE), metas,
                        {"constant_velocity": np.zeros((4, 8, 3), np.float32)})
    submit = _launch("submit", "--workdir", str(tmp_path / "run"),
                     "--config.eval.submission_policy=constant_velocity")
    assert submit.returncode == 0, submit.stderr[-3000:]
    out = data.stdout + data.stderr + submit.stdout + submit.stderr
    lines = _printed_lines(out)
    assert len(lines) < 30, "\n".join(lines)
    assert not [s for s in lines if re.match(r"[IW]\d{4} ", s)], "\n".join(lines)
    assert "=== data done" in out and "=== submit done" in out
    assert "submit: constant_velocity plans of 4 scenes" in out
    assert (tmp_path / "run" / "eval" / "submission.pkl").exists()
    assert "launch.py submit" in (tmp_path / "run" / "commands.txt").read_text()
