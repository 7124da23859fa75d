"""``launch.py il`` as a pod runs it: two processes on 127.0.0.1 (2 fake CPU devices each, gloo
collectives) joined through ``--coordinator_address/--num_processes/--process_id``, train,
are killed after a checkpoint, resume, evaluate; the logged metrics and the evaluations equal a
one-process 4-device run's (started as a one-task SLURM job), and process 1 writes none of the
run's files.

One small policy (tests/policy_scenes.small_config) on 16 random scenes (their BEV labels are
out of range, so the BEV loss and the total loss are NaN in every run alike; the other losses
and the gradients are finite), 4 steps: a checkpoint at step 2, a held-out evaluation at 3
(its first compilation is where the processes are killed) and at the end (L2 and collisions: no EPDMS, whose scorer would take longer to
compile than the policy).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")

# Runs launch.py in this process with every Python-level open for writing logged (path, mode)
# to $WRITE_LOG: which process writes which of the run's files.
RUNNER = textwrap.dedent("""
    import os, runpy, sys
    log = open(os.environ["WRITE_LOG"], "a", buffering=1)
    def audit(event, args):
        if event == "open" and isinstance(args[0], str):
            mode, flags = args[1], args[2]
            writes = (any(c in (mode or "") for c in "wax+") if mode
                      else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
            if writes:
                log.write(os.path.abspath(args[0]) + "\\n")
    sys.addaudithook(audit)
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    cfg = root / "config.py"
    cfg.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        from policy_scenes import small_config

        def get_config():
            c = small_config()
            c.data.source = "random"
            c.data.random_scenes = 16
            c.data.dir = {str(root / "data")!r}
            c.data.batch_size = 8
            c.mesh.data = -1
            c.il.update(dict(num_steps=4, log_every=1, eval_every=3, ckpt_every=2,
                             eval_batches=1, final_eval_batches=1, warmup_steps=1,
                             eval_epdms=False))
            return c
    """))
    runner = root / "runner.py"
    runner.write_text(RUNNER)
    return root, str(cfg), str(runner)


def _env(devices: int, log: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "JAX_COORDINATOR", "TPU_"))}
    flags = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                     if "xla_force_host_platform_device_count" not in f)
    env.update(JAX_PLATFORMS="cpu", WRITE_LOG=log,
               XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}", **extra)
    return env


def _start(runner, cfg, workdir, log, *args, devices=4, **env):
    cmd = [sys.executable, runner, os.path.join(REPO, "launch.py"), "il", "--config", cfg,
           "--workdir", workdir, *args]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(devices, log, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(procs, timeout=400):
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, _tail(out)
    return outs


def _tail(out: str) -> str:
    """A failed process's error lines (a native crash prints a long stack after them) and its
    last lines."""
    errors = [s for s in out.splitlines() if "Error" in s or "error:" in s][:20]
    return "\n".join(errors) + "\n...\n" + out[-3000:]


def _two_processes(runner, cfg, workdir, logs):
    addr = f"127.0.0.1:{_free_port()}"
    return [_start(runner, cfg, workdir, logs[i], f"--coordinator_address={addr}",
                   "--num_processes=2", f"--process_id={i}", devices=2) for i in range(2)]


def _kill_after_checkpoint(procs, ckpt_dir, step, timeout=400):
    """SIGKILL every process once checkpoint ``step`` is committed (a preempted job)."""
    t0 = time.time()
    while not os.path.isdir(os.path.join(ckpt_dir, str(step))):
        for p in procs:
            if p.poll() is not None:
                for q in procs:
                    q.kill()
                raise AssertionError(f"a process ended before checkpoint {step}:\n"
                                     + _tail(p.communicate()[0]))
        assert time.time() - t0 < timeout, "no checkpoint in time"
        time.sleep(0.05)
    for p in procs:
        p.kill()
    for p in procs:
        p.communicate()


def _same(a, b, what):
    """Equal within the float rounding of another reduction order; NaN (null) equals NaN."""
    assert set(a) == set(b), (what, a, b)
    for k in a:
        if a[k] is None or b[k] is None:
            assert a[k] is None and b[k] is None, (what, k, a[k], b[k])
        else:
            np.testing.assert_allclose(b[k], a[k], rtol=2e-4, atol=1e-5, err_msg=f"{what} {k}")


def _records(workdir):
    with open(os.path.join(workdir, "il", "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    skip = ("time", "wall", "samples_per_s", "eval/step")
    return [{k: v for k, v in r.items() if not any(s in k for s in skip)} for r in rows]


def _writes(log, workdir):
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [p for p in f.read().split() if p.startswith(workdir + os.sep)]


def test_two_processes_train_are_killed_resume_and_match_one_process(setup):
    root, cfg, runner = setup
    data = subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), "data", "--config",
                           cfg, "--workdir", str(root / "data_run")], cwd=REPO,
                          env=_env(1, str(root / "data.log")), capture_output=True, text=True,
                          timeout=300)
    assert data.returncode == 0, data.stdout[-3000:] + data.stderr[-3000:]
    # random scenes have no valid expert futures to cluster: the data-free default anchors
    from irlvla_jax.models import anchors
    anchors.save_anchors(str(root / "data" / anchors.ANCHOR_FILE), anchors.default_anchors(6))

    # two processes x 2 devices, killed once the step-2 checkpoint is committed (they are then
    # compiling the step-3 evaluation), then resumed to step 4
    two = str(root / "two")
    logs = [str(root / f"two_{i}.log") for i in range(2)]
    t0 = time.time()
    _kill_after_checkpoint(_two_processes(runner, cfg, two, logs),
                           os.path.join(two, "il", "checkpoints"), 2)
    t1 = time.time()
    ckpts = os.listdir(os.path.join(two, "il", "checkpoints"))
    assert [c for c in ckpts if c.isdigit()] == ["2"], ckpts
    assert not os.path.exists(os.path.join(two, "il", "eval.json"))
    outs = _wait(_two_processes(runner, cfg, two, logs))
    t2 = time.time()
    assert "=== il done" in outs[0], outs[0][-3000:]

    # the reference: one process, 4 devices, as a one-task SLURM job (no cluster to join)
    one = str(root / "one")
    out1 = _wait([_start(runner, cfg, one, str(root / "one.log"), SLURM_NTASKS="1",
                         SLURM_PROCID="0")])[0]
    print(f"two processes: {t1 - t0:.0f} s to the kill, {t2 - t1:.0f} s resumed; "
          f"one process: {time.time() - t2:.0f} s")
    assert "=== il done" in out1, out1[-3000:]

    # the same records: losses and gradient norms at steps 1-4, held-out metrics at 3 and 4
    a, b = _records(one), _records(two)
    assert [r["step"] for r in a] == [1, 2, 3, 3, 4, 4] == [r["step"] for r in b]
    finite = 0
    for ra, rb in zip(a, b):
        _same(ra, rb, f"step {ra['step']}")
        finite += sum(v is not None for v in ra.values())
    assert finite > 40
    ev1 = json.load(open(os.path.join(one, "il", "eval.json")))
    ev2 = json.load(open(os.path.join(two, "il", "eval.json")))
    assert ev1["step"] == ev2["step"] == 4 and ev1["num_scenes"] == 8
    _same(ev1, ev2, "eval.json")

    # process 0 wrote the run's files, once a run; process 1 none of them (its own orbax
    # array metadata and JAX's compilation cache entries are not the run's outputs)
    zero = _writes(logs[0], two)
    other = [p for p in _writes(logs[1], two) if "/.xla_cache/" not in p
             and not p.endswith("array_metadatas/process_1")]
    assert not other, other
    for name in ("il/eval.json", "il/config.json", "commands.txt"):
        assert zero.count(os.path.join(two, name)) == (1 if name.endswith("eval.json") else 2), \
            (name, zero)
    commands = open(os.path.join(two, "commands.txt")).read().splitlines()
    assert len(commands) == 2 and all("--process_id=0" in c for c in commands), commands
