"""navhard two-stage splits: stage-2 scene pickles (irlvla_jax.data.navhard) read by the reader
after the stage-1 logs, with their group, their extended detections and a broken pickle."""

import numpy as np
import pytest

import navsim_fixtures as nf
from irlvla_jax import types
from irlvla_jax.data import navhard
from irlvla_jax.data.errors import BadInputError
from irlvla_jax.data.navsim_logs import CUR, FRAME_DT_US
from irlvla_jax.data.navsim_reader import SceneReader

SIZES = types.SceneSizes(num_future=10, cameras=("CAM_F0", "CAM_B0"), image_hw=(18, 32),
                         max_polygons=20, max_lanes=8, max_agents=4)
SPLIT = "navhard_two_stage"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("navhard")
    nf.write_map(root / "maps")
    nf.write_two_stage(root / "navsim", SPLIT)
    return root


@pytest.fixture(scope="module")
def pickles(world):
    return world / "navsim" / SPLIT / navhard.SCENE_PICKLES


@pytest.fixture(scope="module")
def read(world):
    reader = SceneReader(world / "navsim", world / "maps", SIZES, skip_bad=True)
    return list(reader.iter_split(SPLIT)), reader.skip_report


def test_stage_one_then_stage_two_with_their_groups(read):
    scenes, report = read
    stage1 = [f"{k:016x}" for k in (3, 4, 5)]          # 14 frames, 4 + 8 windows
    assert [m.token for _, m in scenes] == stage1 + [f"{5:016x}_s2", f"{7:016x}_s2"]
    assert [m.scene_index for _, m in scenes] == list(range(5))
    for sc, meta in scenes[3:]:
        assert meta.stage == 2 and meta.original_token == meta.token.removesuffix("_s2")
        assert meta.previous_token is None
        assert not sc["is_original"] and not sc["has_previous"]
        types.check_scene(sc, SIZES, where=meta.token, batch=())
    assert all(m.stage == 1 and sc["is_original"] for sc, m in scenes[:3])
    assert report.counts == {"missing_keys": 1}        # s9_broken.pkl, skipped and counted


def test_stage_two_scene_matches_its_original(read):
    """s2_full replays the logged frames 2..13: the same scene as stage-1 token 5."""
    scenes, _ = read
    original, synthetic = scenes[2][0], scenes[3][0]
    for name in ("ego_history", "expert_future", "expert_future_valid", "agent_states",
                 "agent_valid", "centerline", "cameras", "lidar_bev"):
        np.testing.assert_allclose(synthetic[name], original[name], atol=1e-4, err_msg=name)


def test_extended_detections_fill_the_agent_steps(read, pickles):
    s2 = navhard.read_stage2_scene(pickles / "s2_short.pkl", None)
    assert s2.num_frames == 6 and s2.token == f"{7:016x}_s2"
    first_ext = s2.frames[s2.num_frames]                # agent step len(frames) - CUR = 3
    assert first_ext.token == f"{s2.token}_ext0" and first_ext.tracks == ["bike"]
    assert first_ext.timestamp == s2.frames[CUR].timestamp + 3 * FRAME_DT_US
    assert first_ext.lights == [("32", True)] and first_ext.lidar_path is None
    second_ext = s2.frames[s2.num_frames + 1]           # the fixture's second extended step
    assert second_ext.token == f"{s2.token}_ext1" and second_ext.tracks == ["bike2"]
    assert second_ext.timestamp == s2.frames[CUR].timestamp + 4 * FRAME_DT_US
    assert second_ext.lights == [("32", False)]
    assert len(s2.frames) == s2.num_frames + 2          # two extended steps, no more
    sc, meta = read[0][4]
    assert sc["expert_future_valid"].sum() == 2         # the pickle holds 4 + 2 frames
    veh, bike = meta.track_tokens.index("veh"), meta.track_tokens.index("bike")
    np.testing.assert_array_equal(sc["agent_valid"][veh, :4], [1, 1, 1, 0])
    assert sc["agent_valid"][bike, 3] and not sc["agent_valid"][bike, :3].any()
    # extended detections are in the current ego frame: 15 m straight ahead
    np.testing.assert_allclose(sc["agent_states"][bike, 3, :3], [15, 0, 0], atol=1e-3)
    assert sc["agent_class"][bike] == types.AGENT_CLASSES.index("bicycle")
    bike2 = meta.track_tokens.index("bike2")
    assert sc["agent_valid"][bike2, 4] and not sc["agent_valid"][bike2, :4].any()
    assert not sc["agent_valid"][bike, 4]


def test_token_filter_and_read_scene(world, pickles):
    assert navhard.read_stage2_scene(pickles / "s2_full.pkl", {"another"}) is None
    reader = SceneReader(world / "navsim", world / "maps", SIZES)
    sc, meta = reader.read_scene(SPLIT, "unused", f"{5:016x}_s2")
    assert meta.stage == 2 and meta.original_token == f"{5:016x}"
    with pytest.raises(BadInputError, match="s9_broken"):
        navhard.read_stage2_scene(pickles / "s9_broken.pkl", None)


def test_read_scene_reads_only_what_the_token_needs(world, tmp_path):
    """A corrupt pickle sorted before the wanted one does not stop read_scene."""
    import shutil
    root = tmp_path / "navsim"
    shutil.copytree(world / "navsim", root)
    (root / SPLIT / navhard.SCENE_PICKLES / "s0_truncated.pkl").write_bytes(b"\x80\x04 broken")
    reader = SceneReader(root, world / "maps", SIZES)
    sc, meta = reader.read_scene(SPLIT, "unused", f"{7:016x}_s2")
    assert meta.token == f"{7:016x}_s2" and meta.stage == 2
    with pytest.raises(BadInputError, match="s0_truncated"):   # a token found nowhere
        reader.read_scene(SPLIT, "unused", "no_such_token")


def test_a_two_stage_folder_of_any_name_is_a_two_stage_split(world, read, tmp_path):
    nf.write_two_stage(tmp_path, "private_demo_two_stage")
    reader = SceneReader(tmp_path, world / "maps", SIZES, skip_bad=True)
    assert reader.splits() == ["private_demo_two_stage"]
    spec = reader.split_spec("private_demo_two_stage")
    assert spec.two_stage and spec.num_future == 8
    got = list(reader.iter_split("private_demo_two_stage"))
    assert [m.token for _, m in got] == [m.token for _, m in read[0]]
