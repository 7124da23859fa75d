"""The ``data`` stage's synthetic root: generated into data.dir/navsim and data.dir/maps, replaced
only when it holds exactly what the generator wrote; a folder holding anything else is refused
and kept. And the dataset's identity: a skip_bad build is not reused by a strict run."""

import sys
import types as pytypes
from pathlib import Path

import pytest

from configs import tiny
from irlvla_jax import types
from irlvla_jax.data import dataset_id, prepare


@pytest.fixture
def generator(monkeypatch):
    """A stand-in for irlvla_jax.data.synthetic: writes one log, its sensor blob and a map."""
    import irlvla_jax.data
    calls = []

    def generate(cfg, sizes, root, maps_root, splits):
        root, maps_root = Path(root), Path(maps_root)
        calls.append(dict(splits))
        for split in splits:
            log = root / "navsim_logs" / split / f"log_{cfg.seed}.pkl"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_bytes(b"log")
            blob = root / "sensor_blobs" / split / f"log_{cfg.seed}" / "CAM_F0" / "a.jpg"
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(b"jpg")
        gpkg = maps_root / "us-ma-boston" / "9.12.1817" / "map.gpkg"
        gpkg.parent.mkdir(parents=True, exist_ok=True)
        gpkg.write_bytes(b"gpkg")
        (maps_root / "nuplan-maps-v1.0.json").write_text("{}")

    fake = pytypes.ModuleType("irlvla_jax.data.synthetic")
    fake.generate = generate
    monkeypatch.setitem(sys.modules, "irlvla_jax.data.synthetic", fake)
    monkeypatch.setattr(irlvla_jax.data, "synthetic", fake, raising=False)
    return calls


def synthetic_config(data_dir):
    c = tiny.get_config()
    c.data.dir = str(data_dir)
    return c


def ensure(config):
    return prepare._ensure_synthetic(config, types.SceneSizes.from_config(config.data.sizes))


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_foreign_navsim_and_maps_folders_are_refused_and_kept(generator, tmp_path):
    real_log = tmp_path / "navsim" / "navsim_logs" / "trainval" / "2021.real.pkl"
    real_map = tmp_path / "maps" / "us-ma-boston" / "9.12.1817" / "map.gpkg"
    for p in (real_log, real_map):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"the user's data")
    with pytest.raises(FileExistsError) as e:
        prepare.prepare_data(synthetic_config(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "navsim") in msg and "navsim_logs/trainval/2021.real.pkl" in msg
    assert "--config.data.dir=" in msg and "delete it yourself" in msg
    assert real_log.read_bytes() == real_map.read_bytes() == b"the user's data"
    assert generator == []


def test_foreign_maps_folder_alone_is_refused(generator, tmp_path):
    real_map = tmp_path / "maps" / "nuplan-maps-v1.0.json"
    real_map.parent.mkdir()
    real_map.write_text('{"real": 1}')
    with pytest.raises(FileExistsError, match=str(tmp_path / "maps")):
        ensure(synthetic_config(tmp_path))
    assert real_map.read_text() == '{"real": 1}' and not (tmp_path / "navsim").exists()


def test_generated_root_is_replaced_when_the_config_changes(generator, tmp_path):
    config = synthetic_config(tmp_path)
    assert ensure(config)["generated"]
    first = files(tmp_path / "navsim")
    assert "navsim_logs/synthetic_train/log_0.pkl" in first
    assert not ensure(config)["generated"] and len(generator) == 1
    config.data.synthetic.seed = 7
    assert ensure(config)["generated"] and len(generator) == 2
    now = files(tmp_path / "navsim")
    assert "navsim_logs/synthetic_train/log_7.pkl" in now
    assert "navsim_logs/synthetic_train/log_0.pkl" not in now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps", "navsim"]   # no temporary left


def test_generated_root_with_a_users_file_added_is_refused(generator, tmp_path):
    config = synthetic_config(tmp_path)
    ensure(config)
    mine = tmp_path / "navsim" / "navsim_logs" / "synthetic_train" / "my_real_log.pkl"
    mine.write_bytes(b"mine")
    config.data.synthetic.seed = 7
    with pytest.raises(FileExistsError) as e:
        ensure(config)
    assert "my_real_log.pkl" in str(e.value) and str(tmp_path / "navsim") in str(e.value)
    assert mine.read_bytes() == b"mine"
    assert "navsim_logs/synthetic_train/log_0.pkl" in files(tmp_path / "navsim")


def test_bad_num_logs_deletes_nothing(generator, tmp_path):
    config = synthetic_config(tmp_path)
    ensure(config)
    before = files(tmp_path / "navsim")
    config.data.synthetic.num_logs = {"synthetic_train": 1}
    with pytest.raises(ValueError, match="num_logs"):
        ensure(config)
    assert files(tmp_path / "navsim") == before


def test_skip_bad_is_part_of_the_identity_only_when_set(tmp_path):
    strict = synthetic_config(tmp_path)
    fp = dataset_id.build_fingerprint(strict)
    assert "skip_bad" not in fp            # the default build keeps its name (and its data)
    lenient = synthetic_config(tmp_path)
    lenient.data.skip_bad = True
    assert dataset_id.build_fingerprint(lenient)["skip_bad"] is True
    assert dataset_id.tfds_config_name(lenient) != dataset_id.tfds_config_name(strict)
    rnd = synthetic_config(tmp_path)
    rnd.data.source, rnd.data.skip_bad = "random", True   # random scenes read no input
    assert "skip_bad" not in dataset_id.build_fingerprint(rnd)


def test_summary_prints_scenes_lost(capsys):
    prepare._print_summary(dict(
        reused=False, config_name="n", dataset_dir="/d", seconds=1, bytes=0, splits={},
        skipped=dict(total=85, bad_inputs=59, scenes_up_to=27, unknown_inputs=1,
                     counts={"window_gap": 85}, inputs={"window_gap": 58,
                                                        "corrupt_pickle": 1})))
    out = capsys.readouterr().out
    assert "85 scenes lost to 59 bad inputs" in out and "up to 27 more" in out
