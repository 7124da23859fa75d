"""A fast numpy renderer for the synthetic world: pinhole cameras and a spinning LiDAR.

The synthetic world generator (``irlvla_jax.data.synthetic``) describes one frame as a
:class:`RenderWorld` in a single world frame (metres, z up) and calls

* :func:`render_camera` for each camera of the rig -> ``uint8[H, W, 3]`` RGB,
* :func:`lidar_scan` for the merged LiDAR -> ``float32[6, N]`` (NAVSIM MergedPointCloud rows
  x, y, z, intensity, ring, lidar_id, in the LiDAR frame),
* ``sensor_io.write_jpeg`` / ``sensor_io.write_pcd`` to store them the way the NAVSIM reader
  finds them.

Conventions: ``cam_to_world`` is a 4x4 rigid transform whose camera axes are OpenCV's (x right,
y down, z forward). A forward camera at height 1.6 m looking along +x world therefore has the
rotation columns (x_cam, y_cam, z_cam) = (-y_world, -z_world, +x_world).

The renderer is a painter's algorithm on Pillow's polygon filler: background (sky above the
horizon, grey ground below, both from each pixel's ray direction; cached per camera, as it does
not depend on the scene), then ground polygons in list order, then ground lines, then the visible
faces of the boxes, far boxes first. Rings outside the view frustum are culled; the rest are
clipped to the near plane before projection, so geometry behind the camera never wraps around
into the image.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import shapely
from PIL import Image, ImageDraw

Color = tuple[int, int, int]

#: Near plane (m): camera-frame points with z below this are clipped away before projection.
NEAR_PLANE_M = 0.1

_SKY_HORIZON = np.array([205, 220, 235], np.float32)
_SKY_ZENITH = np.array([90, 140, 210], np.float32)
_GROUND_NEAR = np.array([105, 105, 100], np.float32)
_GROUND_FAR = np.array([150, 150, 145], np.float32)
# Sun direction (world, z up) for box face shading: from above, front-left, so that the top,
# front and side faces of a box get visibly different shades.
_SUN = np.array([0.35, 0.5, 0.8], np.float32) / np.linalg.norm([0.35, 0.5, 0.8])
_AMBIENT, _DIFFUSE = 0.45, 0.55
# LiDAR base intensities (0..255 scale) before the incidence-angle falloff.
_INTENSITY_GROUND, _INTENSITY_MARKING, _INTENSITY_BOX = 20.0, 200.0, 90.0


@dataclasses.dataclass
class RenderWorld:
    """What the renderer draws, in one world frame (metres, z up).

    ground_polygons: ``[(vertices [N,2] f, (r, g, b)), ...]`` filled at z = 0 in list order
      (later ones on top): roads, lanes, crosswalks, sidewalks. Rings without closing vertex.
    ground_lines: ``[(polyline [N,2] f, width_m, (r, g, b)), ...]`` lane markings at z = 0,
      drawn on top of every polygon.
    boxes: ``[N,7]`` (x, y, z_centre, length, width, height, yaw) solid boxes.
    box_colors: ``[N,3]`` uint8 base colour of each box (faces are shaded from it).
    """
    ground_polygons: list[tuple[np.ndarray, Color]] = dataclasses.field(default_factory=list)
    ground_lines: list[tuple[np.ndarray, float, Color]] = dataclasses.field(default_factory=list)
    boxes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 7), np.float32))
    box_colors: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0, 3), np.uint8))

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 7)
        self.box_colors = np.asarray(self.box_colors, np.uint8).reshape(-1, 3)
        if len(self.boxes) != len(self.box_colors):
            raise ValueError(f"RenderWorld: boxes has {len(self.boxes)} rows but box_colors has "
                             f"{len(self.box_colors)}")
        if not np.isfinite(self.boxes).all():
            raise ValueError("RenderWorld: boxes holds NaN or inf")
        if (self.boxes[:, 3:6] <= 0).any():
            raise ValueError("RenderWorld: boxes need positive length, width and height")
        for i, (poly, _) in enumerate(self.ground_polygons):
            if np.ndim(poly) != 2 or np.shape(poly)[1] != 2 or len(poly) < 3:
                raise ValueError(f"RenderWorld: ground_polygons[{i}] has shape {np.shape(poly)}, "
                                 "expected [N>=3, 2]")
        for i, (line, width, _) in enumerate(self.ground_lines):
            if np.ndim(line) != 2 or np.shape(line)[1] != 2 or len(line) < 2 or width <= 0:
                raise ValueError(f"RenderWorld: ground_lines[{i}] has shape {np.shape(line)} and "
                                 f"width {width}, expected [N>=2, 2] and width > 0")


# ----------------------------------------------------------------------------------------------
# Box geometry shared by the camera and the LiDAR.

# Corner sign pattern (x, y, z) of the 8 corners of a unit box (index = 4 [z+] + 2 [y+] + [x+])
# and its 6 faces as corner-index rings, with their outward normals.
_CORNER_SIGNS = np.array([[sx, sy, sz] for sz in (-1, 1) for sy in (-1, 1) for sx in (-1, 1)],
                         np.float64)
_FACES = np.array([
    [0, 2, 3, 1],  # bottom (z-)
    [4, 5, 7, 6],  # top    (z+)
    [0, 1, 5, 4],  # right  (y-)
    [2, 6, 7, 3],  # left   (y+)
    [0, 4, 6, 2],  # back   (x-)
    [1, 3, 7, 5],  # front  (x+)
])
_FACE_NORMALS_LOCAL = np.array([[0, 0, -1], [0, 0, 1], [0, -1, 0], [0, 1, 0], [-1, 0, 0],
                                [1, 0, 0]], np.float64)


def _yaw_rotations(yaw: np.ndarray) -> np.ndarray:
    """yaw [N] -> rotation matrices [N,3,3] about world z."""
    c, s = np.cos(yaw), np.sin(yaw)
    z, o = np.zeros_like(yaw), np.ones_like(yaw)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1),
                     np.stack([z, z, o], -1)], -2)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """boxes [N,7] (x, y, z_centre, l, w, h, yaw) -> world corners [N,8,3] (``_FACES`` order)."""
    half = boxes[:, None, 3:6] / 2 * _CORNER_SIGNS[None]
    return np.einsum("nij,nkj->nki", _yaw_rotations(boxes[:, 6]), half) + boxes[:, None, 0:3]


# ----------------------------------------------------------------------------------------------
# Camera.

def _check_pose(m: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(m, np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise ValueError(f"{name} must be a finite [4,4] matrix, got shape {m.shape}")
    if not np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-4):
        raise ValueError(f"{name}: the rotation block is not orthonormal")
    return m


def _clip_near(pts: np.ndarray, near: float = NEAR_PLANE_M) -> np.ndarray:
    """Clip a polygon ring pts [N,3] (camera frame) to z >= near (Sutherland-Hodgman, one plane).

    Returns the clipped ring [M,3] (M may be 0). Vectorised over edges: edge i contributes its
    start vertex if inside, then the crossing point if it leaves or enters the half-space.
    """
    nxt = np.roll(pts, -1, axis=0)
    a_in, b_in = pts[:, 2] >= near, nxt[:, 2] >= near
    dz = nxt[:, 2] - pts[:, 2]
    t = np.where(a_in != b_in, (near - pts[:, 2]) / np.where(dz == 0, 1, dz), 0.0)
    cross = pts + t[:, None] * (nxt - pts)
    both = np.stack([pts, cross], axis=1).reshape(-1, 3)
    keep = np.stack([a_in, a_in != b_in], axis=1).reshape(-1)
    return both[keep]


def _background(world_from_cam: np.ndarray, intrinsic: np.ndarray, w: int, h: int) -> np.ndarray:
    """Sky gradient above the horizon, grey ground below, from each pixel's world ray."""
    m = (world_from_cam[:3, :3] @ np.linalg.inv(intrinsic)).astype(np.float32)
    u = np.arange(w, dtype=np.float32)[None, :] + 0.5
    v = np.arange(h, dtype=np.float32)[:, None] + 0.5
    rx, ry, rz = (m[i, 0] * u + m[i, 1] * v + m[i, 2] for i in range(3))      # [H,W] each
    elev = rz / np.sqrt(rx * rx + ry * ry + rz * rz)          # sin(elevation) of the pixel ray
    # Colour by elevation through a 512-entry table: sky brightens towards the horizon, ground
    # brightens towards it too (asphalt at grazing angles).
    e = np.linspace(-1, 1, 512, dtype=np.float32)[:, None]
    sky_t = np.sqrt(np.clip(e, 0, 1))
    gnd_t = np.clip(1 + e * 4, 0, 1)
    lut = np.where(e >= 0, _SKY_HORIZON * (1 - sky_t) + _SKY_ZENITH * sky_t,
                   _GROUND_NEAR * (1 - gnd_t) + _GROUND_FAR * gnd_t).astype(np.uint8)
    idx = np.clip(((elev + 1) * 255.5).astype(np.int32), 0, 511)
    # Keep the horizon exact: the table's bins must not put a ground pixel in the sky.
    idx = np.where(elev >= 0, np.maximum(idx, 256), np.minimum(idx, 255))
    return lut[idx]


