"""What ``python launch.py eval`` shows: the headline table (``evaluate_planners``), which scenes
EC counts on (``previous_index``), chunked scoring (``score_plans``), the one summariser
(``sim.report.summarise``), streaming evaluation (``evaluate_stream``: batch by batch, equal to
the split at once), and the stage: it streams, writes its files, and refuses to run without a
trained policy.

One compiled scorer and simulator (16-scene chunks of scorer_scenes' sizes) serve the whole
file.
"""

import os
import sys
from types import ModuleType

import jax
import ml_collections
import numpy as np
import pytest

import scorer_scenes as sc
from irlvla_jax import evaluate, tracking, types
from irlvla_jax.sim import report

EC_SCENES = [1, 2, 4, 5]          # held_out_split: the scenes whose previous frame is scored


@pytest.fixture(scope="module")
def split():
    return sc.held_out_split()


@pytest.fixture(scope="module")
def headline(split):
    scenes, metas = split
    return evaluate.evaluate_planners({"human": evaluate.expert_plan,
                                       "constant_velocity": evaluate.constant_velocity_plan},
                                      scenes, metas=metas)


def _meta(token, previous):
    return types.SceneMeta(token=token, log_name="log", map_location="road",
                           previous_token=previous, track_tokens=[])


def test_headline_table_ranks_the_human_above_constant_velocity(headline, capsys):
    table, plans = headline
    assert list(table) == ["human", "constant_velocity"]
    for row in table.values():
        assert set(evaluate.COLUMNS) | {"ec_scenes", "num_scenes", "l2_2s"} <= set(row)
        assert row["num_scenes"] == 6 and row["ec_scenes"] == len(EC_SCENES)
    human, cv = table["human"], table["constant_velocity"]
    assert human["epdms"] > cv["epdms"] + 0.1
    assert human["dac"] == 1.0 > cv["dac"]             # CV leaves the turning roads
    assert human["l2_4s"] == 0.0 < cv["l2_4s"]
    assert plans["human"].shape == plans["constant_velocity"].shape == (6, 8, 3)
    tracking.print_table("EPDMS", table, evaluate.COLUMNS + ["l2_2s"])
    out = capsys.readouterr().out
    assert "constant_velocity" in out and "epdms" in out and "l2_2s" in out


def test_ec_counts_only_where_the_previous_frame_is_scored(split, headline):
    scenes, metas = split
    table, plans = headline
    per_scene = evaluate.score_plans(scenes, plans["constant_velocity"],
                                     evaluate.previous_index(metas))
    np.testing.assert_array_equal(np.nonzero(per_scene["ec_weight"])[0], EC_SCENES)
    row = report.summarise(per_scene)
    assert row == {k: v for k, v in table["constant_velocity"].items() if not k.startswith("l2")}
    assert row["ec"] == pytest.approx(per_scene["ec"][EC_SCENES].mean())
    # Without the previous frames (no metas) EC counts nowhere and has no mean.
    alone = report.summarise(evaluate.score_plans(scenes, plans["constant_velocity"]))
    assert alone["ec"] is None and alone["ec_scenes"] == 0
    assert alone["dac"] == row["dac"]


def test_previous_index_pairs_each_frame_with_its_previous_in_the_set():
    metas = [_meta("a", None), _meta("b", "a"), _meta("c", "b"),    # a chain
             _meta("e", "d"),                                       # d is not evaluated (gap)
             _meta("f", "e"), _meta("g", "")]
    np.testing.assert_array_equal(evaluate.previous_index(metas), [-1, 0, 1, -1, 3, -1])
    # The order of the scenes does not matter.
    np.testing.assert_array_equal(evaluate.previous_index(metas[::-1]), [-1, 2, -1, 4, 5, -1])


def test_score_plans_chunks_and_padding_equal_one_scene_at_a_time(split):
    scenes, metas = split
    n, base = 20, np.arange(20) % 6                  # two chunks of 16, the second padded
    tiled = evaluate.select_scenes(scenes, base)
    prev6 = evaluate.previous_index(metas)
    prev = np.where(prev6[base] >= 0, np.arange(n) - base + prev6[base], -1)
    prev = np.where(prev < n, prev, -1)
    plans = np.where((np.arange(n) % 2 == 0)[:, None, None], evaluate.expert_plan(tiled),
                     evaluate.constant_velocity_plan(tiled))
    full = evaluate.score_plans(tiled, plans, prev)
    assert all(v.shape == (n,) for v in full.values())
    for j in (0, 1, 9, 16, 19):                       # 9: s3, whose previous is absent
        pair = [prev[j], j] if prev[j] >= 0 else [j]
        one = evaluate.score_plans(evaluate.select_scenes(tiled, pair), plans[pair],
                                   [-1, 0] if len(pair) == 2 else [-1])
        for k, v in one.items():
            np.testing.assert_allclose(v[-1], full[k][j], atol=1e-6, err_msg=f"{k} scene {j}")


