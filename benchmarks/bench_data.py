"""Data pipeline at the embedded default and at NAVSIM size: build time per scene and its split,
TFDS bytes per scene, loader scenes/s with 0, 1 and 2 grain worker processes, and how many host
cores one GPU's IL step needs.

    python benchmarks/bench_data.py                         # both sizes, ~5 min on 2 cores
    python benchmarks/bench_data.py --sizes navsim --scenes 3
    python benchmarks/bench_data.py --jpeg-quality 0        # cameras stored raw (the old layout)

Per size (``tiny``: configs/tiny.py; ``navsim``: configs/navsim.py's sizes, 8 cameras resized to
256x704) it writes a synthetic NAVSIM-format world of one log of ``--scenes`` windows under
``--workdir`` (navsim: 1920x1080 JPEG cameras and ``--lidar-points`` LiDAR points per sweep, as
real NAVSIM sensor blobs), builds its TFDS dataset through the real reader
(``navsim_reader.SceneReader``) with the reader's parts timed, and reads it back through the
loader. Nothing here is a test; the figures depend on the machine and its load.

The IL step's demand: its FLOPs per scene at configs/navsim.py (``bench_il.il_step_flops``: the
lowered step's cost analysis, compile-free, on abstract shapes), at ``--mfu`` of
``--peak-tflops`` (40% of an H100's 989 bf16 TFLOP/s) -> scenes/s one GPU consumes. The loader's
cost per scene is the CPU time of one process reading, decoding and batching it (0 workers, one
thread), so host cores per GPU = demand x that cost, plus the main process's share with workers.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import json
import math
import os
import shutil
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

from irlvla_jax import types  # noqa: E402
from irlvla_jax.data import dataset_id, labels, loader, navsim_reader, prepare, route  # noqa: E402

MIB = 2.0 ** 20
SPLIT = "synthetic_train"
# The reader's parts, in table order; "other reader" is the reader's time not in any of them.
PARTS = ("pickle", "jpeg_decode", "resize", "lidar", "map", "agents", "labels", "other_reader",
         "encode", "tfds_write")
PART_NAMES = {"pickle": "log pickle load + parse", "jpeg_decode": "camera JPEG decode",
              "resize": "camera resize", "lidar": "LiDAR read + BEV raster",
              "map": "map query (route, polygons, lights, lanes)", "agents": "agents",
              "labels": "labels (BEV semantic, meta action)", "other_reader": "other (reader)",
              "encode": "example encode (camera JPEG)", "tfds_write": "TFDS serialize + write"}


def load_config(path):
    spec = importlib.util.spec_from_file_location("bench_cfg", ROOT / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def log(msg: str) -> None:
    print(f"[bench_data] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
class Timers:
    """Wall time per key of wrapped functions, patched in place and restored on exit."""

    def __init__(self):
        self.t: dict[str, float] = {}
        self._undo: list = []

    def wrap(self, owner, name: str, key: str, hook=None) -> None:
        if not hasattr(owner, name):
            return
        raw = inspect.getattr_static(owner, name)
        fn = getattr(owner, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                out = fn(*a, **k)
            finally:
                self.t[key] = self.t.get(key, 0.0) + time.perf_counter() - t0
            if hook is not None:
                hook(a, out)
            return out

        static = isinstance(raw, (classmethod, staticmethod))
        setattr(owner, name, staticmethod(timed) if static else timed)
        self._undo.append((owner, name, raw))

    def restore(self) -> None:
        for owner, name, raw in reversed(self._undo):
            setattr(owner, name, raw)
        self._undo.clear()


# ----------------------------------------------------------------------------------------------
def size_config(which: str, args) -> "object":
    c = load_config("configs/tiny.py" if which == "tiny" else "configs/navsim.py")
    d = c.data
    d.dir = str(Path(args.workdir) / which)
    d.source = "synthetic"
    d.navsim_root = d.maps_root = ""
    d.train_split = d.eval_split = SPLIT
    d.skip_bad = False
    d.shuffle = True
    scenes = args.scenes or (16 if which == "tiny" else 3)
    d.synthetic.num_logs = {SPLIT: 1}
    d.synthetic.frames_per_log = types.NUM_HISTORY + d.sizes.num_future + scenes - 1
    if which == "navsim":
        d.synthetic.image_wh = (1920, 1080)
        d.synthetic.lidar_points = args.lidar_points
    if args.jpeg_quality >= 0:
        if "camera_jpeg_quality" not in d:
            raise SystemExit("--jpeg-quality: this code has no config.data.camera_jpeg_quality")
        d.camera_jpeg_quality = args.jpeg_quality
    return c


def build(config, which: str) -> dict:
    """Generate the world (untimed), then build the TFDS dataset with the reader's parts timed."""
    sizes = types.SceneSizes.from_config(config.data.sizes)
    log(f"{which}: synthetic world ({config.data.synthetic.frames_per_log} frames, "
        f"{config.data.synthetic.image_wh[0]}x{config.data.synthetic.image_wh[1]} cameras)")
    world = prepare._ensure_synthetic(config, sizes)   # reused when already there
    tfds_dir = dataset_id.data_dir(config) / "tfds"
    shutil.rmtree(tfds_dir, ignore_errors=True)         # this bench's own folder: build afresh
    from data.navsim_tfds import navsim_tfds as builder_mod
    raw_cams: dict = {}         # token -> the reader's cameras, before storage
    tm = Timers()
    R = navsim_reader.SceneReader
    tm.wrap(navsim_reader, "read_log", "pickle")
    tm.wrap(R, "_scene", "reader_scene")
    tm.wrap(R, "_sensors", "sensors")
    tm.wrap(labels, "resize_image", "resize")
    tm.wrap(navsim_reader, "read_pcd", "lidar")
    tm.wrap(labels, "lidar_bev", "lidar")
    tm.wrap(navsim_reader.MapAPI, "load", "map")
    tm.wrap(route, "plan_route", "map")
    tm.wrap(R, "_map", "map")
    tm.wrap(R, "_agents", "agents")
    tm.wrap(labels, "bev_semantic", "labels")
    tm.wrap(labels, "meta_action", "labels")
    tm.wrap(builder_mod, "_example", "encode",
            hook=lambda a, out: raw_cams.__setitem__(a[1].token, np.asarray(a[0]["cameras"])))
    log(f"{which}: building the TFDS dataset through the reader")
    with contextlib.redirect_stdout(sys.stderr):
        t0 = time.perf_counter()
        try:
            summary = prepare.prepare_data(config)
        finally:
            tm.restore()
        total = time.perf_counter() - t0
    t = tm.t
    n = summary["splits"][SPLIT]["scenes"]
    reader = t.get("pickle", 0.0) + t.get("reader_scene", 0.0)
    parts = {"pickle": t.get("pickle", 0.0),
             "jpeg_decode": t.get("sensors", 0.0) - t.get("resize", 0.0) - t.get("lidar", 0.0),
             "resize": t.get("resize", 0.0), "lidar": t.get("lidar", 0.0),
             "map": t.get("map", 0.0), "agents": t.get("agents", 0.0),
             "labels": t.get("labels", 0.0)}
    parts["other_reader"] = reader - sum(parts.values())
    parts["encode"] = t.get("encode", 0.0)
    parts["tfds_write"] = total - reader - parts["encode"]
    return {"scenes": n, "build_s": total, "parts": parts, "raw_cameras": raw_cams,
            "record_bytes": summary["splits"][SPLIT]["bytes"], "dir_bytes": summary["bytes"],
            "world": world, "config_name": summary["config_name"]}


