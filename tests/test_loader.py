"""The grain loader: deterministic per seed, resumable at a step, epochs cover the split once,
batches land sharded over the 8 fake CPU devices, worker processes change nothing."""

import itertools

import jax
import numpy as np
import pytest

from random_data import random_data_config
from irlvla_jax import parallel, types
from irlvla_jax.data import loader

@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return random_data_config(tmp_path_factory, scenes=16, batch_size=8)


@pytest.fixture(scope="module")
def mesh():
    return parallel.make_mesh({"data": -1, "fsdp": 1})


def indices(config, mesh, n, **kw):
    """Scene indices of the first n batches."""
    kw = {"seed": 0, "shuffle": True, **kw}
    it = loader.make_loader(config, config.data.train_split, mesh, **kw)
    return [[m.scene_index for m in metas] for _, metas in itertools.islice(it, n)]


def test_same_seed_same_batches_other_seed_other_order(config, mesh):
    a, b = indices(config, mesh, 4), indices(config, mesh, 4)
    assert a == b
    assert indices(config, mesh, 4, seed=1) != a
    assert indices(config, mesh, 2, shuffle=False) == [list(range(8)), list(range(8, 16))]


def test_epochs_cover_the_split_once_and_reshuffle(config, mesh):
    a = indices(config, mesh, 4)
    assert sorted(a[0] + a[1]) == list(range(16)) == sorted(a[2] + a[3])
    assert a[:2] != a[2:]
    finite = loader.make_loader(config, config.data.train_split, mesh, seed=0, shuffle=True,
                                num_epochs=1)
    assert [[m.scene_index for m in metas] for _, metas in finite] == a[:2]
    assert finite.get_state() == {"step": 2}


def test_resume_at_step_matches_uninterrupted_run(config, mesh):
    full = loader.make_loader(config, config.data.train_split, mesh, seed=3, shuffle=True)
    batches = list(itertools.islice(full, 5))
    assert full.get_state() == {"step": 5}
    resumed = loader.make_loader(config, config.data.train_split, mesh, seed=3, shuffle=True,
                                 start_step=3)
    for want_scene, want_metas in batches[3:]:
        scene, metas = next(resumed)
        assert [m.token for m in metas] == [m.token for m in want_metas]
        np.testing.assert_array_equal(np.asarray(scene.cameras), np.asarray(want_scene.cameras))
    assert resumed.get_state() == {"step": 5}


def test_batch_is_sharded_over_the_data_axis_with_the_stored_values(config, mesh):
    scene, metas = next(loader.make_loader(config, config.data.train_split, mesh, seed=0,
                                           shuffle=True))
    sizes = types.SceneSizes.from_config(config.data.sizes)
    types.check_scene(jax.tree.map(np.asarray, scene), sizes, batch=(8,))
    assert len(jax.devices()) == 8
    ref, _ = loader.load_split_numpy(config, config.data.train_split)
    rows = [m.scene_index for m in metas]
    for name, (shape, _) in types.scene_spec(sizes).items():
        x = getattr(scene, name)
        assert isinstance(x, jax.Array) and x.sharding == parallel.data_sharding(mesh), name
        assert len(x.addressable_shards) == 8
        assert all(s.data.shape == (1, *shape) for s in x.addressable_shards), name
        np.testing.assert_array_equal(np.asarray(x), getattr(ref, name)[rows], err_msg=name)


def test_fsdp_mesh_splits_the_batch_over_every_device(config):
    """FSDP is data parallel too: with data=4 x fsdp=2 each of the 8 devices gets 1/8 of the
    batch (only the state is split differently)."""
    mesh = parallel.make_mesh({"data": 4, "fsdp": 2})
    scene, _ = next(loader.make_loader(config, config.data.train_split, mesh, seed=0,
                                       shuffle=False))
    shards = scene.expert_future.addressable_shards
    assert len(shards) == 8 and all(s.data.shape == (1, 10, 3) for s in shards)
    assert len({str(s.index) for s in shards}) == 8


def test_bad_batch_sizes_are_clear_errors(config, mesh):
    odd = config.copy_and_resolve_references()
    odd.data.batch_size = 6
    with pytest.raises(ValueError, match="not divisible"):
        loader.make_loader(odd, odd.data.train_split, mesh, seed=0, shuffle=False)
    big = config.copy_and_resolve_references()
    big.data.batch_size = 32
    with pytest.raises(ValueError, match="too few"):
        loader.make_loader(big, big.data.train_split, mesh, seed=0, shuffle=False)


def test_worker_processes_give_the_same_batches(config, mesh):
    """The same scenes and the same decoded pixels (JPEG decoding in the workers is
    deterministic), with 1 or 2 worker processes, from the start and on resume."""
    workers = config.copy_and_resolve_references()
    workers.data.num_workers = 1
    assert indices(workers, mesh, 3) == indices(config, mesh, 3)
    workers.data.num_workers = 2
    for start in (0, 3):
        kw = dict(seed=0, shuffle=True, start_step=start)
        want = itertools.islice(loader.make_loader(config, config.data.train_split, mesh, **kw), 3)
        got = itertools.islice(loader.make_loader(workers, config.data.train_split, mesh, **kw), 3)
        for (a, ma), (b, mb) in zip(want, got):
            assert [m.token for m in ma] == [m.token for m in mb]
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
