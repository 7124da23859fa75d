"""The synthetic world's traffic, simulated at 10 Hz.

Vehicles and bicycles follow lane paths with IDM car following, obey the signals
(:mod:`~irlvla_jax.data.synthetic.signals`), change lanes when their route needs it (or to pass
a slow leader), and slow down for curves; where two lanes merge into one they go in turn.
Pedestrians cross at crosswalks during the pedestrian phase; parked cars (in roadside car
parks) and cones/barriers stand still. The expert ego is a vehicle that follows a random route.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import shapely
from shapely.geometry import LineString

from irlvla_jax.data.synthetic.polyline import offset_polyline, polyline_arrays
from irlvla_jax.data.synthetic.road import (CARPARK, CROSSWALK_WIDTH, LANE_WIDTH,
                                            STOP_LINE_SETBACK, Element, RoadMap)
from irlvla_jax.data.synthetic.road_users import (EGO_DRIVER, EGO_FRONT, EGO_HEIGHT, EGO_REAR,
                                                  EGO_WIDTH, DriverParams, Pedestrian, Vehicle)
from irlvla_jax.data.synthetic.signals import DETECTOR_M, RED, YELLOW, Signals

DT = 0.1                      # simulation step (s)
STOP_DECEL = 3.0             # a yellow light is run only if stopping would need more than this


def _smooth(t: float) -> float:
    """The lane-change progress profile (quintic smoothstep: zero slope and curvature at both
    ends) at t in [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    return t * t * t * (10 - 15 * t + 6 * t * t)


def _smooth_d(t: float) -> float:
    """d/dt of :func:`_smooth`."""
    t = min(max(t, 0.0), 1.0)
    return 30 * t * t * (1 - t) * (1 - t)


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
            line = offset_polyline(seg, -(hw + (CARPARK[0] + CARPARK[1]) / 2))
            _, hd, _ = polyline_arrays(line)
            ls = LineString(line)
            for d in np.arange(4.0, ls.length - 4.0, 6.5):
                if rng.random() < 0.65:
                    p = ls.interpolate(d)
                    i = min(int(np.searchsorted(polyline_arrays(line)[0], d)), len(hd) - 1)
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
        self.signals.step(box, crossing, requests, self._demand(), DT)
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
