"""Malformed or implausible fields of a NAVSIM log: each is a BadInputError naming the file, the
frame and the field (never a bare TypeError/KeyError, never a silently accepted value), honoured
by ``skip_bad`` (skipped and counted in scenes); the skip report counts the scenes each bad input
removed."""

import math
import pickle

import numpy as np
import pytest

import navsim_fixtures as nf
from irlvla_jax import types
from irlvla_jax.data.errors import BadInputError
from irlvla_jax.data.navsim_reader import SceneReader

SIZES = types.SceneSizes(num_future=10, cameras=("CAM_F0", "CAM_B0"), image_hw=(18, 32),
                         max_polygons=20, max_lanes=8, max_agents=4)
CUR_FRAME = 3          # the current frame of the only window of a 14-frame log


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    root = tmp_path_factory.mktemp("maps")
    nf.write_map(root)
    return root


def _set(path, value):
    """A mutation setting the (dotted) field ``path`` of a frame to ``value``."""
    def mutate(frame):
        *parents, last = path.split(".")
        d = frame
        for p in parents:
            d = d[p]
        d[last] = value
    return mutate


def _delete(path):
    def mutate(frame):
        *parents, last = path.split(".")
        d = frame
        for p in parents:
            d = d[p]
        del d[last]
    return mutate


def _box(column, value):
    def mutate(frame):
        boxes = np.array(frame["anns"]["gt_boxes"], float)
        boxes[0, column] = value
        frame["anns"]["gt_boxes"] = boxes
    return mutate


def _jump(frame):
    frame["ego2global_translation"] = frame["ego2global_translation"] + [1e7, 0.0, 0.0]


# (case id, mutation of the current frame, field named, reason)
MALFORMED = [
    # the four cases of the issue
    ("timestamp_none", _set("timestamp", None), "timestamp", "bad_field"),
    ("timestamp_string", _set("timestamp", "1600000001500000"), "timestamp", "bad_field"),
    ("light_id_not_integer", _set("traffic_lights", [("abc", True)]), "traffic_lights",
     "bad_field"),
    ("light_id_float", _set("traffic_lights", [(32.5, True)]), "traffic_lights", "bad_field"),
    ("cams_list", lambda f: f.update(cams=list(f["cams"].values())), "cams", "bad_field"),
    ("camera_without_intrinsic", _delete("cams.CAM_F0.cam_intrinsic"),
     "cams.CAM_F0.cam_intrinsic", "missing_keys"),
    # any field of the wrong type or shape
    ("token_int", _set("token", 3), "token", "bad_field"),
    ("map_location_none", _set("map_location", None), "map_location", "bad_field"),
    ("route_string", _set("roadblock_ids", "1"), "roadblock_ids", "bad_field"),
    ("translation_short", _set("ego2global_translation", [1.0, 2.0]), "ego2global_translation",
     "bad_field"),
    ("translation_strings", _set("ego2global_translation", ["1", "2", "0"]),
     "ego2global_translation", "bad_field"),
    ("dynamics_none", _set("ego_dynamic_state", None), "ego_dynamic_state", "bad_field"),
    ("command_2d", _set("driving_command", np.array([[0, 1, 0, 0]])), "driving_command",
     "bad_field"),
    ("lidar2ego_3x3", _set("lidar2ego", np.eye(3)), "lidar2ego", "bad_field"),
    ("lidar_path_int", _set("lidar_path", 5), "lidar_path", "bad_field"),
    ("sample_next_int", _set("sample_next", 5), "sample_next", "bad_field"),
    ("light_not_a_pair", _set("traffic_lights", [(32,)]), "traffic_lights", "bad_field"),
    ("light_state_string", _set("traffic_lights", [(32, "red")]), "traffic_lights", "bad_field"),
    ("anns_list", _set("anns", []), "anns", "bad_field"),
    ("boxes_6_columns", _set("anns.gt_boxes", np.zeros((1, 6))), "anns.gt_boxes", "bad_field"),
    ("names_int", _set("anns.gt_names", 5), "anns.gt_names", "bad_field"),
    ("unknown_class", _set("anns.gt_names", np.array(["vehicle", "dragon"])), "anns.gt_names",
     "bad_value"),
    ("boxes_missing", _delete("anns.gt_boxes"), "anns.gt_boxes", "missing_keys"),
    ("camera_not_a_dict", _set("cams.CAM_F0", "CAM_F0.jpg"), "cams.CAM_F0", "bad_field"),
    ("camera_rotation_2x2", _set("cams.CAM_B0.sensor2lidar_rotation", np.eye(2)),
     "cams.CAM_B0.sensor2lidar_rotation", "bad_field"),
    ("camera_path_none", _set("cams.CAM_F0.data_path", None), "cams.CAM_F0.data_path",
     "bad_field"),
    # values a real log never holds
    ("pose_jump", _jump, "ego2global_translation", "bad_value"),
    ("no_anns", _delete("anns"), "anns", "missing_keys"),
    ("command_two_hot", _set("driving_command", np.array([1, 1, 0, 0])), "driving_command",
     "bad_value"),
    ("command_fraction", _set("driving_command", np.array([0, 0.5, 0, 0])), "driving_command",
     "bad_value"),
    ("command_zero", _set("driving_command", np.zeros(4)), "driving_command", "bad_value"),
    ("quaternion_zero", _set("ego2global_rotation", np.zeros(4)), "ego2global_rotation",
     "bad_value"),
    ("quaternion_not_unit", _set("ego2global_rotation", np.array([2.0, 0, 0, 0])),
     "ego2global_rotation", "bad_value"),
    ("box_size_negative", _box(4, -2.0), "anns.gt_boxes", "bad_value"),
    ("box_size_nan", _box(3, math.nan), "anns.gt_boxes", "bad_value"),
    ("translation_nan", _set("ego2global_translation", np.array([300100.0, math.nan, 0.0])),
     "ego2global_translation", "bad_value"),
]


