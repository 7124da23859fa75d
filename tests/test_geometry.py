"""irlvla_jax.geometry against shapely on random shapes (the scorer's ground truth)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import shapely
from shapely.geometry import LineString, Point, Polygon

from irlvla_jax import geometry as g

RNG = np.random.default_rng(0)


def star_polygon(rng, n, pad_to, centre=(0.0, 0.0), r=(1.0, 4.0)):
    """A random simple (star-shaped) polygon with n vertices, padded by repeating vertex 0."""
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = rng.uniform(*r, n)
    pts = np.stack([centre[0] + rad * np.cos(ang), centre[1] + rad * np.sin(ang)], -1)
    padded = np.concatenate([pts, np.repeat(pts[:1], pad_to - n, 0)], 0)
    return pts.astype(np.float32), padded.astype(np.float32)


def rand_boxes(rng, n, spread=4.0):
    xy = rng.uniform(-spread, spread, (n, 2))
    h = rng.uniform(-np.pi, np.pi, n)
    lw = rng.uniform(0.5, 5.0, (n, 2))
    return xy.astype(np.float32), h.astype(np.float32), lw.astype(np.float32)


def test_se2_roundtrip_and_wrap():
    loc = jnp.asarray(RNG.uniform(-10, 10, (20, 3)), jnp.float32)
    org = jnp.asarray(RNG.uniform(-10, 10, (20, 3)), jnp.float32)
    back = g.to_local(g.to_global(loc, org), org)
    np.testing.assert_allclose(back[:, :2], loc[:, :2], atol=1e-4)
    np.testing.assert_allclose(np.cos(back[:, 2] - loc[:, 2]), 1.0, atol=1e-5)
    w = g.wrap_angle(jnp.array([np.pi, -np.pi, 3 * np.pi, 0.5]))
    assert np.all((w >= -np.pi) & (w < np.pi))
    # A point 1 m ahead of a pose facing +y lands 1 m up.
    np.testing.assert_allclose(g.to_global(jnp.array([1.0, 0, 0]), jnp.array([2.0, 3, np.pi / 2])),
                               [2.0, 4.0, np.pi / 2], atol=1e-6)


def test_ego_corners_pacifica():
    c = np.asarray(g.ego_corners(jnp.zeros(3)))
    # FL, RL, RR, FR about the centre 1.461 m ahead of the rear axle.
    np.testing.assert_allclose(c, [[4.049, 1.1485], [-1.127, 1.1485], [-1.127, -1.1485],
                                   [4.049, -1.1485]], atol=1e-5)


def test_convex_intersect_matches_shapely():
    xy, h, lw = rand_boxes(RNG, 400)
    ca = np.asarray(g.box_corners(jnp.asarray(xy[:200]), h[:200], lw[:200, 0], lw[:200, 1]))
    cb = np.asarray(g.box_corners(jnp.asarray(xy[200:]), h[200:], lw[200:, 0], lw[200:, 1]))
    got = np.asarray(g.convex_intersect(jnp.asarray(ca), jnp.asarray(cb)))
    want = np.array([Polygon(a).intersects(Polygon(b)) for a, b in zip(ca, cb)])
    assert 20 < want.sum() < 180
    np.testing.assert_array_equal(got, want)
    # Touching counts, as in shapely.
    sq = jnp.array([[1.0, 1], [0, 1], [0, 0], [1, 0]])
    assert bool(g.convex_intersect(sq, sq + jnp.array([1.0, 0])))
    assert not bool(g.convex_intersect(sq, sq + jnp.array([1.001, 0])))


def test_points_in_polygon_strict():
    pts, padded = star_polygon(RNG, 9, 16)
    q = RNG.uniform(-4, 4, (500, 2)).astype(np.float32)
    got = np.asarray(g.points_in_polygon(jnp.asarray(q), jnp.asarray(padded)))
    want = shapely.contains_xy(Polygon(pts), q[:, 0], q[:, 1])
    np.testing.assert_array_equal(got, want)
    # Boundary points (a vertex, an edge midpoint) are outside, as in shapely.contains.
    on = np.stack([pts[0], 0.5 * (pts[1] + pts[2])])
    assert not np.asarray(g.points_in_polygon(jnp.asarray(on), jnp.asarray(padded))).any()


def test_polygon_predicates_match_shapely():
    inter = jax.jit(jax.vmap(g.polygon_intersects_polygon))
    dist = jax.jit(jax.vmap(g.polygon_distance))
    seg = jax.jit(jax.vmap(g.segment_intersects_polygon))
    A, B, ra, rb = [], [], [], []
    for _ in range(150):
        pa, qa = star_polygon(RNG, RNG.integers(3, 12), 12, RNG.uniform(-5, 5, 2))
        pb, qb = star_polygon(RNG, RNG.integers(3, 12), 12, RNG.uniform(-5, 5, 2), r=(0.3, 2.0))
        A.append(qa), B.append(qb), ra.append(Polygon(pa)), rb.append(Polygon(pb))
    A, B = jnp.asarray(np.stack(A)), jnp.asarray(np.stack(B))
    want_i = np.array([a.intersects(b) for a, b in zip(ra, rb)])
    assert 10 < want_i.sum() < 140
    np.testing.assert_array_equal(np.asarray(inter(A, B)), want_i)
    want_d = np.array([a.distance(b) for a, b in zip(ra, rb)])
    np.testing.assert_allclose(np.asarray(dist(A, B)), want_d, atol=1e-4)
    # Polygon b fully inside a (no edge crossing) still intersects.
    big = jnp.asarray(star_polygon(RNG, 6, 8, r=(10, 11))[1])
    small = jnp.asarray(star_polygon(RNG, 5, 8, r=(0.5, 1))[1])
    assert bool(g.polygon_intersects_polygon(big, small))
    assert bool(g.polygon_intersects_polygon(small, big))
    p = jnp.asarray(RNG.uniform(-6, 6, (150, 2, 2)), jnp.float32)
    want_s = np.array([LineString(np.asarray(pp)).intersects(b) for pp, b in zip(p, rb)])
    np.testing.assert_array_equal(np.asarray(seg(p[:, 0], p[:, 1], B)), want_s)


def test_box_intersects_polygon_matches_shapely():
    """The oriented-box vs polygon test (TLC) against shapely, boxes crossing, inside,
    containing and missing random star polygons; the polygon's edge table built once."""
    rng = np.random.default_rng(11)
    polys, boxes, want = [], [], []
    for _ in range(400):
        pts, padded = star_polygon(rng, rng.integers(3, 12), 12, rng.uniform(-3, 3, 2),
                                   r=(0.5, 4.0))
        xy, h = rng.uniform(-6, 6, 2), rng.uniform(-np.pi, np.pi)
        hl, hw = (2.588, 1.1485) if rng.random() < 0.8 else (0.3, 0.2)
        corners = np.asarray(g.box_corners(jnp.asarray(xy), h, 2 * hl, 2 * hw))
        polys.append(padded), boxes.append((xy, h, hl, hw))
        want.append(Polygon(corners).intersects(Polygon(pts)))
    edges = g.edge_table(jnp.asarray(np.stack(polys)))
    xy, h, hl, hw = (jnp.asarray(np.stack(x), jnp.float32) for x in zip(*boxes))
    got = np.asarray(jax.jit(jax.vmap(g.box_intersects_polygon))(xy, h, hl, hw, edges))
    assert 50 < sum(want) < 350
    np.testing.assert_array_equal(got, want)


