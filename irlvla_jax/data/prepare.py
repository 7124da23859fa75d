"""The ``data`` stage: NAVSIM-format root (synthetic or real) -> TFDS ArrayRecord dataset.

    python launch.py data --config configs/tiny.py

Where the data lives and how the dataset is named: ``dataset_id.py``. The builder is the TFDS
package ``data/navsim_tfds`` at the repo root, imported as ``data.navsim_tfds``: every entry point
(``launch.py``, ``python -m pytest`` and ``python -m irlvla_jax...`` from the repo root, the
benchmarks) has the repo root on ``sys.path``.

Which TFDS path works without TensorFlow (TFDS 4.9.10, tensorflow absent): a plain
``GeneratorBasedBuilder(file_format='array_record').download_and_prepare()`` writes the shards
and ``dataset_info.json`` (``Tensor`` features, including ``Encoding.ZLIB``, and ``Text``
features encode with numpy); ``tfds.builder_from_directory(...).as_data_source(split)`` reads
them back. ``tfds.features.Image`` would need TF to encode an array, so the builder encodes
each camera with Pillow (JPEG, ``config.data.camera_jpeg_quality``) into a [C] tensor of bytes
(``cameras_jpeg``), which the loader decodes in its grain workers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from data.navsim_tfds import Builder, NavsimConfig
from irlvla_jax import types
from irlvla_jax.data.dataset_id import data_dir, jsonable, source_roots, splits, tfds_split

SKIP_REPORT = "skip_report.json"
_SYNTHETIC_MARKER = ".synthetic_complete.json"   # the config of a complete synthetic world
_MANIFEST = ".synthetic_files.json"   # the files it wrote: {"navsim" | "maps": {path: size}}


def _ensure_synthetic(config, sizes: types.SceneSizes) -> dict[str, Any]:
    """Generate the synthetic NAVSIM-format root unless a complete one for this config exists.

    The world is generated into a fresh folder under data.dir and moved into place. An older
    world is replaced only when every file in it is one the generator wrote (its manifest);
    a folder holding anything else raises FileExistsError and nothing is deleted.
    """
    root = data_dir(config)
    navsim_root, maps_root = (Path(r) for r in source_roots(config))
    want = {"synthetic": jsonable(config.data.synthetic), "sizes": jsonable(config.data.sizes),
            "splits": list(splits(config))}
    marker = _read_json(navsim_root / _SYNTHETIC_MARKER)
    if marker is not None and {k: marker.get(k) for k in want} == want:
        return {"generated": False, "root": str(navsim_root)}
    num_logs = dict(config.data.synthetic.num_logs)
    missing = [s for s in splits(config) if s not in num_logs]
    if missing:
        raise ValueError(f"config.data.synthetic.num_logs has no entry for split(s) {missing}; "
                         f"add e.g. --config.data.synthetic.num_logs.{missing[0]}=2")
    _refuse_foreign(config, navsim_root, maps_root)
    from irlvla_jax.data import synthetic   # the world generator; only needed here
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-partial-", dir=root))
    try:
        new_navsim, new_maps = tmp / "navsim", tmp / "maps"
        synthetic.generate(config.data.synthetic, sizes, str(new_navsim), str(new_maps),
                           {s: num_logs[s] for s in splits(config)})
        files = {"navsim": _files(new_navsim), "maps": _files(new_maps)}
        # Checked again: generating takes a while, and someone may have written there since.
        _refuse_foreign(config, navsim_root, maps_root)
        for new, old in ((new_navsim, navsim_root), (new_maps, maps_root)):
            if old.is_dir():
                shutil.rmtree(old)   # empty, or only files the generator wrote (checked)
            new.rename(old)
        (navsim_root / _MANIFEST).write_text(json.dumps(files))
        # Written last: a world without it (an interrupted swap) is never taken as complete.
        (navsim_root / _SYNTHETIC_MARKER).write_text(json.dumps(want, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # made above; holds only generator output
    return {"generated": True, "root": str(navsim_root), "seconds": round(time.time() - t0, 2)}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _files(folder: Path) -> dict[str, int]:
    """Relative path -> size of every file under ``folder`` (links too, not followed), the
    marker and the manifest left out; empty when there is no such folder."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in filenames + links:
            p = Path(dirpath, name)
            out[p.relative_to(folder).as_posix()] = p.lstat().st_size
    for ours in (_SYNTHETIC_MARKER, _MANIFEST):
        out.pop(ours, None)
    return out


def _generator_layout(kind: str, rel: str, split_names: list[str]) -> bool:
    """Whether ``rel`` is a path the synthetic generator writes (navsim: logs and sensor
    blobs of ``split_names``; maps: the versions JSON and ``<location>/<version>/map.gpkg``)."""
    parts = rel.split("/")
    if kind == "maps":
        return rel == "nuplan-maps-v1.0.json" or (len(parts) == 3 and parts[2] == "map.gpkg")
    if len(parts) == 3 and parts[0] == "navsim_logs":
        return parts[1] in split_names and parts[2].endswith(".pkl")
    return len(parts) == 5 and parts[0] == "sensor_blobs" and parts[1] in split_names and (
        parts[3].startswith("CAM_") or parts[3] == "MergedPointCloud")


