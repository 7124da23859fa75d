"""The synthetic ego's sensor rig: 8 NAVSIM-like cameras and the merged LiDAR.

All extrinsics are relative to the ego *rear axle* (x forward, y left, z up, metres), the frame
NAVSIM calls "ego". Cameras use OpenCV axes (x right, y down, z forward), as NAVSIM's
``sensor2lidar_rotation`` does. Layout after the nuPlan / NAVSIM vehicle: a forward camera, two
front-sides at +-55 deg, two sides at +-110 deg, two rear-sides at +-140 deg and a rear camera, all
on the roof about 1.7 m up; the LiDAR sits on the roof centre.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from irlvla_jax.data import render
from irlvla_jax.types import CAMERA_NAMES

#: (name, x, y, z, yaw_deg) of each camera on the roof; yaw is CCW from the ego's +x.
_CAMERA_MOUNTS = {
    "CAM_F0": (1.70, 0.00, 1.75, 0.0),
    "CAM_L0": (1.55, 0.45, 1.75, 55.0),
    "CAM_R0": (1.55, -0.45, 1.75, -55.0),
    "CAM_L1": (0.95, 0.55, 1.75, 110.0),
    "CAM_R1": (0.95, -0.55, 1.75, -110.0),
    "CAM_L2": (0.10, 0.50, 1.75, 140.0),
    "CAM_R2": (0.10, -0.50, 1.75, -140.0),
    "CAM_B0": (-0.40, 0.00, 1.75, 180.0),
}
#: Horizontal field of view (deg): NAVSIM's 1920x1080 cameras have fx ~ 1545 px (~64 deg).
CAMERA_HFOV_DEG = 64.0
#: Small downward tilt so the road near the car fills the lower image.
CAMERA_PITCH_DEG = 3.0
#: LiDAR on the roof centre, axes aligned with the ego (NAVSIM: near-identity rotation).
LIDAR_TO_EGO_TRANSLATION = np.array([1.50, 0.0, 1.95])


@dataclasses.dataclass(frozen=True)
class Camera:
    """One camera: ``intrinsic`` [3,3] K in pixels of ``image_wh``; ``cam_to_ego`` [4,4]."""
    name: str
    intrinsic: np.ndarray
    cam_to_ego: np.ndarray


def lidar_to_ego() -> np.ndarray:
    """[4,4] LiDAR-to-ego (rear axle) transform."""
    m = np.eye(4)
    m[:3, 3] = LIDAR_TO_EGO_TRANSLATION
    return m


def camera_rig(image_wh: tuple[int, int]) -> list[Camera]:
    """The 8 cameras in ``CAMERA_NAMES`` order, with pinhole K for an image of (W, H) pixels."""
    if set(_CAMERA_MOUNTS) != set(CAMERA_NAMES):
        raise AssertionError("camera mounts and CAMERA_NAMES disagree")
    k = render.default_intrinsic(tuple(image_wh), CAMERA_HFOV_DEG)
    cams = []
    for name in CAMERA_NAMES:
        x, y, z, yaw = _CAMERA_MOUNTS[name]
        pose = render.camera_pose((x, y, z), np.deg2rad(yaw), np.deg2rad(CAMERA_PITCH_DEG))
        cams.append(Camera(name, k.copy(), pose))
    return cams


def sensor_to_lidar(cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    """NAVSIM ``(sensor2lidar_rotation [3,3], sensor2lidar_translation [3])`` of a camera."""
    m = np.linalg.inv(lidar_to_ego()) @ cam.cam_to_ego
    return m[:3, :3].copy(), m[:3, 3].copy()
