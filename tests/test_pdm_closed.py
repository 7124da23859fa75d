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
    """Agent with constant velocity over the stored frames (or only in ``frames``)."""
    n = types.NUM_AGENT_STEPS
    t = np.arange(n) * 0.5
    d["agent_states"][row] = np.stack([x + vx * t, y + vy * t, np.full(n, heading),
                                       np.full(n, vx), np.full(n, vy)], -1)
    d["agent_valid"][row] = True if frames is None else np.isin(np.arange(n), frames)
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


def _devkit_corridor(path_xy, start, end):
    """The devkit's driving corridor in shapely: the path's vertices with arc length in
    [start, end] (``PDMPath.substring``), buffered by the ego half width with square caps
    (round joins, shapely's default)."""
    from shapely.geometry import LineString
    progress = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path_xy, axis=0),
                                                               axis=1))])
    keep = (progress >= start) & (progress <= end)
    return LineString(path_xy[keep]).buffer(geometry.EGO_HALF_WIDTH, cap_style="square")


def _junction_path(rng, lanes=6):
    """A centreline of short lanes, NAVSIM style: each lane starts on the previous lane's last
    vertex (duplicated) with its own heading. [R,3] float64 (x, y, unwrapped heading)."""
    pts, x, y, h = [], 0.0, 0.0, 0.0
    for _ in range(lanes):
        n, step, k = int(rng.integers(3, 9)), rng.uniform(0.8, 2.5), rng.normal(0, 0.05)
        for i in range(n):
            pts.append((x, y, h))
            if i < n - 1:
                x, y, h = x + step * np.cos(h), y + step * np.sin(h), h + k * step
        h += rng.normal(0, 0.15)
    out = np.array(pts)
    out[:, 2] = np.unwrap(out[:, 2])
    return out


def test_corridor_is_the_devkits_buffer_round_joins_included():
    """Corridor membership equals shapely's buffer of the vertex substring, the round joins
    included. Offsetting a lane junction's duplicated vertex along the two lanes' headings
    leaves a short segment, backwards on one side: where the substring ends on it, the square
    cap points backwards and only the join's disc covers the half width past the end."""
    from shapely.geometry import Polygon
    rng = np.random.default_rng(0)
    num, missed_by_rectangles = 0, 0
    for trial in range(12):
        line = _junction_path(rng)
        offset = (-1.0, 1.0, 0.0)[trial % 3]
        padded = np.zeros((64, 3), np.float32)
        padded[:len(line)] = line
        valid = np.arange(64) < len(line)
        path = np.asarray(geometry.polyline_offset(jnp.asarray(padded), offset), np.float64)
        xy = path[:len(line), :2]
        progress = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy, axis=0), axis=1))])
        start = rng.uniform(0.0, 10.0)
        # End right after a junction's short segment (or anywhere for the centreline).
        short = [i for i in range(len(xy) - 2) if 0 < progress[i + 1] - progress[i] < 0.3
                 and progress[i] > start + 3]
        end = progress[short[0] + 1] + 0.01 if short else progress[-1] - 1.0
        want_poly = _devkit_corridor(xy, start, end)
        corridor = pc._corridor(jnp.asarray(path, jnp.float32), jnp.asarray(valid), start, end)
        end_xy = xy[progress <= end][-1]
        centre = np.concatenate([end_xy + rng.normal(0, 1.5, (150, 2)),
                                 rng.uniform(xy.min(0) - 3, xy.max(0) + 3, (150, 2))])
        size = rng.choice([0.4, 1.8, 4.5], 300)
        boxes = np.asarray(geometry.box_corners(jnp.asarray(centre, jnp.float32),
                                                rng.uniform(-3, 3, 300), size, np.minimum(size, 1.9)))
        got = np.asarray(pc._in_corridor(jax.tree.map(lambda x: x[None], corridor),
                                         jnp.asarray(boxes[None]), jnp.ones((1, 300), bool)))[0, 0]
        polys = [Polygon(b) for b in boxes.astype(np.float64)]
        want = np.array([want_poly.intersects(p) for p in polys])
        clear = np.array([want_poly.distance(p) > 1e-3 or want_poly.intersection(p).area > 1e-3
                          for p in polys])                                   # not grazing
        np.testing.assert_array_equal(got[clear], want[clear], err_msg=f"trial {trial}")
        rects = np.asarray(corridor[0])[np.asarray(corridor[1])].astype(np.float64)
        by_rects = np.array([any(Polygon(r).intersects(p) for r in rects) for p in polys])
        missed_by_rectangles += int((want & ~by_rects & clear).sum())
        num += int(clear.sum())
    assert num > 3000 and missed_by_rectangles > 10    # the joins matter in these paths


