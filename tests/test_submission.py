"""Submission pickles (``irlvla_jax.submission``): only submission data loads, NAVSIM's structure
reads, and partial, two-stage or non-finite submissions are refused or reported by token; a
complete submission scores exactly like the same plans in the eval table. A submission the
project writes reads back with the same tokens and poses, and has NAVSIM's structure key by key:
it unpickles as navsim's own classes where they are installed.

One compiled scorer (16-scene chunks of scorer_scenes' sizes) serves the whole file.
"""

import builtins
import dataclasses
import math
import os
import pickle
import pickletools
import subprocess
import sys
from types import ModuleType

import ml_collections
import numpy as np
import pytest

import scorer_scenes as sc
from irlvla_jax import evaluate, submission
from irlvla_jax.sim import report

TEAM = {"team_name": "t", "authors": ["a"], "email": "a@b.c", "institution": "i",
        "country / region": "c"}


@pytest.fixture(scope="module")
def split():
    return sc.held_out_split()


@pytest.fixture(scope="module")
def expert(split):
    """token -> the expert's poses, and their per-scene scores on the whole split."""
    scenes, metas = split
    plans = evaluate.expert_plan(scenes)
    per_scene = evaluate.score_plans(scenes, plans, evaluate.previous_index(metas))
    return {m.token: p for m, p in zip(metas, plans)}, per_scene


@pytest.fixture
def navsim_classes(monkeypatch):
    """NAVSIM's Trajectory and nuplan's TrajectorySampling under their real module names, as the
    devkits define them (navsim/common/dataclasses.py, nuplan's trajectory_sampling.py: a
    non-frozen dataclass that fills in its third field), so that pickles written here name them
    as a NAVSIM submission does and pickles read here build them."""
    modules = {}
    for name in ("navsim", "navsim.common", "navsim.common.dataclasses", "nuplan",
                 "nuplan.planning", "nuplan.planning.simulation",
                 "nuplan.planning.simulation.trajectory",
                 "nuplan.planning.simulation.trajectory.trajectory_sampling"):
        modules[name] = ModuleType(name)
        monkeypatch.setitem(sys.modules, name, modules[name])

    @dataclasses.dataclass
    class TrajectorySampling:
        num_poses: int | None = None
        time_horizon: float | None = None
        interval_length: float | None = None

        def __post_init__(self):
            if self.time_horizon:
                self.time_horizon = float(self.time_horizon)
            if self.interval_length:
                self.interval_length = float(self.interval_length)
            if self.num_poses is None:
                self.num_poses = int(self.time_horizon / self.interval_length)
            elif self.time_horizon is None:
                self.time_horizon = self.num_poses * self.interval_length

        def __hash__(self):
            return hash((self.num_poses, self.time_horizon, self.interval_length))

        def __eq__(self, other):
            return (isinstance(other, TrajectorySampling) and other.num_poses == self.num_poses
                    and math.isclose(other.time_horizon, self.time_horizon)
                    and math.isclose(other.interval_length, self.interval_length))

    @dataclasses.dataclass
    class Trajectory:
        poses: np.ndarray
        trajectory_sampling: TrajectorySampling = TrajectorySampling(time_horizon=4,
                                                                     interval_length=0.5)

        def __post_init__(self):
            assert self.poses.ndim == 2 and self.poses.shape[1] == 3
            assert self.poses.shape[0] == self.trajectory_sampling.num_poses

    for cls, module in ((TrajectorySampling, "nuplan.planning.simulation.trajectory."
                                             "trajectory_sampling"),
                        (Trajectory, "navsim.common.dataclasses")):
        cls.__module__, cls.__qualname__ = module, cls.__name__
        setattr(modules[module], cls.__name__, cls)
    return Trajectory