def camera_bytes(config) -> tuple[float, int]:
    """(mean stored camera bytes per scene, JPEG quality) from the built records; raw cameras
    (TFDS's zlib Tensor encoding): their zlib size."""
    src = loader.open_source(config, SPLIT)
    key = getattr(dataset_id, "CAMERAS_JPEG", None)
    ex = src[0]
    if key and key in ex:
        sizes = [sum(len(b) for b in src[i][key]) for i in range(len(src))]
        return float(np.mean(sizes)), int(config.data.camera_jpeg_quality)
    sizes = [len(zlib.compress(np.ascontiguousarray(src[i]["cameras"]).tobytes()))
             for i in range(len(src))]
    return float(np.mean(sizes)), 0


def jpeg_error(config, raw_cams: dict) -> float:
    """Mean abs error (levels) of the stored cameras as read back vs the reader's output."""
    scenes, metas = loader.load_split_numpy(config, SPLIT)
    errs = [np.abs(np.asarray(scenes.cameras[i], int) - raw_cams[m.token]).mean()
            for i, m in enumerate(metas)]
    return float(np.mean(errs))


def photo_camera(hw, quality: int, reps: int = 20) -> tuple[float, float]:
    """(stored bytes, decode CPU seconds) of one photograph (matplotlib's grace_hopper.jpg)
    resized to ``hw`` as a camera: what a real camera picture costs where the synthetic
    world's flat renderings cost less. ``quality`` 0: raw uint8 under zlib (the old layout)."""
    import matplotlib
    from PIL import Image
    im = Image.open(f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg").convert("RGB")
    pic = np.ascontiguousarray(np.asarray(im.resize(hw[::-1], Image.BILINEAR)))
    if quality <= 0:
        blob = zlib.compress(pic.tobytes())
        decode = lambda: np.frombuffer(zlib.decompress(blob), np.uint8)  # noqa: E731
    else:
        from irlvla_jax.data import sensor_io
        blob = sensor_io.encode_jpeg(pic, quality)
        decode = lambda: sensor_io.decode_jpeg(blob, tuple(hw))  # noqa: E731
    t0 = time.process_time()
    for _ in range(reps):
        decode()
    return float(len(blob)), (time.process_time() - t0) / reps


def read_cost(config, rounds: int) -> dict:
    """CPU seconds per scene of this process (all its threads: ArrayRecord reads ahead in its
    own): the record read (ArrayRecord + TFDS's feature decoding, zlib included) and
    decode_example (JPEG decode, dtype/shape checks)."""
    src = loader.open_source(config, SPLIT)
    spec = types.scene_spec(types.SceneSizes.from_config(config.data.sizes))
    n = len(src)
    t_read = t_dec = 0.0
    for _ in range(rounds):
        for i in range(n):
            t0 = time.process_time()
            ex = src[i]
            t1 = time.process_time()
            loader.decode_example(i, ex, spec=spec, split=SPLIT)
            t_dec += time.process_time() - t1
            t_read += t1 - t0
    k = rounds * n
    return {"read_s": t_read / k, "decode_s": t_dec / k}


def host_batches(config, workers: int):
    """The loader's host batch iterator (numpy, before device_put), with ``workers``."""
    c = config.copy_and_resolve_references()
    c.data.num_workers = workers
    if hasattr(loader, "host_batches"):
        return loader.host_batches(c, SPLIT, seed=0, shuffle=True)
    # The loader before host_batches existed (the parent commit): its make_loader's pipeline.
    import grain
    from absl import flags as absl_flags
    ds = loader.make_dataset(c, SPLIT, seed=0, shuffle=True, num_epochs=None)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, c.data.prefetch),
                                              prefetch_buffer_size=max(1, c.data.prefetch)))
    if workers > 0:
        if not absl_flags.FLAGS.is_parsed():
            absl_flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return it