def test_corridor_culling_is_exact(monkeypatch):
    """Corridor membership tests each object against the pieces (rectangles and join discs) of
    the few chunks whose bounding box overlaps it; objects overlapping more chunks than slots
    take the exhaustive test. With one slot (rows overlapping two or more chunks overflow, the
    others do not) it equals testing every piece."""
    d = straight_road()
    path = jnp.asarray(d["centerline"])
    path = path.at[:, 1].set(0.02 * (path[:, 0] - 20.0) ** 2 / 10.0)    # a bend
    path = path.at[:, 2].set(jnp.arctan(0.004 * (path[:, 0] - 20.0)))
    path = geometry.polyline_offset(path, 1.0)
    valid = jnp.asarray(d["centerline_valid"])
    corridor = pc._corridor(path, valid, 5.0, 90.0)
    rects, mask, discs, disc_mask = corridor
    rng = np.random.default_rng(2)
    xy = np.stack([rng.uniform(-5, 100, 400), rng.uniform(-5, 40, 400)], -1)
    boxes = geometry.box_corners(jnp.asarray(xy, jnp.float32), rng.uniform(-3, 3, 400),
                                 rng.uniform(0.5, 12, 400), rng.uniform(0.5, 3, 400))
    boxes = boxes.reshape(4, 100, 4, 2)
    present = jnp.asarray(rng.random((4, 100)) < 0.9)
    monkeypatch.setattr(pc, "CORRIDOR_CHUNK_CAPACITY", 1)

    @jax.jit
    def both(corridor, boxes, present):
        want = (geometry.convex_intersect(boxes[:, :, None], rects[None, None]) & mask).any(-1)
        want = want | pc._near_discs(boxes, discs, disc_mask)
        return (pc._in_corridor(jax.tree.map(lambda x: x[None], corridor), boxes, present),
                (want & present)[:, None])

    got, want = both(corridor, boxes, present)
    assert 20 < np.asarray(want).sum() < 380
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def cone_past_junction(cone=True, junction_x=49.0, turn=-0.05):
    """The straight road, its centreline two lanes: lane A along +x up to ``junction_x``, lane
    B from there (its first vertex a duplicate of A's last) turning by ``turn`` rad, and a
    static traffic cone at the right edge of the ego lane just past the junction.

    At 10 m/s with a 10 m/s limit the corridor reaches 50 m past the ego: it ends just after
    the junction. On the right path (-1 m) the junction's two offset vertices are 5 cm apart,
    the second behind the first, so that path's corridor reaches past the junction only by the
    join's disc, which touches the cone; the centre and left corridors do not reach it."""
    d = straight_road(speed=10.0, speed_limit=10.0)
    n_a = 24
    lane_a = np.linspace(-10.0, junction_x, n_a)
    b = 2.5 * np.arange(SIZES.max_centerline - n_a)
    line = np.concatenate([
        np.stack([lane_a, 0 * lane_a, 0 * lane_a], -1),
        np.stack([junction_x + b * np.cos(turn), b * np.sin(turn), np.full_like(b, turn)], -1)])
    d["centerline"][:] = line
    if cone:
        add_agent(d, 0, x=junction_x + 0.5, y=-1.6, size=(0.4, 0.4, 0.7),
                  cls=types.AGENT_CLASSES.index("traffic_cone"))
    return d


