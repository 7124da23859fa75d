"""Hand-built scenes and trajectories for the scorer tests (test_metrics.py, test_scorer.py,
test_evaluate.py, test_submission.py).

The road: a straight two-lane road along +x (x in [-60, 200] m). The ego lane (on route) is
y in [-1.75, 1.75], the oncoming lane y in [1.75, 5.25]; each lane has its roadblock. The
route centreline runs along y = 0.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from irlvla_jax import geometry as geo
from irlvla_jax import types

SIZES = types.SceneSizes(
    num_future=8, cameras=("CAM_F0",), image_hw=(4, 4), lidar_bev_hw=(4, 4), bev_hw=(4, 4),
    max_agents=4, max_polygons=6, max_polygon_vertices=8, max_centerline=48, max_red_lights=2,
    max_lanes=2, lane_points=2)
X0, X1 = -60.0, 200.0
LANE_W = 3.5
T = np.arange(41) * 0.1


def _rect(x0, x1, y0, y1, v=SIZES.max_polygon_vertices):
    ring = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
    return np.concatenate([ring, np.repeat(ring[:1], v - 4, 0)])


def _rotate(xy, angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * xy[..., 0] - s * xy[..., 1], s * xy[..., 0] + c * xy[..., 1]], -1)


def road_scene(speed=10.0, accel=0.0, angle=0.0):
    """The straight road with the ego at the origin driving at ``speed`` along its +x; the
    road (and the expert, who follows it) is rotated by ``angle`` about the origin."""
    s = types.zeros_scene(SIZES)
    polys = [
        (_rect(X0, X1, -1.75, 1.75), types.ROADBLOCK, False),
        (_rect(X0, X1, 1.75, 5.25), types.ROADBLOCK, False),
        (_rect(X0, X1, -1.75, 1.75), types.LANE, True),
        (_rect(X0, X1, 1.75, 5.25), types.LANE, False),
    ]
    for i, (p, t, r) in enumerate(polys):
        s.map_polygons[i], s.map_polygon_type[i], s.map_polygon_on_route[i] = p, t, r
        s.map_polygon_valid[i] = True
        s.map_vertex_valid[i, :4] = True
    n = SIZES.max_centerline
    s.centerline[:, 0] = np.linspace(X0, X1, n)
    s.centerline_valid[:] = True
    s.speed_limit[...] = 15.0
    # History: steady driving at `speed` for 1.5 s.
    s.ego_history_time[:] = [-1.5, -1.0, -0.5, 0.0]
    s.ego_history[:, 0] = speed * s.ego_history_time
    s.ego_history_velocity[:, 0] = speed
    s.ego_history_acceleration[:, 0] = accel
    s.ego_velocity[0], s.ego_acceleration[0] = speed, accel
    s.expert_future[:, 0] = speed * 0.5 * np.arange(1, 9)
    s.expert_future_valid[:] = True
    s.driving_command[1] = 1.0
    if angle:
        s.map_polygons[:] = _rotate(s.map_polygons, angle)
        s.centerline[:, :2] = _rotate(s.centerline[:, :2], angle)
        s.centerline[:, 2] = angle
        s.expert_future[:, :2] = _rotate(s.expert_future[:, :2], angle)
        s.expert_future[:, 2] = angle
    s.is_original[...] = True
    return s


def add_agent(scene, row, x, y, vx, heading=0.0, length=4.5, width=2.0, cls=types.VEHICLE,
              vy=0.0):
    """An agent moving at constant velocity, annotated at all 9 frames."""
    t = 0.5 * np.arange(types.NUM_AGENT_STEPS)
    scene.agent_states[row, :, 0] = x + vx * t
    scene.agent_states[row, :, 1] = y + vy * t
    scene.agent_states[row, :, 2] = heading
    scene.agent_states[row, :, 3], scene.agent_states[row, :, 4] = vx, vy
    scene.agent_valid[row] = True
    scene.agent_size[row] = (length, width, 1.5)
    scene.agent_class[row] = cls
    return scene


def add_red_light(scene, row, x0, x1, red=True):
    scene.red_light_polygons[row] = _rect(x0, x1, -1.75, 1.75)
    scene.red_light_vertex_valid[row, :4] = True
    scene.red_light_is_red[row] = red
    scene.red_light_on_route[row] = scene.red_light_on_corrected_route[row] = True
    scene.red_light_valid[row] = True
    return scene


@flax.struct.dataclass
class Obs:
    """Stand-in with the fields of ``irlvla_jax.sim.observation.Observation`` (N = 41)."""
    agent_corners: jnp.ndarray
    agent_center: jnp.ndarray
    agent_present: jnp.ndarray
    agent_first_speed: jnp.ndarray
    agent_first_heading: jnp.ndarray
    agent_first_velocity: jnp.ndarray
    agent_is_dynamic: jnp.ndarray
    red_polygons: jnp.ndarray
    red_active: jnp.ndarray


def simple_observation(scene, agent_xyh=None):
    """Agents linearly interpolated from 2 Hz to 10 Hz (or given per step as agent_xyh
    [A,41,3]); red lights on the route, zero-order hold. One unbatched scene."""
    a = scene.agent_states
    if agent_xyh is None:
        tk = 0.5 * np.arange(types.NUM_AGENT_STEPS)
        agent_xyh = np.stack([np.stack([np.interp(T, tk, a[i, :, j]) for j in range(3)], -1)
                              for i in range(a.shape[0])])
    size = scene.agent_size
    corners = geo.box_corners(jnp.asarray(agent_xyh[..., :2]), agent_xyh[..., 2],
                              np.repeat(size[:, None, 0], 41, 1), np.repeat(size[:, None, 1], 41, 1))
    red = scene.red_light_is_red[:, np.arange(41) // 5] & \
        (scene.red_light_on_route & scene.red_light_valid)[:, None]
    return Obs(
        agent_corners=corners, agent_center=jnp.asarray(agent_xyh[..., :2], jnp.float32),
        agent_present=jnp.asarray(np.repeat(scene.agent_valid.any(1)[:, None], 41, 1)),
        agent_first_speed=jnp.hypot(a[:, 0, 3], a[:, 0, 4]),
        agent_first_heading=jnp.asarray(a[:, 0, 2]),
        agent_first_velocity=jnp.asarray(a[:, 0, 3:5]),
        agent_is_dynamic=jnp.asarray(np.isin(scene.agent_class, types.DYNAMIC_CLASSES) &
                                     scene.agent_valid.any(1)),
        red_polygons=jnp.asarray(scene.red_light_polygons), red_active=jnp.asarray(red))


def states_from_xy(x, y, heading=None, vx=None, ax=None):
    """[41, 11] states from per-step positions (velocity/acceleration by finite differences
    unless given)."""
    x, y = np.broadcast_to(x, (41,)).astype(np.float32), np.broadcast_to(y, (41,)).astype(np.float32)
    s = np.zeros((41, 11), np.float32)
    s[:, 0], s[:, 1] = x, y
    s[:, 2] = 0.0 if heading is None else heading
    s[:, 3] = np.gradient(x, 0.1) if vx is None else vx
    s[:, 5] = np.gradient(s[:, 3], 0.1) if ax is None else ax
    return s


def constant_accel_states(v0, a=0.0, y=0.0):
    """Straight driving along +x with speed v0 + a t (clamped at 0)."""
    v = np.maximum(v0 + a * T, 0.0)
    x = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * 0.1)])
    return states_from_xy(x, y, vx=v, ax=np.where(v > 0, a, 0.0))


def as_jnp(scene):
    return scene.replace(**{k: jnp.asarray(v) for k, v in scene.to_dict().items()})


#: held_out_split(): (token, speed, road angle, previous token) per scene. Two chains of frames,
#: s0 <- s1 <- s2 and s3 <- s4 <- s5; s3's previous frame is not in the split.
HELD_OUT = (
    ("s0", 10.0, 0.0, None), ("s1", 10.0, -0.15, "s0"), ("s2", 8.0, 0.0, "s1"),
    ("s3", 12.0, -0.15, "gone"), ("s4", 6.0, 0.0, "s3"), ("s5", 10.0, -0.15, "s4"))


def held_out_split():
    """A 6-scene evaluation split for test_evaluate / test_submission: (Scene [6] of numpy
    arrays, 6 SceneMeta). On the turning roads (angle -0.15) the expert follows the road and a
    constant-velocity plan leaves it. EC counts at s1, s2, s4, s5 (previous frame in the
    split)."""
    scenes, metas = [], []
    for token, speed, angle, prev in HELD_OUT:
        s = road_scene(speed, angle=angle)
        s.has_previous[...] = prev is not None
        scenes.append(s)
        metas.append(types.SceneMeta(token=token, log_name="log", map_location="road",
                                     previous_token=prev, track_tokens=[]))
    return jax.tree.map(lambda *x: np.stack(x), *scenes), metas
