"""K-means trajectory anchors: the planner's mode vocabulary (DiffusionDrive's truncated diffusion).

The diffusion planner starts every denoising chain from M anchors with a little noise, so the
anchors must cover the expert's behaviour: they are the k-means centres of the expert's 8-pose
futures (x, y, heading in the ego frame). Computed once from a seeded sample of at most
``config.il.anchor_scenes`` training scenes (:func:`sample_expert_futures`), written next to the
dataset (``anchors.npy``) and stored with each checkpoint so a policy always plans from the
anchors it was trained with.

    python -m irlvla_jax.models.anchors --config configs/tiny.py      # writes <data.dir>/anchors.npy
"""

from __future__ import annotations

import os

import numpy as np
from scipy.cluster.vq import kmeans2

from irlvla_jax import types

ANCHOR_FILE = "anchors.npy"


def compute_anchors(expert_futures: np.ndarray, num_anchors: int, seed: int = 0,
                    iters: int = 50) -> np.ndarray:
    """K-means centres of expert futures.

    Args:
      expert_futures: [N, 8, 3] float (x, y, heading) poses; N >= num_anchors.
      num_anchors: M.
    Returns:
      [M, 8, 3] float32 anchors, sorted by final x (slowest first) so the order is stable.

    Clustering runs on (x, y) only (as DiffusionDrive does): heading follows the positions, and
    mixing radians with metres would weight them arbitrarily. Each anchor's heading is the mean
    heading (circular) of its members.
    """
    futures = np.asarray(expert_futures, np.float64)
    if futures.ndim != 3 or futures.shape[1:] != (types.PLAN_LEN, 3):
        raise ValueError(f"compute_anchors: expert_futures has shape {futures.shape}, "
                         f"expected [N, {types.PLAN_LEN}, 3]")
    if not np.isfinite(futures).all():
        raise ValueError("compute_anchors: expert_futures holds NaN or inf")
    n = futures.shape[0]
    if n < num_anchors:
        raise ValueError(f"compute_anchors: {n} expert futures cannot give {num_anchors} anchors")
    xy = futures[..., :2].reshape(n, -1)
    # kmeans++ initialisation with a fixed generator: reproducible anchors for a given seed.
    centres, labels = kmeans2(xy, num_anchors, iter=iters, minit="++", seed=seed)
    anchors = np.zeros((num_anchors, types.PLAN_LEN, 3))
    anchors[..., :2] = centres.reshape(num_anchors, types.PLAN_LEN, 2)
    for m in range(num_anchors):
        members = futures[labels == m, :, 2]
        if len(members) == 0:
            # An empty cluster (possible with many duplicate futures): take the heading of the
            # path itself so the anchor stays a plausible pose sequence.
            d = np.diff(np.concatenate([np.zeros((1, 2)), anchors[m, :, :2]]), axis=0)
            anchors[m, :, 2] = np.arctan2(d[:, 1], d[:, 0])
        else:
            anchors[m, :, 2] = np.arctan2(np.sin(members).mean(0), np.cos(members).mean(0))
    order = np.argsort(anchors[:, -1, 0], kind="stable")
    return anchors[order].astype(np.float32)


