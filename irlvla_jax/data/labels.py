"""Per-scene labels and sensor preprocessing computed on the host while reading.

* :func:`resize_image` / :func:`scale_intrinsics`: camera images to ``sizes.image_hw``.
* :func:`lidar_bev`: the LiDAR BEV raster (density, max height).
* :func:`bev_semantic`: the BEV semantic raster in ``types.BEV_CLASSES`` (TransFuser's layout).
* :func:`meta_action`: the speed x path meta-action class of the expert future.

Raster layout (shared by both rasters): a ``[h, w]`` grid over ``[-r, r] x [-r, r]`` metres of
the t = 0 ego frame; row 0 is x = +r (ahead), column 0 is y = +r (left).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from irlvla_jax import types

# ----------------------------------------------------------------------------------------------
# Cameras


def resize_image(img: Image.Image, hw: tuple[int, int]) -> tuple[np.ndarray, float, float]:
    """RGB-convert and resize (bilinear) to ``hw`` -> (uint8 [h, w, 3], sx, sy), where
    ``sx = w / W`` and ``sy = h / H`` are the scale factors for :func:`scale_intrinsics`."""
    h, w = hw
    W, H = img.size
    out = img.convert("RGB").resize((w, h), Image.BILINEAR)
    return np.asarray(out, np.uint8), w / W, h / H


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Pinhole K [3, 3] of the original image -> K [3, 3] of the resized one.

    Pixel centres sit at integer coordinates, so the principal point maps as
    ``c' = (c + 0.5) s - 0.5`` (exact for a resize that maps image edges to image edges).
    """
    K = np.asarray(K, np.float64).copy()
    K[0, 0] *= sx
    K[0, 1] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K


# ----------------------------------------------------------------------------------------------
# Rasters

LIDAR_MAX_PER_CELL = 5.0    # density = min(count / 5, 1) (TransFuser's hist_max_per_pixel)
LIDAR_MAX_HEIGHT = 4.0      # metres: points higher are dropped; height channel = z / 4 m


