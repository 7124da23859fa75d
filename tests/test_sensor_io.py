"""The sensor-blob file formats of irlvla_jax.data.sensor_io: binary PCD v0.7 and JPEG."""

import numpy as np
import pytest
from PIL import Image

from irlvla_jax.data import sensor_io


def lidar_points(n: int, seed: int = 0) -> np.ndarray:
    """float32 [6,n] in the MergedPointCloud layout (x, y, z, intensity, ring, lidar_id)."""
    rng = np.random.default_rng(seed)
    xyz = rng.normal(0.0, 20.0, (3, n))
    return np.concatenate([xyz, rng.uniform(0, 255, (1, n)), rng.integers(0, 32, (1, n)),
                           np.zeros((1, n))]).astype(np.float32)


def test_pcd_round_trip(tmp_path):
    pts = lidar_points(500)
    path = tmp_path / "MergedPointCloud" / "a.pcd"
    sensor_io.write_pcd(path, pts)
    raw = path.read_bytes()
    head = raw[: raw.index(b"DATA binary\n") + 12].decode()
    assert "FIELDS x y z intensity ring lidar_info" in head
    assert "SIZE 4 4 4 4 4 4" in head and "TYPE F F F F F F" in head and "POINTS 500" in head
    assert len(raw) - len(head) == 500 * 24
    back = sensor_io.read_pcd(path)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, pts)
    # Zero padding after the points (as in real nuPlan files) is tolerated.
    path.write_bytes(raw + b"\0" * 64)
    np.testing.assert_array_equal(sensor_io.read_pcd(path), pts)


def test_truncated_or_malformed_pcd_raises_naming_the_file(tmp_path):
    pts = np.arange(60, dtype=np.float32).reshape(6, 10)
    path = tmp_path / "t.pcd"
    sensor_io.write_pcd(path, pts)
    raw = path.read_bytes()
    path.write_bytes(raw[:-5])
    with pytest.raises(ValueError, match=r"t\.pcd.*truncated"):
        sensor_io.read_pcd(path)
    path.write_bytes(raw[:40])
    with pytest.raises(ValueError, match=r"t\.pcd"):
        sensor_io.read_pcd(path)
    path.write_bytes(raw.replace(b"DATA binary", b"DATA ascii"))
    with pytest.raises(ValueError, match=r"t\.pcd.*binary"):
        sensor_io.read_pcd(path)
    path.write_bytes(raw.replace(b" lidar_info", b" other"))
    with pytest.raises(ValueError, match=r"t\.pcd.*lidar_info"):
        sensor_io.read_pcd(path)


def test_write_jpeg(tmp_path):
    # A smooth image (JPEG's easy case): the decoded pixels stay within a few levels.
    u, v = np.meshgrid(np.linspace(0, 255, 96), np.linspace(0, 255, 54))
    img = np.stack([u, v, 255 - u], -1).astype(np.uint8)
    path = tmp_path / "CAM_F0" / "x.jpg"
    sensor_io.write_jpeg(path, img)
    back = np.asarray(Image.open(path))
    assert back.shape == img.shape
    assert np.abs(back.astype(int) - img).mean() < 3
    with pytest.raises(ValueError, match="uint8"):
        sensor_io.write_jpeg(path, img.astype(np.float32))