def test_roadside_cone_past_a_lane_junction_leads_the_right_path(planner):
    """The devkit's corridor (shapely buffer, round joins) holds the cone for the right path
    only, so the right path's five proposals follow the IDM with the cone as their lead (a
    static object: lead speed 0; the rear length never written: 0), and the centre and left
    proposals are those of the road without the cone."""
    from shapely.geometry import Polygon
    with_cone, without = cone_past_junction(), cone_past_junction(cone=False)
    cone = Polygon(np.asarray(geometry.box_corners(jnp.array([49.5, -1.6]), 0.0, 0.4, 0.4),
                              np.float64))
    for offset, reaches in ((0.0, False), (-1.0, True), (1.0, False)):
        path = np.asarray(geometry.polyline_offset(jnp.asarray(with_cone["centerline"]),
                                                   offset), np.float64)
        assert _devkit_corridor(path[:, :2], 10.0, 60.0).intersects(cone) == reaches, offset

    out = planner(with_cone, without)
    got, free = (jax.tree.map(lambda x: x[i], out) for i in range(2))
    np.testing.assert_array_equal(got["proposal_poses"][:5], free["proposal_poses"][:5])
    np.testing.assert_array_equal(got["proposal_poses"][10:], free["proposal_poses"][10:])

    # The right path by hand: y = -1, arc length s = x + 10; the lead row of step 1 is zeros,
    # even steps measure the gap from the ego box at the previous pose, odd steps copy it.
    for k, fraction in enumerate(pc.SPEED_LIMIT_FRACTIONS):
        s, v, lead, xs = 10.0, 10.0, np.zeros(3), [0.0]
        for t in range(1, pc.PROPOSAL_STEPS + 1):
            if t % 2 == 0:
                ego = Polygon(np.asarray(geometry.ego_corners(jnp.array([s - 10.0, -1.0, 0.0])),
                                         np.float64))
                lead = np.array([s + ego.distance(cone), 0.0, 0.0])
            s_star = pc.MIN_GAP + v * pc.HEADWAY + v * (v - lead[1]) / (2 * np.sqrt(4.5))
            gap = max(lead[0] - s - lead[2], pc.MIN_GAP)
            acc = np.clip(1.5 * (1 - (v / (10.0 * fraction)) ** 10 - (s_star / gap) ** 2), -3, 1.5)
            s, v = s + 0.1 * v, v + 0.1 * acc
            xs.append(s - 10.0)
        np.testing.assert_allclose(got["proposal_poses"][5 + k, :, 0], xs, atol=2e-3)
        np.testing.assert_allclose(got["proposal_poses"][5 + k, :, 1], -1.0, atol=1e-5)
    # It matters: the fastest right-path proposal ends some metres short of the free one.
    assert free["proposal_poses"][9, -1, 0] - got["proposal_poses"][9, -1, 0] > 2.0


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


