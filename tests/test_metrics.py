"""The nine EPDMS sub-metrics on hand-built scenes (spec/EPDMS.md §5, §6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

import scorer_scenes as sc
from irlvla_jax import geometry as geo
from irlvla_jax import types
from irlvla_jax.sim import comfort, ego_area, metrics


@pytest.fixture(scope="module")
def score():
    """score(scene, states [K,41,11], agent_xyh=None) -> dict of numpy [K] (one compile)."""
    fn = jax.jit(metrics.score_states)

    def run(scene, states, agent_xyh=None):
        obs = sc.simple_observation(scene, agent_xyh)
        k = len(states)
        # Always 3 candidates (padded with copies): one compiled program for every test.
        padded = np.stack(list(states) + [states[-1]] * (3 - k)).astype(np.float32)
        out = fn(padded, obs, sc.as_jnp(scene))
        return {name: np.asarray(v)[:k] for name, v in out.items()}
    return run


def test_rear_ending_a_lead_vehicle_is_at_fault(score):
    scene = sc.add_agent(sc.road_scene(), 0, x=20.0, y=0.0, vx=2.0)
    r = score(scene, [sc.constant_accel_states(10.0), sc.constant_accel_states(2.0)])
    np.testing.assert_array_equal(r["nc"], [0.0, 1.0])


def test_being_rear_ended_is_not_at_fault(score):
    scene = sc.add_agent(sc.road_scene(2.0), 0, x=-15.0, y=0.0, vx=10.0)
    ego = sc.constant_accel_states(2.0)
    # The boxes do overlap (the follower drives into the ego) ...
    obs = sc.simple_observation(scene)
    hit = geo.convex_intersect(geo.ego_corners(ego[:, :3]), obs.agent_corners[0])
    assert np.asarray(hit).any()
    # ... but an agent behind is the one at fault.
    assert score(scene, [ego])["nc"][0] == 1.0


def test_grazing_a_static_cone_costs_half(score):
    cone = dict(x=15.0, vx=0.0, length=0.5, width=0.5, cls=types.AGENT_CLASSES.index("traffic_cone"))
    touching = sc.add_agent(sc.road_scene(5.0), 0, y=1.3, **cone)   # spans y 1.05..1.55
    clear = sc.add_agent(sc.road_scene(5.0), 0, y=1.5, **cone)      # spans y 1.25..1.75
    ego = sc.constant_accel_states(5.0)
    assert score(touching, [ego])["nc"][0] == 0.5
    assert score(clear, [ego])["nc"][0] == 1.0


def test_one_corner_off_the_road_fails_dac(score):
    # Standing still, rotated so that only the front-right corner leaves the road (y < -1.75).
    off = sc.states_from_xy(0.0, -0.3, heading=-0.12, vx=0.0, ax=0.0)
    c = np.asarray(geo.ego_corners(off[0, :3]))
    assert (c[:, 1] < -1.75).sum() == 1
    r = score(sc.road_scene(0.0), [off, sc.states_from_xy(0.0, 0.0, vx=0.0, ax=0.0)])
    np.testing.assert_array_equal(r["dac"], [0.0, 1.0])
    assert r["non_drivable"][0].all() and not r["non_drivable"][1].any()


def test_oncoming_lane_distance_sets_ddc(score):
    # Centre in the oncoming lane (y = 3.5) at 3, 7 and 1.5 m/s: ~3.3 m, 7.7 m, 1.65 m per 1 s.
    r = score(sc.road_scene(), [sc.constant_accel_states(v, y=3.5) for v in (3.0, 7.0, 1.5)])
    np.testing.assert_array_equal(r["ddc"], [0.5, 0.0, 1.0])
    assert r["oncoming"].all()
    assert r["dac"].min() == 1.0


def test_red_light_vs_green(score):
    ego = [sc.constant_accel_states(8.0)]       # front bumper reaches x = 20 at t = 2 s
    red = score(sc.add_red_light(sc.road_scene(8.0), 0, 20.0, 25.0, red=True), ego)
    green = score(sc.add_red_light(sc.road_scene(8.0), 0, 20.0, 25.0, red=False), ego)
    assert red["tlc"][0] == 0.0 and green["tlc"][0] == 1.0
    # t = 0 counts: a stationary ego already on a red connector fails.
    on_it = score(sc.add_red_light(sc.road_scene(0.0), 0, 2.0, 6.0),
                  [sc.states_from_xy(0.0, 0.0, vx=0.0, ax=0.0)])
    assert on_it["tlc"][0] == 0.0


def _lk_states(off_steps, x=None):
    y = np.where(np.isin(np.arange(41), off_steps), 0.8, 0.0)
    return sc.states_from_xy(np.zeros(41) if x is None else x, y, vx=0.0, ax=0.0)


def test_lane_keeping_2s_window(score):
    r = score(sc.road_scene(0.0), [_lk_states(np.arange(21)), _lk_states(np.arange(19))])
    np.testing.assert_array_equal(r["lk"], [0.0, 1.0])     # 2.1 s off fails, 1.9 s passes


def test_lane_keeping_skips_intersections_without_reset(score):
    # Off the centreline at steps 0-14 and 20-30; steps 15-19 are back on it. Without an
    # intersection those steps reset the run (LK 1); inside one they are skipped (LK 0).
    x = 10.0 * sc.T                                  # centre x = 10 t + 1.461
    states = [_lk_states(np.r_[0:15, 20:31], x=x)]
    plain = sc.road_scene(0.0)
    inter = sc.road_scene(0.0)
    inter.map_polygons[4] = sc._rect(16.0, 21.0, -1.75, 5.25)
    inter.map_polygon_type[4], inter.map_polygon_valid[4] = types.INTERSECTION, True
    assert score(plain, states)["lk"][0] == 1.0
    r = score(inter, states)
    assert r["centre_in_intersection"][0].sum() == 5 and r["lk"][0] == 0.0


def test_lead_vehicle_braking_within_ttc_horizon(score):
    # The ego brakes to stop just behind a lead that brakes hard: no collision, but the 0.9 s
    # constant-velocity projection reaches the lead while it is ahead.
    scene = sc.add_agent(sc.road_scene(), 0, x=16.0, y=0.0, vx=10.0)
    ego = sc.constant_accel_states(10.0, -3.4)
    v = np.maximum(10.0 - 8.0 * sc.T, 0.0)
    braking = 16.0 + np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * 0.1)])
    lead = np.zeros((4, 41, 3), np.float32)
    lead[0, :, 0] = braking
    r_brake = score(scene, [ego], agent_xyh=lead)
    lead[0, :, 0] = 16.0 + 10.0 * sc.T
    r_cruise = score(scene, [ego], agent_xyh=lead)
    assert r_brake["nc"][0] == 1.0 and r_brake["ttc"][0] == 0.0
    assert r_cruise["ttc"][0] == 1.0


def test_progress_and_its_normalisation(score):
    r = score(sc.road_scene(), [sc.constant_accel_states(v) for v in (10.0, 5.0)])
    np.testing.assert_allclose(r["progress"], [40.0, 20.0], atol=0.05)
    ep = np.asarray(metrics.normalise_progress(r["progress"], 1.0, 40.0, 1.0))
    np.testing.assert_allclose(ep, [1.0, 0.5], atol=2e-3)
    # The reference counts only if it is itself admissible (multi > 0); under 5 m -> EP 1.
    np.testing.assert_allclose(metrics.normalise_progress(20.0, 1.0, 40.0, 0.0), 1.0)
    np.testing.assert_allclose(metrics.normalise_progress(2.0, 1.0, 4.0, 1.0), 1.0)


def test_non_finite_trajectory_scores_zero(score):
    """A trajectory with a NaN or inf state scores 0 on every metric (progress 0), next to a
    finite one that keeps its scores exactly."""
    scene = sc.add_agent(sc.road_scene(), 0, x=60.0, y=0.0, vx=10.0)
    good, nan, inf = (sc.constant_accel_states(8.0) for _ in range(3))
    nan[20, 1] = np.nan
    inf[40, 3] = np.inf
    alone = score(scene, [good])
    r = score(scene, [nan, good, inf])
    for name in ("nc", "dac", "ddc", "tlc", "ttc", "lk", "progress"):
        np.testing.assert_array_equal(r[name][[0, 2]], 0.0, err_msg=name)
        np.testing.assert_array_equal(r[name][1], alone[name][0], err_msg=name)
    assert alone["progress"][0] > 30.0 and alone["nc"][0] == alone["lk"][0] == 1.0


# ---------------------------------------------------------------------------------------------
# Comfort

def test_savgol_matrix_matches_scipy_including_even_window():
    x = np.random.default_rng(0).normal(size=55)
    for w, p, d in [(8, 2, 0), (15, 2, 1), (5, 3, 2)]:
        want = scipy.signal.savgol_filter(x, w, p, deriv=d, delta=0.1)
        np.testing.assert_allclose(comfort.savgol_matrix(55, w, p, d) @ x, want, atol=1e-3)


@pytest.fixture(scope="module")
def hc():
    return jax.jit(jax.vmap(comfort.history_comfort, in_axes=(0, None)))


def test_harsh_brake_fails_history_comfort(hc):
    scene = sc.as_jnp(sc.road_scene(10.0))
    r = hc(np.stack([sc.constant_accel_states(10.0, -6.0), sc.constant_accel_states(10.0)]), scene)
    np.testing.assert_array_equal(np.asarray(r), [0.0, 1.0])


def test_history_length_quirk_14_or_15_states(hc):
    # A history 1.5 s + 4 us long gives 15 padded history states instead of 14; both pass for
    # steady driving, and the switch must not fail a smooth trajectory.
    scene = sc.road_scene(10.0)
    scene.ego_history_time[0] = -1.500004
    r = hc(np.stack([sc.constant_accel_states(10.0)] * 2), sc.as_jnp(scene))
    assert float(r[0]) == 1.0


def test_inconsistent_plan_fails_extended_comfort():
    ec = jax.jit(comfort.extended_comfort)
    straight = sc.constant_accel_states(10.0)
    turning = straight.copy()
    turning[:, 2] = 0.3 * sc.T                    # 0.3 rad/s yaw rate in the previous plan
    assert float(ec(straight, straight)) == 1.0
    assert float(ec(straight, turning)) == 0.0


def _scatter_quads(scene, rng):
    """Small random quads of every type over the road, as extra map polygons."""
    for i in range(4, sc.SIZES.max_polygons):
        c = rng.uniform([-5, -4], [30, 6])
        ring = c + rng.uniform(-3, 3, (4, 2))
        scene.map_polygons[i] = np.concatenate(
            [ring, np.repeat(ring[:1], sc.SIZES.max_polygon_vertices - 4, 0)])
        scene.map_polygon_type[i] = rng.integers(0, len(types.MAP_POLYGON_TYPES))
        scene.map_polygon_on_route[i] = rng.random() < 0.5
        scene.map_polygon_valid[i] = True
    return scene


def test_culled_ego_areas_equal_testing_every_polygon():
    """The per-point polygon pre-selection (bounding boxes containing the point, ``capacity``
    slots) gives the exhaustive flags everywhere: poses that overflow it are flagged and redone
    against every polygon (the exact fallback)."""
    rng = np.random.default_rng(3)
    scene = sc.as_jnp(_scatter_quads(sc.road_scene(), rng))
    poses = np.stack([rng.uniform(-2, 28, 400), rng.uniform(-3, 5, 400),
                      rng.uniform(-np.pi, np.pi, 400)], -1).astype(np.float32)
    points = ego_area.ego_points(poses)
    areas = jax.jit(ego_area.ego_areas, static_argnums=2)
    full = areas(points, scene, None)
    assert not np.asarray(full["area_overflow"]).any()
    # The default: the corners' slots and the fewer of the centre and rear axle.
    for capacity in (1, 2, ego_area.AREA_CAPACITY):
        culled = areas(points, scene, capacity)
        overflow = np.asarray(culled["area_overflow"]).mean()
        assert {1: overflow == 1, 2: 0 < overflow < 1}.get(capacity, overflow < 1), overflow
        for name in ("multiple_lanes", "non_drivable", "oncoming", "centre_in_intersection",
                     "rear_in_intersection"):
            np.testing.assert_array_equal(np.asarray(culled[name]), np.asarray(full[name]),
                                          err_msg=f"{name}, capacity {capacity}")
    for name in ("multiple_lanes", "non_drivable", "oncoming"):
        assert 0 < np.asarray(full[name]).mean() < 1, name       # the scene exercises each flag


def test_preselection_overflow_falls_back_to_exact():
    """Capacities far below the scene's relevant agents / polygons / red lights (1 slot each)
    give the sub-metrics of testing everything, also vmapped over scenes where only one
    overflows (the fallback loop runs for the batch and must keep the other scene's values)."""
    crowded = _scatter_quads(sc.road_scene(8.0), np.random.default_rng(4))
    for row, (x, y, vx) in enumerate([(12.0, 0.0, 1.0), (18.0, 0.3, 2.0), (25.0, 3.5, 0.0),
                                      (-12.0, 0.0, 9.0)]):   # a queue ahead, one behind
        sc.add_agent(crowded, row, x=x, y=y, vx=vx)
    # Red lights: one across the ego lane that the fast trajectory runs, and a diamond whose
    # bounding box the trajectory at y 2.5 reaches in its last steps without touching it.
    sc.add_red_light(crowded, 0, 40.0, 44.0)
    sc.add_red_light(crowded, 1, 0.0, 1.0)
    diamond = np.array([[29.0, 3.0], [31.5, 5.5], [29.0, 8.0], [26.5, 5.5]], np.float32)
    crowded.red_light_polygons[1] = np.concatenate(
        [diamond, np.repeat(diamond[:1], sc.SIZES.max_polygon_vertices - 4, 0)])
    plain = sc.road_scene(8.0)
    states = np.stack([sc.constant_accel_states(v) for v in (2.0, 5.0, 8.0, 11.0)] +
                      [sc.constant_accel_states(6.0, y=y) for y in (2.5, -1.5)]).astype(
                          np.float32)
    scenes = [crowded, plain]
    obs = jax.tree.map(lambda *x: jnp.stack(x), *[sc.simple_observation(s) for s in scenes])
    batch = jax.tree.map(lambda *x: jnp.stack(x), *[sc.as_jnp(s) for s in scenes])
    states = np.stack([states, states])

    def run(capacity):
        f = jax.vmap(lambda st, o, s: metrics.score_states(st, o, s, capacity, capacity,
                                                           capacity))
        return jax.tree.map(np.asarray, jax.jit(f)(states, obs, batch))

    full, one = run(None), run(1)
    for name in ("agent_overflow", "area_overflow", "red_light_overflow"):
        assert not full[name].any() and one[name][0].any(), name
    assert not one["agent_overflow"][1].any() and not one["red_light_overflow"][1].any()
    np.testing.assert_array_equal(full["tlc"][0], [1, 1, 1, 0, 1, 1])
    for name, want in full.items():
        if not name.endswith("overflow"):
            np.testing.assert_array_equal(one[name], want, err_msg=name)
    # The crowded scene has collisions, TTC failures and lane / drivable-area events.
    assert (full["nc"][0] < 1).any() and (full["ttc"][0] < 1).any()
    assert full["multiple_lanes"][0].any() and full["non_drivable"][0].any()
