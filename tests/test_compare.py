"""python -m irlvla_jax.compare: its statistics (jerk, paired bootstrap) and its argument errors."""

import numpy as np
import pytest

from irlvla_jax import compare


def test_jerk_of_constant_speed_and_constant_acceleration_is_zero_and_of_a_kink_not():
    t = 0.5 * np.arange(1, 9)
    steady = np.stack([8.0 * t, np.zeros(8), np.zeros(8)], -1)[None]
    accel = np.stack([5.0 * t + 0.5 * 2.0 * t ** 2, np.zeros(8), np.zeros(8)], -1)[None]
    # finite differences from the origin: v0 is the first segment's speed, so constant
    # acceleration has a constant second difference and no third
    np.testing.assert_allclose(compare.mean_abs_jerk(steady), 0.0, atol=1e-9)
    np.testing.assert_allclose(compare.mean_abs_jerk(accel), 0.0, atol=1e-9)
    kink = steady.copy()
    kink[0, 4:, 1] = 1.0                        # a 1 m sideways step at t = 2.5 s
    assert compare.mean_abs_jerk(kink)[0] > 1.0


def test_paired_bootstrap_brackets_the_mean_and_narrows_with_more_scenes():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.1, 0.2, 50), rng.normal(0.1, 0.2, 2000)
    lo, hi = compare.paired_bootstrap(small)
    assert lo < small.mean() < hi
    lo2, hi2 = compare.paired_bootstrap(large)
    assert hi2 - lo2 < (hi - lo) / 3 and lo2 > 0.0


def test_entries_parse_and_bad_ones_say_the_format():
    assert compare.parse_entry("RL=runs/a:rl_policy,runs/b:rl_policy") == (
        "RL", [("runs/a", "rl_policy"), ("runs/b", "rl_policy")])
    with pytest.raises(ValueError, match="NAME=RUN:POLICY"):
        compare.parse_entry("runs/a:rl_policy")
    with pytest.raises(ValueError, match="RUN:POLICY"):
        compare.parse_entry("RL=runs/a")
