import jax
import numpy as np
import pytest

from irlvla_jax import parallel


def test_mesh_uses_all_devices_and_shards_the_batch():
    mesh = parallel.make_mesh({"data": -1, "fsdp": 1})
    assert mesh.shape["data"] == jax.device_count() == 8
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    a = parallel.shard_batch({"x": x}, mesh)["x"]
    assert {s.data.shape for s in a.addressable_shards} == {(2, 3)}
    np.testing.assert_array_equal(np.asarray(a), x)


def test_mesh_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="fsdp=3"):
        parallel.make_mesh({"data": -1, "fsdp": 3})
    with pytest.raises(ValueError, match="batch 6"):
        parallel.check_batch_divisible(6, parallel.make_mesh({"data": 4, "fsdp": 2}))
