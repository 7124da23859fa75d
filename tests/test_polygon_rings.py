"""Map polygons as exact padded rings: holes and parts by bridges, overflow refused."""

import numpy as np
import pytest
from shapely.geometry import MultiPolygon, Point, Polygon

from irlvla_jax import geometry
from irlvla_jax.data.errors import BadInputError
from irlvla_jax.data.polygon_rings import pad_rings, polygon_ring


def _contains(ring, pts, V=None):
    """The scorer's strict containment of points [N,2] in a ring padded to V vertices."""
    poly, _, _ = pad_rings([ring], 1, V or len(ring), "polygon", "test")
    return np.asarray(geometry.points_in_polygon(pts.astype(np.float32), poly[0]))


def test_a_simple_polygon_is_its_exterior_as_stored():
    circle = Point(3, -2).buffer(10, quad_segs=26)                  # 104 vertices
    ring = polygon_ring(circle)
    np.testing.assert_array_equal(ring, np.asarray(circle.exterior.coords)[:-1])


@pytest.mark.parametrize("geom", [
    Polygon([(0, 0), (40, 0), (40, 30), (0, 30)],
            [[(5, 5), (15, 5), (15, 15), (5, 15)], [(25, 10), (35, 12), (30, 25)]]),
    MultiPolygon([Polygon([(0, 0), (10, 0), (10, 10), (0, 10)]),
                  Polygon([(20, 0), (30, 0), (30, 10), (20, 10)],
                          [[(22, 2), (28, 2), (28, 8), (22, 8)]])]),
], ids=["holes", "parts"])
def test_holes_and_parts_contain_what_shapely_contains(geom):
    ring = polygon_ring(geom)
    outline = sum(len(r.coords) - 1 for g in getattr(geom, "geoms", [geom])
                  for r in [g.exterior, *g.interiors])
    assert len(ring) == outline + 2 * (len(getattr(geom, "geoms", [geom])) - 1 + sum(
        len(g.interiors) for g in getattr(geom, "geoms", [geom])))
    pts = np.random.default_rng(0).uniform(-5, 45, (4000, 2))
    want = np.array([geom.contains(Point(p)) for p in pts])
    np.testing.assert_array_equal(_contains(ring, pts, V=len(ring) + 5), want)


def test_more_polygons_or_vertices_than_the_sizes_hold_are_refused():
    ring = polygon_ring(Point(0, 0).buffer(5, quad_segs=25))        # 100 vertices
    with pytest.raises(BadInputError, match="100 vertices.*holds 64") as e:
        pad_rings([ring], 4, 64, "polygon", "scene x")
    assert e.value.reason == "map_too_large" and "max_polygon_vertices" in str(e.value)
    with pytest.raises(BadInputError, match="5 polygons.*holds 4"):
        pad_rings([ring[:4]] * 5, 4, 128, "polygon", "scene x")


def test_a_red_light_connector_must_be_simple():
    """TLC and PDM-Closed intersect red-light connectors and measure distances to them, where a
    bridge would count: holes or parts are refused there (the drivable map keeps them)."""
    holed = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(2, 2), (4, 2), (4, 4)]])
    assert len(polygon_ring(holed)) == 4 + 3 + 2
    with pytest.raises(BadInputError, match="red-light connector has holes") as e:
        polygon_ring(holed, "log x connector 7", simple_only="red-light connector")
    assert e.value.reason == "bad_map" and "connector 7" in str(e.value)
    square = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)])
    assert len(polygon_ring(square, "x", simple_only="red-light connector")) == 4