def test_score_plans_refuses_bad_plans(split):
    scenes, _ = split
    with pytest.raises(ValueError, match=r"\[N, 8, 3\]"):
        evaluate.score_plans(scenes, np.zeros((6, 4, 3)))
    plans = np.zeros((6, 8, 3), np.float32)
    plans[2, 3, 0] = np.nan
    with pytest.raises(ValueError, match=r"scenes \[2\]"):
        evaluate.score_plans(scenes, plans)


def test_summarise_means_over_entries_and_ec_where_it_counts():
    cols = {k: np.ones(4, np.float32) for k in (*types.SUBSCORE_NAMES, "pdms_v1")}
    cols["epdms"] = np.array([1.0, 0.5, 0.0, 0.5], np.float32)
    cols["ec"] = np.array([0.0, 1.0, 0.0, 0.0], np.float32)
    cols["ec_weight"] = np.array([0.0, 1.0, 1.0, 0.0], np.float32)
    row = report.summarise(cols)
    assert row["epdms"] == 0.5 and row["ec"] == 0.5
    assert row["ec_scenes"] == 2 and row["num_scenes"] == 4
    row = report.summarise(cols, mask=[True, False, False, True])
    assert row["epdms"] == 0.75 and row["ec"] is None and row["num_scenes"] == 2
    with pytest.raises(ValueError, match="selects no entries"):
        report.summarise(cols, mask=np.zeros(4, bool))


def test_eval_stage_without_a_trained_policy_fails_and_says_what_to_run(split, tmp_path,
                                                                        monkeypatch):
    loader = ModuleType("irlvla_jax.data.loader")
    loader.load_split_numpy = lambda config, split_name, limit=None: split
    monkeypatch.setitem(sys.modules, "irlvla_jax.data.loader", loader)

    def not_scored(*args, **kwargs):
        raise AssertionError("the baselines were scored although there is nothing to evaluate")
    monkeypatch.setattr(evaluate, "evaluate_planners", not_scored)
    config = ml_collections.ConfigDict({"eval": {"num_scenes": 0},
                                        "data": {"eval_split": "navtest"}})
    with pytest.raises(SystemExit, match="python launch.py il"):
        evaluate.run(config, str(tmp_path))
    assert not (tmp_path / "eval" / "eval.json").exists()


def _batches_of(scenes, metas, batch):
    """A split_batches-like stream of an in-memory split: batches of ``batch`` rows, the last
    padded with copies of the last scene (metas None there)."""
    n = len(metas)

    def batches():
        for start in range(0, n, batch):
            where = np.arange(start, start + batch)
            idx = np.minimum(where, n - 1)
            yield (evaluate.select_scenes(scenes, idx),
                   [metas[i] if i < n else None for i in where], where)
    return batches


def test_streaming_evaluation_equals_the_whole_split_at_once(split):
    """evaluate_stream (two passes over batches, the last one padded; EC against the previous
    frame's simulated plan even when that frame is in another batch) gives the table and the
    plans of evaluate_planners on the split in memory."""
    scenes, metas = split
    n, base = 20, np.arange(20) % 6                   # 20 scenes: batches of 16, then 4 + padding
    tiled = evaluate.select_scenes(scenes, base)
    prev6 = evaluate.previous_index(metas)
    prev = np.where(prev6[base] >= 0, np.arange(n) - base + prev6[base], -1)
    prev[np.arange(n) >= 16] = np.where(prev[16:] >= 0, prev[16:] - 6, -1)  # across batches
    tiled_metas = [_meta(f"s{i}", f"s{prev[i]}" if prev[i] >= 0 else None) for i in range(n)]
    np.testing.assert_array_equal(evaluate.previous_index(tiled_metas), prev)
    assert (prev[16:] >= 0).any() and (prev[16:] < 16).all()
    planners = {"human": evaluate.expert_plan, "constant_velocity":
                evaluate.constant_velocity_plan}
    want, want_plans = evaluate.evaluate_planners(planners, tiled, batch_size=16,
                                                  metas=tiled_metas)
    got, got_plans, info = evaluate.evaluate_stream(
        planners, _batches_of(tiled, tiled_metas, 16), keep=3)
    assert list(got) == list(want) and got["human"]["ec_scenes"] == int((prev >= 0).sum())
    for name in planners:
        assert set(got[name]) == set(want[name])
        for k, v in want[name].items():
            if v is None:
                assert got[name][k] is None, (name, k)
            else:
                np.testing.assert_allclose(got[name][k], v, rtol=1e-6, atol=1e-6,
                                           err_msg=f"{name} {k}")
        np.testing.assert_array_equal(got_plans[name], want_plans[name])
    assert info["tokens"] == [m.token for m in tiled_metas]
    assert info["scene_index"] == [0, 1, 2]
    np.testing.assert_array_equal(info["scenes"].expert_future, tiled.expert_future[:3])


