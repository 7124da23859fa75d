"""Actuated traffic signals at the synthetic world's signalised junctions.

Opposite approaches share a phase (straight + right together, then their protected lefts;
phases whose paths could touch are split), phases nobody waits for are skipped, and a
pedestrian phase runs on request every few cycles; every clearance interval lasts until the
junction box is empty, which is what makes the traffic collision-free by construction.
"""

from __future__ import annotations

import numpy as np
from shapely.geometry import LineString

from irlvla_jax.data.synthetic.road import Element, Node, RoadMap

# Signal timing (s): a phase's minimum / maximum green, yellow, minimum all-red;
# pedestrian walk.
GREEN_MIN_S, GREEN_MAX_S, YELLOW_S, ALL_RED_S, WALK_S = 5.0, 12.0, 2.5, 1.0, 5.0
#: Vehicles whose front is within this distance of the stop line call their phase (detector).
DETECTOR_M = 45.0
#: The pedestrian phase runs at most every PED_EVERY-th cycle (a push button's wait).
PED_EVERY = 3
GREEN, YELLOW, RED = 0, 1, 2

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

    def step(self, box_busy: set, crossing_busy: set, requests: set, demand: set,
             dt: float) -> None:
        """Advance every signal by ``dt`` seconds. demand: (node, phase) pairs a vehicle waits
        for; requests: nodes where a pedestrian waits; box_busy / crossing_busy: nodes whose
        box / crosswalks are occupied."""
        for fid, st in self.state.items():
            n_ph = len(self.phases[fid])
            st[2] += dt
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