def sample_expert_futures(config, split: str, max_scenes: int | None, seed: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The expert futures of at most ``max_scenes`` scenes of ``split``, drawn without
    replacement by a generator seeded with ``seed`` (all scenes, in stored order, when the split
    has no more than ``max_scenes``; None = all). Only the two fields are decoded per scene (no
    camera is decoded), so the host holds O(max_scenes) small arrays whatever the split's size.

    Returns (scene indices [N] sorted, expert_future [N, F, 3] f32, expert_future_valid [N, F]).
    """
    from irlvla_jax.data import loader
    source = loader.open_source(config, split)
    n = len(source)
    if n == 0:
        raise ValueError(f"split {split!r} has no scenes to compute anchors from")
    if max_scenes is None or int(max_scenes) >= n:
        idx = np.arange(n)
    else:
        if int(max_scenes) < 1:
            raise ValueError(f"config.il.anchor_scenes = {max_scenes}: must be >= 1")
        idx = np.sort(np.random.default_rng(seed).choice(n, int(max_scenes), replace=False))
    full = types.scene_spec(types.SceneSizes.from_config(config.data.sizes))
    spec = {k: full[k] for k in ("expert_future", "expert_future_valid")}
    fut = np.empty((len(idx), *spec["expert_future"][0]), spec["expert_future"][1])
    valid = np.empty((len(idx), *spec["expert_future_valid"][0]), spec["expert_future_valid"][1])
    for row, i in enumerate(idx):
        arrays, _ = loader.decode_example(int(i), source[int(i)], spec=spec, split=split)
        fut[row], valid[row] = arrays["expert_future"], arrays["expert_future_valid"]
    return idx, fut, valid


def save_anchors(path: str, anchors: np.ndarray) -> None:
    """Write [M, 8, 3] anchors to ``path`` (.npy)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.save(path, np.asarray(anchors, np.float32))


def load_anchors(path: str, num_anchors: int | None = None) -> np.ndarray:
    """Read [M, 8, 3] anchors; a clear error if the file is missing or of the wrong shape."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"anchors file {path} does not exist; compute it with "
                                f"`python -m irlvla_jax.models.anchors --config ...`")
    a = np.load(path)
    if a.ndim != 3 or a.shape[1:] != (types.PLAN_LEN, 3):
        raise ValueError(f"{path}: anchors have shape {a.shape}, expected [M, {types.PLAN_LEN}, 3]")
    if num_anchors is not None and a.shape[0] != num_anchors:
        raise ValueError(f"{path}: {a.shape[0]} anchors, config.model.planner.num_anchors = "
                         f"{num_anchors}")
    return a.astype(np.float32)


def default_anchors(num_anchors: int) -> np.ndarray:
    """A data-free fan of [M, 8, 3] constant-speed, constant-curvature paths.

    Used only when no anchors file exists yet (shape checks, ``jax.eval_shape``, unit tests);
    training computes real anchors from the data.
    """
    speeds = np.linspace(1.0, 15.0, max(1, (num_anchors + 2) // 3))
    curvs = np.array([0.0, 0.04, -0.04])
    t = 0.5 * np.arange(1, types.PLAN_LEN + 1)
    out = []
    for v in speeds:
        for k in curvs:
            s = v * t
            h = k * s
            if k == 0.0:
                x, y = s, np.zeros_like(s)
            else:
                x, y = np.sin(h) / k, (1.0 - np.cos(h)) / k
            out.append(np.stack([x, y, h], -1))
    return np.asarray(out[:num_anchors], np.float32)


def main(argv=None) -> None:
    """Compute anchors from the training split and write them to ``<data dir>/anchors.npy``."""
    import argparse
    import importlib.util

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/tiny.py")
    parser.add_argument("--limit", type=int, default=0,
                        help="scenes sampled (0: config.il.anchor_scenes)")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    spec = importlib.util.spec_from_file_location("cfg", args.config)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    _, fut, valid = sample_expert_futures(config, config.data.train_split,
                                          args.limit or config.il.get("anchor_scenes", None),
                                          config.seed)
    ok = valid[:, :types.PLAN_LEN].all(-1)
    fut = fut[ok, :types.PLAN_LEN]
    anchors = compute_anchors(fut, config.model.planner.num_anchors, config.seed)
    out = args.out or anchor_path(config)
    save_anchors(out, anchors)
    print(f"wrote {anchors.shape[0]} anchors from {len(fut)} expert futures to {out}")


def anchor_path(config) -> str:
    """Where the anchors of ``config``'s dataset live: ``<data.dir or data/>/anchors.npy``."""
    root = config.data.dir or os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "data")
    return os.path.join(root, ANCHOR_FILE)


if __name__ == "__main__":
    main()