def test_eval_stage_streams_the_split_and_writes_its_files_once(split, headline, tmp_path,
                                                                 monkeypatch):
    """``launch.py eval``'s run on a stream of batches (a trained policy stood in for by
    constant velocity): the table is evaluate_planners', the plans file holds every scene's
    token in split order, four BEV pictures."""
    from configs import tiny
    from irlvla_jax.train import stage_results
    scenes, metas = split
    monkeypatch.setattr(stage_results, "trained_planners",
                        lambda config, workdir: {"il_policy": evaluate.constant_velocity_plan})
    monkeypatch.setattr(evaluate, "split_batches",
                        lambda config, name, mesh, limit: _batches_of(scenes, metas, 16))
    result = evaluate.run(tiny.get_config(), str(tmp_path))
    table, _ = headline
    for name in ("human", "constant_velocity"):
        assert result["policies"][name] == pytest.approx(table[name], rel=1e-6, abs=1e-6)
    assert result["policies"]["il_policy"] == result["policies"]["constant_velocity"]
    tokens, stages, plans = evaluate.load_plans(str(tmp_path / evaluate.PLANS_FILE))
    assert tokens == [m.token for m in metas] and list(stages) == [1] * 6
    assert set(plans) == {"human", "constant_velocity", "il_policy"}
    assert [os.path.basename(p) for p in result["bev"]] == [f"bev_{i}.png" for i in range(4)]
    assert all(os.path.exists(p) for p in result["bev"])
    assert (tmp_path / "eval" / "eval.json").exists()


def test_streaming_over_two_processes_equals_one(split, monkeypatch):
    """Two 'processes' (threads; ``_allgather`` exchanges their arrays in process order, as
    process_allgather does) each read their half of every global batch; both get the
    one-process table and plans, EC included where the previous frame is the other's."""
    import threading
    scenes, metas = split
    n, base = 20, np.arange(20) % 6
    tiled = evaluate.select_scenes(scenes, base)
    prev = np.where(evaluate.previous_index(metas)[base] >= 0,
                    np.arange(n) - base + evaluate.previous_index(metas)[base], -1)
    tiled_metas = [_meta(f"s{i}", f"s{prev[i]}" if prev[i] >= 0 else None) for i in range(n)]
    planners = {"constant_velocity": evaluate.constant_velocity_plan}
    want, want_plans, _ = evaluate.evaluate_stream(planners, _batches_of(tiled, tiled_metas, 16))

    whole = _batches_of(tiled, tiled_metas, 32)       # one global batch of 32, 12 padding rows

    def rows(lo, hi):                                  # this process's rows of each batch
        return lambda: ((evaluate.select_scenes(s, np.arange(lo, hi)), m[lo:hi], w[lo:hi])
                        for s, m, w in whole())
    barrier, shared = threading.Barrier(2), {}

    def allgather(tree):
        me = threading.current_thread().name
        shared[me] = tree
        barrier.wait()
        out = jax.tree.map(lambda *x: np.concatenate(x), shared["p0"], shared["p1"])
        barrier.wait()
        return out
    monkeypatch.setattr(evaluate, "_allgather", allgather)
    got = {}
    threads = [threading.Thread(name=f"p{i}", target=lambda i=i: got.__setitem__(
        i, evaluate.evaluate_stream(planners, rows(16 * i, 16 * i + 16)))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert set(got) == {0, 1}
    assert (prev[16:] >= 0).any()                      # EC against the other process's rows
    for table, plans, info in got.values():
        assert table["constant_velocity"] == pytest.approx(want["constant_velocity"],
                                                           rel=1e-6, abs=1e-6)
        np.testing.assert_array_equal(plans["constant_velocity"],
                                      want_plans["constant_velocity"])
        assert info["tokens"] == [m.token for m in tiled_metas]
