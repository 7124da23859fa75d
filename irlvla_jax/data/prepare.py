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
them back. ``tfds.features.Image`` would need TF to encode, so cameras are stored as tensors.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from data.navsim_tfds import Builder, NavsimConfig
from irlvla_jax import types
from irlvla_jax.data.dataset_id import data_dir, jsonable, source_roots, splits

SKIP_REPORT = "skip_report.json"
_SYNTHETIC_MARKER = ".synthetic_complete.json"


def _ensure_synthetic(config, sizes: types.SceneSizes) -> dict[str, Any]:
    """Generate the synthetic NAVSIM-format root unless a complete one for this config exists."""
    root = data_dir(config)
    navsim_root, maps_root = source_roots(config)
    marker = Path(navsim_root) / _SYNTHETIC_MARKER
    want = {"synthetic": jsonable(config.data.synthetic), "sizes": jsonable(config.data.sizes),
            "splits": list(splits(config))}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return {"generated": False, "root": navsim_root}
    from irlvla_jax.data import synthetic   # the world generator; only needed here
    # A partial or differently-configured synthetic world is ours to replace (never a real root).
    for d in (navsim_root, maps_root):
        shutil.rmtree(d, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    num_logs = dict(config.data.synthetic.num_logs)
    missing = [s for s in splits(config) if s not in num_logs]
    if missing:
        raise ValueError(f"config.data.synthetic.num_logs has no entry for split(s) {missing}; "
                         f"add e.g. --config.data.synthetic.num_logs.{missing[0]}=2")
    synthetic.generate(config.data.synthetic, sizes, navsim_root, maps_root,
                       {s: num_logs[s] for s in splits(config)})
    marker.write_text(json.dumps(want, indent=1))
    return {"generated": True, "root": navsim_root, "seconds": round(time.time() - t0, 2)}


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def prepare_data(config) -> dict[str, Any]:
    """Build (or reuse) this config's TFDS dataset; print and return a summary.

    Returns ``{"dir", "dataset_dir", "config_name", "source", "reused", "synthetic",
    "splits": {split: {"scenes", "bytes"}}, "bytes", "seconds", "skipped"}`` where
    ``skipped`` is the reader's skip report (``{}`` when nothing was skipped).
    """
    t0 = time.time()
    sizes = types.SceneSizes.from_config(config.data.sizes)
    synth = _ensure_synthetic(config, sizes) if config.data.source == "synthetic" else None

    builder = Builder(config=NavsimConfig.from_run_config(config),
                      data_dir=str(data_dir(config) / "tfds"), file_format="array_record")
    reused = builder.is_prepared()
    if not reused:
        builder.download_and_prepare()
        report = builder.skip_report
        (Path(builder.data_dir) / SKIP_REPORT).write_text(json.dumps(report, indent=1))
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
        "splits": {s: {"scenes": int(info.splits[s].num_examples),
                       "bytes": int(info.splits[s].num_bytes)} for s in splits(config)},
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
    skipped = s["skipped"].get("total", 0) if s["skipped"] else 0
    if skipped:
        print(f"[data]   skipped {skipped} bad inputs: "
              f"{json.dumps(s['skipped'].get('counts', s['skipped']))} "
              f"(details in {s['dataset_dir']}/{SKIP_REPORT})")