def _write(root, mutate=None, frame=CUR_FRAME, n=14, log="log_x"):
    frames = nf.make_frames(log, n=n)
    nf.write_log(root, "mini", log, frames)           # sensors of the well-formed frames
    if mutate is not None:
        mutate(frames[frame])
        nf.write_log(root, "mini", log, frames, sensors=False)
    return root / "navsim_logs" / "mini" / f"{log}.pkl", frames


@pytest.mark.parametrize("case, mutate, field, reason", MALFORMED,
                         ids=[c[0] for c in MALFORMED])
def test_bad_field_names_file_frame_and_field_and_is_skippable(maps, tmp_path, case, mutate,
                                                               field, reason):
    log, frames = _write(tmp_path / "navsim", mutate)
    reader = SceneReader(tmp_path / "navsim", maps, SIZES)
    with pytest.raises(BadInputError) as e:
        list(reader.iter_split("mini"))
    err = e.value
    assert (err.path, err.field, err.reason) == (str(log), field, reason), str(err)
    # the frame by index, or (camera fields, checked where the camera is read) by token
    assert err.frame in (CUR_FRAME, frames[CUR_FRAME]["token"]) or (
        case == "pose_jump" and err.frame == CUR_FRAME + 1), str(err)
    msg = str(err)
    assert str(log) in msg and f"frame {err.frame!r}" in msg and repr(field) in msg
    reader = SceneReader(tmp_path / "navsim", maps, SIZES, skip_bad=True)
    assert list(reader.iter_split("mini")) == []
    assert reader.skip_report.counts == {reason: 1}
    assert reader.skip_report.lost == {msg: 1}


def test_valid_log_passes_every_check(maps, tmp_path):
    _write(tmp_path / "navsim")
    reader = SceneReader(tmp_path / "navsim", maps, SIZES)
    assert len(list(reader.iter_split("mini"))) == 1


