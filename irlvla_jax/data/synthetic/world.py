"""A deterministic synthetic driving world: one simulated log and what it knows.

The pieces, each in its own module:

* :mod:`~irlvla_jax.data.synthetic.road`: a location's road network (lanes, connectors,
  junctions, map layers), built by ``build_map``;
* :mod:`~irlvla_jax.data.synthetic.signals`: the actuated traffic signals at its junctions;
* :mod:`~irlvla_jax.data.synthetic.road_users`: vehicles, bicycles, pedestrians and the ego;
* :mod:`~irlvla_jax.data.synthetic.traffic`: their 10 Hz simulation.

:func:`simulate_log` runs the traffic on a road network and samples the log at 2 Hz: the ego's
poses and dynamics, the annotated objects around it, the traffic lights, route and driving
command per frame (:class:`LogTruth`), plus the boxes the sensors render.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from irlvla_jax.data.synthetic.road import RoadMap
from irlvla_jax.data.synthetic.traffic import DT, TrafficSim

STEPS_PER_FRAME = 5           # 10 Hz simulation -> 2 Hz log


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
