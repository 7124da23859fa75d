"""A deterministic synthetic driving world: a road network, its traffic, and an expert ego.

The road network is a grid of nodes joined by gently curved two-way roads. Every node is a nuPlan
*intersection*: 3- and 4-arm nodes are signalised junctions with crosswalks and stop lines, 2-arm
corner nodes are unsignalised bends. Each directed road is a lane group (a NAVSIM *roadblock*)
with 1-2 lanes; lane index 0 is the leftmost lane (next to the oncoming traffic). Lane connectors
join the lanes of an approach to the lanes of every other arm (left turns from the leftmost lane,
right turns from the rightmost, straight lane to lane), grouped per (from, to) roadblock pair into
lane-group connectors (NAVSIM *roadblock connectors*).

Traffic is simulated at 10 Hz: vehicles and bicycles follow lane paths with IDM car following,
obey the signals, change lanes when their route needs it (or to pass a slow leader), and slow
down for curves; where two lanes merge into one they go in turn. Signals are actuated: opposite
approaches share a phase (straight + right together, then their protected lefts; phases whose
paths could touch are split), phases nobody waits for are skipped, and a pedestrian phase runs on
request every few cycles; every clearance interval lasts until the junction box is empty, which
is what makes the traffic collision-free by construction. Pedestrians cross at crosswalks
during the pedestrian phase; parked cars (in roadside car parks) and cones/barriers stand still.
The expert ego is a vehicle with careful parameters (long headway, gentle acceleration, bounded
jerk) that follows a random route.

All coordinates are in the location's projected (UTM) frame, metres, around a realistic offset.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np
import shapely
from shapely.geometry import LineString, Polygon

# ----------------------------------------------------------------------------------------------
# Locations: (UTM EPSG, origin easting/northing of the synthetic grid, nuPlan map version).

MAP_LOCATIONS = {
    "sg-one-north": ("EPSG:32648", (365_000.0, 143_000.0), "9.17.1964"),
    "us-ma-boston": ("EPSG:32619", (330_000.0, 4_690_000.0), "9.12.1817"),
    "us-nv-las-vegas-strip": ("EPSG:32611", (664_000.0, 3_997_000.0), "9.15.1915"),
    "us-pa-pittsburgh-hazelwood": ("EPSG:32617", (587_000.0, 4_477_000.0), "9.17.1937"),
}
#: The ``map_location`` a log stores (nuPlan names Las Vegas logs "las_vegas"; NAVSIM maps it).
LOG_MAP_NAME = {"us-nv-las-vegas-strip": "las_vegas"}
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

# Signal timing (s): a phase's minimum / maximum green, yellow, minimum all-red;
# pedestrian walk.
GREEN_MIN_S, GREEN_MAX_S, YELLOW_S, ALL_RED_S, WALK_S = 5.0, 12.0, 2.5, 1.0, 5.0
#: Vehicles whose front is within this distance of the stop line call their phase (detector).
DETECTOR_M = 45.0
#: The pedestrian phase runs at most every PED_EVERY-th cycle (a push button's wait).
PED_EVERY = 3
GREEN, YELLOW, RED = 0, 1, 2

DT = 0.1                      # simulation step (s)
STEPS_PER_FRAME = 5           # 10 Hz -> 2 Hz log


# ----------------------------------------------------------------------------------------------
# Map objects. ids are globally unique integers (they become gpkg fids).

def _polyline_arrays(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xy [N,2] -> (cumulative arclength [N], heading [N] per nuPlan's rule, curvature [N])."""
    seg = np.diff(xy, axis=0)
    ds = np.hypot(seg[:, 0], seg[:, 1])
    s = np.concatenate([[0.0], np.cumsum(ds)])
    h = np.arctan2(seg[:, 1], seg[:, 0])
    heading = np.concatenate([h, h[-1:]])
    dh = np.abs(np.angle(np.exp(1j * np.diff(h)))) if len(h) > 1 else np.zeros(0)
    kappa = np.zeros(len(xy))
    if len(dh):
        kappa[1:-1] = dh / np.maximum(0.5 * (ds[:-1] + ds[1:]), 1e-6)
    return s, heading, kappa


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
        self.s, self.heading, kappa = _polyline_arrays(self.xy)
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


def _offset(xy: np.ndarray, off: float) -> np.ndarray:
    """Offset polyline xy [N,2] by ``off`` metres to its left (negative: right)."""
    t = np.gradient(xy, axis=0)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return xy + off * np.stack([-t[:, 1], t[:, 0]], 1)


def _band(xy: np.ndarray, left: float, right: float) -> Polygon:
    """Polygon between the offsets ``left`` and ``right`` (left > right) of a polyline."""
    return Polygon(np.concatenate([_offset(xy, left), _offset(xy, right)[::-1]]))


def _hermite(p0, h0, p1, h1, n: int = 16) -> np.ndarray:
    """Cubic Hermite curve [n,2] from p0 heading h0 to p1 heading h1 (a circle-like turn)."""
    p0, p1 = np.asarray(p0), np.asarray(p1)
    chord = float(np.linalg.norm(p1 - p0))
    turn = abs(math.remainder(h1 - h0, 2 * math.pi))
    mag = chord * (1.0 + 0.17 * math.sin(turn))
    m0 = mag * np.array([math.cos(h0), math.sin(h0)])
    m1 = mag * np.array([math.cos(h1), math.sin(h1)])
    t = np.linspace(0, 1, n)[:, None]
    return ((2 * t**3 - 3 * t**2 + 1) * p0 + (t**3 - 2 * t**2 + t) * m0
            + (-2 * t**3 + 3 * t**2) * p1 + (t**3 - t**2) * m1)


