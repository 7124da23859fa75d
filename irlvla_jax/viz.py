"""Pictures of scenes: a bird's-eye view of one Scene with plans and scores, and its cameras.

The BEV is drawn in the t = 0 ego rear-axle frame the Scene uses, turned so the ego drives up
the page: the vertical axis is x (forward), the horizontal axis is -y (so left is left).
Everything honours the Scene's valid masks: padding never shows.

Figures are plain ``matplotlib.figure.Figure`` objects on the Agg canvas (no pyplot state, no
display needed), so this works headless and inside training loops.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure

from irlvla_jax import types

#: Chrysler Pacifica (the nuPlan ego): length, width (m); the rear axle is this far behind the
#: box centre, so in the rear-axle frame the centre sits at x = +EGO_REAR_AXLE_TO_CENTER_M.
EGO_LENGTH_M, EGO_WIDTH_M, EGO_REAR_AXLE_TO_CENTER_M = 5.176, 2.297, 1.461

EGO_COLOR = "#00a087"
EXPERT_COLOR = "#222222"
HISTORY_COLOR = "#7f7f7f"
CENTERLINE_COLOR = "#4a7bd0"
#: Fill per ``MAP_POLYGON_TYPES`` entry (roadblock, lane, lane connector, intersection, carpark).
MAP_COLORS = ("#e4e4e4", "#d6d6d6", "#d0d0d6", "#cfcfcf", "#e6dfcf")
ON_ROUTE_COLOR = "#c9dcf5"
#: Agent colours: vehicles, pedestrians, bicycles; all static classes share the last one.
AGENT_COLORS = {types.VEHICLE: "#1f4fbf", types.PEDESTRIAN: "#e07b00", types.BICYCLE: "#9b3fbf"}
STATIC_COLOR = "#8c6d46"
#: Plan colours and markers in drawing order: none is the lights' red / green, the ego's teal or
#: the vehicles' blue, and each plan has its own marker.
PLAN_COLORS = ("#ff7f0e", "#5e3c99", "#e7298a", "#8c564b", "#17becf", "#bcbd22", "#7f7f7f")
PLAN_MARKERS = ("s", "D", "^", "v", "P", "X", "o")
#: Line width of the last plan drawn; each earlier plan is this much wider, so a plan drawn over
#: another along the same path leaves the one beneath visible as a border.
PLAN_WIDTH = 1.5


def _page(xy: np.ndarray) -> np.ndarray:
    """Ego-frame points [..., 2] (x fwd, y left) -> page coordinates [..., 2] (-y, x)."""
    xy = np.asarray(xy, np.float64)
    return np.stack([-xy[..., 1], xy[..., 0]], -1)


def box_outline(center_xy: np.ndarray, heading: np.ndarray, length: np.ndarray,
                width: np.ndarray) -> np.ndarray:
    """Oriented boxes -> corner rings [..., 4, 2] (ego frame).

    center_xy [..., 2], heading [...], length [...], width [...] (broadcastable).
    """
    c, s = np.cos(heading)[..., None], np.sin(heading)[..., None]
    lx = np.array([1, 1, -1, -1]) * np.asarray(length)[..., None] / 2
    ly = np.array([1, -1, -1, 1]) * np.asarray(width)[..., None] / 2
    x = center_xy[..., 0:1] + c * lx - s * ly
    y = center_xy[..., 1:2] + s * lx + c * ly
    return np.stack([x, y], -1)


def _numpy_scene(scene: types.Scene) -> types.Scene:
    scene = types.Scene(**{k: np.asarray(v) for k, v in scene.to_dict().items()})
    if scene.batch_shape != ():
        raise ValueError(f"plot_scene_bev: expected one scene, got a batch of shape "
                         f"{scene.batch_shape}; index it first (jax.tree.map(lambda a: a[i], s))")
    return scene


def _new_axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def plot_scene_bev(scene: types.Scene,
                   plans: Mapping[str, np.ndarray] | None = None,
                   scores: Mapping[str, float] | None = None,
                   ax=None, title: str = "",
                   x_range: tuple[float, float] = (-20.0, 60.0),
                   y_half: float = 40.0) -> Figure:
    """Bird's-eye view of one scene.

    Args:
      scene: one unbatched Scene (numpy or jax arrays).
      plans: name -> poses [8,3] or [K,8,3] (x, y, heading; t = 0.5..4 s, ego frame); K samples
        of one policy share its colour and legend entry. Drawn in this order, each over the
        previous ones and narrower (put the plan that matters most last).
      scores: name -> value, printed in a box (e.g. EPDMS and sub-scores).
      ax: draw into this Axes (its figure is returned); None makes a new 7x7 in figure.
      title: axes title.
      x_range: forward extent shown (m, ego x); y_half: lateral half-width shown (m).
    Returns:
      the matplotlib Figure.
    """
    s = _numpy_scene(scene)
    fig, ax = _new_axes(ax, (7, 7))

    # Drivable map: per-type fill, on-route lanes tinted; vertex masks drop padding.
    polys, faces, edges = [], [], []
    for p in np.flatnonzero(s.map_polygon_valid):
        ring = s.map_polygons[p][s.map_vertex_valid[p]]
        if len(ring) < 3:
            continue
        polys.append(_page(ring))
        kind = int(s.map_polygon_type[p])
        faces.append(ON_ROUTE_COLOR if s.map_polygon_on_route[p]
                     else MAP_COLORS[kind] if 0 <= kind < len(MAP_COLORS) else "#dddddd")
        edges.append("#b0b0b0")
    if polys:
        ax.add_collection(PolyCollection(polys, facecolors=faces, edgecolors=edges,
                                         linewidths=0.4, zorder=1))

    lanes = [_page(s.lane_vectors[m, :, :2]) for m in np.flatnonzero(s.lane_valid)]
    if lanes:
        ax.add_collection(LineCollection(lanes, colors="#a8a8a8", linewidths=0.6,
                                         linestyles="--", zorder=2))

    # Red-light connectors: red where red at t = 0, else green.
    lights, light_colors = [], []
    for li in np.flatnonzero(s.red_light_valid):
        ring = s.red_light_polygons[li][s.red_light_vertex_valid[li]]
        if len(ring) >= 3:
            lights.append(_page(ring))
            light_colors.append("#e03030" if s.red_light_is_red[li, 0] else "#3cb043")
    if lights:
        ax.add_collection(PolyCollection(lights, facecolors=light_colors, alpha=0.55,
                                         edgecolors="none", zorder=2.5))

    cl = s.centerline[s.centerline_valid, :2]
    if len(cl) >= 2:
        ax.plot(*_page(cl).T, color=CENTERLINE_COLOR, lw=1.2, alpha=0.8, zorder=3,
                label="route centreline")

    # Agents: box at t = 0 (if annotated then), faded centres of the future frames.
    for a in np.flatnonzero(s.agent_valid.any(-1)):
        cls = int(s.agent_class[a])
        color = AGENT_COLORS.get(cls, STATIC_COLOR)
        valid = s.agent_valid[a]
        if valid[0]:
            st = s.agent_states[a, 0]
            ring = box_outline(st[:2], st[2], s.agent_size[a, 0], s.agent_size[a, 1])
            ax.fill(*_page(ring).T, facecolor=color, edgecolor="black", lw=0.5, alpha=0.9,
                    zorder=6)
            # Heading tick: centre to the front edge.
            front = st[:2] + np.array([np.cos(st[2]), np.sin(st[2])]) * s.agent_size[a, 0] / 2
            ax.plot(*_page(np.stack([st[:2], front])).T, color="white", lw=0.8, zorder=6.1)
        fut = np.flatnonzero(valid[1:]) + 1
        if len(fut):
            pts = _page(s.agent_states[a, fut, :2])
            alphas = np.linspace(0.5, 0.12, len(fut))
            ax.scatter(pts[:, 0], pts[:, 1], s=10, color=color, alpha=alphas, lw=0, zorder=5.5)

    # Ego: history, expert future, plans, then the ego box on top of where they start.
    hist = _page(s.ego_history[:, :2])
    ax.plot(hist[:, 0], hist[:, 1], "o-", color=HISTORY_COLOR, ms=3, lw=1.5, zorder=7,
            label="ego history")
    exp = s.expert_future[s.expert_future_valid, :2]
    if len(exp):
        exp = _page(np.concatenate([np.zeros((1, 2)), exp]))
        ax.plot(exp[:, 0], exp[:, 1], "o-", color=EXPERT_COLOR, ms=3, lw=2, zorder=7.5,
                label="expert")

    plans = dict(plans or {})
    for i, (name, plan) in enumerate(plans.items()):
        plan = np.asarray(plan, np.float64)
        if plan.ndim == 2:
            plan = plan[None]
        if plan.ndim != 3 or plan.shape[-1] < 2:
            raise ValueError(f"plot_scene_bev: plan {name!r} has shape {plan.shape}, expected "
                             "[T,3] or [K,T,3]")
        wider = len(plans) - 1 - i                  # how many plans are drawn over this one
        style = dict(color=PLAN_COLORS[i % len(PLAN_COLORS)],
                     marker=PLAN_MARKERS[i % len(PLAN_MARKERS)], lw=PLAN_WIDTH * (1 + wider),
                     ms=6, mec="white", mew=0.7, zorder=8 + 0.01 * i,
                     alpha=0.95 if len(plan) == 1 else max(0.15, 0.9 / np.sqrt(len(plan))))
        for k, traj in enumerate(plan):
            pts = _page(np.concatenate([np.zeros((1, 2)), traj[:, :2]]))
            ax.plot(pts[:, 0], pts[:, 1], markevery=slice(1, None),
                    label=name if k == 0 else None, **style)

    ego = box_outline(np.array([EGO_REAR_AXLE_TO_CENTER_M, 0.0]), 0.0, EGO_LENGTH_M,
                      EGO_WIDTH_M)
    # under the plans (zorder 8+): a plan that stops within the ego's length stays visible
    ax.fill(*_page(ego).T, facecolor=EGO_COLOR, edgecolor="black", lw=0.8, zorder=6.9,
            label="ego")

    if scores:
        text = "\n".join(f"{k}: {float(v):.3f}" for k, v in scores.items())
        ax.text(0.02, 0.98, text, transform=ax.transAxes, va="top", ha="left", family="monospace",
                fontsize=8, zorder=10,
                bbox=dict(boxstyle="round", facecolor="white", alpha=0.85, edgecolor="#999999"))

    ax.set_xlim(-y_half, y_half)
    ax.set_ylim(*x_range)
    ax.set_aspect("equal")
    ax.set_facecolor("#f7f7f2")
    ax.set_xlabel("-y (m, right)")
    ax.set_ylabel("x (m, forward)")
    if title:
        ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7, framealpha=0.85)
    return fig


def fit_view(*poses: np.ndarray, margin: float = 8.0, min_span: float = 30.0
             ) -> dict[str, Any]:
    """``x_range`` and ``y_half`` for :func:`plot_scene_bev` that show the ego and every given
    pose ([..., 2+] ego frame, e.g. plans [K, 8, 3] and the expert [T, 3]) with ``margin``
    metres around, as a square at least ``min_span`` metres wide (the axes keep equal scale)."""
    pts = [np.zeros((1, 2))] + [np.asarray(p, np.float64)[..., :2].reshape(-1, 2) for p in poses]
    pts = np.concatenate(pts)
    pts = pts[np.isfinite(pts).all(-1)]
    lo, hi = pts[:, 0].min() - margin, pts[:, 0].max() + margin
    half = max(np.abs(pts[:, 1]).max() + margin, (hi - lo) / 2, min_span / 2)
    mid = (lo + hi) / 2
    return {"x_range": (mid - half, mid + half), "y_half": half}


def save_scene_bev(path: str | os.PathLike, scene: types.Scene, dpi: int = 100,
                   **kwargs) -> str:
    """:func:`plot_scene_bev` (same keyword arguments) written as a PNG; returns the path."""
    fig = plot_scene_bev(scene, **kwargs)
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return os.fspath(path)


def plot_camera_grid(scene: types.Scene, camera_names: Sequence[str] | None = None,
                     ncols: int | None = None) -> Figure:
    """The scene's cameras [C,H,W,3] in a grid, titled by ``camera_names`` (e.g.
    ``SceneSizes.cameras``) when given."""
    cams = np.asarray(scene.cameras)
    if cams.ndim != 4 or cams.shape[-1] != 3:
        raise ValueError(f"plot_camera_grid: scene.cameras has shape {cams.shape}, expected "
                         "[C,H,W,3] (one unbatched scene)")
    c, h, w, _ = cams.shape
    if camera_names is not None and len(camera_names) != c:
        raise ValueError(f"plot_camera_grid: {len(camera_names)} camera names for {c} cameras")
    ncols = ncols or min(c, 4)
    nrows = -(-c // ncols)
    panel_w = 3.2
    fig = Figure(figsize=(panel_w * ncols, panel_w * h / w * nrows + 0.4 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    for i in range(c):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(cams[i], interpolation="nearest")
        ax.set_title(camera_names[i] if camera_names is not None else f"camera {i}", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return fig

