"""Pickles written for numpy 1 (NAVSIM pins numpy 1.23) read back identically here."""

import pickle

import numpy as np

from irlvla_jax.data import numpy1_pickle


def _frames():
    rng = np.random.default_rng(0)
    return [dict(token="00aa", can_bus=rng.normal(size=18), ego2global=np.eye(4),
                 driving_command=np.array([0, 1, 0, 0], np.int64),
                 cams={"CAM_F0": dict(cam_intrinsic=rng.normal(size=(3, 3)).astype(np.float32),
                                      distortion=np.zeros(5))},
                 anns=dict(gt_boxes=rng.normal(size=(3, 7)),
                           gt_names=np.array(["vehicle", "pedestrian", "barrier"], dtype=object),
                           gt_velocity_3d=np.zeros((0, 3))),
                 scalars=[np.float32(1.5), np.int64(-3), np.bool_(True)],
                 plain=[1, 2.5, None, (3, True)], view=np.arange(12.0).reshape(3, 4)[:, 1::2])
            for _ in range(2)]


def _assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b)
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def test_bytes_name_no_numpy2_module_and_read_back_identically():
    frames = _frames()
    assert b"numpy._core" in pickle.dumps(frames, protocol=4)   # what numpy 2 writes itself
    raw = numpy1_pickle.dumps(frames)
    assert b"numpy._core" not in raw
    assert b"numpy.core.multiarray" in raw
    _assert_same(pickle.loads(raw), frames)