def _cells(xy: np.ndarray, hw: tuple[int, int], range_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Ego-frame points [N, 2] -> (row, col) float pixel coordinates (pixel centres at ints)."""
    h, w = hw
    row = (range_m - xy[:, 0]) / (2 * range_m / h) - 0.5
    col = (range_m - xy[:, 1]) / (2 * range_m / w) - 0.5
    return row, col


def lidar_bev(points: np.ndarray, hw: tuple[int, int], range_m: float) -> np.ndarray:
    """Points in the ego frame [N, 3] (x, y, z; z up from the ground under the rear axle) ->
    float32 [h, w, 2] = (min(count / 5, 1), max(z, 0) / 4 m) per cell; empty cells are 0.
    Points above 4 m (overhead structures) are dropped."""
    h, w = hw
    p = np.asarray(points, np.float64)
    p = p[p[:, 2] <= LIDAR_MAX_HEIGHT]
    row, col = _cells(p[:, :2], hw, range_m)
    r, c = np.floor(row + 0.5).astype(np.int64), np.floor(col + 0.5).astype(np.int64)
    keep = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    flat = r[keep] * w + c[keep]
    count = np.bincount(flat, minlength=h * w).reshape(h, w)
    height = np.zeros(h * w)
    np.maximum.at(height, flat, np.clip(p[keep, 2], 0.0, None))
    out = np.stack([np.minimum(count / LIDAR_MAX_PER_CELL, 1.0),
                    height.reshape(h, w) / LIDAR_MAX_HEIGHT], axis=-1)
    return out.astype(np.float32)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Boxes [N, 5] (x, y, heading, length, width) -> corners [N, 4, 2] (FL, RL, RR, FR)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 5)
    c, s = np.cos(b[:, 2]), np.sin(b[:, 2])
    dx = np.array([0.5, -0.5, -0.5, 0.5])[None] * b[:, 3:4]
    dy = np.array([0.5, 0.5, -0.5, -0.5])[None] * b[:, 4:5]
    return np.stack([b[:, :1] + c[:, None] * dx - s[:, None] * dy,
                     b[:, 1:2] + s[:, None] * dx + c[:, None] * dy], axis=-1)


#: BEV class of each agent class (TransFuser: bicycles count as vehicles here, static classes
#: as static objects).
_AGENT_BEV = {types.VEHICLE: 5, types.BICYCLE: 5, types.PEDESTRIAN: 6}
_STATIC_BEV = 4


def bev_semantic(road: Iterable[np.ndarray], walkways: Iterable[np.ndarray],
                 centerlines: Iterable[np.ndarray], boxes: np.ndarray, box_class: np.ndarray,
                 hw: tuple[int, int], range_m: float) -> np.ndarray:
    """The BEV semantic raster -> uint8 [h, w] of ``types.BEV_CLASSES`` indices.

    road, walkways: polygon rings [n, 2] in the ego frame (road = lanes, lane connectors,
    intersections; walkways = walkways and crosswalks). centerlines: polylines [n, 2]
    (lane / connector baselines), drawn 1 px wide. boxes [N, 5] (x, y, heading, length, width)
    of the objects at t = 0 with ``box_class`` [N] (``types.AGENT_CLASSES`` indices).
    Later classes overwrite earlier ones (road < walkway < centreline < static < vehicle <
    pedestrian), as TransFuser draws them.
    """
    h, w = hw
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)

    def pix(xy):
        row, col = _cells(np.asarray(xy, np.float64).reshape(-1, 2), hw, range_m)
        return list(zip(col.tolist(), row.tolist()))

    for ring in road:
        if len(ring) >= 3:
            draw.polygon(pix(ring), fill=1)
    for ring in walkways:
        if len(ring) >= 3:
            draw.polygon(pix(ring), fill=2)
    for line in centerlines:
        if len(line) >= 2:
            draw.line(pix(line), fill=3, width=1)
    order = sorted(range(len(box_class)), key=lambda i: _AGENT_BEV.get(int(box_class[i]), 4))
    corners = box_corners(boxes) if len(boxes) else np.zeros((0, 4, 2))
    for i in order:
        c = _AGENT_BEV.get(int(box_class[i]), _STATIC_BEV)
        # the outline makes a box smaller than a cell still mark the cell it lies in
        draw.polygon(pix(corners[i]), fill=c, outline=c)
    return np.asarray(img, np.uint8)


# ----------------------------------------------------------------------------------------------
# Meta-action (speed x path) from the expert future.
#
# Thresholds (ours; DiffVLA does not publish its exact values):
#   speeds v_k = |p_k - p_{k-1}| / 0.5 s along the 8 future poses (p_0 = the ego at t = 0),
#   v0 = the ego's logged speed at t = 0, v_end = v_8, a = (v_end - v0) / 3.75 s.
#   stopped:          v0 < 0.5 and max v_k < 0.5 m/s
#   start_from_stop:  v0 < 0.5, the ego moves later
#   come_to_stop:     v0 >= 0.5 and v_end < 0.5
#   otherwise by a (m/s^2): < -4 emergency_brake, < -2.5 hard_decel, < -1 decel, < -0.3
#   mild_decel, <= 0.3 keep_speed, <= 1 mild_accel, <= 2 accel, else hard_accel.
#   path by the final heading change dh and lateral offset y of pose 8 (left positive):
#   travelled < 2 m or (|dh| < 0.1 and |y| < 1.0): straight; |dh| < 0.3 and |y| >= 2.5:
#   lane change; |dh| < 0.3: slight; |dh| < 1.2: turn; else sharp.
STOP_SPEED = 0.5
_ACCEL_EDGES = ((-4.0, "emergency_brake"), (-2.5, "hard_decel"), (-1.0, "decel"),
                (-0.3, "mild_decel"))
_ACCEL_UP = ((0.3, "keep_speed"), (1.0, "mild_accel"), (2.0, "accel"))


def meta_action(v0: float, future: np.ndarray) -> int:
    """Meta-action class = speed_class * 9 + path_class (``types.META_*_CLASSES``).

    v0: the ego's speed (m/s) at t = 0. future: [8, 3] expert poses (x, y, heading) at
    t = 0.5 .. 4 s in the t = 0 frame. Thresholds are listed above this function.
    """
    f = np.asarray(future, np.float64)[: types.PLAN_LEN]
    p = np.concatenate([np.zeros((1, 2)), f[:, :2]], axis=0)
    seg = np.hypot(*np.diff(p, axis=0).T)
    v = seg / 0.5
    v0, v_end = abs(float(v0)), float(v[-1])
    if v0 < STOP_SPEED:
        speed = "stopped" if v.max() < STOP_SPEED else "start_from_stop"
    elif v_end < STOP_SPEED:
        speed = "come_to_stop"
    else:
        a = (v_end - v0) / (0.5 * len(v) - 0.25)
        speed = next((name for edge, name in _ACCEL_EDGES if a < edge), None) or \
            next((name for edge, name in _ACCEL_UP if a <= edge), "hard_accel")
    dh = float(np.arctan2(np.sin(f[-1, 2]), np.cos(f[-1, 2])))
    y = float(f[-1, 1])
    if seg.sum() < 2.0 or (abs(dh) < 0.1 and abs(y) < 1.0):
        path = "straight"
    else:
        left = (dh > 0) if abs(dh) >= 0.1 else (y > 0)
        if abs(dh) < 0.3 and abs(y) >= 2.5:
            path = "left_lane_change" if left else "right_lane_change"
        elif abs(dh) < 0.3:
            path = "slight_left" if left else "slight_right"
        elif abs(dh) < 1.2:
            path = "left_turn" if left else "right_turn"
        else:
            path = "sharp_left" if left else "sharp_right"
    return (types.META_SPEED_CLASSES.index(speed) * len(types.META_PATH_CLASSES)
            + types.META_PATH_CLASSES.index(path))