def _write(path, obj, protocol=pickle.DEFAULT_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


class _Call:
    """Pickles as ``fn(*args)``: loading it calls fn."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker):
    touch = f"open({str(marker)!r}, 'w').close()"
    return {"builtins.eval": _Call(eval, touch), "builtins.exec": _Call(exec, touch),
            f"{os.system.__module__}.system": _Call(os.system, f"touch {marker}"),
            "subprocess.call": _Call(subprocess.call, ["touch", str(marker)]),
            "builtins.getattr": _Call(getattr, _Call(builtins.__import__, "os"), "getcwd")}


@pytest.mark.parametrize("refused", list(_payloads("marker")))
def test_a_pickle_that_would_run_code_is_refused_by_name(tmp_path, refused):
    marker = tmp_path / "ran"
    payloads = _payloads(marker)
    path = _write(tmp_path / "sub.pkl", {**TEAM, "first_stage_predictions": [
        {"tok": payloads[refused]}], "second_stage_predictions": []})
    with pytest.raises(ValueError, match=f"{path}.*refused.*{refused}"):
        submission.read_submission(path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_a_navsim_submission_reads(tmp_path, navsim_classes, expert, protocol):
    preds, _ = expert
    path = _write(tmp_path / "sub.pkl", {
        **TEAM, "first_stage_predictions": [{t: navsim_classes(p) for t, p in preds.items()}],
        "second_stage_predictions": [{}]}, protocol)
    sub = submission.read_submission(path)
    assert list(sub.first_stage) == list(preds) and sub.second_stage == {}
    for t, p in preds.items():
        np.testing.assert_array_equal(sub.first_stage[t], p)
        assert sub.first_stage[t].dtype == np.float32


def test_v1_and_plain_pickles_round_trip(tmp_path, navsim_classes, expert):
    preds, _ = expert
    v1 = _write(tmp_path / "v1.pkl", {**TEAM, "predictions": [
        {t: navsim_classes(p.astype(np.float64)) for t, p in preds.items()}]})
    plain = _write(tmp_path / "plain.pkl", {t: p.tolist() for t, p in preds.items()})
    for path in (v1, plain):
        got = submission.read_submission(path).first_stage
        assert list(got) == list(preds)
        for t, p in preds.items():
            np.testing.assert_array_equal(got[t], p)


def test_nonfinite_poses_are_named_by_token(tmp_path, expert):
    preds, _ = expert
    bad = dict(preds, s2=np.full((8, 3), np.nan), s4=preds["s4"] + [0.0, 0.0, np.inf])
    path = _write(tmp_path / "sub.pkl", {**TEAM, "first_stage_predictions": [bad]})
    with pytest.raises(ValueError, match=r"2 tokens hold NaN/inf: s2, s4"):
        submission.read_submission(path)


def test_a_token_predicted_twice_is_refused(tmp_path, expert):
    preds, _ = expert
    path = _write(tmp_path / "sub.pkl", {**TEAM, "first_stage_predictions": [preds, preds]})
    with pytest.raises(ValueError, match="token s0 appears in more than one entry"):
        submission.read_submission(path)


def test_a_complete_submission_scores_like_the_eval_table(tmp_path, navsim_classes, split,
                                                          expert):
    scenes, metas = split
    preds, per_scene = expert
    path = _write(tmp_path / "sub.pkl", {**TEAM, "first_stage_predictions": [
        {t: navsim_classes(p) for t, p in preds.items()}], "second_stage_predictions": [{}]})
    row = submission.score_predictions(submission.read_submission(path).first_stage,
                                       scenes, metas)
    assert row == {**report.summarise(per_scene), "missing_tokens": [], "unknown_tokens": []}
    table, _ = evaluate.evaluate_planners({"human": evaluate.expert_plan}, scenes, metas=metas)
    assert all(row[k] == v for k, v in table["human"].items() if not k.startswith("l2"))


def test_a_partial_submission_is_refused(split, expert):
    scenes, metas = split
    preds, _ = expert
    partial = {t: p for t, p in preds.items() if t not in ("s2", "s5")}
    with pytest.raises(ValueError, match=r"2 of the 6 scenes of navtest have no prediction: "
                                         r"s2, s5.*--partial"):
        submission.score_predictions(partial, scenes, metas, split="navtest")


def test_partial_scoring_counts_missing_scenes_as_failures(split, expert):
    scenes, metas = split
    preds, per_scene = expert
    # s2 and s5 are nobody's previous frame: the other scenes score as in the full split.
    partial = {t: p for t, p in preds.items() if t not in ("s2", "s5")}
    row = submission.score_predictions(partial, scenes, metas, allow_partial=True)
    covered = [0, 1, 3, 4]
    assert row["missing_tokens"] == ["s2", "s5"] and row["num_scenes"] == 6
    assert row["epdms"] == pytest.approx(per_scene["epdms"][covered].sum() / 6, abs=1e-6)
    assert row["ec_scenes"] == 2            # s1 and s4; the missing s2 and s5 do not count
    assert row["ec"] == pytest.approx(per_scene["ec"][[1, 4]].mean())


def test_unknown_tokens_are_reported_and_ignored(split, expert):
    scenes, metas = split
    preds, per_scene = expert
    row = submission.score_predictions({**preds, "not_a_scene": preds["s0"]}, scenes, metas)
    assert row["unknown_tokens"] == ["not_a_scene"] and row["missing_tokens"] == []
    assert row["epdms"] == report.summarise(per_scene)["epdms"]
    with pytest.raises(ValueError, match="none of its 1 tokens are scenes"):
        submission.score_predictions({"not_a_scene": preds["s0"]}, scenes, metas)


def test_a_second_stage_is_refused_unless_first_stage_only(tmp_path, split, expert,
                                                          monkeypatch, capsys):
    loader = ModuleType("irlvla_jax.data.loader")
    loader.load_split_numpy = lambda config, split_name, limit=None: split
    monkeypatch.setitem(sys.modules, "irlvla_jax.data.loader", loader)
    config = ml_collections.ConfigDict({"data": {"eval_split": "navhard_two_stage"}})
    preds, per_scene = expert
    path = _write(tmp_path / "sub.pkl", {**TEAM, "first_stage_predictions": [preds],
                                         "second_stage_predictions": [{"s0_b": preds["s0"]}]})
    with pytest.raises(ValueError, match="1 second-stage .* not supported yet.*first_stage_only"):
        submission.score_submission(config, path)
    row = submission.score_submission(config, path, first_stage_only=True)
    assert row["epdms"] == report.summarise(per_scene)["epdms"]
    assert row["second_stage_not_scored"] == 1
    out = capsys.readouterr().out
    assert "sub.pkl on navhard_two_stage" in out and "1 predictions not scored" in out


# ---------------------------------------------------------------------------------------------
# Writing

def _globals(path):
    """The (module, name) pairs a pickle loads, numpy 2's ``numpy._core`` read as ``numpy.core``."""
    with open(path, "rb") as f:
        ops = list(pickletools.genops(f.read()))
    out, strings = set(), []
    for op, arg, _ in ops:
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            out.add((strings[-2].replace("numpy._core.", "numpy.core."), strings[-1]))
        elif op.name == "GLOBAL":
            module, name = arg.split(" ")
            out.add((module.replace("numpy._core.", "numpy.core."), name))
    return out


def test_a_written_submission_reads_back_with_the_same_tokens_and_poses(tmp_path, expert):
    preds, _ = expert
    second = {f"{t}_b": p[::-1] * 0.5 for t, p in preds.items()}
    path = submission.write_submission(str(tmp_path / "sub.pkl"), preds, second,
                                       {"team_name": "t", "email": "a@b.c"})
    sub = submission.read_submission(path)
    for got, want in ((sub.first_stage, preds), (sub.second_stage, second)):
        assert list(got) == list(want)
        for t, p in want.items():
            np.testing.assert_array_equal(got[t], p)
            assert got[t].dtype == np.float32
    assert submission.read_submission(submission.write_submission(
        str(tmp_path / "one.pkl"), preds)).second_stage == {}


def test_a_written_submission_has_navsims_structure_key_by_key(tmp_path, navsim_classes,
                                                               expert):
    """Unpickled with navsim installed (here: its classes under their module names) the file is
    what NAVSIM's run_create_submission_pickle writes, down to the classes, their fields and the
    globals the pickle loads."""
    preds, _ = expert
    meta = {k: f"{k} value" for k in submission.METADATA_KEYS}
    mine = submission.write_submission(str(tmp_path / "mine.pkl"), preds, metadata=meta)
    official = _write(tmp_path / "official.pkl", {
        **meta, "first_stage_predictions": [{t: navsim_classes(p) for t, p in preds.items()}],
        "second_stage_predictions": [{}]}, protocol=4)
    with open(mine, "rb") as f:
        got = pickle.load(f)          # the plain unpickler: navsim's classes, no reader mapping
    with open(official, "rb") as f:
        want = pickle.load(f)
    assert list(got) == list(want)
    for k in submission.METADATA_KEYS:
        assert got[k] == want[k]
    assert got["second_stage_predictions"] == want["second_stage_predictions"] == [{}]
    [g], [w] = got["first_stage_predictions"], want["first_stage_predictions"]
    assert list(g) == list(w) == list(preds)
    for t in preds:
        assert type(g[t]) is type(w[t]) is navsim_classes
        assert vars(g[t]).keys() == vars(w[t]).keys()
        assert g[t].poses.dtype == w[t].poses.dtype == np.float32 and g[t].poses.shape == (8, 3)
        np.testing.assert_array_equal(g[t].poses, w[t].poses)
        assert type(g[t].trajectory_sampling) is type(w[t].trajectory_sampling)
        assert vars(g[t].trajectory_sampling) == vars(w[t].trajectory_sampling) == {
            "num_poses": 8, "time_horizon": 4.0, "interval_length": 0.5}
    assert _globals(mine) == _globals(official)
    assert not any(m.startswith("numpy._core") for m, _ in _globals(mine))   # numpy 1.x reads it
    raw = open(mine, "rb").read()
    assert b"numpy._core" not in raw and b"numpy.core.multiarray" in raw


def test_writing_refuses_bad_poses_and_unknown_metadata(tmp_path, expert):
    preds, _ = expert
    path = str(tmp_path / "sub.pkl")
    with pytest.raises(ValueError, match="first_stage: the poses of 1 tokens hold NaN/inf: s3"):
        submission.write_submission(path, dict(preds, s3=np.full((8, 3), np.nan)))
    with pytest.raises(ValueError, match=r"token s0: poses have shape \(4, 3\)"):
        submission.write_submission(path, dict(preds, s0=np.zeros((4, 3))))
    with pytest.raises(ValueError, match="unknown submission metadata \\['country'\\]"):
        submission.write_submission(path, preds, metadata={"country": "x"})
    assert not os.path.exists(path)


def test_the_submit_stage_writes_the_chosen_policys_plans(tmp_path, split, capsys):
    scenes, metas = split
    plans = {"constant_velocity": evaluate.constant_velocity_plan(scenes),
             "human": evaluate.expert_plan(scenes)}
    evaluate.save_plans(str(tmp_path / evaluate.PLANS_FILE), metas, plans)
    config = ml_collections.ConfigDict({"eval": {"submission_policy": "constant_velocity",
                                                 "team_name": "irl", "country": "here"}})
    out = submission.run(config, str(tmp_path))
    sub = submission.read_submission(out["path"])
    assert list(sub.first_stage) == [m.token for m in metas] and sub.second_stage == {}
    np.testing.assert_allclose(np.stack(list(sub.first_stage.values())),
                               plans["constant_velocity"])
    with open(out["path"], "rb") as f:
        raw = submission.SubmissionUnpickler(f).load()
    assert raw["team_name"] == "irl" and raw["country / region"] == "here"
    printed = capsys.readouterr().out
    assert f"constant_velocity plans of {len(metas)} scenes" in printed
    assert "set authors, email, institution before uploading" in printed
    config.eval.submission_policy = "rl_policy"
    with pytest.raises(SystemExit, match="no plans of 'rl_policy'.*submission_policy"):
        submission.run(config, str(tmp_path))
    with pytest.raises(SystemExit, match="run `python launch.py eval` first"):
        submission.run(config, str(tmp_path / "elsewhere"))