def loader_rate(config, workers: int, min_scenes: int) -> dict:
    """Scenes/s of the host pipeline after its first 2 batches (worker start-up excluded), and
    the main process's CPU seconds per scene."""
    b = config.data.batch_size
    it = iter(host_batches(config, workers))
    for _ in range(2):
        next(it)
    n_batches = max(3, math.ceil(min_scenes / b))
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n_batches):
        arrays, _ = next(it)
        assert arrays["cameras"].dtype == np.uint8
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if hasattr(it, "close"):
        it.close()
    return {"scenes_per_s": n_batches * b / wall, "main_cpu_s": cpu / (n_batches * b)}


def il_demand(args) -> dict:
    """Scenes/s one GPU's IL step consumes at configs/navsim.py (FLOPs per scene at its batch)."""
    if args.flops_per_scene > 0:
        return {"flops_per_scene": args.flops_per_scene, "source": "--flops-per-scene"}
    import bench_il
    config = load_config("configs/navsim.py")
    log("IL step FLOPs at configs/navsim.py (lowering the step on abstract shapes)")
    f2, f4 = bench_il.il_step_flops(config, 2), bench_il.il_step_flops(config, 4)
    per_scene, fixed = (f4 - f2) / 2, 2 * f2 - f4        # per scene + per step (optimizer)
    b = config.data.batch_size
    return {"flops_per_scene": per_scene + fixed / b, "source": f"lowered cost analysis, batch {b}"}


