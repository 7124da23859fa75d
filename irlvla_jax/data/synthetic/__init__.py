"""A synthetic world written in NAVSIM's on-disk format (logs, sensor blobs, nuPlan maps).

    from irlvla_jax.data.synthetic import generate
    truth = generate(config.data.synthetic, sizes, root, maps_root, {"synthetic_train": 6})

``road`` builds the road networks; ``signals``, ``road_users`` and ``traffic`` simulate the
junctions' signals, the traffic and the expert ego; ``world`` samples one log from them;
``map_writer`` writes the nuPlan ``map.gpkg`` files, ``log_writer`` the log pickles and sensor
blobs; ``rig`` holds the camera/LiDAR extrinsics. The real NAVSIM reader reads the result
unchanged.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from tqdm import tqdm

from irlvla_jax.data.synthetic import log_writer, map_writer, world
from irlvla_jax.data.synthetic.road import MAP_LOCATIONS, build_map

#: Each split's logs cycle through the locations in this order (Las Vegas is the big map).
LOG_LOCATIONS = ("us-nv-las-vegas-strip", "us-ma-boston", "us-pa-pittsburgh-hazelwood",
                 "sg-one-north")

_WORKER_STATE: dict = {}


def _cfg(cfg: Mapping[str, Any], key: str):
    try:
        return cfg[key]
    except (KeyError, AttributeError):
        raise ValueError(f"config.data.synthetic is missing field {key!r}") from None


def _init_worker(maps: dict, args: dict) -> None:
    _WORKER_STATE.update(maps=maps, grounds={}, args=args)


def _make_log(job: tuple[str, int, str, str]) -> dict:
    """Simulate and write one log (runs in a worker or in-process)."""
    split, index, location, name = job
    a, road = _WORKER_STATE["args"], _WORKER_STATE["maps"][location]
    ground = _WORKER_STATE["grounds"].get(location)
    if ground is None:
        ground = _WORKER_STATE["grounds"][location] = log_writer.GroundCache(road)
    seed = int(log_writer.token(a["seed"], split, index), 16) % 2**31
    truth, frames = world.simulate_log(road, seed, a["frames"])
    path = log_writer.write_log(road, ground, truth, frames, a["root"], split, name, seed,
                                a["image_wh"], a["lidar_points"])
    return dict(split=split, log_name=name, path=str(path), truth=truth)


def generate(config_synthetic: Mapping[str, Any], sizes: Any, root: Path, maps_root: Path,
             splits: Optional[Mapping[str, int]] = None, workers: Optional[int] = None,
             progress: bool = True, write_maps: bool = True) -> dict:
    """Write a NAVSIM-format dataset root and the 4 nuPlan maps; return ground truth.

    Args:
      config_synthetic: ``config.data.synthetic`` (seed, num_logs, frames_per_log, image_wh,
        lidar_points).
      sizes: ``SceneSizes`` (or None); logs must hold at least one 4 + num_future window.
      root: the dataset root ($OPENSCENE_DATA_ROOT): ``navsim_logs/<split>/*.pkl`` and
        ``sensor_blobs/<split>/<log>/...`` are written there.
      maps_root: $NUPLAN_MAPS_ROOT: ``nuplan-maps-v1.0.json`` and
        ``<location>/<version>/map.gpkg`` for all 4 locations.
      splits: split -> number of logs (default ``config_synthetic.num_logs``).
      workers: processes for the logs (default: min(cpu count, logs); 1 = in-process).
      write_maps: False skips the gpkg/json files (already written by an earlier call).
    Returns:
      {"maps": {location: gpkg path}, "logs": {split: [{"log_name", "path",
      "truth": world.LogTruth}]}} in log order.
    """
    seed = int(_cfg(config_synthetic, "seed"))
    splits = dict(_cfg(config_synthetic, "num_logs") if splits is None else splits)
    frames = int(_cfg(config_synthetic, "frames_per_log"))
    image_wh = tuple(int(v) for v in _cfg(config_synthetic, "image_wh"))
    lidar_points = int(_cfg(config_synthetic, "lidar_points"))
    need = 4 + (sizes.num_future if sizes is not None else 1)
    if frames < need:
        raise ValueError(f"config.data.synthetic.frames_per_log={frames} is shorter than one "
                         f"scene window ({need} frames)")
    if len(image_wh) != 2 or min(image_wh) < 8:
        raise ValueError(f"config.data.synthetic.image_wh={image_wh} must be (W, H) >= 8 px")
    root, maps_root = Path(root), Path(maps_root)

    maps = {loc: build_map(loc, seed) for loc in MAP_LOCATIONS}
    if write_maps:
        map_writer.write_versions_json(maps_root)
        for m in maps.values():
            map_writer.write_map(m, maps_root)
    paths = {loc: str(map_writer.map_path(maps_root, loc)) for loc in sorted(maps)}

    jobs = [(split, i, LOG_LOCATIONS[i % len(LOG_LOCATIONS)], log_writer.log_name(split, i, seed))
            for split, n in sorted(splits.items()) for i in range(int(n))]
    args = dict(seed=seed, frames=frames, image_wh=image_wh, lidar_points=lidar_points,
                root=root)
    workers = min(os.cpu_count() or 1, len(jobs)) if workers is None else workers
    bar = dict(total=len(jobs), desc="synthetic logs", unit="log", disable=not progress)
    if workers <= 1:
        _init_worker(maps, args)
        results = [_make_log(j) for j in tqdm(jobs, **bar)]
    else:
        # spawn, not fork: the caller may have started JAX's threads.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(maps, args)) as pool:
            results = list(tqdm(pool.imap(_make_log, jobs), **bar))
    logs: dict = {split: [] for split in sorted(splits)}
    for r in results:
        logs[r.pop("split")].append(r)
    return {"maps": paths, "logs": logs}


__all__ = ["generate", "LOG_LOCATIONS"]