def test_red_light_preselection_is_exact(monkeypatch):
    """The red lights against the corridor (chunks whose bounds overlap the light's) and in the
    lead rows (the lights red and ahead with the nearest bounding boxes): with one slot each,
    an L-shaped light whose bounds reach a corridor chunk it does not touch (it crosses the
    road in the next one) and its box nearer than a second light ahead overflow, and only the
    fallbacks give the result of testing everything (the default slots hold both)."""
    red = straight_road(speed=8.0, speed_limit=10.0)
    add_red_light(red, 0, 0.0, 1.0)
    red["red_light_polygons"][0] = np.array(
        [[12, 5], [24, 5], [36, 5], [36, -1.75], [32, -1.75], [32, 3], [24, 3], [12, 3]],
        np.float32)          # beside the road from x 12 (corridor chunk x 10..30), across at 32
    add_red_light(red, 1, 20.0, 24.0)
    green = straight_road(speed=8.0, speed_limit=10.0)
    add_red_light(green, 0, 20.0, 24.0, red=False)
    batch = _batch(red, green)

    def run():   # traced afresh: the capacities are read when tracing
        return jax.tree.map(np.asarray, jax.jit(lambda s: jax.vmap(pc.pdm_closed_details)(s))(
            batch))

    want = run()
    assert want["poses"][0, :, 0].max() + 4.049 < 20.0 < want["poses"][1, :, 0].max()
    monkeypatch.setattr(pc, "CORRIDOR_LIGHT_CHUNK_CAPACITY", 1)
    monkeypatch.setattr(pc, "RED_LIGHT_LEAD_CAPACITY", 1)
    got = run()
    for name in ("poses", "states", "proposal_poses", "proposal_scores", "best"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def _random_rings(rng, num, vertices, max_real):
    """num star-shaped rings of 3..max_real vertices around centres in a 40 m square, padded to
    ``vertices`` with vertex 0 -> (rings [num,V,2] float32, real counts [num])."""
    rings = np.zeros((num, vertices, 2), np.float32)
    counts = rng.integers(3, max_real + 1, num)
    for i, n in enumerate(counts):
        angle = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(0.5, 4.0, n)
        ring = rng.uniform(-20, 20, 2) + radius[:, None] * np.stack([np.cos(angle),
                                                                     np.sin(angle)], -1)
        rings[i, :n], rings[i, n:] = ring, ring[0]
    return rings, counts


def test_short_rings_cut_only_padding():
    rng = np.random.default_rng(0)
    rings, counts = _random_rings(rng, 64, 24, 12)
    short, long = pc.preselect.short_rings(jnp.asarray(rings), 8)
    assert short.shape == (64, 8, 2)
    np.testing.assert_array_equal(np.asarray(long), counts > 8)
    assert 0 < (counts > 8).sum() < 64
    # Where not long, every predicate reads the same: distances and containment.
    box = (jnp.zeros((64, 2)) + 1.0, jnp.full((64,), 0.3))
    full_d = geometry.box_polygon_distance(*box, 2.5, 1.0, rings,
                                           geometry.edge_table(jnp.asarray(rings)))
    short_d = geometry.box_polygon_distance(*box, 2.5, 1.0, short, geometry.edge_table(short))
    np.testing.assert_array_equal(np.asarray(short_d)[counts <= 8],
                                  np.asarray(full_d)[counts <= 8])
    same, none = pc.preselect.short_rings(jnp.asarray(rings), 24)
    assert same.shape == rings.shape and not np.asarray(none).any()


@pytest.mark.parametrize("lead_capacity,vertex_capacity", [(1, 24), (1, 4), (2, 8), (8, 24)])
def test_red_light_lead_distances_are_the_least_over_every_light(monkeypatch, lead_capacity,
                                                                 vertex_capacity):
    """The least measured distance of each row is the least distance to every light ahead,
    measured in full, with few slots (nearest bounding boxes first: rows whose next bound is
    nearer than the nearest measured light) and rings longer than the vertex cap (measured in
    full by the fallback)."""
    monkeypatch.setattr(pc, "RED_LIGHT_LEAD_CAPACITY", lead_capacity)
    monkeypatch.setattr(pc, "RED_LIGHT_VERTEX_CAPACITY", vertex_capacity)
    rng = np.random.default_rng(1)
    polys, counts = _random_rings(rng, 8, 24, 20)
    polys, edges = jnp.asarray(polys), geometry.edge_table(jnp.asarray(polys))
    ego_c = jnp.asarray(rng.uniform(-25, 25, (3, 40, 2)), jnp.float32)
    heading = jnp.asarray(rng.uniform(-np.pi, np.pi, (3, 40)), jnp.float32)
    ahead = rng.random((3, 40, 8)) < 0.6
    ahead[:, 0] = False                                      # no light ahead: +inf
    ahead = jnp.asarray(ahead)
    got = jax.jit(lambda c, h, a: pc._red_light_distances(c, h, a, pc._red_light_tables(
        polys, edges)))(ego_c, heading, ahead)
    assert got.shape == (3, 40, min(lead_capacity, 8))
    every = geometry.box_polygon_distance(ego_c[..., None, :], heading[..., None],
                                          geometry.EGO_HALF_LENGTH, geometry.EGO_HALF_WIDTH,
                                          polys, edges)                     # [3,40,8]
    want = np.where(np.asarray(ahead), np.asarray(every), np.inf).min(-1)
    np.testing.assert_array_equal(np.asarray(got).min(-1), want)
    assert np.isinf(want[:, 0]).all() and np.isfinite(want[:, 1:]).all()
    if vertex_capacity < 20:
        assert (counts > vertex_capacity).any()
    # The nearest bounding box is not always the nearest light: the bound alone would be wrong.
    lo, hi = polys.min(-2), polys.max(-2)
    bound = geometry.box_distance(ego_c[..., None, :], jnp.stack(
        [jnp.cos(heading), jnp.sin(heading)], -1)[..., None, :], jnp.array(
        [geometry.EGO_HALF_LENGTH, geometry.EGO_HALF_WIDTH]), 0.5 * (lo + hi),
        jnp.array([1.0, 0.0]), 0.5 * (hi - lo))
    by_bound = np.where(np.asarray(ahead), np.asarray(bound), np.inf).argmin(-1)
    assert (np.take_along_axis(np.asarray(every), by_bound[..., None], -1)[..., 0] >
            want)[:, 1:].any()