# ----------------------------------------------------------------------------------------------
def run_size(which: str, args) -> dict:
    config = size_config(which, args)
    scenes = args.scenes or (16 if which == "tiny" else 3)
    config.data.batch_size = min(8, scenes) if which == "tiny" else min(2, scenes)
    config.data.prefetch = 1          # one reading thread: 0 workers = one core
    load = os.getloadavg()[0]
    b = build(config, which)
    sizes = types.SceneSizes.from_config(config.data.sizes)
    spec = types.scene_spec(sizes)
    b["decoded_bytes"] = sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in spec.values())
    b["camera_bytes"], b["quality"] = camera_bytes(config)
    photo_b, photo_s = photo_camera(sizes.image_hw, b["quality"])
    b["photo_bytes"], b["photo_decode_s"] = photo_b * sizes.num_cameras, photo_s * sizes.num_cameras
    b["mem_batches_per_worker"] = 2 if hasattr(loader, "host_batches") else \
        load_config("configs/navsim.py").data.prefetch + 1
    b["jpeg_mae"] = jpeg_error(config, b["raw_cameras"]) if b["quality"] else 0.0
    log(f"{which}: read cost per scene")
    b["cost"] = read_cost(config, rounds=max(1, 48 // b["scenes"]))
    b["loader"] = {}
    for w in args.workers:
        log(f"{which}: loader with {w} worker(s)")
        b["loader"][w] = loader_rate(config, w, args.min_scenes.get(which, 40))
    b["sizes"] = {"cameras": sizes.num_cameras, "image_hw": list(sizes.image_hw),
                  "image_wh_written": list(config.data.synthetic.image_wh),
                  "lidar_points": int(config.data.synthetic.lidar_points)}
    b["navsim_batch"] = load_config("configs/navsim.py").data.batch_size
    b["navsim_workers"] = load_config("configs/navsim.py").data.num_workers
    b.pop("raw_cameras")
    b["load"] = load
    return b


def fmt_table(res: dict, demand: dict | None, args) -> str:
    cols = list(res)
    rows: list[tuple[str, list[str]]] = []

    def row(name, fn):
        rows.append((name, [fn(res[c]) for c in cols]))

    row("host load average (1 min) at the start", lambda r: f"{r['load']:.1f} on "
        f"{os.cpu_count()} cores")
    row("cameras (written -> model)", lambda r: f"{r['sizes']['cameras']} x "
        f"{r['sizes']['image_wh_written'][0]}x{r['sizes']['image_wh_written'][1]} -> "
        f"{r['sizes']['image_hw'][1]}x{r['sizes']['image_hw'][0]}")
    row("scenes built (1 log)", lambda r: f"{r['scenes']}")
    row("**build time per scene**", lambda r: f"**{1e3 * r['build_s'] / r['scenes']:.0f} ms**")
    for p in PARTS:
        row(f"&nbsp;&nbsp;{PART_NAMES[p]}", lambda r, p=p: f"{1e3 * r['parts'][p] / r['scenes']:.1f} ms")
    row("decoded scene (Scene arrays)", lambda r: f"{r['decoded_bytes'] / MIB:.2f} MiB")
    row("camera storage", lambda r: f"JPEG q{r['quality']}" if r["quality"] else "raw uint8 (zlib)")
    row("**TFDS bytes per scene** (records)", lambda r: f"**{r['record_bytes'] / r['scenes'] / MIB:.3f} MiB**")
    row("&nbsp;&nbsp;of which cameras", lambda r: f"{r['camera_bytes'] / MIB:.3f} MiB")
    row("**TFDS bytes per scene with photographs as cameras** (est.)", lambda r: "**"
        f"{(r['record_bytes'] / r['scenes'] - r['camera_bytes'] + r['photo_bytes']) / MIB:.3f} MiB**")
    row("&nbsp;&nbsp;camera decode per scene with photographs (est.)",
        lambda r: f"{1e3 * r['photo_decode_s']:.1f} ms")
    row("cameras read back: mean abs error", lambda r: f"{r['jpeg_mae']:.2f} levels")
    row("read cost per scene, 1 core: record read + TFDS decode", lambda r: f"{1e3 * r['cost']['read_s']:.1f} ms")
    row("&nbsp;&nbsp;decode_example (JPEG decode, checks)", lambda r: f"{1e3 * r['cost']['decode_s']:.1f} ms")
    for w in args.workers:
        row(f"loader scenes/s, {w} worker process{'es' if w != 1 else ''}",
            lambda r, w=w: f"{r['loader'][w]['scenes_per_s']:.0f}")
    row("&nbsp;&nbsp;main process CPU per scene (0 workers = everything)", lambda r: " / ".join(
        f"{1e3 * r['loader'][w]['main_cpu_s']:.1f}" for w in args.workers) + " ms")
    if demand is not None:      # the navsim step's demand: only the navsim-size column
        d = demand["scenes_per_s"]
        w = max(args.workers)

        def per_scene(r):        # one process doing everything + the main's share with workers
            return r["loader"][0]["main_cpu_s"] + (r["loader"][w]["main_cpu_s"] if w else 0.0)
        nav = [c for c in cols if c == "navsim"]
        rows.append(("IL step demand, one H100 at configs/navsim.py",
                     [f"{d:.0f} scenes/s" if c in nav else "-" for c in cols]))
        rows.append(("**host cores per H100 for 1x / 2x demand**",
                     [f"**{d * per_scene(res[c]):.1f} / {2 * d * per_scene(res[c]):.1f}**"
                      if c in nav else "-" for c in cols]))
        rows.append(("scenes/s from 8 host cores (x demand)",
                     [f"{8 / per_scene(res[c]):.0f} ({8 / per_scene(res[c]) / d:.1f}x)"
                      if c in nav else "-" for c in cols]))
    any_r = next(iter(res.values()))
    row(f"loader host memory bound: {any_r['navsim_workers']} workers x "
        f"{any_r['mem_batches_per_worker']} batches of {any_r['navsim_batch']} (configs/navsim.py)",
        lambda r: f"{r['navsim_workers'] * r['mem_batches_per_worker'] * r['navsim_batch'] * r['decoded_bytes'] / 2**30:.1f} GiB")
    head = "| | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    return head + "\n".join(f"| {n} | " + " | ".join(v) + " |" for n, v in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,navsim", help="comma list of tiny, navsim")
    ap.add_argument("--scenes", type=int, default=0,
                    help="scenes (windows of the one log) per size (default: tiny 16, navsim 3)")
    ap.add_argument("--lidar-points", type=int, default=100_000,
                    help="LiDAR points per merged sweep at NAVSIM size")
    ap.add_argument("--jpeg-quality", type=int, default=-1,
                    help="config.data.camera_jpeg_quality (default: the config's; 0 = raw)")
    ap.add_argument("--workers", default="0,1,2", help="grain worker counts to measure")
    ap.add_argument("--workdir", default="/tmp/irlvla_bench_data")
    ap.add_argument("--mfu", type=float, default=0.4)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    ap.add_argument("--flops-per-scene", type=float, default=0.0,
                    help="skip the lowering: the IL step's FLOPs per scene (e.g. from a run)")
    ap.add_argument("--no-demand", action="store_true", help="skip the IL step's demand")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    if 0 not in args.workers:
        args.workers.insert(0, 0)
    args.min_scenes = {"tiny": 400, "navsim": 60}
    res = {which: run_size(which, args) for which in args.sizes.split(",")}
    demand = None
    if not args.no_demand:
        demand = il_demand(args)
        demand["scenes_per_s"] = args.mfu * args.peak_tflops * 1e12 / demand["flops_per_scene"]
        log(f"IL step: {demand['flops_per_scene'] / 1e12:.3f} TFLOP/scene ({demand['source']}) "
            f"-> {demand['scenes_per_s']:.1f} scenes/s at {args.mfu:.0%} of "
            f"{args.peak_tflops:.0f} TFLOP/s")
    print(fmt_table(res, demand, args))
    if demand is not None:
        print(f"\nIL step at configs/navsim.py: {demand['flops_per_scene'] / 1e12:.2f} TFLOP per "
              f"scene ({demand['source']}); one H100 at {args.mfu:.0%} of {args.peak_tflops:.0f} "
              f"TFLOP/s consumes {demand['scenes_per_s']:.0f} scenes/s.")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": res, "demand": demand}, indent=1,
                                              default=str))


if __name__ == "__main__":
    main()
