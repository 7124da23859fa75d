"""The road users of the synthetic world: their driver parameters, vehicles and pedestrians.

Vehicles and bicycles follow lane paths with IDM car following; the expert ego is a vehicle
with careful parameters (long headway, gentle acceleration, bounded jerk). How they move is
:class:`irlvla_jax.data.synthetic.traffic.TrafficSim`'s business; these are its state.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


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


@dataclasses.dataclass(eq=False)
class Pedestrian:
    """A pedestrian at crosswalk ``crosswalk`` of junction ``node``, waiting at end ``side``
    (0 / 1) until the walk signal; xy [2] global position, ``target`` [2] where it walks."""
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
