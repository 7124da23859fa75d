"""nuPlan gpkg reader + the PDM route pipeline (route.py) on a tiny hand-built map."""

import math

import numpy as np
import pytest
import shapely

import navsim_fixtures as nf
from irlvla_jax import types
from irlvla_jax.data import maps, route
from irlvla_jax.data.errors import BadInputError


@pytest.fixture(scope="module")
def map_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("maps")
    nf.write_map(root)
    return root


@pytest.fixture(scope="module")
def m(map_root):
    return maps.MapAPI.load(map_root, "las_vegas")


def test_load_alias_cache_reprojection(m, map_root):
    assert maps.MapAPI.load(map_root, "us-nv-las-vegas-strip.gpkg") is m
    assert m.crs == nf.CRS
    # stored as EPSG:4326, read back in UTM metres
    base = m.lanes["12"].discrete_path
    np.testing.assert_allclose(base[0, :2], nf.to_global(0, -1.75), atol=1e-3)
    np.testing.assert_allclose(base[:, 2], nf.ROAD_H, atol=1e-6)
    assert all(isinstance(i, str) for i in m.ids(maps.LANE))


def test_relations(m):
    assert m.roadblocks["1"].interior == ["11", "12"]
    assert m.roadblocks["1"].incoming == ["6"] and m.roadblocks["1"].outgoing == ["3"]
    assert m.roadblock_connectors["3"].incoming == ["1"]
    assert m.roadblock_connectors["3"].outgoing == ["2"]
    assert m.lanes["12"].outgoing == ["32"] and m.lanes["22"].incoming == ["32"]
    c = m.lane_connectors["32"]
    assert c.incoming == ["12"] and c.outgoing == ["22"] and c.roadblock_id == "3"
    assert [x.id for x in m.lane_successors(m.lanes["12"])] == ["32"]
    assert [x.id for x in m.lane_successors(c)] == ["22"]
    assert m.lanes["12"].speed_limit == pytest.approx(13.4) and m.lanes["22"].speed_limit is None
    assert m.lanes["11"].lane_index == 0 and m.lanes["12"].lane_index == 1
    assert m.polygon("32", maps.LANE_CONNECTOR).area == pytest.approx(20 * 3.5, rel=1e-3)
    assert m.polygon("999", maps.ROADBLOCK) is None


def test_proximal_is_axis_aligned_square_in_file_order(m):
    rng = np.random.default_rng(0)
    square_only = 0
    for _ in range(300):
        xy = nf.EGO_XY + rng.uniform(-150, 150, 2)
        r = float(rng.uniform(1, 30))
        got = m.proximal_objects(xy, r, [maps.ROADBLOCK])[maps.ROADBLOCK]
        box = shapely.box(xy[0] - r, xy[1] - r, xy[0] + r, xy[1] + r)
        want = [i for i in m.ids(maps.ROADBLOCK)
                if m.geometry(i, maps.ROADBLOCK).intersects(box)]
        assert got == want
        square_only += any(m.geometry(i, maps.ROADBLOCK).distance(shapely.Point(xy)) > r
                           for i in got)
    assert square_only > 0   # the corners of the square matter (not a circle)


def test_nearest_object(m):
    fid, d = m.nearest_object(nf.EGO_XY, maps.ROADBLOCK_CONNECTOR)
    assert fid == "3" and d == pytest.approx(40.0, abs=1e-3)


def test_missing_map_is_clear(map_root):
    with pytest.raises(BadInputError, match="sg-one-north"):
        maps.MapAPI.load(map_root, "sg-one-north")


@pytest.mark.parametrize("raw, pose_s, want", [
    (["1", "3", "2"], 60, ["1", "3", "2"]),              # on route: unchanged
    (["3", "2"], 60, ["1", "3", "2"]),                   # fix 1, backward BFS
    (["3", "2"], -60, ["5", "6", "1", "3", "2"]),        # fix 1, deeper backward BFS
    (["9", "3", "2"], 60, ["1", "3", "2"]),              # fix 1, forward BFS fallback
    (["1", "2"], 60, ["1", "3", "2"]),                   # fix 2, gap filled
    (["1", "1", "3", "2"], 60, ["1", "3", "2"]),         # duplicates removed
])
def test_route_correction(m, raw, pose_s, want):
    pose = (*nf.to_global(pose_s, -1.75), nf.ROAD_H)
    assert route.correct_route(m, pose, raw) == want


def test_unknown_route_id_is_bad_input(m):
    with pytest.raises(BadInputError, match="'777'"):
        route.correct_route(m, nf.ego_pose(3), ["777"])


def test_plan_route_centerline_and_drivable_map(m):
    plan = route.plan_route(m, nf.ego_pose(3), ["3", "2"])
    assert plan.corrected_ids == ["1", "3", "2"]
    assert plan.route_lane_ids == ["11", "12", "31", "32", "21", "22"]
    assert plan.uncorrected_lane_ids == ["31", "32", "21", "22"]
    assert plan.start_lane.id == "12"
    assert [ln.id for ln in plan.lane_path] == ["12", "32", "22"] and plan.path_found
    c = plan.centerline
    assert len(c) == 11 + 3 + 11   # junction vertices kept twice
    # every vertex on the right lane's centre line, driving along the road
    rel = c[:, :2] - nf.ORIGIN
    lat = rel @ np.array([-math.sin(nf.ROAD_H), math.cos(nf.ROAD_H)])
    np.testing.assert_allclose(lat, -1.75, atol=1e-3)
    np.testing.assert_allclose(c[:, 2], nf.ROAD_H, atol=1e-6)
    # PDM order: roadblocks, lanes per roadblock, connectors per roadblock connector, ...
    dm = plan.dmap
    assert dm.tokens == ["1", "2", "5", "9", "11", "12", "21", "22", "51", "52", "91", "92",
                         "31", "32", "61", "62", "4"]
    assert dm.types == [types.ROADBLOCK] * 4 + [types.LANE] * 8 + [types.LANE_CONNECTOR] * 4 \
        + [types.INTERSECTION]


def test_starting_lane_prefers_heading(m):
    # on the left lane (l = +1.75) heading along the road -> lane 11
    pose = (*nf.to_global(50, 1.75), nf.ROAD_H)
    plan = route.plan_route(m, pose, ["1", "3", "2"])
    assert plan.start_lane.id == "11"
    assert [ln.id for ln in plan.lane_path] == ["11", "31", "21"]
