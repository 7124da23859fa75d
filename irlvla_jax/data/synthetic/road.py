"""The road network of a synthetic location: lanes, lane connectors, junctions and map layers.

The network is a grid of nodes joined by gently curved two-way roads. Every node is a nuPlan
*intersection*: 3- and 4-arm nodes are signalised junctions with crosswalks and stop lines, 2-arm
corner nodes are unsignalised bends. Each directed road is a lane group (a NAVSIM *roadblock*)
with 1-2 lanes; lane index 0 is the leftmost lane (next to the oncoming traffic). Lane connectors
join the lanes of an approach to the lanes of every other arm (left turns from the leftmost lane,
right turns from the rightmost, straight lane to lane), grouped per (from, to) roadblock pair into
lane-group connectors (NAVSIM *roadblock connectors*).

All coordinates are in the location's projected (UTM) frame, metres, around a realistic offset.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import numpy as np
import shapely
from shapely.geometry import LineString, Polygon

from irlvla_jax.data.synthetic.polyline import (band_polygon, hermite_curve, offset_polyline,
                                                polyline_arrays)

# ----------------------------------------------------------------------------------------------
# Locations: (UTM EPSG, origin easting/northing of the synthetic grid, nuPlan map version).

MAP_LOCATIONS = {
    "sg-one-north": ("EPSG:32648", (365_000.0, 143_000.0), "9.17.1964"),
    "us-ma-boston": ("EPSG:32619", (330_000.0, 4_690_000.0), "9.12.1817"),
    "us-nv-las-vegas-strip": ("EPSG:32611", (664_000.0, 3_997_000.0), "9.15.1915"),
    "us-pa-pittsburgh-hazelwood": ("EPSG:32617", (587_000.0, 4_477_000.0), "9.17.1937"),
}
#: Grid shape (nodes x, nodes y) and node spacing (m) per location: Las Vegas is the big one.
_GRID = {
    "us-nv-las-vegas-strip": (4, 3, 130.0),
    "us-ma-boston": (3, 3, 115.0),
    "us-pa-pittsburgh-hazelwood": (3, 3, 125.0),
    "sg-one-north": (3, 3, 110.0),
}

LANE_WIDTH = 3.5
CROSSWALK_WIDTH = 4.0
STOP_LINE_SETBACK = 5.5      # the stop line's far edge, from the junction box edge (m)
WALKWAY = (2.8, 5.8)         # lateral band of the sidewalk beyond the road edge (m)
CARPARK = (0.2, 2.6)         # lateral band of the roadside parking strip beyond the road edge
SIDEWALK_WAIT = 3.2          # pedestrians wait this far beyond the road edge
SPEED_LIMITS = {1: 11.18, 2: 15.65}    # m/s by lanes per direction (25 / 35 mph)
#: Lateral acceleration (m/s^2) that caps the speed in curves.
CURVE_LAT_ACCEL = 2.5


# ----------------------------------------------------------------------------------------------
# Map objects. ids are globally unique integers (they become gpkg fids).

@dataclasses.dataclass(eq=False)
class Element:
    """A lane or a lane connector: the things vehicles drive along.

    xy [N,2] baseline vertices (driving direction); s [N] arclength; heading [N]; slow [K,2]
    [(arclength, squared curve speed m^2/s^2)] where a_lat = CURVE_LAT_ACCEL caps the speed
    (< 20 m/s).
    """
    fid: int
    kind: str                      # "lane" | "connector"
    group: int                     # lane_group fid / lane_group_connector fid
    xy: np.ndarray
    speed_limit: float
    width: float = LANE_WIDTH
    # lanes
    index: int = 0                 # lane_index (0 = leftmost)
    left_boundary: int = -1
    right_boundary: int = -1
    outgoing: list = dataclasses.field(default_factory=list)     # connector fids
    stop_line: int = -1            # stop polygon fid at this lane's end (signalised approach)
    # connectors
    exit_lane: int = -1            # the lane it comes from
    entry_lane: int = -1           # the lane it goes into
    node: int = -1                 # intersection fid
    arm: int = -1                  # approach arm index at a signalised node (-1: no signal)
    turn: str = ""                 # "left" | "straight" | "right"
    polygon: Optional[Polygon] = None

    def __post_init__(self):
        self.s, self.heading, kappa = polyline_arrays(self.xy)
        self.length = float(self.s[-1])
        vc = np.sqrt(CURVE_LAT_ACCEL / np.maximum(kappa, 1e-9))
        # The slowest vertex per 6 m chunk is enough for braking ahead of curves, and a short
        # Python list is far cheaper per query than numpy on a tiny array.
        self.slow = []
        for c in np.unique((self.s // 6.0).astype(int)):
            idx = np.flatnonzero((self.s // 6.0).astype(int) == c)
            j = idx[np.argmin(vc[idx])]
            if vc[j] < 20.0:
                self.slow.append((float(self.s[j]), float(vc[j]) ** 2))

    def pose_at(self, s: float) -> tuple[float, float, float]:
        """(x, y, heading) at arclength s (clipped), heading from the containing segment."""
        s = min(max(s, 0.0), self.length)
        i = int(np.clip(np.searchsorted(self.s, s, side="right") - 1, 0, len(self.s) - 2))
        ds = self.s[i + 1] - self.s[i]
        t = (s - self.s[i]) / ds if ds > 0 else 0.0
        x, y = self.xy[i] + t * (self.xy[i + 1] - self.xy[i])
        return float(x), float(y), float(self.heading[i])


@dataclasses.dataclass(eq=False)
class LaneGroup:
    fid: int
    lanes: list                     # lane fids, left to right
    polygon: Polygon
    from_node: int
    to_node: int
    left_boundary: int
    right_boundary: int
    road: int                       # road segment fid


@dataclasses.dataclass(eq=False)
class GroupConnector:
    fid: int
    from_group: int
    to_group: int
    node: int
    connectors: list
    polygon: Polygon


@dataclasses.dataclass(eq=False)
class Node:
    """A junction: ``arms`` [(unit direction out of the node [2], incoming group, outgoing
    group)], ``box`` the intersection polygon, ``half`` its half size."""
    fid: int
    centre: np.ndarray
    half: float
    box: Polygon
    arms: list
    signalised: bool
    crosswalks: list = dataclasses.field(default_factory=list)   # (arm, Polygon, end_a, end_b)


@dataclasses.dataclass(eq=False)
class RoadMap:
    """One location's road network (UTM metres) plus the static map layers' other objects."""
    location: str
    epsg: str
    version: str
    elements: dict              # fid -> Element (lanes and connectors)
    groups: dict                # fid -> LaneGroup
    group_connectors: dict      # fid -> GroupConnector
    nodes: dict                 # fid -> Node
    boundaries: dict            # fid -> (LineString, boundary_type_fid)
    stop_polygons: dict         # fid -> (Polygon, lane fid)
    road_segments: dict         # fid -> (Polygon, [group fids])
    walkways: dict              # fid -> Polygon
    carparks: dict              # fid -> (Polygon, heading, road-side frame for parking)
    generic_areas: dict         # fid -> Polygon
    traffic_light_points: dict  # fid -> (x, y, yaw, lane fid)
    roadside: list              # (xy [N,2] line beyond a road edge, heading [N]) for props

    def lanes(self):
        return [e for e in self.elements.values() if e.kind == "lane"]

    def connectors(self):
        return [e for e in self.elements.values() if e.kind == "connector"]


# ----------------------------------------------------------------------------------------------
# Building a location's network. The steps below fill one RoadMap in a fixed order: every id
# and every random draw comes in the same sequence for a given (location, seed).

def build_map(location: str, seed: int) -> RoadMap:
    """The road network of ``location`` (one of ``MAP_LOCATIONS``), deterministic from seed."""
    if location not in MAP_LOCATIONS:
        raise ValueError(f"unknown map location {location!r}; known: {sorted(MAP_LOCATIONS)}")
    epsg, origin, version = MAP_LOCATIONS[location]
    nx, ny, spacing = _GRID[location]
    index = sorted(MAP_LOCATIONS).index(location)
    rng = np.random.default_rng([seed, index, 7])
    # One fid space for every layer: ids never collide across layers (they become gpkg fids).
    new_id = iter(range(1000 * (1 + index), 10**9)).__next__
    road = RoadMap(location, epsg, version, elements={}, groups={}, group_connectors={},
                   nodes={}, boundaries={}, stop_polygons={}, road_segments={}, walkways={},
                   carparks={}, generic_areas={}, traffic_light_points={}, roadside=[])

    centres, road_edges = _grid(origin, nx, ny, spacing, rng)
    node_of = _add_nodes(road, centres, road_edges, new_id)
    for a, b, n in road_edges:
        _add_road(road, road.nodes[node_of[a]], road.nodes[node_of[b]], n, spacing, rng, new_id)
    for node in road.nodes.values():
        _merge_arms(node)
    for node in road.nodes.values():
        for ai in range(len(node.arms)):
            if node.signalised:
                _add_stop_lines(road, road.groups[node.arms[ai][1]], new_id)
            for bj in range(len(node.arms)):
                if bj != ai:
                    _add_movement(road, node, ai, bj, new_id)
            if node.signalised:
                _add_crosswalk(road, node, ai)
    return road


def _grid(origin, nx: int, ny: int, spacing: float, rng: np.random.Generator
          ) -> tuple[dict, list]:
    """Node centres {(i, j): [2]} of the nx x ny grid and its roads [((i, j), (k, l), lanes per
    direction)]: lanes are drawn per grid line, so straight movements keep their lane count."""
    lanes_h = rng.choice([1, 2], size=ny, p=[0.4, 0.6])
    lanes_v = rng.choice([1, 2], size=nx, p=[0.4, 0.6])
    centres = {(i, j): np.array(origin) + spacing * np.array([i, j]) for i in range(nx)
               for j in range(ny)}
    road_edges = [((i, j), (i + 1, j), int(lanes_h[j])) for j in range(ny) for i in range(nx - 1)]
    road_edges += [((i, j), (i, j + 1), int(lanes_v[i])) for i in range(nx) for j in range(ny - 1)]
    return centres, road_edges


def _add_nodes(road: RoadMap, centres: dict, road_edges: list, new_id: Callable[[], int]
               ) -> dict:
    """One junction per grid node, its box sized by its widest road (signalised with >= 3
    arms). Returns {grid index: node fid}."""
    arm_count = {k: 0 for k in centres}
    max_lanes = {k: 1 for k in centres}
    for a, b, n in road_edges:
        for k in (a, b):
            arm_count[k] += 1
            max_lanes[k] = max(max_lanes[k], n)
    node_of = {}
    for k, c in centres.items():
        half = max_lanes[k] * LANE_WIDTH + 5.0
        fid = new_id()
        node_of[k] = fid
        road.nodes[fid] = Node(fid, c, half, shapely.box(c[0] - half, c[1] - half, c[0] + half,
                                                          c[1] + half), [], arm_count[k] >= 3)
    return node_of


def _add_road(road: RoadMap, na: Node, nb: Node, n: int, spacing: float,
              rng: np.random.Generator, new_id: Callable[[], int]) -> None:
    """The two-way road from node ``na`` to ``nb`` with ``n`` lanes per direction: its road
    segment, sidewalks and parking, and one lane group per direction (added to the nodes'
    arms)."""
    u = (nb.centre - na.centre) / spacing
    t = np.linspace(na.half, spacing - nb.half, max(12, int((spacing - na.half - nb.half) / 2)))
    amp = rng.uniform(-9.0, 9.0) if rng.random() < 0.6 else 0.0
    bump = amp * np.sin(np.pi * (t - t[0]) / (t[-1] - t[0])) ** 2
    centre = na.centre + t[:, None] * u + bump[:, None] * np.array([-u[1], u[0]])
    hw = n * LANE_WIDTH
    road_fid = new_id()
    road.road_segments[road_fid] = (band_polygon(centre, hw, -hw), [])
    _add_roadside(road, centre, t, hw, rng, new_id)
    for direction in (1, -1):
        src, dst = (na, nb) if direction == 1 else (nb, na)
        path = centre if direction == 1 else centre[::-1]
        gfid = _add_lane_group(road, path, n, src, dst, road_fid, new_id)
        src.arms.append((u * direction, None, gfid))
        dst.arms.append((-u * direction, gfid, None))


def _add_roadside(road: RoadMap, centre: np.ndarray, t: np.ndarray, hw: float,
                  rng: np.random.Generator, new_id: Callable[[], int]) -> None:
    """Beside a road (centreline [N,2] at distances t [N] from the first node, half width hw):
    a sidewalk on each side, maybe a parking strip on one side, and a prop line along each
    edge."""
    for side in (1.0, -1.0):
        walk = band_polygon(centre, side * (hw + WALKWAY[1]), side * (hw + WALKWAY[0]))
        road.walkways[new_id()] = walk if side > 0 else Polygon(walk.exterior.coords[::-1])
    if rng.random() < 0.5:      # a parking strip on one side, mid-block
        m = (t > t[0] + 15) & (t < t[-1] - 15)
        side = rng.choice([1.0, -1.0])
        seg = centre[m] if side < 0 else centre[m][::-1]  # strip on the right of `seg`
        road.carparks[new_id()] = (band_polygon(seg, -(hw + CARPARK[0]), -(hw + CARPARK[1])),
                                   seg, hw)
        # the drive-in apron between road edge and parking strip is generic drivable area
        road.generic_areas[new_id()] = band_polygon(seg, -hw + 0.01, -(hw + CARPARK[0]) - 0.01)
    for side_xy in (centre, centre[::-1]):
        edge = offset_polyline(side_xy, -(hw + 0.6))[3:-3]
        _, hd, _ = polyline_arrays(edge)
        road.roadside.append((edge, hd))


def _add_lane_group(road: RoadMap, path: np.ndarray, n: int, src: Node, dst: Node,
                    road_fid: int, new_id: Callable[[], int]) -> int:
    """The ``n`` lanes right of ``path`` [N,2] (driving direction src -> dst), their boundaries
    and their lane group; returns the group's fid."""
    hw = n * LANE_WIDTH
    gfid = new_id()
    bnd = []
    for k in range(n + 1):
        bf = new_id()
        btype = 0 if 0 < k < n else 2
        road.boundaries[bf] = (LineString(offset_polyline(path, -k * LANE_WIDTH)), btype)
        bnd.append(bf)
    lane_ids = []
    limit = SPEED_LIMITS[n]
    for k in range(n):
        lf = new_id()
        xy = offset_polyline(path, -(k + 0.5) * LANE_WIDTH)
        lane = Element(lf, "lane", gfid, xy, limit, index=k, left_boundary=bnd[k],
                       right_boundary=bnd[k + 1])
        lane.polygon = band_polygon(xy, LANE_WIDTH / 2, -LANE_WIDTH / 2)
        road.elements[lf] = lane
        lane_ids.append(lf)
    road.groups[gfid] = LaneGroup(gfid, lane_ids, band_polygon(path, 0.0, -hw), src.fid,
                                  dst.fid, bnd[0], bnd[-1], road_fid)
    road.road_segments[road_fid][1].append(gfid)
    return gfid