def _refuse_foreign(config, navsim_root: Path, maps_root: Path) -> None:
    """Raise FileExistsError unless data.dir/navsim and data.dir/maps are absent, empty, or hold
    only files the synthetic generator wrote there: those in its manifest, with their sizes
    (a world from before manifests: paths of the generator's layout)."""
    marker = _read_json(navsim_root / _SYNTHETIC_MARKER)
    manifest = _read_json(navsim_root / _MANIFEST) if marker is not None else None
    problems = []
    for kind, folder in (("navsim", navsim_root), ("maps", maps_root)):
        if folder.exists() and not folder.is_dir():
            problems.append((folder, "is a file, not a folder"))
            continue
        found = _files(folder)
        if not found:
            continue
        if marker is None:
            problems.append((folder, f"holds {len(found)} file(s) and no {_SYNTHETIC_MARKER} "
                             f"(not a synthetic world), e.g. {', '.join(sorted(found)[:3])}"))
            continue
        if manifest is not None:
            wrote = manifest.get(kind) or {}
            odd = sorted(r for r, size in found.items() if wrote.get(r) != size)
        else:
            split_names = list(marker.get("splits") or [])
            odd = sorted(r for r in found if not _generator_layout(kind, r, split_names))
        if odd:
            problems.append((folder, f"holds {len(odd)} file(s) the synthetic generator did not "
                             f"write there (or that changed since), e.g. {', '.join(odd[:3])}"))
    if problems:
        lines = "\n".join(f"  {folder}: {what}" for folder, what in problems)
        raise FileExistsError(
            f"config.data.dir ({data_dir(config)}) holds data that `launch.py data` did not "
            f"generate; it deletes nothing it did not write, so it stops here:\n{lines}\n"
            f"Give the synthetic world a folder of its own (--config.data.dir=/another/folder), "
            f"or, if none of these files is needed, delete it yourself "
            f"({' and '.join(str(f) for f, _ in problems)}) and rerun.")


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def prepare_data(config) -> dict[str, Any]:
    """Build (or reuse) this config's TFDS dataset; print and return a summary.

    Returns ``{"dir", "dataset_dir", "config_name", "source", "reused", "synthetic",
    "splits": {split: {"scenes", "bytes"}}, "bytes", "seconds", "skipped"}`` where
    ``skipped`` is the reader's skip report (``errors.SkipReport.to_dict()``: scenes lost,
    bad inputs, per input how many scenes it removed).
    """
    t0 = time.time()
    sizes = types.SceneSizes.from_config(config.data.sizes)
    synth = _ensure_synthetic(config, sizes) if config.data.source == "synthetic" else None

    builder = Builder(config=NavsimConfig.from_run_config(config),
                      data_dir=str(data_dir(config) / "tfds"), file_format="array_record")
    reused = builder.is_prepared()
    if not reused:
        builder.download_and_prepare()
        (Path(builder.data_dir) / SKIP_REPORT).write_text(
            json.dumps(builder.skip_report.to_dict(), indent=1))
    out_dir = Path(builder.data_dir)
    report_file = out_dir / SKIP_REPORT
    report = json.loads(report_file.read_text()) if report_file.exists() else {}

    info = builder.info
    summary = {
        "dir": str(data_dir(config)),
        "dataset_dir": str(out_dir),
        "config_name": builder.builder_config.name,
        "source": config.data.source,
        "reused": reused,
        "synthetic": synth,
        "splits": {s: {"scenes": int(info.splits[tfds_split(s)].num_examples),
                       "bytes": int(info.splits[tfds_split(s)].num_bytes)}
                   for s in splits(config)},
        "bytes": _dir_bytes(out_dir),
        "seconds": round(time.time() - t0, 2),
        "skipped": report,
    }
    _print_summary(summary)
    return summary


def _print_summary(s: dict[str, Any]) -> None:
    verb = "reused" if s["reused"] else "built"
    print(f"[data] {verb} {s['config_name']} at {s['dataset_dir']} in {s['seconds']} s "
          f"({s['bytes'] / 2**20:.1f} MiB)")
    for name, sp in s["splits"].items():
        print(f"[data]   {name}: {sp['scenes']} scenes, {sp['bytes'] / 2**20:.1f} MiB")
    r = s["skipped"] or {}
    if r.get("total") or r.get("bad_inputs"):
        more = (f", plus up to {r['scenes_up_to']} more in {r['unknown_inputs']} unreadable "
                f"file(s)" if r.get("unknown_inputs") else "")
        print(f"[data]   skipped for bad input: {r['total']} scenes lost to "
              f"{r.get('bad_inputs', '?')} bad inputs{more}; scenes per reason: "
              f"{json.dumps(r.get('counts', {}))} (each input in {s['dataset_dir']}/{SKIP_REPORT})")