def build_map(location: str, seed: int) -> RoadMap:
    """The road network of ``location`` (one of ``MAP_LOCATIONS``), deterministic from seed."""
    if location not in MAP_LOCATIONS:
        raise ValueError(f"unknown map location {location!r}; known: {sorted(MAP_LOCATIONS)}")
    epsg, origin, version = MAP_LOCATIONS[location]
    nx, ny, spacing = _GRID[location]
    rng = np.random.default_rng([seed, sorted(MAP_LOCATIONS).index(location), 7])
    next_id = iter(range(1000 * (1 + sorted(MAP_LOCATIONS).index(location)), 10**9))
    new_id = lambda: next(next_id)  # noqa: E731  (one fid space: ids never collide across layers)

    # Lanes per direction: per grid line, so straight movements keep their lane count.
    lanes_h = rng.choice([1, 2], size=ny, p=[0.4, 0.6])
    lanes_v = rng.choice([1, 2], size=nx, p=[0.4, 0.6])
    centres = {(i, j): np.array(origin) + spacing * np.array([i, j]) for i in range(nx)
               for j in range(ny)}
    road_edges = [((i, j), (i + 1, j), int(lanes_h[j])) for j in range(ny) for i in range(nx - 1)]
    road_edges += [((i, j), (i, j + 1), int(lanes_v[i])) for i in range(nx) for j in range(ny - 1)]

    arm_count = {k: 0 for k in centres}
    max_lanes = {k: 1 for k in centres}
    for a, b, n in road_edges:
        for k in (a, b):
            arm_count[k] += 1
            max_lanes[k] = max(max_lanes[k], n)
    nodes: dict = {}
    node_of = {}
    for k, c in centres.items():
        half = max_lanes[k] * LANE_WIDTH + 5.0
        fid = new_id()
        node_of[k] = fid
        nodes[fid] = Node(fid, c, half, shapely.box(c[0] - half, c[1] - half, c[0] + half,
                                                     c[1] + half), [], arm_count[k] >= 3)

    elements, groups, boundaries, road_segments, walkways = {}, {}, {}, {}, {}
    carparks, generic, roadside, stop_polys, tl_points = {}, {}, [], {}, {}
    for a, b, n in road_edges:
        na, nb = nodes[node_of[a]], nodes[node_of[b]]
        u = (nb.centre - na.centre) / spacing
        t = np.linspace(na.half, spacing - nb.half, max(12, int((spacing - na.half - nb.half) / 2)))
        amp = rng.uniform(-9.0, 9.0) if rng.random() < 0.6 else 0.0
        bump = amp * np.sin(np.pi * (t - t[0]) / (t[-1] - t[0])) ** 2
        centre = na.centre + t[:, None] * u + bump[:, None] * np.array([-u[1], u[0]])
        hw = n * LANE_WIDTH
        road_fid = new_id()
        road_segments[road_fid] = (_band(centre, hw, -hw), [])
        for side in (1.0, -1.0):
            walk = _band(centre, side * (hw + WALKWAY[1]), side * (hw + WALKWAY[0]))
            walkways[new_id()] = walk if side > 0 else Polygon(walk.exterior.coords[::-1])
        if rng.random() < 0.5:      # a parking strip on one side, mid-block
            m = (t > t[0] + 15) & (t < t[-1] - 15)
            side = rng.choice([1.0, -1.0])
            seg = centre[m] if side < 0 else centre[m][::-1]  # strip on the right of `seg`
            carparks[new_id()] = (_band(seg, -(hw + CARPARK[0]), -(hw + CARPARK[1])), seg, hw)
            # the drive-in apron between road edge and parking strip is generic drivable area
            generic[new_id()] = _band(seg, -hw + 0.01, -(hw + CARPARK[0]) - 0.01)
        for side_xy in (centre, centre[::-1]):
            edge = _offset(side_xy, -(hw + 0.6))[3:-3]
            _, hd, _ = _polyline_arrays(edge)
            roadside.append((edge, hd))
        for direction in (1, -1):
            src, dst = (na, nb) if direction == 1 else (nb, na)
            path = centre if direction == 1 else centre[::-1]
            gfid = new_id()
            bnd = []
            for k in range(n + 1):
                bf = new_id()
                btype = 0 if 0 < k < n else 2
                boundaries[bf] = (LineString(_offset(path, -k * LANE_WIDTH)), btype)
                bnd.append(bf)
            lane_ids = []
            limit = SPEED_LIMITS[n]
            for k in range(n):
                lf = new_id()
                xy = _offset(path, -(k + 0.5) * LANE_WIDTH)
                lane = Element(lf, "lane", gfid, xy, limit, index=k, left_boundary=bnd[k],
                               right_boundary=bnd[k + 1])
                lane.polygon = _band(xy, LANE_WIDTH / 2, -LANE_WIDTH / 2)
                elements[lf] = lane
                lane_ids.append(lf)
            groups[gfid] = LaneGroup(gfid, lane_ids, _band(path, 0.0, -hw), src.fid, dst.fid,
                                     bnd[0], bnd[-1], road_fid)
            road_segments[road_fid][1].append(gfid)
            src.arms.append((u * direction, None, gfid))
            dst.arms.append((-u * direction, gfid, None))

    # Merge each node's arm entries (one per road) into (direction, incoming, outgoing).
    for node in nodes.values():
        merged = {}
        for d, gin, gout in node.arms:
            key = (round(d[0]), round(d[1]))
            e = merged.setdefault(key, [d, None, None])
            e[1] = gin if gin is not None else e[1]
            e[2] = gout if gout is not None else e[2]
        node.arms = [tuple(v) for _, v in sorted(merged.items())]

    group_connectors: dict = {}
    for node in nodes.values():
        for ai, (din, gin, _) in enumerate(node.arms):
            inc = groups[gin]
            if node.signalised:
                for lf in inc.lanes:   # stop line across each approach lane, before the crosswalk
                    lane = elements[lf]
                    seg = lane.xy[-1] - lane.xy[-2]
                    seg = seg / np.linalg.norm(seg)
                    end = lane.xy[-1]
                    a0 = end - seg * (CROSSWALK_WIDTH + 0.5)
                    a1 = end - seg * STOP_LINE_SETBACK
                    nrm = np.array([-seg[1], seg[0]]) * LANE_WIDTH / 2
                    sf = new_id()
                    stop_polys[sf] = (Polygon([a1 + nrm, a1 - nrm, a0 - nrm, a0 + nrm]), lf)
                    lane.stop_line = sf
                    p = a1 - nrm * 1.2
                    tl_points[new_id()] = (p[0], p[1], float(math.atan2(seg[1], seg[0])), lf)
            for bj, (dout, _, gout) in enumerate(node.arms):
                if bj == ai:
                    continue
                out = groups[gout]
                hin = math.atan2(-din[1], -din[0])
                hout = math.atan2(dout[1], dout[0])
                ang = math.remainder(hout - hin, 2 * math.pi)
                turn = "straight" if abs(ang) < 0.5 else ("left" if ang > 0 else "right")
                nin, nout = len(inc.lanes), len(out.lanes)
                if not node.signalised:
                    pairs = [(k, min(k, nout - 1)) for k in range(nin)]
                elif turn == "left":
                    pairs = [(0, 0)]
                elif turn == "right":
                    pairs = [(nin - 1, nout - 1)]
                else:
                    pairs = [(k, min(k, nout - 1)) for k in range(nin)]
                gcf = new_id()
                conns = []
                for ki, ko in pairs:
                    lin, lout = elements[inc.lanes[ki]], elements[out.lanes[ko]]
                    xy = _hermite(lin.xy[-1], lin.heading[-1], lout.xy[0], lout.heading[0])
                    cf = new_id()
                    c = Element(cf, "connector", gcf, xy, lout.speed_limit, exit_lane=lin.fid,
                                entry_lane=lout.fid, node=node.fid,
                                arm=ai if node.signalised else -1, turn=turn)
                    c.polygon = LineString(xy).buffer(LANE_WIDTH / 2, cap_style="flat")
                    elements[cf] = c
                    lin.outgoing.append(cf)
                    conns.append(cf)
                poly = shapely.union_all([elements[c].polygon for c in conns])
                if poly.geom_type != "Polygon":
                    poly = poly.convex_hull
                group_connectors[gcf] = GroupConnector(gcf, gin, gout, node.fid, conns, poly)
            if node.signalised:      # crosswalk across this arm, just outside the box
                d = din
                nrm = np.array([-d[1], d[0]])
                hw = max(len(inc.lanes), len(groups[node.arms[ai][2]].lanes)) * LANE_WIDTH
                c0 = node.centre + d * node.half
                c1 = node.centre + d * (node.half + CROSSWALK_WIDTH)
                w = hw + WALKWAY[0] + 0.5
                poly = Polygon([c0 + nrm * w, c0 - nrm * w, c1 - nrm * w, c1 + nrm * w])
                mid = node.centre + d * (node.half + CROSSWALK_WIDTH / 2)
                ends = (mid + nrm * (hw + SIDEWALK_WAIT), mid - nrm * (hw + SIDEWALK_WAIT))
                node.crosswalks.append((ai, poly, *ends))
    return RoadMap(location, epsg, version, elements, groups, group_connectors, nodes,
                   boundaries, stop_polys, road_segments, walkways, carparks, generic, tl_points,
                   roadside)