# The background depends only on the camera's orientation, K and the image size, never on the
# scene; a rig renders the same few cameras every frame, so it is computed once per camera.
_BACKGROUND_CACHE: dict[bytes, Image.Image] = {}
_BACKGROUND_CACHE_MAX = 64


def _background_image(cam_to_world: np.ndarray, intrinsic: np.ndarray, w: int, h: int
                      ) -> Image.Image:
    """A fresh (drawable) copy of the cached background of this camera orientation."""
    key = (np.round(cam_to_world[:3, :3], 9).tobytes() + np.asarray(intrinsic, np.float64)
           .tobytes() + np.array([w, h], np.int64).tobytes())
    img = _BACKGROUND_CACHE.get(key)
    if img is None:
        if len(_BACKGROUND_CACHE) >= _BACKGROUND_CACHE_MAX:
            _BACKGROUND_CACHE.pop(next(iter(_BACKGROUND_CACHE)))
        img = _BACKGROUND_CACHE[key] = Image.fromarray(_background(cam_to_world, intrinsic, w, h))
    return img.copy()


def _fill_rings(draw: ImageDraw.ImageDraw, pts: np.ndarray, sizes: np.ndarray, colors: list,
                world_to_cam: np.ndarray, intrinsic: np.ndarray, w: int, h: int) -> None:
    """Project rings through the camera and fill them in order.

    Args:
      pts: [M,3] world vertices of all rings, concatenated; sizes: [P] vertices per ring;
      colors: P (r, g, b) int tuples.

    All vertices are transformed in one matrix product. A ring is culled when all its vertices
    lie outside one plane of the view frustum (behind the near plane, or beyond one image
    edge: the edge planes pass through the camera centre, so the test holds for points behind
    the camera too); only rings crossing the near plane need clipping.
    """
    if not len(sizes):
        return
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    cam = pts @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    hom = cam @ intrinsic.T                                   # (u z, v z, z) for each vertex
    z = hom[:, 2]
    outside = np.stack([cam[:, 2] < NEAR_PLANE_M, hom[:, 0] < 0, hom[:, 0] > w * z,
                        hom[:, 1] < 0, hom[:, 1] > h * z], 1)
    culled = np.logical_and.reduceat(outside, starts, axis=0).any(1)
    needs_clip = np.logical_or.reduceat(outside[:, 0], starts)
    uv = hom[:, :2] / np.where(outside[:, :1], 1.0, z[:, None])
    for i in np.flatnonzero(~culled):
        a, b = starts[i], starts[i] + sizes[i]
        if needs_clip[i]:
            ring = _clip_near(cam[a:b])
            if len(ring) < 3:
                continue
            ring = ring @ intrinsic.T
            xy = ring[:, :2] / ring[:, 2:3]
        else:
            xy = uv[a:b]
        draw.polygon(xy.ravel().tolist(), fill=colors[i])


