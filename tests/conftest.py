"""Test setup, before JAX is imported anywhere: 8 fake CPU devices (for sharding tests), cheap
XLA compiles, and a persistent compilation cache for the session.

Compilation dominates the suite's time on CPU (a small IL train step: ~1 s of running, tens of
seconds of compiling), so:
* ``--xla_backend_optimization_level=0`` skips LLVM's optimisation passes: the small IL step
  compiles in 23 s instead of 33 s (2 cores, load ~3) and runs at 29 ms instead of 23 ms.
  Results change by float rounding only (no FMA contraction); every test compares with
  tolerances.
* the persistent cache (a fresh temporary directory per session, removed at exit) lets test
  files that compile the same program (the small policy's init in test_il, test_policy,
  test_rollout, test_ppo) compile it once. Set ``JAX_COMPILATION_CACHE_DIR`` yourself to keep
  the cache between local runs.
"""

import atexit
import os
import shutil
import tempfile

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    _flags += " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="irlvla_jax_test_cache_")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    # cache every program that took over 2 s to compile (the default, 1 s, also stores the many
    # small ones that are cheaper to recompile than to serialise)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")
