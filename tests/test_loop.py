"""The stage loop (train/loop.py) every stage runs: resume, host syncs only on log steps, running
means, config checks, validation, checkpoint failures; and the previous-stage loader."""

import json
import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from irlvla_jax import parallel
from irlvla_jax.train import loop, stage_results
from irlvla_jax.train.state import TrainState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(num_steps=6, width=3):
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(width=width))
    c.data = ml_collections.ConfigDict(dict(sizes=dict(max_agents=4), batch_size=2))
    c.il = ml_collections.ConfigDict(dict(num_steps=num_steps, log_every=2, ckpt_every=3,
                                          keep_ckpts=2, eval_every=0, lr=0.1))
    return c


def _state(width=3):
    params = {"w": jnp.zeros((width,), jnp.float32)}
    return TrainState.create(params, optax.adam(0.1))


@jax.jit
def _step(state, batch, rng):
    """A noisy quadratic: the result depends on the step's rng and batch, so a resume that
    replayed the wrong ones would not match."""
    noise = jax.random.normal(rng, state.params["w"].shape)

    def loss(p):
        return jnp.sum((p["w"] - batch - noise) ** 2)
    value, grads = jax.value_and_grad(loss)(state.params)
    return state.apply_gradients(grads), {"loss": value, "stat/mean_batch": jnp.mean(batch)}


def _batches(start):
    step = start
    while True:
        yield jnp.full((3,), float(step), jnp.float32)
        step += 1


def _run(workdir, config, **kw):
    spec = loop.LoopSpec.of("il", config.il)
    return loop.run(spec, os.path.join(workdir, "il"), _step, _state(config.model.width),
                    _batches, jax.random.PRNGKey(0), config=config, show_progress=False, **kw)


def _records(workdir):
    with open(os.path.join(workdir, "il", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_resume_repeats_an_uninterrupted_run_and_logs_each_step_once(tmp_path):
    full = _run(str(tmp_path / "a"), _config(6), running_means="stat/")
    _run(str(tmp_path / "b"), _config(4), running_means="stat/")   # stops at 4: ckpt at 3 and 4
    # a killed run: the checkpoint at 4 is lost, the log says 4 was reached
    import shutil
    shutil.rmtree(tmp_path / "b" / "il" / "checkpoints" / "4")
    resumed = _run(str(tmp_path / "b"), _config(6), running_means="stat/")
    assert resumed.start_step == 3
    np.testing.assert_array_equal(np.asarray(resumed.state.params["w"]),
                                  np.asarray(full.state.params["w"]))
    # the means over all six steps' batches (0..5), exact across the resume
    assert resumed.running_means == pytest.approx({"stat/mean_batch": 2.5})
    assert full.running_means == pytest.approx({"stat/mean_batch": 2.5})
    steps = [r["step"] for r in _records(str(tmp_path / "b"))]
    assert steps == [2, 4, 6], steps          # step 4 of the killed run is not repeated
    assert [r["loss"] for r in _records(str(tmp_path / "b"))] == \
        pytest.approx([r["loss"] for r in _records(str(tmp_path / "a"))])


def test_metrics_leave_the_device_only_on_log_and_checkpoint_steps(tmp_path, monkeypatch):
    calls = []
    real = jax.device_get

    def counting(x):
        calls.append(1)
        return real(x)
    monkeypatch.setattr(jax, "device_get", counting)
    _run(str(tmp_path), _config(6))
    # log steps 2, 4, 6 fetch the metrics once each; nothing else in the loop syncs
    assert len(calls) == 3


def test_bad_step_counts_are_refused_with_the_field_named(tmp_path):
    c = _config()
    c.il.num_steps = -5
    with pytest.raises(ValueError, match=r"config\.il\.num_steps = -5"):
        _run(str(tmp_path), c)
    c = _config()
    c.il.log_every = 0
    with pytest.raises(ValueError, match="log_every = 0"):
        _run(str(tmp_path), c)
    with pytest.raises(ValueError, match="batch_size"):
        parallel.check_batch_divisible(0, parallel.make_mesh({"data": -1}))


def test_resume_with_another_model_says_which_fields_changed(tmp_path):
    _run(str(tmp_path), _config(3, width=3))
    saved = json.load(open(tmp_path / "il" / "config.json"))
    assert saved["model"]["width"] == 3
    with pytest.raises(SystemExit, match=r"model\.width: 3 -> 4"):
        _run(str(tmp_path), _config(6, width=4))
    # a later stage loading this one is told the same
    with pytest.raises(SystemExit, match=r"model\.width: 3 -> 4"):
        stage_results.require(_config(6, width=4), str(tmp_path), "il", "irl needs it")


def test_a_missing_stage_names_the_command_to_run(tmp_path):
    with pytest.raises(SystemExit, match="run `python launch.py il` first"):
        stage_results.require(_config(), str(tmp_path), "il", "irl: stage 2 needs the policy")


def test_previous_stages_dir_is_searched_after_the_workdir(tmp_path):
    _run(str(tmp_path / "default"), _config(3))
    c = _config(3)
    c.previous_stages_dir = str(tmp_path / "default")
    assert stage_results.find_stage(c, str(tmp_path / "ablation"), "il") == \
        str(tmp_path / "default")
    assert stage_results.find_stage(c, str(tmp_path / "ablation"), "rl") is None


def test_an_unwritable_checkpoint_directory_ends_the_run_with_an_error(tmp_path):
    """The directory turns unwritable mid-run (as root, chmod does not stop writes: it becomes
    a file). The process must end by itself, non-zero, naming the directory."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {REPO!r})
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        import jax, jax.numpy as jnp
        import test_loop as T
        from irlvla_jax.checkpoint import exit_on_checkpoint_error
        from irlvla_jax.train import loop
        ckdir = os.path.join({str(tmp_path)!r}, "il", "checkpoints")

        def step(state, batch, rng):
            if int(batch[0]) == 4:        # after the checkpoint at step 3
                # the async save of step 3 may still be creating directories under ckdir:
                # move it aside and retry until a plain file holds the name
                for attempt in range(100):
                    try:
                        os.rename(ckdir, ckdir + f".gone{{attempt}}")
                    except FileNotFoundError:
                        pass
                    try:
                        open(ckdir, "x").close()
                        break
                    except (IsADirectoryError, FileExistsError):
                        continue
                else:
                    raise RuntimeError("could not replace " + ckdir + " by a file")
            return T._step(state, batch, rng)

        c = T._config(12)
        with exit_on_checkpoint_error():
            loop.run(loop.LoopSpec.of("il", c.il), os.path.join({str(tmp_path)!r}, "il"), step,
                     T._state(), T._batches, jax.random.PRNGKey(0), config=c,
                     show_progress=False)
        print("finished normally")
    """)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    took = time.time() - t0
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "finished normally" not in proc.stdout
    assert "error:" in proc.stderr and "checkpoints" in proc.stderr, proc.stderr[-2000:]
    assert took < 60, took
