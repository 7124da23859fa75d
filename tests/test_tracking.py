"""What a run prints (``tracking.configure_console`` through ``tracking.run_app``): the project's
events as plain lines, the libraries' warnings, no INFO chatter from absl / orbax / TFDS unless
``--verbosity=0`` asks for it; and the JSON-lines writer a resumed run appends to."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from irlvla_jax import tracking

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSL_LINE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+ ", re.M)

# An entry point that logs as a stage does: absl and python INFO from libraries, a real orbax
# checkpoint save (its manager logs dozens of INFO lines), TFDS's routine warning, a warning
# that matters, the project's own event and an error.
SCRIPT = textwrap.dedent("""
    import logging, sys
    sys.path.insert(0, {repo!r})
    from absl import logging as absl_logging
    from irlvla_jax import tracking

    def main(argv):
        import jax.numpy as jnp
        from irlvla_jax.checkpoint import Checkpointer
        absl_logging.info("absl chatter")
        logging.getLogger("pyogrio._io").info("Created 40 records")
        ck = Checkpointer({ckpt!r})
        ck.save(1, {{"w": jnp.ones(3)}}, {{"stage": "il"}}, force=True)
        ck.close()
        absl_logging.warning("Using custom data configuration: NavsimConfig(...)")
        absl_logging.warning("disk almost full")
        logging.getLogger("irlvla_jax.train.loop").info("il: resumed from step 3")
        logging.getLogger("orbax").error("a save failed")

    tracking.run_app(main, "usage: script")
""")


def _run(tmp_path, *args):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(repo=REPO, ckpt=str(tmp_path / f"ckpt{len(args)}")))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_by_default_only_events_warnings_and_errors_print(tmp_path):
    out = _run(tmp_path)
    prefixed = [m.group(0) for m in ABSL_LINE.finditer(out)]
    assert not [p for p in prefixed if p.startswith("I")], out[-3000:]
    assert "absl chatter" not in out and "Created 40 records" not in out
    assert "CheckpointManager" not in out
    assert "Using custom data configuration" not in out      # routine: no action needed
    assert "disk almost full" in out and "a save failed" in out
    assert re.search(r"^il: resumed from step 3$", out, re.M), out     # plain, no prefix
    assert len(out.strip().splitlines()) <= 4, out


def test_verbosity_0_brings_the_libraries_info_logs_back(tmp_path):
    out = _run(tmp_path, "--verbosity=0")
    assert len([m for m in ABSL_LINE.finditer(out) if m.group(1) == "I"]) > 10
    assert "absl chatter" in out and "CheckpointManager" in out
    assert "Using custom data configuration" in out
    assert re.search(r"^il: resumed from step 3$", out, re.M)


def test_help_prints_the_usage_not_the_flag_dump(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog", "--help"])
    with pytest.raises(SystemExit) as e:
        tracking.run_app(lambda argv: 0, "usage: prog [STAGE]\n")
    assert e.value.code == 0
    assert capsys.readouterr().out == "usage: prog [STAGE]\n"


def test_a_resumed_writer_drops_the_records_after_its_step(tmp_path):
    w = tracking.MetricWriter(str(tmp_path), enabled=True)
    for s in (1, 2, 3, 4):
        w.write(s, {"loss": float(s)})
    w.close()
    w = tracking.MetricWriter(str(tmp_path), enabled=True, resume_step=2)
    w.write(3, {"loss": 30.0})
    w.close()
    with open(tmp_path / "metrics.jsonl") as f:
        steps = [(r["step"], r["loss"]) for r in map(json.loads, f)]
    assert steps == [(1, 1.0), (2, 2.0), (3, 30.0)]