# ----------------------------------------------------------------------------------------------
# Traffic simulation.

@dataclasses.dataclass
class DriverParams:
    """IDM parameters; ``jerk`` bounds the change of acceleration (m/s^3), None = unbounded."""
    speed_factor: float      # desired speed = factor * speed limit
    headway: float           # T (s)
    min_gap: float           # s0 (m)
    accel: float             # a_max (m/s^2)
    decel: float             # comfortable b (m/s^2)
    jerk: Optional[float] = None
    lane_change_s: float = 3.5


EGO_DRIVER = DriverParams(0.95, 1.6, 3.0, 1.6, 1.8, jerk=2.5, lane_change_s=4.5)
#: Pacifica (nuPlan ego): front / rear overhang from the rear axle, width, height.
EGO_FRONT, EGO_REAR, EGO_WIDTH, EGO_HEIGHT = 4.049, 1.127, 2.297, 1.777
STOP_DECEL = 3.0             # a yellow light is run only if stopping would need more than this


@dataclasses.dataclass(eq=False)
class Vehicle:
    """A lane-following road user. ``route[0]`` is the element it is on; ``s`` the arclength of
    its reference point there (rear axle for the ego, box centre otherwise); ``front``/``rear``
    its extent ahead of / behind that point."""
    vid: int
    name: str                       # gt_names class
    length: float
    width: float
    height: float
    front: float
    rear: float
    driver: DriverParams
    route: list
    s: float
    v: float
    a: float = 0.0
    prev: int = -1                  # the element before route[0]
    lc_old: int = -1                # lane-change: the lane being left
    lc_d0: float = 0.0              # lateral offset at the start (left of the new lane, m)
    lc_len: float = 1.0             # its length along the lane (m)
    lc_done: float = 1.0            # progress (distance) along the change
    fixed_lane: bool = False        # bicycles: never change lanes


def _smooth(t: float) -> float:
    t = min(max(t, 0.0), 1.0)
    return t * t * t * (10 - 15 * t + 6 * t * t)


def _smooth_d(t: float) -> float:
    t = min(max(t, 0.0), 1.0)
    return 30 * t * t * (1 - t) * (1 - t)


#: Half width of the path a vehicle sweeps along a connector (widest vehicle plus margin).
SWEPT_HALF_WIDTH = 1.4


def _signal_phases(road: RoadMap, node: Node) -> list[set]:
    """The phases of a signalised node: sets of (arm, turn) movements that may go together.

    Opposite approaches share a phase: first their straight and right movements, then their
    (protected) left turns; an approach with no opposite one (the stem of a T) gets one phase
    for everything. A phase whose movements from different arms could touch (swept paths of
    the widest vehicle) is split per arm, so movements that run together never conflict.
    """
    arms = node.arms
    conns = [c for c in road.connectors() if c.node == node.fid]
    axes, used = [], set()
    for i, (d, gin, _) in enumerate(arms):
        if i in used or gin is None:
            continue
        opp = [j for j, (dj, gj, _) in enumerate(arms)
               if j != i and j not in used and gj is not None and float(np.dot(d, dj)) < -0.9]
        axis = [i] + opp[:1]
        used.update(axis)
        axes.append(axis)
    phases = []
    for axis in axes:
        groups = ([{(a, t) for a in axis for t in ("straight", "right")},
                   {(a, "left") for a in axis}] if len(axis) == 2 else
                  [{(axis[0], t) for t in ("straight", "right", "left")}])
        for ph in groups:
            ph = {m for m in ph if any((c.arm, c.turn) == m for c in conns)}
            if not ph:
                continue
            swept = [(c.arm, LineString(c.xy).buffer(SWEPT_HALF_WIDTH)) for c in conns
                     if (c.arm, c.turn) in ph]
            clash = any(ai != aj and pi.intersects(pj) for ai, pi in swept for aj, pj in swept)
            phases += [{m for m in ph if m[0] == a} for a in axis] if clash else [ph]
    return [ph for ph in phases if ph]