def test_box_distances_match_shapely():
    """Rectangle-rectangle and rectangle-polygon distances (PDM-Closed's lead gap) against
    shapely, on intersecting and disjoint pairs."""
    rng = np.random.default_rng(12)
    n = 300
    xy, h, lw = rand_boxes(rng, n, spread=6.0)
    exy, eh, elw = rand_boxes(rng, n, spread=6.0)
    axis = lambda a: jnp.stack([jnp.cos(a), jnp.sin(a)], -1)
    got = np.asarray(g.box_distance(jnp.asarray(exy), axis(jnp.asarray(eh)), jnp.asarray(elw / 2),
                                    jnp.asarray(xy), axis(jnp.asarray(h)), jnp.asarray(lw / 2)))
    a = np.asarray(g.box_corners(jnp.asarray(exy), eh, elw[:, 0], elw[:, 1]))
    b = np.asarray(g.box_corners(jnp.asarray(xy), h, lw[:, 0], lw[:, 1]))
    want = np.array([Polygon(p).distance(Polygon(q)) for p, q in zip(a, b)])
    assert (want == 0).sum() > 20 and (want > 0).sum() > 100
    np.testing.assert_allclose(got, want, atol=1e-4)
    polys = [star_polygon(rng, rng.integers(3, 12), 12, rng.uniform(-4, 4, 2))
             for _ in range(n)]
    padded = jnp.asarray(np.stack([p[1] for p in polys]))
    got = np.asarray(jax.vmap(lambda c, hh, p, e: g.box_polygon_distance(c, hh, 2.588, 1.1485,
                                                                          p, e))(
        jnp.asarray(exy), jnp.asarray(eh), padded, g.edge_table(padded)))
    ego = np.asarray(g.box_corners(jnp.asarray(exy), eh, 2 * 2.588, 2 * 1.1485))
    want = np.array([Polygon(e).distance(Polygon(p[0])) for e, p in zip(ego, polys)])
    assert (want == 0).sum() > 20 and (want > 0).sum() > 100
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_rectangle_predicates_match_shapely():
    """The scorer's NC/TTC fast path tests agent boxes as rectangles (centre, axis, half sizes
    recovered from the corners by box_frame): box-box and bumper-segment intersection must
    agree with shapely on the same corners, touching pairs included."""
    rng = np.random.default_rng(21)
    n = 400
    xy, h, lw = rand_boxes(rng, n, spread=6.0)
    exy, eh, elw = rand_boxes(rng, n, spread=6.0)
    a = g.box_corners(jnp.asarray(exy), eh, elw[:, 0], elw[:, 1])
    b = g.box_corners(jnp.asarray(xy), h, lw[:, 0], lw[:, 1])
    ac, aa, ah = g.box_frame(a)
    bc, ba, bh = g.box_frame(b)
    np.testing.assert_allclose(np.asarray(ah) * 2, elw, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ac), exy, atol=1e-5)
    got = np.asarray(g.boxes_intersect(ac, aa, ah, bc, ba, bh))
    want = np.array([Polygon(p).intersects(Polygon(q)) for p, q in zip(np.asarray(a),
                                                                         np.asarray(b))])
    assert 50 < want.sum() < n - 50
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, np.asarray(g.convex_intersect(a, b)))
    # Touching squares count as intersecting, a hair apart do not (shapely's intersects).
    sq = g.box_frame(jnp.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]]))
    assert bool(g.boxes_intersect(*sq, sq[0] + jnp.array([2.0, 0.0]), *sq[1:]))
    assert not bool(g.boxes_intersect(*sq, sq[0] + jnp.array([2.001, 0.0]), *sq[1:]))
    # The front bumper (corner FL -> FR of the first box) against the second box.
    got = np.asarray(g.segment_intersects_box(a[:, 0], a[:, 3], bc, ba, bh))
    want = np.array([LineString([p[0], p[3]]).intersects(Polygon(q))
                     for p, q in zip(np.asarray(a), np.asarray(b))])
    assert 20 < want.sum() < n - 50
    np.testing.assert_array_equal(got, want)
    # A degenerate (zero-length) box keeps a unit axis and stays finite.
    c0, a0, h0 = g.box_frame(jnp.zeros((4, 2)))
    assert np.isfinite(np.asarray(a0)).all() and float(jnp.linalg.norm(a0)) == 1.0


