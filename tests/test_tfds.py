"""The TFDS builder and the data stage: build without TensorFlow, read every field back exactly
(the cameras within JPEG tolerance), reuse a finished build, rebuild when the sizes change,
refuse a build of another record layout, name the scene of a corrupt stored JPEG."""

import importlib.util
import json
import sys

import numpy as np
import pytest

from configs import tiny
from data.navsim_tfds import random_scene
from irlvla_jax import types
from irlvla_jax.data import dataset_id, loader, prepare

# JPEG tolerance of the stored cameras (quality 90, 4:2:0): mean abs error per picture, levels.
JPEG_MAE = 3.0
TINY_SIZES = dict(num_future=10, cameras=("CAM_F0", "CAM_B0"), image_hw=(16, 32),
                  lidar_bev_hw=(8, 8), bev_hw=(8, 8), max_agents=4, max_polygons=6,
                  max_polygon_vertices=5, max_centerline=12, max_red_lights=2, max_lanes=3,
                  lane_points=4)


def small_config(data_dir, n=16):
    c = tiny.get_config()
    c.data.dir = str(data_dir)
    c.data.source = "random"
    c.data.random_scenes = n
    c.data.sizes.update(TINY_SIZES)
    return c


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    assert importlib.util.find_spec("tensorflow") is None, "tensorflow must not be installed"
    config = small_config(tmp_path_factory.mktemp("data"))
    summary = prepare.prepare_data(config)
    return config, summary


def test_build_is_tensorflow_free_and_summarised(built):
    config, summary = built
    assert "tensorflow" not in sys.modules
    assert not summary["reused"]
    for split in (config.data.train_split, config.data.eval_split):
        assert summary["splits"][split]["scenes"] == 16
        assert summary["splits"][split]["bytes"] > 0
    assert summary["bytes"] > 0
    assert summary["skipped"]["total"] == 0
    report = json.loads((dataset_id.dataset_path(config) / prepare.SKIP_REPORT).read_text())
    assert report["total"] == 0


def test_every_feature_reads_back_exactly(built):
    config, _ = built
    sizes = types.SceneSizes.from_config(config.data.sizes)
    split = config.data.eval_split
    scenes, metas = loader.load_split_numpy(config, split)
    types.check_scene(scenes, sizes, where="read back", batch=(16,))
    assert sorted(int(m.token, 16) for m in metas) == list(range(16))
    for row, meta in enumerate(metas):
        want, want_meta = random_scene(sizes, split, int(meta.token, 16))
        for name, (shape, dtype) in types.scene_spec(sizes).items():
            got = getattr(scenes, name)[row]
            assert got.shape == shape and got.dtype == dtype, name
            if name == "cameras":       # stored as JPEG: within its tolerance, per picture
                err = np.abs(got.astype(int) - want[name]).mean(axis=(1, 2, 3))
                assert (err < JPEG_MAE).all(), err
                continue
            np.testing.assert_array_equal(got, want[name], err_msg=name)
        assert meta.log_name == want_meta.log_name
        assert meta.map_location == want_meta.map_location
        assert meta.previous_token == want_meta.previous_token   # None survives as None
        assert meta.track_tokens == want_meta.track_tokens
        assert meta.split == split and meta.scene_index == row


def test_stored_features_match_the_scene_contract(built):
    import tensorflow_datasets as tfds
    config, _ = built
    info = tfds.builder_from_directory(str(dataset_id.dataset_path(config))).info
    sizes = types.SceneSizes.from_config(config.data.sizes)
    assert info.version == dataset_id.DATASET_VERSION
    for name, (shape, dtype) in types.scene_spec(sizes).items():
        if name == "cameras":           # one JPEG (bytes) per camera
            assert "cameras" not in info.features
            assert tuple(info.features[dataset_id.CAMERAS_JPEG].shape) == shape[:1]
            continue
        assert tuple(info.features[name].shape) == shape, name
        assert np.dtype(info.features[name].np_dtype) == dtype, name


def test_second_prepare_reuses_and_new_sizes_rebuild(built):
    config, first = built
    again = prepare.prepare_data(config)
    assert again["reused"] and again["dataset_dir"] == first["dataset_dir"]
    assert again["splits"] == first["splits"]

    changed = small_config(config.data.dir, n=9)
    changed.data.sizes.max_agents = 5
    assert dataset_id.tfds_config_name(changed) != dataset_id.tfds_config_name(config)
    rebuilt = prepare.prepare_data(changed)
    assert not rebuilt["reused"] and rebuilt["dataset_dir"] != first["dataset_dir"]
    assert rebuilt["splits"][changed.data.train_split]["scenes"] == 9
    scenes, _ = loader.load_split_numpy(changed, changed.data.train_split, limit=3)
    assert scenes.agent_states.shape == (3, 5, types.NUM_AGENT_STEPS, 5)


