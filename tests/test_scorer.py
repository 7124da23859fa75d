"""The EPDMS scorer end to end: plans -> simulation -> metrics -> sub-scores (spec/EPDMS.md).

Compiling the scorer with PDM-Closed is the expensive part on CPU, so one compiled ``score``
on an 8-scene batch serves every test, plus one 8-way sharded ``score_with``.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scorer_scenes as sc
from irlvla_jax import parallel, types
from irlvla_jax.sim import metrics, observation, report, scorer

K = 2
ROT = -0.15          # scene 1: the road turns away 8.6 deg to the right of the ego's heading


def straight_plan(v, angle=0.0):
    """8 poses at 0.5 s along a line at ``angle`` (a constant-velocity plan for angle 0)."""
    d = v * 0.5 * np.arange(1, 9)
    return np.stack([d * np.cos(angle), d * np.sin(angle), np.full(8, angle)], -1)


def build_batch():
    scenes, plans = [], []
    # 0: an open road; the expert-like plan and a slow one.
    scenes.append(sc.road_scene(10.0)); plans.append([straight_plan(10.0), straight_plan(4.0)])
    # 1: the road bends away; the expert follows it, constant velocity leaves the road.
    scenes.append(sc.road_scene(10.0, angle=ROT))
    plans.append([straight_plan(10.0, ROT), straight_plan(10.0)])
    # 2/3: a red light the human drove through; original scene (filter applies) / synthetic.
    for original in (True, False):
        s = sc.add_red_light(sc.road_scene(8.0), 0, 20.0, 25.0)
        s.expert_future[:, 0] = 8.0 * 0.5 * np.arange(1, 9)
        s.is_original[...] = original
        scenes.append(s); plans.append([straight_plan(8.0), straight_plan(2.0)])
    # 4: a slow lead vehicle that the fast plan rear-ends.
    s = sc.add_agent(sc.road_scene(10.0), 0, x=25.0, y=0.0, vx=3.0)
    s.expert_future[:, 0] = 3.0 * 0.5 * np.arange(1, 9)     # the human slowed down behind it
    scenes.append(s)
    plans.append([straight_plan(10.0), straight_plan(3.0)])
    # 5: the ego (and the logged human) stands still; PDM-Closed drives off. A standing plan
    # and one creeping forward.
    scenes.append(sc.road_scene(0.0)); plans.append([np.zeros((8, 3)), straight_plan(1.0)])
    # 6-7: open road at other speeds.
    for v in (8.0, 12.0):
        scenes.append(sc.road_scene(v)); plans.append([straight_plan(v), straight_plan(0.5 * v)])
    batch = jax.tree.map(lambda *x: np.stack(x), *scenes)
    return batch, np.asarray(plans, np.float32)


@pytest.fixture(scope="module")
def run_sharded():
    """The full ``score`` (PDM-Closed included), jitted once, with the batch split over the 8
    fake CPU devices on the 'data' mesh axis, as stage 2 calls it inside its sharded train
    step. ``call(idx, plans=None)`` scores the batch's scenes ``idx`` [8] (with their
    plans, or with ``plans`` [8, K, 8, 3])."""
    batch, plans = build_batch()
    mesh = parallel.make_mesh({"data": -1, "fsdp": 1})
    assert mesh.shape["data"] == 8
    fn = jax.jit(scorer.score)

    def call(idx, given=None):
        b = jax.tree.map(lambda x: x[idx], batch)
        p = plans[idx] if given is None else given
        sub, det = fn(*parallel.shard_batch((b, p), mesh))
        assert len(sub.nc.sharding.device_set) == 8
        return jax.tree.map(np.asarray, sub), jax.tree.map(np.asarray, det)
    return call


@pytest.fixture(scope="module")
def scored(run_sharded):
    """``score`` on the 8-scene batch (one compiled program serves every test)."""
    batch, plans = build_batch()
    sub, det = run_sharded(np.arange(8))
    return batch, plans, sub, det


def test_expert_like_plan_beats_leaving_the_road(scored):
    _, _, sub, det = scored
    e = sub.epdms()
    assert e[0, 0] > 0.9 and e[1, 0] > 0.9
    assert sub.dac[1, 1] == 0.0 and e[1, 1] < 0.5 * e[1, 0]
    assert sub.nc[4, 0] == 0.0 and sub.nc[4, 1] == 1.0   # rear-ending the slow lead


def test_progress_is_normalised_by_pdm_closed(scored):
    _, _, sub, det = scored
    ref = det.reference_progress[0]
    raw = det.raw["progress"][0]
    assert ref > raw[1] > 5.0
    np.testing.assert_allclose(sub.ep[0, 1], raw[1] / max(ref, raw[0]), rtol=1e-4)
    np.testing.assert_allclose(sub.ep, metrics.normalise_progress(
        det.raw["progress"], metrics.multiplier(det.raw), det.reference_progress[:, None],
        det.reference_multiplier[:, None]), atol=1e-6)
    # PDM-Closed's reference keeps to the road and collides with nothing.
    assert (det.reference_multiplier[[0, 1, 5, 6, 7]] == 1.0).all()


def test_human_filter_lifts_what_the_human_fails(scored):
    _, _, sub, det = scored
    assert det.human.tlc[2] == 0.0 and det.human.tlc[3] == 0.0
    assert det.unfiltered.tlc[2, 0] == 0.0 and det.unfiltered.tlc[3, 0] == 0.0
    assert sub.tlc[2, 0] == 1.0            # original scene: the human ran it too
    assert sub.tlc[3, 0] == 0.0            # synthetic scene: no filter
    np.testing.assert_array_equal(sub.ec_weight, 0.0)      # no previous-frame states given


def test_standing_human_is_scored_alone_so_ep_is_not_lifted(scored):
    """NAVSIM's human filter scores the logged human alone (no PDM-Closed in its batch): a
    human standing still has EP 1 there, whatever PDM-Closed did, so the filter leaves the
    candidates' EP as normalised against PDM-Closed (pdm_score.py, the human-penalty part)."""
    _, _, sub, det = scored
    ref = det.reference_progress[5] * det.reference_multiplier[5]
    raw, multi = det.raw["progress"][5], metrics.multiplier(det.raw)[5]
    assert ref > 5.0                              # PDM-Closed drives off: EP is normalised
    np.testing.assert_array_equal(det.human_states[5, :, 3], 0.0)   # the human stands still
    # The human's batch of one: N = raw_h * multi_h <= 5 m -> EP 1 (and raw / N >= 1 above).
    assert det.human.ep[5] == 1.0
    # The candidates, each scored with PDM-Closed: N = max(raw_ref multi_ref, raw multi) > 5.
    n = np.maximum(ref, raw * multi)
    want = np.clip(raw / n, 0.0, 1.0)
    assert want[0] == 0.0 and 0.0 < want[1] < 1.0
    np.testing.assert_allclose(sub.ep[5], want, rtol=1e-6)
    np.testing.assert_array_equal(sub.ep[5], det.unfiltered.ep[5])     # nothing lifted