def _random_polyline(rng, n, pad_to):
    steps = rng.uniform(0.5, 3.0, (n - 1, 1)) * np.stack(
        [np.cos(np.cumsum(rng.normal(0, 0.4, n - 1))), np.sin(np.cumsum(rng.normal(0, 0.4, n - 1)))], -1)
    xy = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, 0)], 0)
    xy[5] = xy[4]                                     # a duplicated junction vertex, as in NAVSIM
    head = np.unwrap(np.arctan2(*np.diff(np.concatenate([xy, xy[-1:] + steps[-1:]]), axis=0).T[::-1]))
    line = np.zeros((pad_to, 3), np.float32)
    line[:n, :2], line[:n, 2] = xy, head
    valid = np.arange(pad_to) < n
    return line, valid


def test_polyline_project_and_interpolate():
    line, valid = _random_polyline(RNG, 30, 40)
    ls = LineString(line[valid, :2])
    q = RNG.uniform(-5, 40, (300, 2)).astype(np.float32)
    s, d = g.polyline_project(jnp.asarray(q), jnp.asarray(line), jnp.asarray(valid))
    np.testing.assert_allclose(np.asarray(d), [ls.distance(Point(p)) for p in q], atol=2e-4)
    d_only = g.polyline_distance(jnp.asarray(q), jnp.asarray(line), jnp.asarray(valid))
    np.testing.assert_allclose(np.asarray(d_only), np.asarray(d), atol=1e-5)
    # Arc lengths agree wherever the closest point is unique (compare the located points).
    got_pts = np.array([ls.interpolate(x).coords[0] for x in np.asarray(s)])
    want_pts = np.array([ls.interpolate(ls.project(Point(p))).coords[0] for p in q])
    close = np.linalg.norm(got_pts - want_pts, axis=-1) < 1e-3
    assert close.mean() > 0.97

    s_q = np.array([-1.0, 0.0, 3.3, 17.0, ls.length, ls.length + 5], np.float32)
    out = np.asarray(g.polyline_interpolate(jnp.asarray(line), jnp.asarray(valid), jnp.asarray(s_q)))
    sc = np.clip(s_q, 1e-5, ls.length)
    np.testing.assert_allclose(out[:, :2], [ls.interpolate(x).coords[0] for x in sc], atol=1e-3)
    assert np.all((out[:, 2] >= -np.pi) & (out[:, 2] <= np.pi))
    off = np.asarray(g.polyline_offset(jnp.asarray(line), 1.0))
    np.testing.assert_allclose(np.linalg.norm(off[:, :2] - line[:, :2], axis=-1), 1.0, atol=1e-5)
    # Left of a +x heading is +y.
    np.testing.assert_allclose(g.polyline_offset(jnp.array([[0.0, 0, 0]]), 1.0), [[0, 1, 0]],
                               atol=1e-6)