class Signals:
    """Actuated signals, per signalised node: the phases of :func:`_signal_phases` in turn,
    then a pedestrian phase on request (a pedestrian waiting; at most every ``PED_EVERY``-th
    cycle, as a push button would).

    A phase with no vehicle waiting for it is skipped; a green lasts at least GREEN_MIN_S, ends
    early once nobody needs it and someone else waits, and at most GREEN_MAX_S while others
    wait (with no one else waiting it rests in green). Stages: GREEN -> YELLOW -> all-red
    (>= ALL_RED_S and until the box is empty); WALK -> clear (until the crosswalks are empty).
    """

    def __init__(self, road: RoadMap, rng: np.random.Generator):
        self.state, self.phases, self.phase_of = {}, {}, {}
        for n in sorted(road.nodes.values(), key=lambda n: n.fid):
            if not n.signalised:
                continue
            phases = self.phases[n.fid] = _signal_phases(road, n)
            for c in road.connectors():
                if c.node == n.fid:
                    self.phase_of[c.fid] = next(i for i, ph in enumerate(phases)
                                                if (c.arm, c.turn) in ph)
            phase = int(rng.integers(0, len(phases)))
            self.state[n.fid] = [phase, "green", float(rng.uniform(0, GREEN_MIN_S)),
                                 int(rng.integers(1, PED_EVERY + 1))]

    def color(self, conn: Element) -> int:
        """GREEN, YELLOW or RED for a signalised connector (arm >= 0)."""
        phase, stage = self.state[conn.node][:2]
        if phase != self.phase_of[conn.fid]:
            return RED
        return {"green": GREEN, "yellow": YELLOW}.get(stage, RED)

    def walking(self, node: int) -> bool:
        _, stage, t, _ = self.state[node]
        return stage == "walk" and t < WALK_S

    def step(self, box_busy: set, crossing_busy: set, requests: set, demand: set) -> None:
        """demand: (node, phase) pairs a vehicle waits for; requests: nodes where a pedestrian
        waits; box_busy / crossing_busy: nodes whose box / crosswalks are occupied."""
        for fid, st in self.state.items():
            n_ph = len(self.phases[fid])
            st[2] += DT
            phase, stage, t, cycle = st
            others = any((fid, j) in demand for j in range(n_ph) if j != phase)
            walkers = fid in requests and cycle % PED_EVERY == 0
            if stage == "green" and (others or walkers) and (
                    t >= GREEN_MAX_S or (t >= GREEN_MIN_S and (fid, phase) not in demand)):
                st[1:3] = ["yellow", 0.0]
            elif stage == "yellow" and t >= YELLOW_S:
                st[1:3] = ["allred", 0.0]
            elif stage in ("allred", "clear") and fid not in box_busy and (
                    (stage == "allred" and t >= ALL_RED_S) or
                    (stage == "clear" and fid not in crossing_busy)):
                # The next phase in cyclic order that someone waits for (the pedestrian phase
                # sits after the last vehicle phase).
                start = phase + 1 if stage == "allred" else 0
                for k in range(n_ph + 1):
                    j = (start + k) % (n_ph + 1)
                    if j == n_ph and walkers and stage == "allred":
                        st[:] = [n_ph, "walk", 0.0, cycle]
                        break
                    if j < n_ph and (fid, j) in demand:
                        st[:] = [j, "green", 0.0, cycle + (j <= phase or stage == "clear")]
                        break
                else:
                    st[:] = [start % n_ph, "green", 0.0, cycle + 1]
            elif stage == "walk" and t >= WALK_S:
                st[1:3] = ["clear", 0.0]


@dataclasses.dataclass(eq=False)
class Pedestrian:
    pid: int
    node: int
    crosswalk: int
    side: int
    xy: np.ndarray
    heading: float
    speed: float
    state: str = "wait"             # wait | cross | out | back | idle
    idle_s: float = 0.0
    target: Optional[np.ndarray] = None
    home: Optional[np.ndarray] = None


@dataclasses.dataclass
class LogTruth:
    """What one simulated log knows, at 2 Hz (T frames); global = the map's UTM frame.

    ego_pose [T,3] (x, y, yaw of the rear axle); ego_velocity [T,2], ego_acceleration [T,2] in
    the body frame; agents: per frame a dict with ``tokens`` [N] str, ``names`` [N] str, ``boxes``
    [N,7] global (x, y, z_centre, l, w, h, yaw) and ``velocity`` [N,2] global; traffic_lights:
    per frame [(connector fid, is_red)]; route: per frame [roadblock / roadblock-connector fid];
    command [T,4] one-hot; ego_element: per frame the lane / connector fid under the ego;
    yaw_rate [T] rad/s; ego_trace_10hz [S,3] rear-axle poses and agent_boxes_10hz (per step
    [N,7] global boxes of vehicles, bicycles and pedestrians) over the logged window.
    red_violations: times the ego's front crossed a stop line while its light was red (10 Hz).
    """
    location: str
    ego_pose: np.ndarray
    ego_velocity: np.ndarray
    ego_acceleration: np.ndarray
    agents: list
    traffic_lights: list
    route: list
    command: np.ndarray
    ego_element: list
    red_violations: int
    yaw_rate: np.ndarray            # [T] ego yaw rate (rad/s)
    ego_trace_10hz: np.ndarray      # [S,3] rear-axle poses at 10 Hz over the logged window
    agent_boxes_10hz: list          # per 10 Hz step: [N,7] global boxes of moving road users