def test_v1_pdms_and_aggregates(scored):
    _, _, sub, det = scored
    assert det.pdms_v1.shape == (8, K)
    np.testing.assert_allclose(det.epdms, sub.epdms(), atol=1e-6)
    # v1 ignores DDC/TLC: the red-light plan in the synthetic scene keeps a positive PDMS.
    assert det.pdms_v1[3, 0] > 0.5 and det.epdms[3, 0] == 0.0
    m = report.summarise(report.score_columns(sub, det))
    assert m["num_scenes"] == 16 and 0 < m["epdms"] < 1
    assert m["ec"] is None and m["ec_scenes"] == 0          # EC counts nowhere without previous
    assert set(json.loads(json.dumps(m))) >= set(types.SUBSCORE_NAMES) | {"epdms", "pdms_v1"}


def test_sharded_batch_equals_one_scene_at_a_time(run_sharded, scored):
    _, _, sub, _ = scored
    for i in (1, 4):
        # The same compiled program on a batch holding only scene i: every device scores scene
        # i whatever its neighbours, and gets the batch's result for it.
        one, _ = run_sharded(np.full(8, i))
        for name in types.SUBSCORE_NAMES:
            np.testing.assert_allclose(one.stack()[..., types.SUBSCORE_NAMES.index(name)],
                                       np.broadcast_to(getattr(sub, name)[i], (8, K)),
                                       atol=1e-5, err_msg=name)


def test_unsharded_jit_one_scene_at_a_time_equals_sharded_batch(scored):
    """Each scene alone (``score_with`` jitted for B = 1 on one device, PDM-Closed's reference
    passed in so no second PDM-Closed compile) gives the sharded batch's scores."""
    batch, plans, sub, det = scored
    fn = jax.jit(scorer.score_with)
    obs = jax.jit(jax.vmap(observation.build_observation))(batch)
    for i in range(8):
        one, _ = fn(*jax.tree.map(lambda x: x[i:i + 1], (batch, plans, obs, det.reference_states)))
        for name in types.SUBSCORE_NAMES:
            np.testing.assert_allclose(getattr(one, name)[0], getattr(sub, name)[i], atol=1e-5,
                                       err_msg=f"scene {i} {name}")


