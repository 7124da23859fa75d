"""What each process of a multi-host job reads: its rows of every global batch, the same global
batches whatever the number of processes (a 2-host run trains on a 1-host run's batches), and
for evaluation the whole split (or its first ``limit`` scenes) once, the last batch padded."""

import itertools

import numpy as np
import pytest

from random_data import random_data_config
from irlvla_jax.data import loader

@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return random_data_config(tmp_path_factory, scenes=14, batch_size=4)


def _batches(config, n, **kw):
    it = loader.host_batches(config, config.data.train_split, **kw)
    return list(itertools.islice(it, n))


def test_process_rows_of_the_global_batches_do_not_depend_on_the_process_count(config):
    kw = dict(seed=5, shuffle=True, start_step=2)
    whole = _batches(config, 5, **kw)                 # batches 2-6: across an epoch boundary
    halves = [_batches(config, 5, rows=rows, **kw) for rows in ((0, 2), (2, 4))]
    for k, (arrays, metas) in enumerate(whole):
        parts = [h[k] for h in halves]
        assert [m.scene_index for m in metas] == \
            [m.scene_index for _, ms in parts for m in ms]
        for name, x in arrays.items():
            np.testing.assert_array_equal(x, np.concatenate([a[name] for a, _ in parts]))
    # an epoch (14 scenes, batches of 4: 3 batches, 2 scenes left over for the next) is a
    # permutation of the split
    first = [m.scene_index for _, ms in _batches(config, 3, seed=5, shuffle=True) for m in ms]
    assert len(set(first)) == 12


def test_evaluation_reads_every_scene_once_the_last_batch_padded(config):
    for limit, want in ((None, 14), (9, 9)):
        seen = []
        for rows in ((0, 2), (2, 4)):
            for arrays, metas in loader.host_batches(config, config.data.eval_split, seed=0,
                                                     shuffle=False, num_epochs=1, rows=rows,
                                                     limit=limit, drop_remainder=False):
                assert arrays["speed_limit"].shape[0] == 2 == len(metas)
                seen += [m.scene_index for m in metas if m is not None]
        assert sorted(seen) == list(range(want)), (limit, seen)
    with pytest.raises(ValueError, match="too few"):
        loader.host_batches(config, config.data.eval_split, seed=0, shuffle=False,
                            num_epochs=1, limit=3)
