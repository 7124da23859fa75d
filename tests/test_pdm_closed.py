"""PDM-Closed (irlvla_jax.sim.pdm_closed): IDM formula, free road, stopped lead, red light."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from irlvla_jax import geometry, types
from irlvla_jax.sim import pdm_closed as pc

SIZES = types.SceneSizes(num_future=8, cameras=("CAM_F0",), image_hw=(4, 4), lidar_bev_hw=(4, 4),
                         bev_hw=(4, 4), max_agents=4, max_polygons=4, max_polygon_vertices=8,
                         max_centerline=72, max_red_lights=2, max_lanes=2, lane_points=2)


def _ring(x0, x1, y0, y1, v=SIZES.max_polygon_vertices):
    ring = np.array([[x1, y1], [x0, y1], [x0, y0], [x1, y0]], np.float32)
    return np.concatenate([ring, np.repeat(ring[:1], v - 4, 0)])


def straight_road(speed=5.0, speed_limit=10.0):
    """A straight 3-lane road along +x (centre lane y in [-1.75, 1.75]), ego on the centreline."""
    s = types.zeros_scene(SIZES)
    d = s.to_dict()
    d["ego_velocity"] = np.array([speed, 0.0], np.float32)
    d["ego_history_velocity"][:] = d["ego_velocity"]
    d["speed_limit"] = np.float32(speed_limit)
    polys = [(types.ROADBLOCK, (-20, 200, -5.25, 5.25))] + [
        (types.LANE, (-20, 200, y, y + 3.5)) for y in (-1.75, -5.25, 1.75)]
    for i, (t, box) in enumerate(polys):
        d["map_polygons"][i] = _ring(*box)
        d["map_vertex_valid"][i, :4] = True
        d["map_polygon_type"][i] = t
        d["map_polygon_valid"][i] = True
        d["map_polygon_on_route"][i] = t == types.LANE
    xs = np.arange(SIZES.max_centerline, dtype=np.float32) * 2.5 - 10.0
    d["centerline"][:, 0] = xs
    d["centerline_valid"][:] = True
    return d


def add_agent(d, row, x, y, heading=0.0, vx=0.0, vy=0.0, size=(4.5, 2.0, 1.6),
              cls=types.VEHICLE, frames=None):
    """Agent with constant velocity over the 9 frames (or only in ``frames``)."""
    t = np.arange(types.NUM_AGENT_STEPS) * 0.5
    d["agent_states"][row] = np.stack([x + vx * t, y + vy * t, np.full(9, heading),
                                       np.full(9, vx), np.full(9, vy)], -1)
    d["agent_valid"][row] = True if frames is None else np.isin(np.arange(9), frames)
    d["agent_size"][row] = size
    d["agent_class"][row] = cls


def add_red_light(d, row, x0, x1, red=True, on_route=True, on_corrected=True):
    d["red_light_polygons"][row] = _ring(x0, x1, -1.75, 1.75)
    d["red_light_vertex_valid"][row, :4] = True
    d["red_light_is_red"][row] = red
    d["red_light_on_route"][row] = on_route
    d["red_light_on_corrected_route"][row] = on_corrected
    d["red_light_valid"][row] = True


def scene_of(d):
    return types.Scene.from_dict({k: jnp.asarray(v) for k, v in d.items()})


def _batch(*dicts):
    return jax.tree.map(lambda *x: jnp.stack(x), *[scene_of(d) for d in dicts])


@pytest.fixture(scope="module")
def planner():
    """One compiled program for every test: PDM-Closed vmapped over a batch of 2 scenes."""
    f = jax.jit(jax.vmap(pc.pdm_closed_details))
    return lambda *dicts: jax.tree.map(np.asarray, f(_batch(*dicts)))


@pytest.fixture(scope="module")
def free_and_lead(planner):
    free = straight_road(speed=5.0, speed_limit=10.0)
    lead = straight_road(speed=8.0, speed_limit=10.0)
    add_agent(lead, 0, x=32.0, y=0.0)                 # rear bumper at x = 29.75
    out = planner(free, lead)
    return [jax.tree.map(lambda x: x[i], out) for i in range(2)]


def test_idm_step_matches_formula():
    # Hand-checked: v=8, v0=10, lead 20 m ahead at 4 m/s with l_r 2: s* = 1 + 12 + 8*4/(2*sqrt(4.5))
    s_star = 1 + 8 * 1.5 + 8 * 4 / (2 * np.sqrt(4.5))
    acc = np.clip(1.5 * (1 - 0.8 ** 10 - (s_star / (20 - 2)) ** 2), -3, 1.5)
    s, v = pc.idm_step(jnp.float32(5.0), jnp.float32(8.0), jnp.array([25.0, 4.0, 2.0]),
                       jnp.float32(10.0))
    np.testing.assert_allclose([s, v], [5.0 + 0.8, 8.0 + 0.1 * acc], rtol=1e-6)
    # Free road far below v0: full acceleration; gap below the minimum clamps to s0 = 1 m.
    _, v = pc.idm_step(0.0, 0.0, jnp.array([1e4, 0.0, 0.0]), 10.0)
    np.testing.assert_allclose(v, 0.15, rtol=1e-6)
    _, v = pc.idm_step(3.0, 5.0, jnp.zeros(3), 10.0)     # the zero lead row of step 1
    np.testing.assert_allclose(v, 5.0 - 0.3, rtol=1e-6)


def test_corridor_culling_is_exact(monkeypatch):
    """Corridor membership tests each object against the rectangles of the few chunks whose
    bounding box overlaps it; objects overlapping more chunks than slots take the exhaustive
    test. With one slot (rows overlapping two or more chunks overflow, the others do not) it
    equals testing every rectangle."""
    d = straight_road()
    path = jnp.asarray(d["centerline"])
    path = path.at[:, 1].set(0.02 * (path[:, 0] - 20.0) ** 2 / 10.0)    # a bend
    valid = jnp.asarray(d["centerline_valid"])
    rects, mask = pc._corridor(path, valid, 5.0, 90.0)
    rng = np.random.default_rng(2)
    xy = np.stack([rng.uniform(-5, 100, 400), rng.uniform(-5, 40, 400)], -1)
    boxes = geometry.box_corners(jnp.asarray(xy, jnp.float32), rng.uniform(-3, 3, 400),
                                 rng.uniform(0.5, 12, 400), rng.uniform(0.5, 3, 400))
    boxes = boxes.reshape(4, 100, 4, 2)
    present = jnp.asarray(rng.random((4, 100)) < 0.9)
    monkeypatch.setattr(pc, "CORRIDOR_CHUNK_CAPACITY", 1)

    @jax.jit
    def both(rects, mask, boxes, present):
        want = (geometry.convex_intersect(boxes[:, :, None], rects[None, None]) & mask).any(-1)
        return pc._in_corridor(rects[None], mask[None], boxes, present), (want & present)[:, None]

    got, want = both(rects, mask, boxes, present)
    assert 20 < np.asarray(want).sum() < 380
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_free_road_accelerates_towards_speed_limit(free_and_lead):
    out = free_and_lead[0]
    best = int(out["best"])
    assert best == 4, "centreline at 1.0 x the limit makes the most progress"
    v = out["proposal_velocity"][best]
    assert v[1] == pytest.approx(4.7, abs=1e-4)       # quirk: step 1 brakes at -3 m/s^2
    assert np.all(np.diff(v[1:]) > 0) and 9.0 < v[-1] <= 10.0
    # Offset proposals start on their path, 1 m to the side of the ego.
    np.testing.assert_allclose(out["proposal_poses"][5:10, 0, 1], -1.0, atol=1e-5)
    np.testing.assert_allclose(out["proposal_poses"][10:, 0, 1], 1.0, atol=1e-5)
    poses = out["poses"]
    assert poses.shape == (51, 3) and np.all(np.diff(poses[:, 0]) > 0)
    np.testing.assert_allclose(poses[:, 1:], 0.0, atol=1e-4)
    # The simulated reference follows the IDM poses closely and is scored clean.
    assert np.abs(out["states"][:, 0] - poses[:41, 0]).max() < 0.6
    for m in ("nc", "dac", "ddc", "tlc", "ttc", "lk"):
        assert out["raw"][m][best] == 1.0, m


def test_stops_behind_stopped_vehicle(free_and_lead):
    out = free_and_lead[1]
    best = int(out["best"])
    front = out["poses"][:, 0] + geometry.EGO_REAR_AXLE_TO_CENTER + geometry.EGO_HALF_LENGTH
    assert front.max() < 29.75 - pc.MIN_GAP, "the IDM keeps at least the minimum gap"
    speed = np.diff(out["poses"][:, 0]) / 0.1
    assert np.all(np.diff(speed[1:]) < 0) and speed[-1] < 1.5    # braking smoothly to a halt
    assert out["raw"]["nc"][best] == 1.0 and out["raw"]["ttc"][best] == 1.0
    sim_front = out["states"][:, 0] + geometry.EGO_REAR_AXLE_TO_CENTER + geometry.EGO_HALF_LENGTH
    assert sim_front.max() < 29.75
    # Faster proposals would close in more, yet with the same lead all five stay behind it.
    assert out["proposal_poses"][:5, :, 0].max() + 4.049 < 29.75


def test_stops_at_red_light_not_at_green(planner):
    red = straight_road(speed=8.0, speed_limit=10.0)
    add_red_light(red, 0, 30.0, 40.0)
    off_route = straight_road(speed=8.0, speed_limit=10.0)
    add_red_light(off_route, 0, 30.0, 40.0, on_corrected=False)   # not PDM-Closed's route
    outs = planner(red, off_route)
    out = jax.tree.map(lambda x: x[0], outs)
    best = int(out["best"])
    front = out["poses"][:, 0] + geometry.EGO_REAR_AXLE_TO_CENTER + geometry.EGO_HALF_LENGTH
    assert front.max() < 30.0 and np.diff(out["poses"][-2:, 0])[0] / 0.1 < 1.5
    assert out["raw"]["tlc"][best] == 1.0
    assert outs["poses"][1, :, 0].max() > 40.0
    # Both scenes came through one vmapped program; shapes per scene.
    assert outs["poses"].shape == (2, 51, 3) and outs["states"].shape == (2, 41, 11)
    assert np.isfinite(outs["states"]).all()