def test_non_finite_plan_scores_zero_on_every_metric(run_sharded, scored):
    """A plan with a NaN or inf pose is scored 0 on every sub-metric (its EPDMS and PDMS are
    0 too), whatever the human filter would lift; the other plans keep their scores exactly."""
    _, plans, sub, det = scored
    bad = plans.copy()
    bad[0, 1, 3, 0] = np.nan             # open road
    bad[2, 0, 7, 2] = np.inf             # the human ran the red light: the filter would lift TLC
    bad[4, 0, :, 1] = np.nan             # the lead vehicle scene, every pose
    got, got_det = run_sharded(np.arange(8), bad)
    broken = np.zeros((8, K), bool)
    broken[0, 1] = broken[2, 0] = broken[4, 0] = True
    for name in types.SUBSCORE_NAMES:
        np.testing.assert_array_equal(getattr(got, name)[broken], 0.0, err_msg=name)
        np.testing.assert_array_equal(getattr(got_det.unfiltered, name)[broken], 0.0,
                                      err_msg=name)
        np.testing.assert_array_equal(getattr(got, name)[~broken], getattr(sub, name)[~broken],
                                      err_msg=name)
    for scores in (got.epdms(), got_det.epdms, got_det.pdms_v1):
        np.testing.assert_array_equal(scores[broken], 0.0)
    np.testing.assert_array_equal(got_det.epdms[~broken], det.epdms[~broken])
    # The raw metrics of the broken plans are zeros too (progress included), not NaN.
    for name in ("nc", "dac", "ddc", "tlc", "ttc", "lk", "progress"):
        np.testing.assert_array_equal(got_det.raw[name][broken], 0.0, err_msg=name)


def test_scorer_labels_judge_consistency_with_the_previous_frame():
    """The training labels score EC against the expert's plan made 0.5 s earlier, weighted
    where the token has a previous frame: keeping the expert's plan passes, a turn fails."""
    t = 0.5 * np.arange(1, 9)
    heading = 0.3 * t                                   # 0.3 rad/s, 10 m/s
    turn = np.stack([10.0 * np.sin(heading) / 0.3, 10.0 * (1 - np.cos(heading)) / 0.3,
                     heading], -1)
    scenes = [sc.road_scene(10.0), sc.road_scene(10.0)]
    scenes[0].has_previous[...], scenes[1].has_previous[...] = True, False
    batch = jax.tree.map(lambda *x: np.stack(x), *scenes)
    plans = np.asarray([[straight_plan(10.0), turn]] * 2, np.float32)
    labels = jax.tree.map(np.asarray, jax.jit(scorer.scorer_labels)(batch, plans))
    np.testing.assert_array_equal(labels.ec[0], [1.0, 0.0])
    np.testing.assert_array_equal(labels.ec_weight, [[1.0, 1.0], [0.0, 0.0]])


def test_two_stage_aggregation():
    # Two groups, frames (now, prev), three stage-2 scenes each.
    stage1 = jnp.array([[1.0, 0.5], [0.0, 1.0]])
    stage2 = jnp.array([[[1.0, 0.0, 0.0], [0.2, 0.4, 0.6]]] * 2)
    starts = jnp.zeros((2, 2, 3, 2)).at[..., 0].set(jnp.array([0.0, 10.0, 20.0]))
    endpoint = jnp.zeros((2, 2, 2))                       # right at scene 0's start
    valid = jnp.ones((2, 2, 3), bool)
    group, final = scorer.two_stage_score(stage1, stage2, endpoint, starts, valid)
    # Weights ~ (1, 0, 0): stage-2 of group 0 = (1.0, 0.2) -> 0.5 (1*1 + 0.5*0.2) = 0.55.
    np.testing.assert_allclose(group, [0.55, 0.1], atol=1e-5)
    np.testing.assert_allclose(final, 0.325, atol=1e-5)
    # Far from every start: the weights fall back to uniform over valid scenes.
    w = scorer.two_stage_weights(jnp.array([1e3, 0.0]), starts[0, 0], jnp.array([True, True, False]))
    np.testing.assert_allclose(w, [0.5, 0.5, 0.0])


def test_bad_plan_shape_is_a_clear_error():
    batch, plans = build_batch()
    with pytest.raises(ValueError, match="plans has shape"):
        scorer.score(batch, plans[:, :, :5])
