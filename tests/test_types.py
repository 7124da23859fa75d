import dataclasses

import jax
import numpy as np
import pytest

from irlvla_jax import types


def test_spec_covers_every_scene_field_in_order():
    sizes = types.SceneSizes()
    assert list(types.scene_spec(sizes)) == [f.name for f in dataclasses.fields(types.Scene)]


def test_zero_scene_is_valid_and_batches():
    sizes = types.SceneSizes()
    s = types.zeros_scene(sizes, (3,))
    types.check_scene(s, sizes, batch=(3,))
    assert s.batch_shape == (3,)
    assert s.cameras.shape == (3, 4, 72, 128, 3)
    leaves = jax.tree.leaves(s)
    assert len(leaves) == len(types.scene_spec(sizes))


def test_check_scene_names_the_bad_field():
    sizes = types.SceneSizes()
    d = types.zeros_scene(sizes).to_dict()
    d["agent_states"] = np.zeros((5, 9, 5), np.float32)
    with pytest.raises(ValueError, match="agent_states.*shape"):
        types.check_scene(d, sizes, where="log_x.pkl")
    d = types.zeros_scene(sizes).to_dict()
    d["expert_future"][3, 1] = np.nan
    with pytest.raises(ValueError, match="log_y.pkl.*expert_future.*NaN"):
        types.check_scene(d, sizes, where="log_y.pkl")
    d = types.zeros_scene(sizes).to_dict()
    d["cameras"] = d["cameras"].astype(np.float32)
    with pytest.raises(ValueError, match="cameras.*dtype"):
        types.check_scene(d, sizes)


def test_sizes_from_config_rejects_unknown_keys():
    assert types.SceneSizes.from_config({"max_agents": 7}).max_agents == 7
    with pytest.raises(ValueError, match="max_agentz"):
        types.SceneSizes.from_config({"max_agentz": 7})


def test_epdms_formula_with_and_without_ec():
    one = np.ones(2, np.float32)
    s = types.SubScores(nc=one, dac=one, ddc=one, tlc=one, ep=np.array([1.0, 0.5]), ttc=one,
                        lk=one, hc=one, ec=np.zeros(2), ec_weight=np.array([1.0, 0.0]))
    np.testing.assert_allclose(s.epdms(), [14 / 16, (2.5 + 5 + 2 + 2) / 14], rtol=1e-6)
    s0 = s.replace(nc=np.array([0.5, 0.0]))
    np.testing.assert_allclose(s0.epdms(), [7 / 16, 0.0], rtol=1e-6)