def test_non_finite_message_says_which_values(maps, tmp_path):
    _write(tmp_path / "navsim", _set("ego2global_translation",
                                     np.array([300100.0, math.nan, math.inf])))
    with pytest.raises(BadInputError) as e:
        list(SceneReader(tmp_path / "navsim", maps, SIZES).iter_split("mini"))
    msg = str(e.value)
    assert "non-finite" in msg and "nan at [1]" in msg and "inf at [2]" in msg
    assert "got (3,)" not in msg


def test_missing_map_names_the_log_and_the_location(maps, tmp_path):
    def elsewhere(frame):
        frame["map_location"] = "sg-one-north"
    log, _ = _write(tmp_path / "navsim", elsewhere)
    with pytest.raises(BadInputError) as e:
        list(SceneReader(tmp_path / "navsim", maps, SIZES).iter_split("mini"))
    err = e.value
    assert err.reason == "missing_map" and err.path == str(log)
    assert "'sg-one-north'" in str(err) and str(maps / "nuplan-maps-v1.0.json") in str(err)


def test_skip_report_counts_the_scenes_each_bad_input_removed(maps, tmp_path):
    root = tmp_path / "navsim"
    # 20 frames = 7 windows; a frame missing a key at index 1 is in windows 0 and 1
    _write(root, _delete("ego_dynamic_state"), frame=1, n=20, log="log_a")
    bad = root / "navsim_logs" / "mini" / "log_b.pkl"    # unreadable: all of its windows lost
    _write(root, n=20, log="log_b")
    bad.write_bytes(bad.read_bytes()[:100])
    reader = SceneReader(root, maps, SIZES, skip_bad=True)
    assert len(list(reader.iter_split("mini"))) == 5
    report = reader.skip_report
    assert report.counts == {"missing_keys": 2, "corrupt_pickle": 0}
    assert report.inputs == {"missing_keys": 1, "corrupt_pickle": 1}
    assert report.total == 2 and report.num_inputs == 2
    assert report.unknown == {next(m for m in report.lost if "log_b" in m): 7}   # up to 7 windows
    d = report.to_dict()
    assert d["total"] == 2 and d["bad_inputs"] == 2 and d["scenes_up_to"] == 7
    text = str(report)
    assert "2 scene(s) lost to 2 bad input(s)" in text and "up to 7" in text
    # the same bad frame seen by two windows is one input that removed two scenes
    assert [n for m, n in report.lost.items() if "log_a" in m] == [2]


def test_pose_jump_only_fails_the_windows_that_cross_it(maps, tmp_path):
    root = tmp_path / "navsim"
    _write(root, _jump, frame=19, n=20)        # only the last window holds frame 19
    reader = SceneReader(root, maps, SIZES, skip_bad=True)
    assert len(list(reader.iter_split("mini"))) == 6
    assert reader.skip_report.counts == {"bad_value": 1}
    assert "100 m/s" in str(reader.skip_report)


def test_stage_two_frame_fields_are_checked(maps, tmp_path):
    from irlvla_jax.data import navhard
    root = tmp_path / "navsim"
    nf.write_two_stage(root)
    path = root / "navhard_two_stage" / navhard.SCENE_PICKLES / "s2_full.pkl"
    d = pickle.loads(path.read_bytes())
    d["frames"][2]["ego_status"] = [1, 2, 3]          # a list, not a dict
    path.write_bytes(pickle.dumps(d))
    with pytest.raises(BadInputError) as e:
        navhard.read_stage2_scene(path, None)
    assert (e.value.path, e.value.frame, e.value.field) == (str(path), 2, "ego_status")
    d["frames"][2]["ego_status"] = dict(d["frames"][3]["ego_status"],
                                        driving_command=np.array([0, 0, 0, 0]))
    path.write_bytes(pickle.dumps(d))
    with pytest.raises(BadInputError) as e:
        navhard.read_stage2_scene(path, None)
    assert (e.value.frame, e.value.field, e.value.reason) == (
        2, "ego_status.driving_command", "bad_value")