def _ground_rings(world: RenderWorld) -> tuple[np.ndarray, np.ndarray, list]:
    """(pts [M,3], sizes [P], colors) of the ground polygons then the buffered ground lines,
    built once per world and shared by every camera that renders it."""
    key = (id(world.ground_polygons), len(world.ground_polygons), id(world.ground_lines),
           len(world.ground_lines))
    cached = getattr(world, "_ground_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    rings, colors = [], []
    for poly, color in world.ground_polygons:
        rings.append(np.asarray(poly, np.float64))
        colors.append(tuple(int(c) for c in color))
    for line, width, color in world.ground_lines:
        strip = shapely.LineString(np.asarray(line, np.float64)).buffer(
            width / 2, cap_style="flat", join_style="mitre")
        for part in getattr(strip, "geoms", [strip]):
            if not part.is_empty:
                rings.append(np.asarray(part.exterior.coords)[:-1])
                colors.append(tuple(int(c) for c in color))
    sizes = np.array([len(r) for r in rings], np.int64)
    xy = np.concatenate(rings) if rings else np.zeros((0, 2))
    out = (np.concatenate([xy, np.zeros((len(xy), 1))], 1), sizes, colors)
    world._ground_cache = (key, out)
    return out


def render_camera(world: RenderWorld, cam_to_world: np.ndarray, intrinsic: np.ndarray,
                  image_wh: tuple[int, int]) -> np.ndarray:
    """Render one pinhole camera (no distortion).

    Args:
      world: the scene.
      cam_to_world: [4,4] camera (OpenCV axes: x right, y down, z forward) to world.
      intrinsic: [3,3] pinhole matrix K in pixels of the output image.
      image_wh: (W, H) output size.
    Returns:
      uint8 [H, W, 3] RGB image.
    """
    cam_to_world = _check_pose(cam_to_world, "render_camera: cam_to_world")
    intrinsic = np.asarray(intrinsic, np.float64)
    if intrinsic.shape != (3, 3) or intrinsic[2, 2] == 0:
        raise ValueError(f"render_camera: intrinsic must be a [3,3] pinhole K, got {intrinsic}")
    w, h = (int(x) for x in image_wh)
    world_to_cam = np.linalg.inv(cam_to_world)

    img = _background_image(cam_to_world, intrinsic, w, h)
    draw = ImageDraw.Draw(img)
    _fill_rings(draw, *_ground_rings(world), world_to_cam, intrinsic, w, h)

    if len(world.boxes):
        corners = box_corners(world.boxes)                          # [N,8,3]
        cam_pos = cam_to_world[:3, 3]
        rots = _yaw_rotations(world.boxes[:, 6])
        normals = np.einsum("nij,fj->nfi", rots, _FACE_NORMALS_LOCAL)  # [N,6,3]
        face_pts = corners[:, _FACES]                                # [N,6,4,3]
        # Back-face culling: a face of a convex box is visible iff the camera is on the outer
        # side of its plane. Then the visible faces of one box never overlap each other.
        visible = np.einsum("nfi,nfi->nf", normals, cam_pos - face_pts[:, :, 0]) > 0
        shade = _AMBIENT + _DIFFUSE * np.clip(normals @ _SUN, 0, None)      # [N,6]
        face_colors = np.clip(world.box_colors[:, None, :] * shade[..., None], 0, 255)
        depth = np.linalg.norm(world.boxes[:, :3] - cam_pos, axis=1)
        order = np.argsort(-depth)            # painter's order: far boxes first
        nf = np.nonzero(visible[order])
        faces = face_pts[order][nf]                                  # [Q,4,3]
        colors = [tuple(int(c) for c in rgb) for rgb in face_colors[order][nf]]
        _fill_rings(draw, faces.reshape(-1, 3), np.full(len(faces), 4), colors, world_to_cam,
                    intrinsic, w, h)
    return np.asarray(img)


# ----------------------------------------------------------------------------------------------
# LiDAR.

def lidar_scan(world: RenderWorld, lidar_to_world: np.ndarray, num_points: int,
               rng: np.random.Generator | int, *, num_rings: int = 32,
               elevation_deg: tuple[float, float] = (-25.0, 10.0), max_range_m: float = 80.0,
               range_noise_m: float = 0.02, lidar_id: int = 0) -> np.ndarray:
    """Simulate a spinning LiDAR: ``num_rings`` rings evenly spread over ``elevation_deg``,
    azimuths drawn uniformly, rays hitting the ground plane z = 0 or a box (nearest hit).

    Rays are drawn in batches until ``num_points`` of them hit something within
    ``max_range_m``, so the cloud has exactly ``num_points`` points unless the world offers almost
    nothing to hit (then fewer). Points are sorted by ring, then azimuth, as a real sweep.

    Args:
      world: the scene.
      lidar_to_world: [4,4] LiDAR (x forward, y left, z up) to world.
      num_points: points wanted (N).
      rng: numpy Generator (or a seed) for azimuths and range noise.
    Returns:
      float32 [6, N]: rows x, y, z (LiDAR frame, m), intensity (0..255: ground dim, lane
      markings and boxes brighter, scaled by the cosine of the incidence angle), ring index
      (0 = lowest elevation), lidar_id — NAVSIM's MergedPointCloud layout.
    """
    lidar_to_world = _check_pose(lidar_to_world, "lidar_scan: lidar_to_world")
    if num_points <= 0:
        raise ValueError(f"lidar_scan: num_points must be positive, got {num_points}")
    rng = np.random.default_rng(rng)
    elevations = np.deg2rad(np.linspace(elevation_deg[0], elevation_deg[1], num_rings))
    origin = lidar_to_world[:3, 3]
    rot = lidar_to_world[:3, :3]

    # Lane markings are retro-reflective: ground returns inside them are bright.
    lines = [shapely.LineString(np.asarray(line, np.float64)).buffer(w / 2, cap_style="flat")
             for line, w, _ in world.ground_lines]
    markings = shapely.union_all(lines) if lines else None
    if markings is not None:
        shapely.prepare(markings)

    # Most rays below the horizon hit the ground within range, so 1.5x is usually one round.
    hits, batch = [], int(1.5 * num_points) + 1024
    for _ in range(8):       # enough rounds for any world where a few percent of rays hit
        ring = rng.integers(0, num_rings, batch)
        azim = rng.uniform(-np.pi, np.pi, batch)
        el = elevations[ring]
        d_lidar = np.stack([np.cos(el) * np.cos(azim), np.cos(el) * np.sin(azim), np.sin(el)], 1)
        d = d_lidar @ rot.T                                         # world directions [B,3]
        t, normal, base = _cast(world, origin, d, markings)
        ok = t <= max_range_m
        t = t[ok] + rng.normal(0.0, range_noise_m, ok.sum())
        cos_inc = np.abs(np.einsum("bi,bi->b", normal[ok], d[ok]))
        intensity = np.clip(base[ok] * (0.3 + 0.7 * cos_inc), 0, 255)
        hits.append(np.stack([*(d_lidar[ok] * t[:, None]).T, intensity, ring[ok], azim[ok]], 0))
        if sum(h.shape[1] for h in hits) >= num_points:
            break
    pts = np.concatenate(hits, 1)[:, :num_points]
    pts = pts[:, np.lexsort((pts[5], pts[4]))]
    pts[5] = lidar_id
    return pts.astype(np.float32)



def _cast(world: RenderWorld, origin: np.ndarray, d: np.ndarray, markings
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of rays origin + t d (d [B,3] unit, world) with the ground and the boxes.

    Returns t [B] (inf for no hit), the surface normal [B,3] and the surface's base intensity [B].
    """
    b = len(d)
    t = np.full(b, np.inf)
    normal = np.tile([0.0, 0.0, 1.0], (b, 1))
    base = np.full(b, _INTENSITY_GROUND)
    down = d[:, 2] < -1e-9
    if origin[2] > 0:
        t[down] = -origin[2] / d[down, 2]
    if markings is not None and down.any():
        xy = origin[:2] + t[down, None] * d[down, :2]
        base[np.flatnonzero(down)[shapely.contains_xy(markings, xy[:, 0], xy[:, 1])]] = \
            _INTENSITY_MARKING
    if len(world.boxes):
        _hit_boxes(world.boxes, origin, d, t, normal, base)
    return t, normal, base


def _hit_boxes(boxes: np.ndarray, origin: np.ndarray, d: np.ndarray, t: np.ndarray,
               normal: np.ndarray, base: np.ndarray) -> None:
    """Ray-box slab test of rays origin + t d (d [B,3]) against boxes [N,7]; where a box is hit
    nearer than ``t`` [B], overwrite t, normal [B,3] and base intensity [B] in place."""
    # Only (ray, box) pairs whose horizontal directions are within the box's bounding-circle
    # angle can hit: this keeps the slab test sparse (a box covers a few degrees of azimuth).
    rel = boxes[:, :2] - origin[:2]
    dist = np.linalg.norm(rel, axis=1)
    radius = np.linalg.norm(boxes[:, 3:5], axis=1) / 2
    half_angle = np.where(dist > radius, np.arcsin(np.minimum(radius / np.maximum(dist, 1e-9), 1)),
                          np.pi)
    ray_az = np.arctan2(d[:, 1], d[:, 0]).astype(np.float32)
    box_az = np.arctan2(rel[:, 1], rel[:, 0]).astype(np.float32)
    diff = np.abs((ray_az[:, None] - box_az[None] + np.pi) % (2 * np.pi) - np.pi)
    ri, bi = np.nonzero(diff <= half_angle[None].astype(np.float32) + 1e-3)
    if not len(ri):
        return
    inv = np.transpose(_yaw_rotations(boxes[:, 6]), (0, 2, 1))          # world -> box [N,3,3]
    o = np.einsum("pij,pj->pi", inv[bi], origin - boxes[bi, :3])         # [P,3]
    dl = np.einsum("pij,pj->pi", inv[bi], d[ri])                         # [P,3]
    half = boxes[bi, 3:6] / 2
    par = np.abs(dl) < 1e-12
    safe = np.where(par, 1.0, dl)
    t0, t1 = (-half - o) / safe, (half - o) / safe
    # A ray parallel to a slab stays inside it for all t iff its origin is inside.
    inside = np.abs(o) <= half
    tmin_ax = np.where(par, np.where(inside, -np.inf, np.inf), np.minimum(t0, t1))
    tmax_ax = np.where(par, np.where(inside, np.inf, -np.inf), np.maximum(t0, t1))
    t_near, t_far = tmin_ax.max(-1), tmax_ax.min(-1)
    ok = (t_near <= t_far) & (t_near > 0)
    ri, bi, t_near, tmin_ax, dl = ri[ok], bi[ok], t_near[ok], tmin_ax[ok], dl[ok]
    if not len(ri):           # every candidate pair missed its box (or lies behind the sensor)
        return
    # Nearest box per ray: sort pairs by t, keep each ray's first, then compare with the ground.
    order = np.lexsort((t_near, ri))
    ri, bi, t_near, tmin_ax, dl = ri[order], bi[order], t_near[order], tmin_ax[order], dl[order]
    first = np.r_[True, ri[1:] != ri[:-1]]
    ri, bi, t_near, tmin_ax, dl = ri[first], bi[first], t_near[first], tmin_ax[first], dl[first]
    closer = t_near < t[ri]
    ri, bi, t_near, tmin_ax, dl = ri[closer], bi[closer], t_near[closer], tmin_ax[closer], dl[closer]
    axis = tmin_ax.argmax(-1)                                  # the slab the ray entered last
    n_local = np.zeros((len(ri), 3))
    n_local[np.arange(len(ri)), axis] = -np.sign(dl[np.arange(len(ri)), axis])
    normal[ri] = np.einsum("pji,pj->pi", inv[bi], n_local)     # box -> world (inverse of inv)
    base[ri] = _INTENSITY_BOX
    t[ri] = t_near


def default_intrinsic(image_wh: tuple[int, int], hfov_deg: float = 70.0) -> np.ndarray:
    """[3,3] pinhole K with the principal point at the image centre and the given horizontal
    field of view (NAVSIM's front camera: about 70 deg)."""
    w, h = image_wh
    f = w / 2 / np.tan(np.deg2rad(hfov_deg) / 2)
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], np.float64)


def camera_pose(position: Sequence[float], yaw: float, pitch: float = 0.0) -> np.ndarray:
    """[4,4] cam_to_world for a camera at ``position`` (x, y, z) looking along the world heading
    ``yaw`` (rad, CCW from +x), tilted down by ``pitch`` (rad), OpenCV axes."""
    c, s = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    fwd = np.array([c * cp, s * cp, -sp])
    right = np.array([s, -c, 0.0])
    down = np.cross(fwd, right)
    m = np.eye(4)
    m[:3, :3] = np.stack([right, down, fwd], 1)
    m[:3, 3] = position
    return m