def _merge_arms(node: Node) -> None:
    """Merge the node's arm entries (one per road and direction) into (direction, incoming,
    outgoing), sorted by direction."""
    merged = {}
    for d, gin, gout in node.arms:
        key = (round(d[0]), round(d[1]))
        e = merged.setdefault(key, [d, None, None])
        e[1] = gin if gin is not None else e[1]
        e[2] = gout if gout is not None else e[2]
    node.arms = [tuple(v) for _, v in sorted(merged.items())]


def _add_stop_lines(road: RoadMap, inc: LaneGroup, new_id: Callable[[], int]) -> None:
    """A stop line across each lane of a signalised approach, before the crosswalk, and the
    traffic light that governs it."""
    for lf in inc.lanes:
        lane = road.elements[lf]
        seg = lane.xy[-1] - lane.xy[-2]
        seg = seg / np.linalg.norm(seg)
        end = lane.xy[-1]
        a0 = end - seg * (CROSSWALK_WIDTH + 0.5)
        a1 = end - seg * STOP_LINE_SETBACK
        nrm = np.array([-seg[1], seg[0]]) * LANE_WIDTH / 2
        sf = new_id()
        road.stop_polygons[sf] = (Polygon([a1 + nrm, a1 - nrm, a0 - nrm, a0 + nrm]), lf)
        lane.stop_line = sf
        p = a1 - nrm * 1.2
        road.traffic_light_points[new_id()] = (p[0], p[1], float(math.atan2(seg[1], seg[0])),
                                               lf)