if __name__ == "__main__":
    pytest.main([__file__, "-q"])


def test_box_distance_does_not_depend_on_vertex_padding():
    """PDM-Closed measures boxes with their 4 vertices; padding a ring by repeating vertex 0
    (the Scene convention) must not change shapely-style distances."""
    rng = np.random.default_rng(7)
    n = 64
    ego = g.ego_corners(jnp.asarray(rng.normal(0, 3, (n, 3)), jnp.float32))
    box = g.box_corners(jnp.asarray(rng.normal(0, 6, (n, 2)), jnp.float32),
                        jnp.asarray(rng.uniform(-3, 3, n), jnp.float32),
                        jnp.full(n, 4.5), jnp.full(n, 2.0))
    padded = jnp.concatenate([box, jnp.repeat(box[:, :1], 8, axis=1)], 1)
    dist = jax.jit(jax.vmap(g.polygon_distance))
    d4, d12 = np.asarray(dist(ego, box)), np.asarray(dist(ego, padded))
    np.testing.assert_array_equal(d4, d12)
    assert (d4 == 0).any() and (d4 > 0).any()
    for e, b, d in zip(np.asarray(ego)[:8], np.asarray(box)[:8], d4[:8]):
        assert abs(Polygon(e).distance(Polygon(b)) - d) < 1e-4