class TrafficSim:
    """The world's dynamic state and its 10 Hz update (see the module docstring)."""

    def __init__(self, road: RoadMap, rng: np.random.Generator, vehicle_spacing_m: float = 100.0):
        self.road, self.rng = road, rng
        self.signals = Signals(road, rng)
        self.siblings = {c.fid: [o for o in road.elements[c.exit_lane].outgoing if o != c.fid]
                         for c in road.connectors()}
        # Connectors from other lanes into the same lane (a merge, e.g. two lanes into one at a
        # corner): their users are followed in the order they reach the merge.
        self.merges = {c.fid: [o.fid for o in road.connectors()
                               if o.entry_lane == c.entry_lane and o.exit_lane != c.exit_lane]
                       for c in road.connectors()}
        self.vehicles: list[Vehicle] = []
        self.red_violations = 0
        lanes = sorted(road.lanes(), key=lambda e: e.fid)
        ego_lane = lanes[int(rng.integers(len(lanes)))]
        ego_s = float(rng.uniform(8.0, ego_lane.length * 0.5))
        self.ego = Vehicle(0, "ego", EGO_FRONT + EGO_REAR, EGO_WIDTH, EGO_HEIGHT, EGO_FRONT,
                           EGO_REAR, EGO_DRIVER, [ego_lane.fid], ego_s, 6.0)
        self._extend(self.ego)
        self.vehicles.append(self.ego)
        for lane in lanes:       # other traffic: random gaps along every lane
            s = float(rng.uniform(4.0, vehicle_spacing_m))
            while s < lane.length - 20.0:
                if lane.fid != ego_lane.fid or abs(s - ego_s) > 25.0:
                    self._spawn(lane, s)
                s += float(rng.uniform(0.6, 1.6)) * vehicle_spacing_m
        self.peds: list[Pedestrian] = []
        for node in sorted(road.nodes.values(), key=lambda n: n.fid):
            for ci, (_, _, ea, eb) in enumerate(node.crosswalks):
                for _ in range(int(rng.integers(0, 3))):
                    side = int(rng.integers(2))
                    home = np.array([ea, eb][side]) + rng.uniform(-1.0, 1.0, 2)
                    self.peds.append(Pedestrian(len(self.peds), node.fid, ci, side, home.copy(),
                                                0.0, float(rng.uniform(1.3, 1.8)), home=home))
        self.statics = self._place_statics()

    # -- set-up ------------------------------------------------------------------------------
    def _spawn(self, lane: Element, s: float) -> None:
        rng = self.rng
        if lane.index == len(self.road.groups[lane.group].lanes) - 1 and rng.random() < 0.12:
            drv = DriverParams(float(rng.uniform(0.35, 0.5)), 1.2, 2.0, 1.0, 2.0)
            l, w, h, name = 1.8, 0.65, 1.7, "bicycle"
        else:
            drv = DriverParams(float(rng.uniform(0.85, 1.05)), float(rng.uniform(1.1, 1.6)),
                               float(rng.uniform(2.0, 2.8)), float(rng.uniform(1.4, 2.2)), 2.5)
            l, w, h, name = (float(rng.uniform(4.2, 5.3)), float(rng.uniform(1.75, 2.0)),
                             float(rng.uniform(1.45, 1.95)), "vehicle")
        veh = Vehicle(len(self.vehicles), name, l, w, h, l / 2, l / 2, drv, [lane.fid], s,
                      float(rng.uniform(0.4, 0.9)) * lane.speed_limit * drv.speed_factor,
                      fixed_lane=name == "bicycle")
        self._extend(veh)
        self.vehicles.append(veh)

    def _place_statics(self) -> list:
        """Parked cars in the car parks, cone / barrier clusters at the roadside.
        Returns [(name, x, y, yaw, l, w, h)]."""
        rng, out = self.rng, []
        for _, (poly, seg, hw) in sorted(self.road.carparks.items()):
            line = _offset(seg, -(hw + (CARPARK[0] + CARPARK[1]) / 2))
            _, hd, _ = _polyline_arrays(line)
            ls = LineString(line)
            for d in np.arange(4.0, ls.length - 4.0, 6.5):
                if rng.random() < 0.65:
                    p = ls.interpolate(d)
                    i = min(int(np.searchsorted(_polyline_arrays(line)[0], d)), len(hd) - 1)
                    out.append(("vehicle", p.x, p.y, float(hd[i]), float(rng.uniform(4.3, 5.0)),
                                float(rng.uniform(1.8, 1.95)), float(rng.uniform(1.45, 1.8))))
        parks = shapely.union_all([p for p, _, _ in self.road.carparks.values()]) \
            if self.road.carparks else None
        for edge, hd in self.road.roadside:
            if rng.random() > 0.35:
                continue
            name = "traffic_cone" if rng.random() < 0.6 else "barrier"
            i0 = int(rng.integers(0, max(1, len(edge) - 6)))
            for i in range(i0, min(i0 + int(rng.integers(2, 5)), len(edge))):
                if parks is not None and parks.distance(shapely.Point(edge[i])) < 1.5:
                    continue
                size = (0.4, 0.4, 0.7) if name == "traffic_cone" else (1.8, 0.5, 1.0)
                out.append((name, float(edge[i, 0]), float(edge[i, 1]), float(hd[i]), *size))
        return out

    # -- routes -------------------------------------------------------------------------------
    def _extend(self, veh: Vehicle, horizon: float = 260.0) -> None:
        """Append random movements until the route reaches ``horizon`` metres ahead."""
        el = self.road.elements
        ahead = el[veh.route[0]].length - veh.s + sum(el[f].length for f in veh.route[1:])
        while ahead < horizon:
            last = el[veh.route[-1]]
            if veh.fixed_lane:
                cands = list(last.outgoing)
            else:
                cands = [c for lf in self.road.groups[last.group].lanes
                         for c in el[lf].outgoing]
            outs = sorted({el[c].group for c in cands})
            g = outs[int(self.rng.integers(len(outs)))]
            mine = [c for c in last.outgoing if el[c].group == g]
            pool = mine if mine and self.rng.random() < 0.75 else [c for c in cands
                                                                    if el[c].group == g]
            c = pool[int(self.rng.integers(len(pool)))]
            veh.route += [c, el[c].entry_lane]
            ahead += el[c].length + el[el[c].entry_lane].length

    def _replan_from(self, veh: Vehicle, connector: int) -> None:
        veh.route = [veh.route[0], connector, self.road.elements[connector].entry_lane]
        self._extend(veh)

    def path_elements(self, veh: Vehicle, max_dist: float = 120.0):
        """The consistent path ahead: [(element, offset of its start from the vehicle's
        reference point)] while each connector starts from the lane before it."""
        el = self.road.elements
        out, off = [(veh.route[0], -veh.s)], el[veh.route[0]].length - veh.s
        for i in range(1, len(veh.route)):
            e = el[veh.route[i]]
            prev = veh.route[i - 1]
            if (e.kind == "connector" and e.exit_lane != prev) or off > max_dist:
                break
            out.append((e.fid, off))
            off += e.length
        return out

    # -- one step ----------------------------------------------------------------------------
    def _occupancy(self) -> dict:
        """element fid -> [(s_rear, s_front, speed, vehicle)] of everything on it."""
        el, occ = self.road.elements, {}
        for veh in self.vehicles:
            cur = el[veh.route[0]]
            lo, hi = veh.s - veh.rear, veh.s + veh.front
            occ.setdefault(cur.fid, []).append((lo, hi, veh.v, veh))
            if lo < 0 and veh.prev >= 0:
                pl = el[veh.prev].length
                occ.setdefault(veh.prev, []).append((pl + lo, pl + hi, veh.v, veh))
            if hi > cur.length and len(veh.route) > 1:
                occ.setdefault(veh.route[1], []).append((lo - cur.length, hi - cur.length,
                                                         veh.v, veh))
            if veh.lc_old >= 0:
                r = el[veh.lc_old].length / cur.length
                occ.setdefault(veh.lc_old, []).append((lo * r, hi * r, veh.v, veh))
        return occ

    def _demand(self) -> set:
        """(node, phase) pairs that a vehicle near the end of an approach lane waits or heads
        for."""
        el, out = self.road.elements, set()
        for veh in self.vehicles:
            cur = el[veh.route[0]]
            if (len(veh.route) > 1 and cur.kind == "lane"
                    and cur.length - STOP_LINE_SETBACK - veh.s - veh.front < DETECTOR_M):
                conn = el[veh.route[1]]
                if conn.arm >= 0:
                    out.add((conn.node, self.signals.phase_of[conn.fid]))
        return out

    def _busy(self, occ: dict) -> tuple[set, set]:
        """(nodes whose box holds a vehicle or one past its stop line, nodes with pedestrians
        on a crosswalk); also sets ``self.crosswalk_cars``: (node, group) pairs whose crosswalk
        has a vehicle on it."""
        el, box, self.crosswalk_cars = self.road.elements, set(), set()
        for fid, items in occ.items():
            e = el[fid]
            if e.kind == "connector" and items:
                box.add(e.node)
            elif e.kind == "lane":
                g = self.road.groups[e.group]
                for lo, hi, _, _ in items:
                    if hi > e.length - STOP_LINE_SETBACK + 0.3:
                        box.add(g.to_node)
                        self.crosswalk_cars.add((g.to_node, g.fid))
                    if lo < CROSSWALK_WIDTH + 0.5:
                        self.crosswalk_cars.add((g.from_node, g.fid))
        crossing = {p.node for p in self.peds if p.state == "cross"}
        return box, crossing

    def _stop_required(self, veh: Vehicle, lane: Element, conn: Element, gap: float,
                       occ: dict) -> bool:
        """Whether ``veh`` must hold at the stop line of ``lane`` before ``conn``."""
        if conn.arm < 0:
            return False
        color = self.signals.color(conn)
        if color == RED:
            return gap > -0.5
        if color == YELLOW and gap > veh.v ** 2 / (2 * STOP_DECEL):
            return True
        for lo, _, v, other in occ.get(conn.entry_lane, []):   # do not block the box
            if other is not veh and lo < veh.length + 4.0 and v < 2.0:
                return gap > 0.5
        return False

    def _accel(self, veh: Vehicle, occ: dict) -> tuple[float, Optional[tuple]]:
        """IDM acceleration and the nearest leader (gap, speed) on the path."""
        el, d = self.road.elements, veh.driver
        path = self.path_elements(veh)
        v0 = d.speed_factor * el[veh.route[0]].speed_limit
        gap_min, v_lead = np.inf, 0.0
        for k, (fid, off) in enumerate(path):
            e = el[fid]
            v0 = min(v0, d.speed_factor * e.speed_limit) if off < 30 else v0
            for s_curve, vc2 in e.slow:   # brake ahead of curves (1.5 m/s^2) to their speed
                dist = off + s_curve
                if dist > -2.0:
                    v0 = min(v0, math.sqrt(vc2 + 3.0 * max(dist - veh.front, 0.0)))
            items = list(occ.get(fid, []))
            if e.kind == "connector":
                items += [it for sib in self.siblings[fid] for it in occ.get(sib, [])
                          if it[0] < 12.0]
                for m in self.merges[fid]:     # projected by their distance to the merge end
                    shift = e.length - el[m].length
                    items += [(lo + shift, hi + shift, v, o) for lo, hi, v, o in occ.get(m, [])]
            for lo, hi, v, other in items:
                if other is veh or off + (lo + hi) / 2 <= 0:
                    continue
                g = off + lo - veh.front
                if g < gap_min:
                    gap_min, v_lead = g, v
            if e.kind == "lane" and k + 1 < len(path):
                nxt = el[path[k + 1][0]]
                g = off + e.length - STOP_LINE_SETBACK - veh.front
                if g < gap_min and self._stop_required(veh, e, nxt, g, occ):
                    gap_min, v_lead = g, 0.0
            if off > 100.0:
                break
        v = veh.v
        a = d.accel * (1 - (v / max(v0, 0.1)) ** 4)
        if gap_min < np.inf:
            s_star = d.min_gap + max(0.0, v * d.headway + v * (v - v_lead)
                                     / (2 * math.sqrt(d.accel * d.decel)))
            a -= d.accel * (s_star / max(gap_min, 0.1)) ** 2
        a = min(max(a, -8.0), d.accel)
        if d.jerk is not None:   # the careful expert: bounded jerk unless an emergency
            down = d.jerk * (3.0 if a < -2.5 else 1.0)
            a = min(max(a, veh.a - down * DT), veh.a + d.jerk * DT)
        return a, (gap_min, v_lead)

    def _try_lane_change(self, veh: Vehicle, occ: dict, leader) -> None:
        el = self.road.elements
        cur = el[veh.route[0]]
        if veh.fixed_lane or cur.kind != "lane" or veh.lc_old >= 0 or len(veh.route) < 2:
            return
        lanes = self.road.groups[cur.group].lanes
        if len(lanes) < 2:
            return
        want = el[el[veh.route[1]].exit_lane]
        alt_conn = None
        if want.fid == cur.fid:       # discretionary: pass a slow leader
            gap, v_lead = leader
            v0 = veh.driver.speed_factor * cur.speed_limit
            if not (gap < 35.0 and v_lead < 0.55 * v0 and veh.v > 1.0):
                return
            target = el[lanes[1 - cur.index]] if len(lanes) == 2 else None
            if target is None or self.rng.random() > 0.05:
                return
            same = [c for c in target.outgoing if el[c].group == el[veh.route[1]].group]
            if not same:
                return
            alt_conn = same[0]
        else:
            target = el[lanes[cur.index + (1 if want.index > cur.index else -1)]]
        room = cur.length - STOP_LINE_SETBACK - (veh.s + veh.front) - 5.0
        lc_len = max(veh.v, 4.0) * veh.driver.lane_change_s
        if veh.s - veh.rear < CROSSWALK_WIDTH + 4.0:
            return
        if room < lc_len:
            if want.fid != cur.fid and room < 15.0:    # too late: take a movement from here
                same = [c for c in cur.outgoing if el[c].group == el[veh.route[1]].group]
                self._replan_from(veh, (same or sorted(cur.outgoing))[0])
            return
        s_new = veh.s * target.length / cur.length
        for lo, hi, v, other in occ.get(target.fid, []):
            if other is veh:
                continue
            if hi > s_new - veh.rear - 6.0 - v * 1.2 and lo < s_new + veh.front + 5.0 + veh.v:
                return                  # no safe gap
        veh.lc_old, veh.lc_d0 = cur.fid, (LANE_WIDTH if target.index > cur.index
                                           else -LANE_WIDTH)
        veh.lc_len, veh.lc_done = lc_len, 0.0
        veh.route[0], veh.s = target.fid, s_new
        if alt_conn is not None:
            self._replan_from(veh, alt_conn)

    def step(self) -> None:
        el = self.road.elements
        occ = self._occupancy()
        box, crossing = self._busy(occ)
        requests = {p.node for p in self.peds if p.state == "wait"}
        self.signals.step(box, crossing, requests, self._demand())
        accels = []
        for veh in self.vehicles:
            a, leader = self._accel(veh, occ)
            accels.append(a)
            self._try_lane_change(veh, occ, leader)
        for veh, a in zip(self.vehicles, accels):
            v_new = veh.v + a * DT
            if v_new < 0:          # stop within the step instead of reversing
                ds, v_new, a = (veh.v ** 2 / (2 * -a) if a < 0 else 0.0), 0.0, -veh.v / DT
            else:
                ds = (veh.v + v_new) / 2 * DT
            self._advance(veh, ds)
            veh.v, veh.a = v_new, a
        for p in self.peds:
            self._walk(p)

    def _advance(self, veh: Vehicle, ds: float) -> None:
        el = self.road.elements
        old_front = veh.s + veh.front
        veh.s += ds
        if veh.lc_old >= 0:
            veh.lc_done += ds
            if veh.lc_done >= veh.lc_len:
                veh.lc_old = -1
        cur = el[veh.route[0]]
        if veh is self.ego and cur.kind == "lane" and len(veh.route) > 1:
            stop_s = cur.length - STOP_LINE_SETBACK
            conn = el[veh.route[1]]
            if (old_front <= stop_s < veh.s + veh.front and conn.arm >= 0
                    and self.signals.color(conn) == RED):
                self.red_violations += 1
        while veh.s > cur.length and len(veh.route) > 1:
            veh.s -= cur.length
            veh.prev = veh.route.pop(0)
            cur = el[veh.route[0]]
            self._extend(veh)

    def _walk(self, p: Pedestrian) -> None:
        node = self.road.nodes[p.node]
        _, _, ea, eb = node.crosswalks[p.crosswalk]
        arm = node.arms[node.crosswalks[p.crosswalk][0]]
        if (p.state == "wait" and self.signals.walking(p.node) and self.rng.random() < 0.3
                and (p.node, arm[1]) not in self.crosswalk_cars
                and (p.node, arm[2]) not in self.crosswalk_cars):
            p.state, p.target = "cross", np.array([eb, ea][p.side]) + self.rng.uniform(-1, 1, 2)
        elif p.state == "wait":
            return
        elif p.state == "idle":      # chatting on the corner before asking to cross again
            p.idle_s -= DT
            if p.idle_s <= 0:
                p.state = "wait"
            return
        if p.state in ("out", "back", "cross"):
            d = p.target - p.xy
            dist = float(np.hypot(*d))
            if dist > 1e-6:
                p.heading = math.atan2(d[1], d[0])
            if dist <= p.speed * DT:
                p.xy = p.target.copy()
                if p.state == "cross":       # stroll along the sidewalk, then come back
                    p.side = 1 - p.side
                    p.home = p.xy.copy()
                    arm = node.arms[node.crosswalks[p.crosswalk][0]][0]
                    p.state, p.target = "out", p.xy + arm * float(self.rng.uniform(3.0, 12.0))
                elif p.state == "out":
                    p.state, p.target = "back", p.home
                else:
                    p.state, p.idle_s = "idle", float(self.rng.uniform(10.0, 40.0))
            else:
                p.xy = p.xy + d / dist * p.speed * DT

    # -- observation --------------------------------------------------------------------------
    def pose(self, veh: Vehicle) -> tuple[float, float, float]:
        """(x, y, yaw) of the vehicle's reference point, lane-change offset included."""
        e = self.road.elements[veh.route[0]]
        x, y, h = e.pose_at(veh.s)
        if veh.lc_old >= 0:
            t = veh.lc_done / veh.lc_len
            off = veh.lc_d0 * (1 - _smooth(t))
            slope = -veh.lc_d0 * _smooth_d(t) / veh.lc_len
            x, y = x - off * math.sin(h), y + off * math.cos(h)
            h = h + math.atan(slope)
        return x, y, h

    def boxes(self) -> tuple[list, np.ndarray]:
        """Every object: (names [N], global boxes [N,7] x, y, z_centre, l, w, h, yaw); row 0 is
        the ego (its box centre, not the rear axle), moving users first, then statics."""
        names, rows = [], []
        for veh in self.vehicles:
            x, y, h = self.pose(veh)
            c = (veh.front - veh.rear) / 2
            rows.append([x + c * math.cos(h), y + c * math.sin(h), veh.height / 2, veh.length,
                         veh.width, veh.height, h])
            names.append(veh.name)
        for p in self.peds:
            rows.append([p.xy[0], p.xy[1], 0.875, 0.6, 0.6, 1.75, p.heading])
            names.append("pedestrian")
        for name, x, y, yaw, l, w, h in self.statics:
            rows.append([x, y, h / 2, l, w, h, yaw])
            names.append(name)
        return names, np.asarray(rows, np.float64).reshape(-1, 7)

    def traffic_lights(self, centre: np.ndarray, radius: float = 100.0) -> list:
        """[(connector fid, is_red)] for the signalised junctions within ``radius`` m."""
        out = []
        for c in sorted(self.road.connectors(), key=lambda c: c.fid):
            node = self.road.nodes[c.node]
            if c.arm >= 0 and np.hypot(*(node.centre - centre)) < radius:
                out.append((c.fid, self.signals.color(c) == RED))
        return out

    def ego_route(self) -> list[int]:
        """The ego's route as roadblock / roadblock-connector fids, from its current one."""
        out = []
        for fid in self.ego.route:
            g = self.road.elements[fid].group
            if not out or out[-1] != g:
                out.append(g)
        return out

    def driving_command(self, lookahead: float = 20.0, threshold: float = 2.0) -> np.ndarray:
        """One-hot (left, straight, right, unknown) from the route point ``lookahead`` m ahead."""
        el = self.road.elements
        x, y, h = self.pose(self.ego)
        s, remaining = self.ego.s, lookahead
        for fid in self.ego.route:
            e = el[fid]
            if s + remaining <= e.length:
                px, py, _ = e.pose_at(s + remaining)
                lat = -math.sin(h) * (px - x) + math.cos(h) * (py - y)
                cmd = 0 if lat > threshold else (2 if lat < -threshold else 1)
                return np.eye(4, dtype=np.int64)[cmd]
            remaining -= e.length - s
            s = 0.0
        return np.eye(4, dtype=np.int64)[3]


