"""The ``data`` stage: NAVSIM-format root (synthetic or real) -> TFDS ArrayRecord dataset.

    python launch.py data --config configs/tiny.py

Layout under ``config.data.dir`` ("" = ``<repo>/data``)::

    navsim/                 synthetic NAVSIM-format root (source == "synthetic")
    maps/                   synthetic nuPlan maps          (source == "synthetic")
    tfds/navsim_tfds/<name>/<version>/   the built dataset (+ skip_report.json)

``<name>`` is ``<source>_<hash>`` where the hash covers everything that changes the examples
(the Scene contract's fields, the sizes, the splits, the source and its settings), so a config
change builds a new dataset next to the old one instead of silently reusing a stale one. TFDS
itself treats a finished ``<name>/<version>`` folder as the "already built" marker.

Which TFDS path works without TensorFlow (TFDS 4.9.10, tensorflow absent): a plain
``GeneratorBasedBuilder(file_format='array_record').download_and_prepare()`` writes the shards
and ``dataset_info.json`` (``Tensor`` features, including ``Encoding.ZLIB``, and ``Text``
features encode with numpy); ``tfds.builder_from_directory(...).as_data_source(split)`` reads
them back. ``tfds.features.Image`` would need TF to encode, so cameras are stored as tensors.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from irlvla_jax import types

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILDER_NAME = "navsim_tfds"       # TFDS names the builder after its package folder
SKIP_REPORT = "skip_report.json"
_SYNTHETIC_MARKER = ".synthetic_complete.json"
SOURCES = ("synthetic", "navsim", "random")


# ----------------------------------------------------------------------------------------------
# Where things live (shared with the loader).

def data_dir(config) -> Path:
    """``config.data.dir`` resolved; "" means the repo's ``data/`` folder."""
    d = config.data.dir
    return Path(d).expanduser().resolve() if d else REPO_ROOT / "data"


def splits(config) -> tuple[str, ...]:
    """The splits a run needs: train and eval (once each)."""
    return tuple(dict.fromkeys([config.data.train_split, config.data.eval_split]))


def source_roots(config) -> tuple[str, str]:
    """(navsim_root, maps_root) the reader reads from."""
    src = config.data.source
    if src == "synthetic":
        root = data_dir(config)
        return str(root / "navsim"), str(root / "maps")
    if src == "navsim":
        for field in ("navsim_root", "maps_root"):
            if not config.data[field]:
                raise ValueError(f"config.data.{field} is empty; set it (or $OPENSCENE_DATA_ROOT / "
                                 f"$NUPLAN_MAPS_ROOT before loading configs/navsim.py) when "
                                 f"config.data.source == 'navsim'")
        return str(Path(config.data.navsim_root).expanduser().resolve()), \
            str(Path(config.data.maps_root).expanduser().resolve())
    return "", ""


def _jsonable(x: Any) -> Any:
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in sorted(x.items())}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def build_fingerprint(config) -> dict[str, Any]:
    """Everything that changes the built examples (and nothing that does not, e.g. batch size)."""
    src = config.data.source
    if src not in SOURCES:
        raise ValueError(f"config.data.source is {src!r}; expected one of {SOURCES}")
    sizes = types.SceneSizes.from_config(config.data.sizes)
    fp = {
        "scene_spec": {k: [list(s), str(np.dtype(d))]
                       for k, (s, d) in types.scene_spec(sizes).items()},
        "sizes": _jsonable(config.data.sizes),
        "source": src,
        "splits": list(splits(config)),
    }
    if src == "synthetic":
        fp["synthetic"] = _jsonable(config.data.synthetic)
    elif src == "navsim":
        fp["roots"] = list(source_roots(config))
    else:
        fp["random_scenes"] = int(config.data.random_scenes)
    return fp


def tfds_config_name(config) -> str:
    """``<source>_<10 hex>``: the TFDS BuilderConfig name (and folder) of this config's data."""
    blob = json.dumps(build_fingerprint(config), sort_keys=True).encode()
    return f"{config.data.source}_{hashlib.sha1(blob).hexdigest()[:10]}"


def dataset_path(config) -> Path:
    """The built dataset's folder (``.../navsim_tfds/<name>/<version>``).

    Raises ``FileNotFoundError`` with the command to run when it has not been built.
    """
    base = data_dir(config) / "tfds" / BUILDER_NAME / tfds_config_name(config)
    built = sorted(p.parent for p in base.glob("*/dataset_info.json")
                   if not p.parent.name.startswith("incomplete"))
    if not built:
        raise FileNotFoundError(
            f"no built dataset at {base} for this config (source={config.data.source!r}, "
            f"splits={list(splits(config))}); run `python launch.py data` with the same config")
    return built[-1]


# ----------------------------------------------------------------------------------------------
def _builder_module():
    """``data.navsim_tfds`` lives at the repo root (TFDS builder package convention)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module("data.navsim_tfds")


def _ensure_synthetic(config, sizes: types.SceneSizes) -> dict[str, Any]:
    """Generate the synthetic NAVSIM-format root unless a complete one for this config exists."""
    root = data_dir(config)
    navsim_root, maps_root = source_roots(config)
    marker = Path(navsim_root) / _SYNTHETIC_MARKER
    want = {"synthetic": _jsonable(config.data.synthetic), "sizes": _jsonable(config.data.sizes),
            "splits": list(splits(config))}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return {"generated": False, "root": navsim_root}
    from irlvla_jax.data import synthetic   # the colleague's generator; only needed here
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
    nt = _builder_module()
    synth = _ensure_synthetic(config, sizes) if config.data.source == "synthetic" else None

    builder = nt.Builder(config=nt.NavsimConfig.from_run_config(config),
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
