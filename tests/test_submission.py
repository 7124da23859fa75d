"""Submission pickles (``irlvla_jax.submission``): only submission data loads, NAVSIM's structure
reads, and partial, two-stage or non-finite submissions are refused or reported by token; a
complete submission scores exactly like the same plans in the eval table.

One compiled scorer (16-scene chunks of scorer_scenes' sizes) serves the whole file.
"""

import builtins
import dataclasses
import os
import pickle
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
    """NAVSIM's Trajectory and nuplan's TrajectorySampling under their real module names, so
    that pickles written here name them as a NAVSIM submission does."""
    modules = {}
    for name in ("navsim", "navsim.common", "navsim.common.dataclasses", "nuplan",
                 "nuplan.planning", "nuplan.planning.simulation",
                 "nuplan.planning.simulation.trajectory",
                 "nuplan.planning.simulation.trajectory.trajectory_sampling"):
        modules[name] = ModuleType(name)
        monkeypatch.setitem(sys.modules, name, modules[name])

    @dataclasses.dataclass(frozen=True)
    class TrajectorySampling:
        num_poses: int | None = None
        time_horizon: float | None = None
        interval_length: float | None = None

    @dataclasses.dataclass
    class Trajectory:
        poses: np.ndarray
        trajectory_sampling: TrajectorySampling = TrajectorySampling(8, 4.0, 0.5)

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