def _body_derivatives(poses: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """poses [S,3] at step dt -> (velocity [S,2], acceleration [S,2]) in each pose's body frame,
    by central differences of the global positions."""
    xy = poses[:, :2]
    vel = np.gradient(xy, dt, axis=0)
    acc = np.gradient(vel, dt, axis=0)
    c, s = np.cos(poses[:, 2]), np.sin(poses[:, 2])

    def body(v):
        return np.stack([c * v[:, 0] + s * v[:, 1], -s * v[:, 0] + c * v[:, 1]], 1)
    return body(vel), body(acc)


#: Objects whose centre lies within this distance of the ego are annotated in a frame.
ANNOTATION_RADIUS_M = 70.0


def simulate_log(road: RoadMap, seed: int, num_frames: int, warmup_s: float = 12.0
                 ) -> tuple[LogTruth, list]:
    """Simulate one log of ``num_frames`` 2 Hz frames. Returns (truth, per-frame world boxes
    for rendering: [(names [N], boxes [N,7] global)], object 0 = ego)."""
    rng = np.random.default_rng([seed, 11])
    sim = TrafficSim(road, rng)
    for _ in range(int(round(warmup_s / DT))):
        sim.step()
    sim.red_violations = 0
    n_steps = (num_frames - 1) * STEPS_PER_FRAME + 1
    ego_trace, all_poses, frames = [], [], []
    track_ids = [f"v{v.vid}" for v in sim.vehicles] + [f"p{p.pid}" for p in sim.peds] + \
        [f"s{i}" for i in range(len(sim.statics))]
    boxes10 = []
    for k in range(-2, n_steps + 2):      # 2 extra steps each side for central differences
        names, boxes = sim.boxes()
        ego_trace.append(sim.pose(sim.ego))
        all_poses.append(boxes)
        if 0 <= k < n_steps:
            boxes10.append(boxes[1:len(sim.vehicles) + len(sim.peds)].copy())
        if 0 <= k < n_steps and k % STEPS_PER_FRAME == 0:
            x, y, _ = ego_trace[-1]
            frames.append(dict(names=names,
                               traffic_lights=sim.traffic_lights(np.array([x, y])),
                               route=sim.ego_route(), command=sim.driving_command(),
                               element=sim.ego.route[0]))
        sim.step()
    ego_trace = np.asarray(ego_trace)
    ego_trace[:, 2] = np.unwrap(ego_trace[:, 2])
    vel, acc = _body_derivatives(ego_trace, DT)
    all_poses = np.stack(all_poses)                          # [S,N,7]
    vel_glob = np.gradient(all_poses[:, :, :2], DT, axis=0)
    frame_steps = 2 + np.arange(num_frames) * STEPS_PER_FRAME
    agents, render = [], []
    for f, k in enumerate(frame_steps):
        boxes = all_poses[k]
        near = np.hypot(*(boxes[:, :2] - ego_trace[k, :2]).T) < ANNOTATION_RADIUS_M
        near[0] = False
        idx = np.flatnonzero(near)
        v = vel_glob[k, idx]
        static = np.array([frames[f]["names"][i] not in ("vehicle", "bicycle", "pedestrian")
                           or i >= len(sim.vehicles) + len(sim.peds) for i in idx], bool)
        v[static] = 0.0
        agents.append(dict(tokens=[track_ids[i] for i in idx],
                           names=[frames[f]["names"][i] for i in idx],
                           boxes=boxes[idx].copy(), velocity=v))
        render.append((frames[f]["names"], boxes.copy()))
    yaw = np.angle(np.exp(1j * ego_trace[frame_steps, 2]))
    truth = LogTruth(
        location=road.location,
        ego_pose=np.concatenate([ego_trace[frame_steps, :2], yaw[:, None]], 1),
        ego_velocity=vel[frame_steps], ego_acceleration=acc[frame_steps], agents=agents,
        traffic_lights=[f["traffic_lights"] for f in frames], route=[f["route"] for f in frames],
        command=np.stack([f["command"] for f in frames]),
        ego_element=[f["element"] for f in frames], red_violations=sim.red_violations,
        yaw_rate=np.gradient(ego_trace[:, 2], DT)[frame_steps],
        ego_trace_10hz=ego_trace[2:2 + n_steps], agent_boxes_10hz=boxes10)
    return truth, render