def test_cameras_at_model_resolution_decode_within_jpeg_tolerance(tmp_path):
    """At a quarter of the NAVSIM camera size, and a photograph at the full 256x704: every
    stored picture decodes to uint8 [C, H, W, 3] within JPEG_MAE of the original; quality 0
    stores raw uint8 and reads back exactly."""
    from PIL import Image
    import matplotlib
    from irlvla_jax.data import sensor_io
    config = small_config(tmp_path / "q90", n=3)
    config.data.sizes.image_hw = (64, 176)
    raw = small_config(tmp_path / "raw", n=3)
    raw.data.sizes.image_hw = (64, 176)
    raw.data.camera_jpeg_quality = 0
    assert dataset_id.tfds_config_name(raw) != dataset_id.tfds_config_name(config)
    sizes = types.SceneSizes.from_config(config.data.sizes)
    split = config.data.train_split
    for c in (config, raw):
        prepare.prepare_data(c)
        scenes, metas = loader.load_split_numpy(c, split)
        assert scenes.cameras.shape == (3, 2, 64, 176, 3) and scenes.cameras.dtype == np.uint8
        for row, meta in enumerate(metas):
            want = random_scene(sizes, split, int(meta.token, 16))[0]["cameras"]
            err = np.abs(scenes.cameras[row].astype(int) - want).mean(axis=(1, 2, 3))
            assert (err < JPEG_MAE).all() if c is config else (err == 0).all(), err
    photo = Image.open(f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg")
    pic = np.asarray(photo.convert("RGB").resize((704, 256), Image.BILINEAR))
    back = sensor_io.decode_jpeg(sensor_io.encode_jpeg(pic, 90), (256, 704))
    assert np.abs(back.astype(int) - pic).mean() < JPEG_MAE


def test_a_corrupt_stored_jpeg_names_its_scene(built):
    config, _ = built
    split = config.data.train_split
    source = loader.open_source(config, split)
    spec = types.scene_spec(types.SceneSizes.from_config(config.data.sizes))
    example = dict(source[5])
    ok, _ = loader.decode_example(5, example, spec=spec, split=split)
    jpegs = list(example[dataset_id.CAMERAS_JPEG])
    for bad in (jpegs[1][:len(jpegs[1]) // 2], b"not a jpeg"):
        example[dataset_id.CAMERAS_JPEG] = np.array([jpegs[0], bad], dtype=object)
        with pytest.raises(ValueError, match=rf"{split} example 5 \(scene token "
                           rf"'{example['token'].decode()}'.*camera 1 .*corrupt.*launch.py data"):
            loader.decode_example(5, example, spec=spec, split=split)
    # Decoding is deterministic: the same bytes give the same pixels.
    example[dataset_id.CAMERAS_JPEG] = np.array(jpegs, dtype=object)
    again, _ = loader.decode_example(5, example, spec=spec, split=split)
    np.testing.assert_array_equal(again["cameras"], ok["cameras"])


def test_a_build_of_another_record_layout_is_refused(built, tmp_path):
    """A dataset folder holding only another version (e.g. 1.0.0: raw cameras) is never read."""
    import shutil
    config, _ = built
    old = small_config(tmp_path)
    shutil.copytree(dataset_id.dataset_path(config).parent,
                    tmp_path / "tfds" / dataset_id.BUILDER_NAME / dataset_id.tfds_config_name(old))
    base = tmp_path / "tfds" / dataset_id.BUILDER_NAME / dataset_id.tfds_config_name(old)
    (base / dataset_id.DATASET_VERSION).rename(base / "1.0.0")
    with pytest.raises(FileNotFoundError, match=r"version\(s\) \['1.0.0'\].*launch.py data"):
        loader.load_split_numpy(old, old.data.train_split)


def test_unbuilt_config_and_unknown_split_say_what_to_do(built, tmp_path):
    config, _ = built
    with pytest.raises(FileNotFoundError, match="launch.py data"):
        dataset_id.dataset_path(small_config(tmp_path))
    with pytest.raises(ValueError, match="'navtrain' is not in the dataset"):
        loader.load_split_numpy(config, "navtrain")
    bad = small_config(tmp_path)
    bad.data.source = "nuscenes"
    with pytest.raises(ValueError, match="config.data.source"):
        dataset_id.tfds_config_name(bad)


def test_a_root_with_a_custom_split_folder_builds_and_loads(tmp_path):
    """Split names are folder names: ``demo`` and one TFDS could not name as it is."""
    import navsim_fixtures as nf
    nf.write_map(tmp_path / "maps")
    for name in ("demo", "demo-2.v1"):
        nf.write_log(tmp_path / "openscene", name, "log_a", nf.make_frames("log_a", n=15))
    config = small_config(tmp_path)
    config.data.source = "navsim"
    config.data.navsim_root, config.data.maps_root = (str(tmp_path / "openscene"),
                                                      str(tmp_path / "maps"))
    config.data.train_split, config.data.eval_split = "demo", "demo-2.v1"
    config.data.sizes.max_polygons = 20               # the fixture map, all of it
    summary = prepare.prepare_data(config)
    assert {s: v["scenes"] for s, v in summary["splits"].items()} == {"demo": 2, "demo-2.v1": 2}
    for split in ("demo", "demo-2.v1"):
        scenes, metas = loader.load_split_numpy(config, split)
        assert [m.token for m in metas] == [f"{3:016x}", f"{4:016x}"]


class _FakeReader:
    """Stands in for navsim_reader.SceneReader: a few scenes per split, one skipped input."""
    scenes_per_split = 3
    broken_field = None

    def __init__(self, navsim_root, maps_root, sizes, skip_bad=False):
        from irlvla_jax.data.errors import SkipReport
        self.sizes, self.skip_bad = sizes, skip_bad
        self.skip_report = SkipReport()

    def iter_split(self, split):
        from irlvla_jax.data.errors import BadInputError
        for i in range(self.scenes_per_split):
            scene, meta = random_scene(self.sizes, split, i)
            if self.broken_field:
                scene[self.broken_field] = scene[self.broken_field][..., :1]
            yield scene, meta
        self.skip_report.add(BadInputError(f"navsim_logs/{split}/bad.pkl", "corrupt_pickle",
                                      "truncated pickle"))


@pytest.fixture
def fake_reader(monkeypatch):
    import types as pytypes
    module = pytypes.ModuleType("irlvla_jax.data.navsim_reader")
    module.SceneReader = _FakeReader
    monkeypatch.setitem(sys.modules, "irlvla_jax.data.navsim_reader", module)
    return _FakeReader


def navsim_config(tmp_path):
    c = small_config(tmp_path)
    c.data.source = "navsim"
    c.data.navsim_root, c.data.maps_root = str(tmp_path / "openscene"), str(tmp_path / "maps")
    c.data.skip_bad = True
    return c


def test_reader_build_writes_and_summarises_the_skip_report(fake_reader, tmp_path, capsys):
    config = navsim_config(tmp_path)
    summary = prepare.prepare_data(config)
    assert summary["splits"][config.data.train_split]["scenes"] == 3
    assert summary["skipped"]["total"] == 2 and summary["skipped"]["counts"] == {
        "corrupt_pickle": 2}
    on_disk = json.loads((dataset_id.dataset_path(config) / prepare.SKIP_REPORT).read_text())
    assert on_disk == summary["skipped"]
    assert "2 scenes lost to 2 bad inputs" in capsys.readouterr().out
    assert prepare.prepare_data(config)["skipped"]["total"] == 2    # reused build keeps it


def test_reader_scene_with_a_wrong_shape_names_the_field(fake_reader, tmp_path, monkeypatch):
    monkeypatch.setattr(fake_reader, "broken_field", "agent_size")
    with pytest.raises(ValueError, match="agent_size"):
        prepare.prepare_data(navsim_config(tmp_path))


def test_synthetic_root_is_generated_once_per_config(fake_reader, tmp_path, monkeypatch):
    import types as pytypes
    import irlvla_jax.data
    calls = []

    def generate(cfg, sizes, root, maps_root, splits):
        calls.append((root, maps_root, tuple(splits)))
        for d in (root, maps_root):
            (tmp_path / d).mkdir(parents=True, exist_ok=True)

    fake = pytypes.ModuleType("irlvla_jax.data.synthetic")
    fake.generate = generate
    monkeypatch.setitem(sys.modules, "irlvla_jax.data.synthetic", fake)
    monkeypatch.setattr(irlvla_jax.data, "synthetic", fake, raising=False)

    config = small_config(tmp_path)
    config.data.source = "synthetic"
    first = prepare.prepare_data(config)
    assert first["synthetic"]["generated"] and len(calls) == 1
    assert calls[0][2] == (config.data.train_split, config.data.eval_split)
    assert (tmp_path / "navsim").is_dir() and (tmp_path / "maps").is_dir()   # moved into place
    again = prepare.prepare_data(config)
    assert not again["synthetic"]["generated"] and again["reused"] and len(calls) == 1
    config.data.synthetic.seed = 7            # another world -> regenerate and rebuild
    third = prepare.prepare_data(config)
    assert third["synthetic"]["generated"] and not third["reused"] and len(calls) == 2
