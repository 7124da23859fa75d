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


def test_fsdp_rule_splits_big_leaves_on_their_largest_divisible_dimension():
    from jax.sharding import PartitionSpec as P
    spec = parallel.fsdp_spec
    assert spec("params/w", (4096, 1024), 8) == P("fsdp", None)           # 2^22 elements
    assert spec("params/w", (3, 2 ** 16), 4) == P(None, "fsdp")          # 3 is not divisible
    assert spec("params/b", (2 ** 16 - 1,), 4) == P()                     # too small
    assert spec("params/w", (7, 2 ** 16 + 1), 4) == P()                   # nothing divisible
    assert spec("params/w", (4096, 1024), 1) == P()                        # no fsdp axis
    assert spec("params/embed", (4096, 1024), 8, overrides={"embed": 1}) == P(None, "fsdp")
    assert spec("params/embed", (4096, 1024), 8, overrides={"embed": -1}) == P()
    with pytest.raises(ValueError, match="not divisible"):
        spec("params/embed", (4096, 1000), 16, overrides={"embed": 1})


def test_batch_splits_over_data_and_fsdp():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 4})
    assert parallel.batch_devices(mesh) == 8
    parallel.check_batch_divisible(16, mesh)
    with pytest.raises(ValueError, match="not divisible"):
        parallel.check_batch_divisible(12, mesh)
