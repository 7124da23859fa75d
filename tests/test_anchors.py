"""Anchors from a bounded, seeded sample of the train split (config.il.anchor_scenes): only the
expert futures are decoded, the whole split when it is smaller than the bound."""

import numpy as np
import pytest

from configs import tiny
from irlvla_jax import types
from irlvla_jax.data import loader, prepare
from irlvla_jax.models import anchors as anchors_lib
from irlvla_jax.train import il

SIZES = dict(num_future=10, cameras=("CAM_F0",), image_hw=(8, 16), lidar_bev_hw=(8, 8),
             bev_hw=(8, 8), max_agents=4, max_polygons=6, max_polygon_vertices=5,
             max_centerline=12, max_red_lights=2, max_lanes=3, lane_points=4)
N = 24


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    c = tiny.get_config()
    c.data.dir = str(tmp_path_factory.mktemp("data"))
    c.data.source = "random"
    c.data.random_scenes = N
    c.data.sizes.update(SIZES)
    c.model.planner.num_anchors = 4
    prepare.prepare_data(c)
    return c


@pytest.fixture(scope="module")
def whole(config):
    scenes, _ = loader.load_split_numpy(config, config.data.train_split)
    return np.asarray(scenes.expert_future), np.asarray(scenes.expert_future_valid)


def test_a_split_within_the_bound_is_read_whole_in_stored_order(config, whole):
    """The default bound (20,000) exceeds the tiny split (1,296): anchors as before."""
    assert config.il.anchor_scenes == 20000
    idx, fut, valid = anchors_lib.sample_expert_futures(config, config.data.train_split,
                                                        config.il.anchor_scenes, config.seed)
    np.testing.assert_array_equal(idx, np.arange(N))
    np.testing.assert_array_equal(fut, whole[0])
    np.testing.assert_array_equal(valid, whole[1])


def test_a_larger_split_is_sampled_by_the_seed_reading_two_fields(config, whole, monkeypatch):
    decoded = []
    real = loader.decode_example

    def spy(index, example, *, spec, split):
        decoded.append((index, tuple(spec)))
        return real(index, example, spec=spec, split=split)
    monkeypatch.setattr(loader, "decode_example", spy)
    split = config.data.train_split
    idx, fut, valid = anchors_lib.sample_expert_futures(config, split, 10, seed=0)
    assert len(idx) == 10 == len(set(idx.tolist())) and list(idx) == sorted(idx)
    assert [i for i, _ in decoded] == list(idx)             # only the sampled scenes are read
    assert {fields for _, fields in decoded} == {("expert_future", "expert_future_valid")}
    np.testing.assert_array_equal(fut, whole[0][idx])
    np.testing.assert_array_equal(valid, whole[1][idx])
    again, _, _ = anchors_lib.sample_expert_futures(config, split, 10, seed=0)
    other, _, _ = anchors_lib.sample_expert_futures(config, split, 10, seed=1)
    np.testing.assert_array_equal(again, idx)
    assert list(other) != list(idx)
    with pytest.raises(ValueError, match="anchor_scenes = 0"):
        anchors_lib.sample_expert_futures(config, split, 0, seed=0)


def test_load_or_compute_anchors_uses_the_sample(config, monkeypatch):
    c = config.copy_and_resolve_references()
    c.il.anchor_scenes = 12
    calls, real = [], anchors_lib.sample_expert_futures

    def sample(cfg, split, max_scenes, seed):
        calls.append((split, max_scenes, seed))
        idx, fut, valid = real(cfg, split, max_scenes, seed)
        return idx, fut, np.ones_like(valid)     # the random scenes' futures are rarely whole
    monkeypatch.setattr(anchors_lib, "sample_expert_futures", sample)
    a = il.load_or_compute_anchors(c)
    assert calls == [(c.data.train_split, 12, c.seed)]
    _, fut, _ = real(c, c.data.train_split, 12, c.seed)
    want = anchors_lib.compute_anchors(fut[:, :types.PLAN_LEN], 4, c.seed)
    np.testing.assert_array_equal(a, want)
    np.testing.assert_array_equal(np.load(anchors_lib.anchor_path(c)), want)