def _lane_pairs(signalised: bool, turn: str, nin: int, nout: int) -> list[tuple[int, int]]:
    """(incoming lane index, outgoing lane index) of a movement: at a signalised junction left
    turns go from the leftmost lane and right turns from the rightmost; else lane to lane."""
    if not signalised:
        return [(k, min(k, nout - 1)) for k in range(nin)]
    if turn == "left":
        return [(0, 0)]
    if turn == "right":
        return [(nin - 1, nout - 1)]
    return [(k, min(k, nout - 1)) for k in range(nin)]


def _add_movement(road: RoadMap, node: Node, ai: int, bj: int, new_id: Callable[[], int]
                  ) -> None:
    """The lane connectors from arm ``ai`` into arm ``bj`` of ``node`` and their lane-group
    connector."""
    din, gin, _ = node.arms[ai]
    dout, _, gout = node.arms[bj]
    inc, out = road.groups[gin], road.groups[gout]
    hin = math.atan2(-din[1], -din[0])
    hout = math.atan2(dout[1], dout[0])
    ang = math.remainder(hout - hin, 2 * math.pi)
    turn = "straight" if abs(ang) < 0.5 else ("left" if ang > 0 else "right")
    gcf = new_id()
    conns = []
    for ki, ko in _lane_pairs(node.signalised, turn, len(inc.lanes), len(out.lanes)):
        lin, lout = road.elements[inc.lanes[ki]], road.elements[out.lanes[ko]]
        xy = hermite_curve(lin.xy[-1], lin.heading[-1], lout.xy[0], lout.heading[0])
        cf = new_id()
        c = Element(cf, "connector", gcf, xy, lout.speed_limit, exit_lane=lin.fid,
                    entry_lane=lout.fid, node=node.fid, arm=ai if node.signalised else -1,
                    turn=turn)
        c.polygon = LineString(xy).buffer(LANE_WIDTH / 2, cap_style="flat")
        road.elements[cf] = c
        lin.outgoing.append(cf)
        conns.append(cf)
    poly = shapely.union_all([road.elements[c].polygon for c in conns])
    if poly.geom_type != "Polygon":
        poly = poly.convex_hull
    road.group_connectors[gcf] = GroupConnector(gcf, gin, gout, node.fid, conns, poly)


def _add_crosswalk(road: RoadMap, node: Node, ai: int) -> None:
    """The crosswalk across arm ``ai`` of a signalised node, just outside the box, with the
    points where pedestrians wait at its ends."""
    d, gin, gout = node.arms[ai]
    nrm = np.array([-d[1], d[0]])
    hw = max(len(road.groups[gin].lanes), len(road.groups[gout].lanes)) * LANE_WIDTH
    c0 = node.centre + d * node.half
    c1 = node.centre + d * (node.half + CROSSWALK_WIDTH)
    w = hw + WALKWAY[0] + 0.5
    poly = Polygon([c0 + nrm * w, c0 - nrm * w, c1 - nrm * w, c1 + nrm * w])
    mid = node.centre + d * (node.half + CROSSWALK_WIDTH / 2)
    ends = (mid + nrm * (hw + SIDEWALK_WAIT), mid - nrm * (hw + SIDEWALK_WAIT))
    node.crosswalks.append((ai, poly, *ends))
